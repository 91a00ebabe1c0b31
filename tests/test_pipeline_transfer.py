"""Mouth interior and gaze transfer of the geometric path (jr2net.pipeline.mouth / gaze)."""

from __future__ import annotations

import numpy as np
import pytest

from jr2net.eval.reenact_eval import image_scores
from jr2net.face.landmarks import detect_faces
from jr2net.io.video import VideoReader
from jr2net.pipeline.base import SessionOptions
from jr2net.pipeline.gaze import EYES, iris_position
from jr2net.pipeline.geometric import GeometricReenactor
from jr2net.pipeline.mouth import lip_affine

OPEN, SIDEWAYS = 45, 20  # d0.mp4 frames: wide-open smile; eyes turned to the image's right


@pytest.fixture(scope="module")
def reenactor(ict_model_path) -> GeometricReenactor:
    return GeometricReenactor(str(ict_model_path))


@pytest.fixture(scope="module")
def d0(videos_dir) -> list[np.ndarray]:
    return VideoReader(videos_dir / "d0.mp4").read_all(max_frames=OPEN + 1)


def _drive(reenactor, frames, target, **extra) -> np.ndarray:
    """Output for ``target`` after the reference frame, in a session sourced on frames[0]."""
    session = reenactor.start_session(
        frames[0], SessionOptions(extra={"expression": "relative", **extra})
    )
    session.process(frames[0])
    for _ in range(3):  # the temporal filter settles on the jump
        out = session.process(target)
    session.close()
    assert out.face_found
    return out.image


def test_lip_affine_recovers_an_affine_map():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 100, (20, 2))
    A = np.array([[1.1, 0.2, 5.0], [-0.1, 0.9, -3.0]])
    assert np.allclose(lip_affine(pts, pts @ A[:, :2].T + A[:, 2]), A, atol=1e-9)
    with pytest.raises(ValueError, match="20,2"):
        lip_affine(pts[:10], pts[:10])


def test_mouth_transfer_shows_the_driving_mouth_better_than_the_synthetic_interior(reenactor, d0):
    gt = d0[OPEN]
    lm = detect_faces(gt)[0].landmarks
    psnr = {
        mode: image_scores(_drive(reenactor, d0, gt, mouth=mode), gt, lm, ("mouth_box",))[
            "mouth_box"
        ]["psnr"]
        for mode in ("transfer", "synthetic")
    }
    assert psnr["transfer"] > psnr["synthetic"] + 1.5, psnr


def test_iris_position_finds_a_dark_disc_off_the_eye_centre():
    img = np.full((60, 100, 3), 230, np.uint8)
    yy, xx = np.mgrid[0:60, 0:100]
    img[(xx - 62) ** 2 + (yy - 30) ** 2 <= 8**2] = 30  # iris 12 px right of the centre (50, 30)
    eye = np.array([[20, 30], [35, 20], [65, 20], [80, 30], [65, 40], [35, 40]], float)
    along, across = iris_position(img, eye)
    assert along == pytest.approx(12 / 60, abs=0.03) and abs(across) < 0.03
    closed = eye.copy()
    closed[[1, 2, 4, 5], 1] = [29, 29, 31, 31]
    assert iris_position(img, closed) is None  # a blink is not measured


def test_gaze_transfer_turns_the_output_eyes_with_the_driving_eyes(reenactor, d0):
    drv = d0[SIDEWAYS]
    drv_lm = detect_faces(drv)[0].landmarks
    drv_along = np.mean([iris_position(drv, drv_lm[e])[0] for e in EYES])
    along = {}
    for gaze in ("1", "0"):
        out = _drive(reenactor, d0, drv, gaze=gaze)
        lm = detect_faces(out)[0].landmarks
        along[gaze] = np.mean([iris_position(out, lm[e])[0] for e in EYES])
    assert drv_along > 0.15  # the driver looks to the image's right
    assert along["1"] > along["0"] + 0.08, along


def test_bad_mouth_option_raises_value_error(reenactor, d0):
    with pytest.raises(ValueError, match="mouth"):
        reenactor.start_session(d0[0], SessionOptions(extra={"mouth": "teeth"}))


def test_colour_tables_warmed_in_a_thread_give_the_same_colour_match():
    """GeometricReenactor warms OpenCV's Lab tables in a thread (``warm_up_colour_tables``, once
    per process); ``match_colours`` waits for it and computes what it computes without it."""
    from jr2net.pipeline import mouth

    rng = np.random.default_rng(0)
    patch = rng.random((24, 20, 3), dtype=np.float32)
    ref_from, ref_to = rng.random((50, 3), dtype=np.float32), rng.random((40, 3), dtype=np.float32)
    mouth.warm_up_colour_tables()
    first = mouth._lab_warm_up
    mouth.warm_up_colour_tables()
    assert mouth._lab_warm_up is first  # started once
    matched = mouth.match_colours(patch, ref_from, ref_to)
    assert not first.is_alive()
    assert matched.shape == patch.shape and matched.dtype == np.float32
    assert np.array_equal(matched, mouth.match_colours(patch, ref_from, ref_to))
    assert 0.0 <= matched.min() and matched.max() <= 1.0 and not np.allclose(matched, patch)
