"""The geometric reenactment pipeline on real media (obama.jpg source, d0.mp4 driving frames)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jr2net.errors import NoFaceError
from jr2net.face.camera import euler_rotation
from jr2net.face.landmarks import detect_largest_face
from jr2net.io.images import load_image
from jr2net.io.video import VideoReader
from jr2net.pipeline import stages as st
from jr2net.pipeline.base import SessionOptions
from jr2net.pipeline.geometric import STAGES, GeometricReenactor

CLOSED, OPEN = 0, 45  # d0.mp4 frames: mouth closed / wide open smile


@pytest.fixture(scope="module")
def reenactor(ict_model_path) -> GeometricReenactor:
    return GeometricReenactor(str(ict_model_path))


@pytest.fixture(scope="module")
def obama(images_dir) -> np.ndarray:
    return load_image(images_dir / "obama.jpg")


@pytest.fixture(scope="module")
def d0(videos_dir) -> list[np.ndarray]:
    return VideoReader(videos_dir / "d0.mp4").read_all(max_frames=OPEN + 1)


@pytest.fixture(scope="module")
def mouth_pair(reenactor, obama, d0) -> tuple[np.ndarray, np.ndarray, object]:
    """Outputs for a closed-mouth and an open-mouth driving frame, and the session's source fit."""
    session = reenactor.start_session(obama, SessionOptions(output_width=455, output_height=568))
    closed = session.process(d0[CLOSED])
    for frame in d0[CLOSED + 1 : CLOSED + 4]:
        session.process(frame)
    opened = session.process(d0[OPEN])
    assert closed.face_found and opened.face_found
    return closed.image, opened.image, session


def test_session_returns_source_sized_frames_with_every_stage_timing(reenactor, obama, d0):
    session = reenactor.start_session(obama, SessionOptions())
    for frame in d0[:3]:
        result = session.process(frame)
        assert result.image.shape == obama.shape and result.image.dtype == np.uint8
        assert result.face_found and result.fallback == ""
        assert set(STAGES) <= set(result.timings)
        assert all(v >= 0.0 for v in result.timings.values())
        assert result.timings["total"] >= result.timings["warp"] > 0.0
    session.close()


def test_open_mouth_driving_frame_changes_the_mouth_region(mouth_pair):
    closed, opened, session = mouth_pair
    # The source's mouth in output pixels (output is half the source size).
    lm = session.source_fit.detection.landmarks * np.array([455 / 910, 568 / 1137])
    mouth = lm[48:68]
    x0, y0 = np.floor(mouth.min(0) - 6).astype(int)
    x1, y1 = np.ceil(mouth.max(0) + 6).astype(int)
    diff = np.abs(opened.astype(np.float32) - closed.astype(np.float32)).mean(-1)
    mouth_change = diff[y0:y1, x0:x1].mean()
    # The forehead (above the brows) barely moves with the mouth.
    bx0, bx1 = int(lm[17:27, 0].min()), int(lm[17:27, 0].max())
    by1 = int(lm[17:27, 1].min()) - 5
    forehead_change = diff[by1 - 25 : by1, bx0:bx1].mean()
    assert mouth_change > 12.0, mouth_change
    assert mouth_change > 4 * forehead_change, (mouth_change, forehead_change)
    # dlib sees the mouth open in the output: the inner lips part.
    det_c, det_o = detect_largest_face(closed), detect_largest_face(opened)
    gap_c = np.linalg.norm(det_c.landmarks[66] - det_c.landmarks[62])
    gap_o = np.linalg.norm(det_o.landmarks[66] - det_o.landmarks[62])
    assert gap_o > gap_c + 5.0, (gap_c, gap_o)


