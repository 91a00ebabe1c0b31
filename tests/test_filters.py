"""Temporal filtering of the driving motion (jr2net.pipeline.filters) and the still-clip check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jr2net.eval.reenact_eval import image_scores
from jr2net.face.landmarks import detect_faces
from jr2net.io.images import decode_frame, encode_image
from jr2net.io.video import VideoReader
from jr2net.pipeline.base import SessionOptions
from jr2net.pipeline.filters import OneEuroFilter
from jr2net.pipeline.geometric import GeometricReenactor


def test_one_euro_smooths_a_noisy_constant_and_follows_a_ramp():
    rng = np.random.default_rng(0)
    flt = OneEuroFilter(1.0, 0.05)
    noisy = torch.tensor(rng.normal(0.0, 1.0, (200, 1)))
    out = torch.stack([flt(x) for x in noisy])
    assert float(out[50:].std()) < 0.5 * float(noisy[50:].std())
    flt = OneEuroFilter(1.0, 0.05)
    ramp = torch.arange(100, dtype=torch.float64)[:, None] * 2.0  # 60 units/s at 30 Hz
    out = torch.stack([flt(x) for x in ramp])
    assert float((ramp[-1] - out[-1]).abs()) < 4.0  # lags under two frames


def test_one_euro_rejects_bad_settings():
    with pytest.raises(ValueError, match="min_cutoff"):
        OneEuroFilter(0.0, 1.0)


@pytest.fixture(scope="module")
def still_frame(videos_dir) -> np.ndarray:
    return VideoReader(videos_dir / "d0.mp4").read_all(max_frames=1)[0]


def test_still_clip_driven_by_its_own_frame_comes_back_unchanged(ict_model_path, still_frame):
    """100 noisy, JPEG re-encoded copies of one frame drive a session sourced on that frame:
    face-box PSNR against the clean frame >= 35 dB on every frame."""
    reenactor = GeometricReenactor(str(ict_model_path))
    options = SessionOptions(extra={"expression": "relative"})  # the same-identity settings
    session = reenactor.start_session(still_frame, options)
    landmarks = detect_faces(still_frame)[0].landmarks
    rng = np.random.default_rng(0)
    psnrs = []
    for _ in range(100):
        noisy = np.clip(still_frame + rng.normal(0.0, 2.0, still_frame.shape), 0, 255)
        frame = decode_frame(encode_image(noisy.astype(np.uint8), "JPEG", 90), "JPEG")
        out = session.process(frame)
        assert out.face_found
        psnrs.append(image_scores(out.image, still_frame, landmarks, ("face_box",))["face_box"]["psnr"])
    session.close()
    assert min(psnrs) >= 35.0, f"face-box PSNR min {min(psnrs):.1f} dB"
