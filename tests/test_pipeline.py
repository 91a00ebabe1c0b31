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
from jr2net.pipeline.base import SessionOptions, StagedSession
from jr2net.pipeline.geometric import STAGES, GeometricReenactor
from jr2net.pipeline.recombine import absolute_pose, relative_pose

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


def _shifted(frame: np.ndarray, dx: int = 120) -> np.ndarray:
    """The frame with its content moved right by dx pixels (left edge repeated: green screen)."""
    return np.concatenate([np.repeat(frame[:, :1], dx, axis=1), frame[:, :-dx]], axis=1)


def _face_centre(image: np.ndarray) -> np.ndarray:
    return detect_largest_face(image).landmarks[27:36].mean(0)


@pytest.fixture(scope="module")
def relative_run(reenactor, obama, d0):
    """A default session (relative pose, source-sized output) driven by a shifted d0 clip."""
    session = reenactor.start_session(obama, SessionOptions())
    results = [session.process(_shifted(f)) for f in d0[:3]]
    session.close()
    return results


def test_session_returns_source_sized_frames_with_every_stage_timing(relative_run, obama):
    for result in relative_run:
        assert result.image.shape == obama.shape and result.image.dtype == np.uint8
        assert result.face_found and result.fallback == ""
        assert set(STAGES) <= set(result.timings)
        assert all(v >= 0.0 for v in result.timings.values())
        assert result.timings["total"] >= result.timings["warp"] > 0.0
        assert result.timings["total"] >= sum(result.timings[s] for s in STAGES[:-1]) * 0.99


def test_open_mouth_driving_frame_changes_the_mouth_region(mouth_pair):
    closed, opened, session = mouth_pair
    # The source's mouth in output pixels (output is half the source size).
    lm = session.source_fit.detection.landmarks * np.array([455 / 910, 568 / 1137])
    mouth = lm[48:68]
    x0, y0 = np.floor(mouth.min(0) - 6).astype(int)
    x1, y1 = np.ceil(mouth.max(0) + 6).astype(int)
    diff = np.abs(opened.astype(np.float32) - closed.astype(np.float32)).mean(-1)
    mouth_change = diff[y0:y1, x0:x1].mean()
    assert mouth_change > 12.0, mouth_change
    # Far from the head (top corners of the frame) nothing moves.
    assert diff[:60, :60].max() <= 2 and diff[:60, -60:].max() <= 2
    # dlib sees the mouth open in the output: the inner lips part.
    det_c, det_o = detect_largest_face(closed), detect_largest_face(opened)
    gap_c = np.linalg.norm(det_c.landmarks[66] - det_c.landmarks[62])
    gap_o = np.linalg.norm(det_o.landmarks[66] - det_o.landmarks[62])
    assert gap_o > gap_c + 5.0, (gap_c, gap_o)


@pytest.fixture(scope="module")
def small_run(reenactor, obama, d0):
    """A 320x240-output session: no-face frames first, then a face, then no-face frames."""
    session = reenactor.start_session(obama, SessionOptions(output_width=320, output_height=240))
    blank = np.full((512, 512, 3), 90, np.uint8)
    before = session.process(blank)
    good = [session.process(f) for f in d0[:2]]
    after = []
    for _ in range(40):  # the tracker may need a few frames to notice the face is gone
        after.append(session.process(blank))
        if not after[-1].face_found:
            break
    return session, before, good, after


def test_no_face_frames_fall_back_to_source_then_last_output(small_run):
    session, before, good, after = small_run
    assert not before.face_found and before.fallback == "source"
    np.testing.assert_array_equal(before.image, session.bg_u8)
    assert all(g.face_found for g in good)
    last = after[-1]
    assert not last.face_found and last.fallback == "last_output"
    previous = after[-2] if len(after) > 1 else good[-1]
    np.testing.assert_array_equal(last.image, previous.image)
    assert last.timings["total"] > 0.0


def test_analysing_a_frame_ahead_of_synthesis_gives_the_same_frames_as_process(reenactor, obama, d0):
    """The server overlaps analyse(n+1) with synthesise(n): that order must not change any output."""
    options = SessionOptions(output_width=256, output_height=256)
    serial = reenactor.start_session(obama, options)
    staged = reenactor.start_session(obama, options)
    assert isinstance(staged, StagedSession)
    frames = d0[:5]
    expected = [serial.process(f) for f in frames]
    got, ahead = [], staged.analyse(frames[0])
    for frame in frames[1:] + [None]:
        nxt = staged.analyse(frame) if frame is not None else None
        got.append(staged.synthesise(ahead))
        ahead = nxt
    for e, g in zip(expected, got, strict=True):
        assert g.face_found and e.face_found
        # Two source fits agree to float32 noise (~1e-6), not bit for bit: allow a level's rounding.
        diff = np.abs(g.image.astype(np.int16) - e.image.astype(np.int16))
        assert diff.max() <= 2 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())
        assert set(STAGES) <= set(g.timings)


def test_output_size_option_sets_the_frame_size(small_run):
    _, before, good, after = small_run
    for result in [before, *good, *after]:
        assert result.image.shape == (240, 320, 3)