def test_no_face_frames_fall_back_to_source_then_last_output(reenactor, obama, d0):
    session = reenactor.start_session(obama, SessionOptions(output_width=256, output_height=320))
    blank = np.full((512, 512, 3), 90, np.uint8)
    first = session.process(blank)
    assert not first.face_found and first.fallback == "source"
    assert first.image.shape == (320, 256, 3)
    assert np.abs(first.image.astype(int) - session.bg_u8.astype(int)).max() == 0
    good = session.process(d0[0])
    assert good.face_found
    again = session.process(blank)
    assert not again.face_found and again.fallback == "last_output"
    np.testing.assert_array_equal(again.image, good.image)


def test_source_without_a_face_raises_no_face_error(reenactor, images_dir):
    dog = load_image(images_dir / "s31.jpg")
    with pytest.raises(NoFaceError):
        reenactor.start_session(dog, SessionOptions())


def _face_centre(image: np.ndarray) -> np.ndarray:
    return detect_largest_face(image).landmarks[27:36].mean(0)


def test_absolute_pose_follows_the_driving_head_relative_keeps_the_source_place(reenactor, obama, d0):
    # Move the driving face to the right third of its frame (pad with the green background).
    frame = d0[0]
    shifted = np.concatenate([np.repeat(frame[:, :1], 120, axis=1), frame[:, :-120]], axis=1)
    out_w, out_h = 455, 568
    src_centre = _face_centre(obama) * np.array([out_w / 910, out_h / 1137])
    drv_centre = _face_centre(shifted) / 512 * np.array([out_w, out_h])
    results = {}
    for mode in ("relative", "absolute"):
        session = reenactor.start_session(
            obama, SessionOptions(pose_mode=mode, output_width=out_w, output_height=out_h)
        )
        results[mode] = _face_centre(session.process(shifted).image)
    assert np.linalg.norm(results["relative"] - src_centre) < 8.0, (results, src_centre)
    assert abs(results["absolute"][0] - drv_centre[0]) < 12.0, (results, drv_centre)
    assert results["absolute"][0] - results["relative"][0] > 40.0


def _rot(pitch: float, yaw: float, roll: float) -> torch.Tensor:
    return euler_rotation(torch.tensor([[pitch, yaw, roll]]))[0]


def test_relative_pose_is_the_source_pose_at_the_reference_and_follows_rotation():
    R_src = _rot(0.1, -0.2, 0.05)
    t_src = torch.tensor([5.0, -3.0, -600.0])
    R_ref = _rot(0.0, 0.3, 0.0)
    t_ref = torch.tensor([0.0, 0.0, -500.0])
    R, t = st.relative_pose(R_src, t_src, R_ref, t_ref, R_ref, t_ref, 1.0)
    torch.testing.assert_close(R, R_src)
    torch.testing.assert_close(t, t_src)
    R_drv = _rot(0.0, 0.5, 0.0)
    t_drv = torch.tensor([10.0, 0.0, -550.0])
    R, t = st.relative_pose(R_src, t_src, R_drv, t_drv, R_ref, t_ref, 0.5)
    torch.testing.assert_close(R @ R_src.T, R_drv @ R_ref.T)
    torch.testing.assert_close(t, torch.tensor([10.0, -3.0, -660.0]))


def test_output_size_option_sets_the_frame_size(reenactor, obama, d0):
    session = reenactor.start_session(obama, SessionOptions(output_width=320, output_height=240))
    result = session.process(d0[0])
    assert result.face_found and result.image.shape == (240, 320, 3)


@pytest.mark.parametrize(
    "bad, error",
    [
        (np.zeros((64, 64, 3), np.float32), TypeError),
        (np.zeros((64, 64), np.uint8), ValueError),
        (np.zeros((64, 64, 4), np.uint8), ValueError),
        ([[0, 0, 0]], TypeError),
    ],
)
def test_bad_frames_raise_clear_errors(mouth_pair, bad, error):
    session = mouth_pair[2]
    with pytest.raises(error, match="frame"):
        session.process(bad)


def test_bad_options_raise_value_error(reenactor, obama):
    with pytest.raises(ValueError, match="pose_mode"):
        reenactor.start_session(obama, SessionOptions(pose_mode="sideways"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="crop_size"):
        reenactor.start_session(obama, SessionOptions(crop_size=8))
