"""Temporal filtering of the driving motion (jr2net.pipeline.filters) and the still-clip check."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from jr2net.eval.reenact_eval import image_scores
from jr2net.face.landmarks import detect_faces
from jr2net.io.images import decode_frame, encode_image
from jr2net.io.video import VideoReader
from jr2net.pipeline.base import SessionOptions
from jr2net.pipeline.filters import (
    DRIFT_FRACTION,
    DRIFT_FRAMES,
    STILL_THRESHOLD,
    OneEuroFilter,
    StillnessGate,
    rigid_motion,
)
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
        psnrs.append(
            image_scores(out.image, still_frame, landmarks, ("face_box",))["face_box"]["psnr"]
        )
    session.close()
    assert min(psnrs) >= 35.0, f"face-box PSNR min {min(psnrs):.1f} dB"


@dataclasses.dataclass
class _Detection:
    landmarks: np.ndarray


@dataclasses.dataclass
class _Coeffs:
    pose: str
    expression: str


@dataclasses.dataclass
class _Fit:
    detection: _Detection
    coeffs: _Coeffs


def _fit(landmarks: np.ndarray, name: str) -> _Fit:
    return _Fit(_Detection(landmarks), _Coeffs(name, name))


def _face_points(rng) -> np.ndarray:
    """68 points spread over a face-sized disc, outer eye corners 100 px apart (IOD 100)."""
    pts = rng.uniform(-80, 80, (68, 2)) + 300.0
    pts[36], pts[45] = (250.0, 280.0), (350.0, 280.0)
    return pts


def test_stillness_gate_holds_landmark_noise_but_follows_a_slow_zoom():
    """Per-point noise below the threshold keeps the held fit; a 3 % zoom, whose per-point RMS
    change is also below it, is rigid motion and takes the new fit (the gate without the
    rigid-motion check held it: the output lagged a zooming head)."""
    rng = np.random.default_rng(1)
    base = _face_points(rng)
    gate = StillnessGate()
    assert gate(_fit(base, "held")).coeffs.pose == "held"
    noisy = base + rng.normal(0.0, 1.2, base.shape)  # ~1.7 % IOD RMS per point
    assert gate(_fit(noisy, "noisy")).coeffs == _Coeffs("held", "held")
    centre = base.mean(0)
    zoomed = (base - centre) * 1.032 + centre
    rms = float(np.sqrt(((zoomed - base) ** 2).sum(1).mean())) / 100.0
    assert rms < STILL_THRESHOLD  # the per-point test alone would hold it
    assert rigid_motion(base, zoomed) / 100.0 > 1.5 * DRIFT_FRACTION * STILL_THRESHOLD
    # Measured on the mean of the last DRIFT_FRAMES frames: the held fit goes once they moved.
    poses = [gate(_fit(zoomed, f"zoomed{k}")).coeffs.pose for k in range(DRIFT_FRAMES)]
    assert poses[0] == "held" and poses[-1] != "held", poses


def test_rigid_motion_is_the_similarity_part_of_the_change():
    rng = np.random.default_rng(2)
    a = _face_points(rng)
    assert rigid_motion(a, a + [3.0, 4.0]) == pytest.approx(5.0)
    assert rigid_motion(a, a + rng.normal(0.0, 1.0, a.shape)) < 0.5  # noise averages out