def test_source_without_a_face_raises_no_face_error(reenactor, images_dir):
    dog = load_image(images_dir / "s31.jpg")
    with pytest.raises(NoFaceError):
        reenactor.start_session(dog, SessionOptions())


def test_absolute_pose_follows_the_driving_head_relative_keeps_the_source_place(
    reenactor, obama, d0, relative_run
):
    shifted = _shifted(d0[0])
    src_centre = _face_centre(obama)
    drv_centre = _face_centre(shifted) / 512 * np.array([910, 1137])
    session = reenactor.start_session(obama, SessionOptions(pose_mode="absolute"))
    absolute = _face_centre(session.process(shifted).image)
    relative = _face_centre(relative_run[0].image)
    # Relative: the first driving frame is the reference, so the head stays where the source's is.
    assert np.linalg.norm(relative - src_centre) < 12.0, (relative, src_centre)
    # Absolute: the head goes where the driving head is (same fraction of the frame).
    assert abs(absolute[0] - drv_centre[0]) < 25.0, (absolute, drv_centre)
    assert absolute[0] - relative[0] > 80.0


def _rot(pitch: float, yaw: float, roll: float) -> torch.Tensor:
    return euler_rotation(torch.tensor([[pitch, yaw, roll]]))[0]


def test_relative_pose_is_the_source_pose_at_the_reference_and_follows_rotation():
    R_src = _rot(0.1, -0.2, 0.05)
    t_src = torch.tensor([5.0, -3.0, -600.0])
    R_ref = _rot(0.0, 0.3, 0.0)
    t_ref = torch.tensor([0.0, 0.0, -500.0])
    R, t = relative_pose(R_src, t_src, R_ref, t_ref, R_ref, t_ref, 1.0)
    torch.testing.assert_close(R, R_src)
    torch.testing.assert_close(t, t_src)
    R_drv = _rot(0.0, 0.5, 0.0)
    t_drv = torch.tensor([10.0, 0.0, -550.0])
    R, t = relative_pose(R_src, t_src, R_drv, t_drv, R_ref, t_ref, 0.5)
    torch.testing.assert_close(R @ R_src.T, R_drv @ R_ref.T)
    torch.testing.assert_close(t, torch.tensor([10.0, -3.0, -660.0]))


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


def test_absolute_pose_is_unchanged_between_identical_cameras_and_follows_frame_size():
    R = _rot(0.1, 0.2, 0.0)
    t = torch.tensor([12.0, -8.0, -550.0])
    K = torch.tensor([[700.0, 0.0, 255.5], [0.0, 700.0, 255.5], [0.0, 0.0, 1.0]])
    R2, t2 = absolute_pose(R, t, K, (512, 512), K, (512, 512))
    torch.testing.assert_close(R2, R)
    torch.testing.assert_close(t2, t)
    # Twice the frame (and focal): the head keeps its place and size relative to the frame.
    K_big = torch.tensor([[1400.0, 0.0, 511.5], [0.0, 1400.0, 511.5], [0.0, 0.0, 1.0]])
    _, t3 = absolute_pose(R, t, K, (512, 512), K_big, (1024, 1024))
    torch.testing.assert_close(t3, t)


def test_render_mesh_drops_the_neck_keeps_landmarks_and_normals_match_the_model(reenactor):
    model = reenactor.model
    mesh = reenactor.render_model
    face = model.region == model.region_names.index("face")
    kept = torch.zeros(model.n_vertices, dtype=torch.bool)
    kept[mesh.index] = True
    chin_y = float(model.vertices[model.landmarks68[8], 1])
    assert not (kept & face & (model.vertices[:, 1] < chin_y - 30)).any()  # no neck
    assert kept[model.landmarks68.long()].all()
    from jr2net.face.mesh import fast_vertex_normals, vertex_normals

    ref = vertex_normals(mesh.vertices[None], mesh.faces)[0]
    fast = fast_vertex_normals(mesh.vertices, mesh.faces_long, mesh.ops.normal_op)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-4)


def test_reconstruct_returns_coefficients_landmarks_and_an_optional_mesh(reenactor, obama):
    rec = reenactor.reconstruct(obama, with_mesh=True)
    assert rec.landmarks.shape == (68, 2)
    assert rec.vertices.shape == (reenactor.model.n_vertices, 3)
    assert rec.faces.shape == (reenactor.model.n_faces, 3)
    for key in ("identity", "expression", "angles", "translation", "light", "K"):
        assert key in rec.coefficients
    assert rec.timings["total"] > 0.0
    assert reenactor.reconstruct(obama).vertices is None


def test_warm_up_runs_a_full_session_on_a_face_rendered_from_the_model(reenactor):
    assert reenactor.warm_up() is True


@pytest.mark.parametrize("n_in,n_out", [(7, 19), (19, 7), (16, 16)])
def test_bilinear_matrix_matches_torch_interpolate(n_in, n_out):
    import torch
    import torch.nn.functional as F

    from jr2net.pipeline.stages import bilinear_matrix

    x = torch.randn(n_in, dtype=torch.float64)
    expected = F.interpolate(x[None, None], size=n_out, mode="linear", align_corners=False)[0, 0]
    got = bilinear_matrix(n_in, n_out).to(torch.float64) @ x
    assert torch.allclose(got, expected, atol=1e-5)
