"""Fitting: landmark solver on exact synthetic projections, then source / driving fits on real media."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from jr2net.errors import NoFaceError
from jr2net.face.camera import default_intrinsics, euler_rotation, euler_to_matrix, matrix_to_euler
from jr2net.face.fitting import (
    DrivingFitter,
    LandmarkSolver,
    SourceFitter,
    params_to_coeffs,
    surface_metric,
)
from jr2net.face.model import FaceModel


@pytest.fixture(scope="module")
def ict(ict_model_path) -> FaceModel:
    return FaceModel.from_npz(ict_model_path)


@pytest.fixture(scope="module")
def solver(ict) -> LandmarkSolver:
    return LandmarkSolver.from_model(ict, n_identity=80)


@pytest.fixture(scope="module")
def source_fitter(ict) -> SourceFitter:
    return SourceFitter(ict)


def _random_params(solver: LandmarkSolver, rng: np.random.Generator, yaw_max: float = 0.5):
    p = solver.zero_params()
    angles = np.array(
        [rng.uniform(-0.2, 0.2), rng.uniform(-yaw_max, yaw_max), rng.uniform(-0.15, 0.15)]
    )
    p.R = euler_to_matrix(angles)
    p.t = np.array([rng.uniform(-20, 20), rng.uniform(-20, 20), -rng.uniform(450, 700)])
    p.alpha = rng.normal(size=solver.n_identity)
    p.beta = np.zeros(solver.n_expression)
    on = rng.choice(solver.n_expression, 6, replace=False)
    p.beta[on] = rng.uniform(0.3, 1.0, size=6)
    return p, angles


def test_numpy_euler_matches_camera_convention():
    a = np.array([0.3, -0.5, 0.2])
    R_torch = euler_rotation(torch.tensor(a)[None])[0].numpy()
    np.testing.assert_allclose(euler_to_matrix(a), R_torch, atol=1e-12)
    np.testing.assert_allclose(matrix_to_euler(euler_to_matrix(a)), a, atol=1e-12)


def test_landmark_solver_recovers_pose_and_expression_with_known_identity(solver):
    rng = np.random.default_rng(0)
    K = default_intrinsics((512, 512))[0].double().numpy()
    for _ in range(3):
        gt, angles = _random_params(solver, rng)
        target, _ = solver.project(gt, K, solver.select_contour(gt, K))
        start = solver.init_pose(target, K)
        start.alpha = gt.alpha.copy()
        fit, info = solver.solve(target, K, start, fit_identity=False, w_expression=1e-6)
        assert info.residual_px < 0.3
        assert np.degrees(np.abs(matrix_to_euler(fit.R) - angles)).max() < 1.0
        assert np.abs(fit.t - gt.t).max() < 10.0
        # The expressions that move landmarks are recovered (gaze shapes do not move any).
        assert np.abs(fit.beta - gt.beta).mean() < 0.05
        assert np.all((fit.beta >= 0) & (fit.beta <= 1))


def test_landmark_solver_fits_identity_and_pose_jointly(solver):
    rng = np.random.default_rng(1)
    K = default_intrinsics((512, 512))[0].double().numpy()
    gt, angles = _random_params(solver, rng, yaw_max=0.4)
    gt.beta[:] = 0
    target, _ = solver.project(gt, K, solver.select_contour(gt, K))
    fit, info = solver.solve(target, K, w_identity=1e-5, w_expression=1e-4)
    assert info.residual_px < 1.0
    assert np.degrees(np.abs(matrix_to_euler(fit.R) - angles)).max() < 3.0
    # The dominant identity modes point the right way.
    assert np.corrcoef(fit.alpha[:10], gt.alpha[:10])[0, 1] > 0.5


def test_jaw_landmarks_slide_to_the_silhouette_when_the_head_turns(solver):
    K = default_intrinsics((512, 512))[0].double().numpy()
    p = solver.zero_params()
    p.t = np.array([0.0, 0.0, -550.0])
    frontal = solver.select_contour(p, K)
    p.R = euler_to_matrix(np.array([0.0, 0.6, 0.0]))  # head turned to its left (image right)
    turned = solver.select_contour(p, K)
    uv, _ = solver.project(p, K, np.arange(len(solver.rows)))
    # Subject's right side (landmarks 0-7) now faces the camera: its silhouette moves back, so the
    # chosen vertices differ from the frontal ones and lie further out (image left) than them.
    changed = [i for i in range(8) if turned[i] != frontal[i]]
    assert len(changed) >= 4
    for i in changed:
        assert uv[turned[i], 0] <= uv[frontal[i], 0] + 1e-6
    # The chin never slides.
    assert turned[8] == 8


def test_surface_metric_ignores_similarity_changes_of_the_face(ict):
    arrays = ict.to_arrays()
    v = arrays["vertices"].astype(np.float64)
    face = arrays["region"] == list(ict.region_names).index("face")
    c = v[face].mean(axis=0)
    basis = arrays["identity_basis"][:4].astype(np.float64)
    real_mode = basis[0].copy()
    basis[0] = (v - c) * 0.02  # 2 % larger
    basis[1] = np.array([1.5, -0.5, 2.0])  # moved
    basis[2] = np.cross(np.array([0.0, 0.02, 0.0]), v - c)  # turned (linearised)
    basis[3] = real_mode
    arrays["identity_basis"] = basis.astype(np.float32)
    G = surface_metric(FaceModel.from_arrays(arrays), 4)
    assert G.shape == (4 + ict.n_expression,) * 2
    np.testing.assert_allclose(G, G.T, atol=1e-9)
    assert np.linalg.eigvalsh(G).min() > -1e-9
    d = np.diag(G)
    assert d[:3].max() < 1e-4 * d[3]  # what an alignment removes costs nothing
    assert abs(d[:4].mean() - 1.0) < 1e-9
    # Expression vs identity: the ratio of their mean squared similarity-free face displacements.
    X = v[face] - c
    eye = np.eye(3)
    T = [np.tile(eye[k], (len(X), 1)) for k in range(3)] + [np.cross(eye[k], X) for k in range(3)]
    T = np.stack([t.ravel() for t in T + [X]], axis=1)

    def msd(disp: np.ndarray) -> float:
        r = disp[face].ravel()
        r = r - T @ np.linalg.lstsq(T, r, rcond=None)[0]
        return float(r @ r) / len(X)

    jaw = ict.expression_names.index("jawOpen")
    expr = ict.expression_basis[jaw].numpy().astype(np.float64)
    np.testing.assert_allclose(d[4 + jaw] / d[3], msd(expr) / msd(real_mode), rtol=1e-3)


def _exact_landmarks(fitter: SourceFitter, seed: int, smile: bool = False):
    """Coefficients of a random face and its exact 68 landmarks in a 512^2 image (``smile``: only
    jawOpen and mouthSmile_L set, expressions that move landmarks)."""
    solver = fitter.solver
    rng = np.random.default_rng(seed)
    K = default_intrinsics((512, 512))[0].double().numpy()
    p, _ = _random_params(solver, rng, yaw_max=0.3)
    if smile:
        names = fitter.model.expression_names
        p.beta[:] = 0.0
        p.beta[names.index("jawOpen")] = 0.5
        p.beta[names.index("mouthSmile_L")] = 0.6
    target, _ = solver.project(p, K, solver.select_contour(p, K))
    return params_to_coeffs(p, fitter.model, fitter.n_albedo), target, K


def test_final_landmark_pass_keeps_a_shape_that_matches_the_landmarks(source_fitter):
    coeffs, target, K = _exact_landmarks(source_fitter, 3, smile=True)
    out, info = source_fitter._final_pass(target, K, coeffs.clone(), sigma2=5e-4)
    assert info.residual_px / np.linalg.norm(target[36] - target[45]) < 0.005
    # The surface stays put (identity modes that barely move it may drift towards the prior).
    model = source_fitter.model
    face = model.region == list(model.region_names).index("face")
    moved = model.shape(out.identity, out.expression) - model.shape(
        coeffs.identity, coeffs.expression
    )
    assert float(moved[0, face].pow(2).sum(dim=1).mean().sqrt()) < 0.3  # mm RMS
    assert (out.expression - coeffs.expression).abs().max() < 0.05


def test_final_landmark_pass_reaches_the_residual_tolerance(source_fitter):
    coeffs, target, K = _exact_landmarks(source_fitter, 4)
    iod = np.linalg.norm(target[36] - target[45])
    moved = target.copy()
    mouth = moved[48:68]
    moved[48:68] = mouth.mean(axis=0) + (mouth - mouth.mean(axis=0)) * np.array([1.3, 1.0])
    moved[0:17, 0] += np.sign(moved[0:17, 0] - moved[8, 0]) * 0.06 * iod  # a wider jaw
    start = np.linalg.norm(moved - target, axis=1).mean() / iod  # coeffs project onto target
    assert start > source_fitter.final_residual_iod
    _, info = source_fitter._final_pass(moved, K, coeffs.clone(), sigma2=5e-4)
    assert info.residual_px / iod <= source_fitter.final_residual_iod


def test_final_landmark_pass_is_robust_to_one_far_off_landmark(ict, source_fitter):
    coeffs, target, K = _exact_landmarks(source_fitter, 5)
    iod = np.linalg.norm(target[36] - target[45])
    bad = target.copy()
    bad[57, 1] += 0.4 * iod  # one lower-lip point far below the lip
    x0 = torch.cat([coeffs.identity, coeffs.expression], dim=1)[0].double().numpy()
    G = surface_metric(ict, source_fitter.n_identity)

    def surface_change(fitter: SourceFitter) -> float:
        out, _ = fitter._final_pass(bad, K, coeffs.clone(), sigma2=5e-4)
        d = torch.cat([out.identity, out.expression], dim=1)[0].double().numpy() - x0
        return float(d @ G @ d)

    plain = SourceFitter(ict, final_irls_floor=1e3)  # all landmarks weighed equally
    plain.solver = source_fitter.solver
    assert surface_change(source_fitter) < 0.5 * surface_change(plain)


def test_source_fit_raises_no_face_on_a_dog(source_fitter, images_dir):
    from jr2net.io.images import load_image

    with pytest.raises(NoFaceError):
        source_fitter.fit(load_image(images_dir / "s31.jpg"))


def test_source_fit_on_obama_matches_landmarks_within_3_percent_iod(source_fitter, images_dir):
    from jr2net.io.images import load_image

    image = load_image(images_dir / "obama.jpg")
    result = source_fitter.fit(image)
    assert result.residual_iod < 0.03
    assert result.K.shape == (1, 3, 3)
    assert result.image_size == image.shape[:2]
    assert result.coeffs.identity.shape == (1, 80)
    assert result.coeffs.albedo.shape[1] == source_fitter.n_albedo
    assert torch.isfinite(result.coeffs.light).all()
    assert {"detect", "landmarks", "photometric", "total"} <= set(result.timings)
    # The light explains a lit face: positive ambient term in every channel.
    assert (result.coeffs.light[0, 0] > 0).all()


def test_source_fit_uses_the_largest_of_two_faces(ict, images_dir, caplog):
    from jr2net.face.landmarks import detect_faces
    from jr2net.io.images import load_image

    image = load_image(images_dir / "two_people.jpg")
    faces = detect_faces(image)
    assert len(faces) >= 2
    with caplog.at_level(logging.INFO, logger="jr2net.face"):
        result = SourceFitter(ict, photometric=False).fit(image)
    np.testing.assert_allclose(result.detection.box, faces[0].box)
    assert "largest" in caplog.text
    assert result.residual_iod < 0.03


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_grayscale_and_rgba_photos_fit_through_load_image(ict, images_dir, tmp_path, mode):
    from jr2net.io.images import load_image

    path = tmp_path / f"obama_{mode}.png"
    Image.open(images_dir / "obama.jpg").convert(mode).save(path)
    image = load_image(path)
    assert image.dtype == np.uint8 and image.shape[2] == 3
    result = SourceFitter(ict, photometric=False).fit(image)
    assert result.residual_iod < 0.03


def test_source_fit_rejects_bad_arrays(source_fitter):
    with pytest.raises(ValueError, match="image"):
        source_fitter.fit(np.zeros((64, 64), dtype=np.uint8))
    with pytest.raises(ValueError, match="image"):
        source_fitter.fit(np.zeros((64, 64, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="image"):
        source_fitter.fit([[0, 0, 0]])


def test_driving_fitter_warm_starts_across_frames(ict, videos_dir):
    from jr2net.io.video import VideoReader

    frames = VideoReader(videos_dir / "d0.mp4").read_all(max_frames=6)
    fitter = DrivingFitter(ict)
    results = [fitter.fit(f) for f in frames]
    assert all(r is not None for r in results)
    identity = fitter.identity
    assert identity is not None and identity.shape == (1, 80)
    for r in results:
        assert torch.equal(r.coeffs.identity, identity)  # identity frozen after the first frame
        assert r.residual_iod < 0.05
        assert r.coeffs.expression.min() >= 0 and r.coeffs.expression.max() <= 1
    # Consecutive frames of a talking head: poses close, but not identical (the fit follows the video).
    a = torch.cat([r.coeffs.angles for r in results])
    assert (a[1:] - a[:-1]).abs().max() < 0.1
    assert (a[1:] - a[:-1]).abs().sum() > 0
    # No face (black frames): None once the tracker has verified the loss (it re-checks with the
    # detector every `verify_every` frames), and the next face frame is fitted again from scratch.
    black = np.zeros_like(frames[0])
    outs = [fitter.fit(black) for _ in range(fitter.tracker.verify_every + 1)]
    assert outs[-1] is None
    again = fitter.fit(frames[0])
    assert again is not None and again.residual_iod < 0.05


def test_driving_fitter_keeps_a_given_identity(ict, videos_dir):
    from jr2net.io.video import VideoReader

    frames = VideoReader(videos_dir / "d0.mp4").read_all(max_frames=2)
    given = torch.randn(1, 40) * 0.5
    fitter = DrivingFitter(ict, identity=given)
    r = fitter.fit(frames[0])
    assert r is not None and torch.equal(r.coeffs.identity, given)
    with pytest.raises(ValueError, match="identity"):
        DrivingFitter(ict, identity=torch.zeros(1, ict.n_identity + 1))


def test_visible_faces_culls_back_facing_and_occluded_triangles():
    from jr2net.face.overlay import visible_faces

    K = np.array([[100.0, 0, 31.5], [0, 100.0, 31.5], [0, 0, 1]])
    # Two triangles at z=10 facing the camera (clockwise in the image = towards the camera here) and
    # one hidden behind them at z=20.
    v = np.array(
        [[-1, -1, 10], [1, -1, 10], [0, 1, 10], [-1, -1, 20], [1, -1, 20], [0, 1, 20]], dtype=float
    )
    f = np.array([[0, 1, 2], [0, 2, 1], [3, 4, 5]])
    depth = np.zeros((64, 64))
    depth[10:54, 10:54] = 10.0  # a z-buffer where the front triangle covers the centre
    vis = visible_faces(v, f, depth, K)
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    facing = np.einsum("ij,ij->i", n, v[f[:, 0]]) < 0
    assert vis[0] == facing[0] and vis[1] == facing[1] and vis[0] != vis[1]
    assert not vis[2]  # occluded


def test_overlay_draws_the_fit_over_a_face_crop(source_fitter, images_dir):
    from jr2net.face.overlay import render_fit_overlay
    from jr2net.io.images import load_image

    image = load_image(images_dir / "d9.jpg")
    result = SourceFitter(source_fitter.model, photometric=False).fit(image)
    over = render_fit_overlay(image, result, source_fitter.model, out_size=320)
    plain = render_fit_overlay(image, result, source_fitter.model, out_size=320)
    assert over.shape == (320, 320, 3) and over.dtype == np.uint8
    np.testing.assert_array_equal(over, plain)  # deterministic
    full = render_fit_overlay(image, result, source_fitter.model, crop=False)
    assert full.shape == image.shape
    # The wireframe and landmarks change a good part of the face region.
    assert (np.abs(full.astype(int) - image.astype(int)).sum(axis=2) > 30).mean() > 0.01
