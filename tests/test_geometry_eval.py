"""Reconstruction-error protocol: Umeyama, ICP, point-to-plane, on the ICT-FaceKit mean face."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jr2net.eval.geometry import (
    apply_similarity,
    icp_align,
    mesh_vertex_normals,
    point_to_plane_errors,
    reconstruction_errors,
    similarity_align,
)


@pytest.fixture(scope="module")
def face(ict_model_path):
    d = np.load(ict_model_path)
    return d["vertices"].astype(np.float64), d["faces"].astype(np.int64), d["landmarks68"]


def test_similarity_align_recovers_a_known_transform_with_noise():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(200, 3)) * 50
    rot = Rotation.from_euler("xyz", [10, -25, 40], degrees=True).as_matrix()
    s, t = 1.7, np.array([5.0, -3.0, 20.0])
    dst = s * src @ rot.T + t + rng.normal(scale=0.1, size=src.shape)
    s_hat, r_hat, t_hat = similarity_align(src, dst)
    assert s_hat == pytest.approx(s, rel=1e-3)
    assert np.allclose(r_hat, rot, atol=1e-3)
    assert np.allclose(t_hat, t, atol=0.1)
    assert np.linalg.det(r_hat) == pytest.approx(1.0)
    s_rigid, _, _ = similarity_align(src, dst, with_scale=False)
    assert s_rigid == 1.0


def test_similarity_align_never_returns_a_reflection():
    src = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
    dst = src * np.array([1, 1, -1])  # mirror image
    _, rot, _ = similarity_align(src, dst)
    assert np.linalg.det(rot) == pytest.approx(1.0)


def test_similarity_align_validates():
    with pytest.raises(ValueError, match="src_pts"):
        similarity_align(np.zeros((5, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="at least 3"):
        similarity_align(np.zeros((2, 3)), np.zeros((2, 3)))


def test_icp_refines_a_perturbed_alignment_on_a_cropped_target(face):
    verts, _, lmk = face
    nose = verts[lmk[30]]
    crop = verts[np.linalg.norm(verts - nose, axis=1) < 60]
    rot = Rotation.from_euler("xyz", [3, -4, 2], degrees=True).as_matrix()
    init = (1.03, rot, np.array([2.0, -1.5, 1.0]))  # a few mm / degrees off
    s, r, t = icp_align(verts, crop, init=init, iterations=30)
    moved = apply_similarity(verts, (s, r, t))
    assert np.abs(moved - verts).max() < 0.5
    assert s == pytest.approx(1.0, abs=0.005)


def test_point_to_plane_measures_offsets_along_the_normal():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], float)
    f = np.array([[0, 1, 2], [1, 3, 2]])
    pts = np.array([[0.1, 0.1, 2.0], [0.9, 0.9, -0.5]])
    assert np.allclose(point_to_plane_errors(pts, v, ref_faces=f), [2.0, 0.5])
    n = mesh_vertex_normals(v, f)
    assert np.allclose(n, [[0, 0, 1]] * 4)
    with pytest.raises(ValueError, match="ref_faces or ref_normals"):
        point_to_plane_errors(pts, v)


def test_identical_meshes_have_zero_error(face):
    verts, faces, lmk = face
    err = reconstruction_errors(verts, faces, verts, faces, lmk, lmk, int(lmk[30]))
    assert err["rmse"] < 1e-6 and err["mae"] < 1e-6
    assert err["n_points"] > 1000


def test_scaled_rotated_prediction_aligns_back_to_zero_error(face):
    verts, faces, lmk = face
    rot = Rotation.from_euler("xyz", [20, 30, -10], degrees=True).as_matrix()
    pred = 0.001 * verts @ rot.T + np.array([0.1, 0.2, 0.5])  # metres, posed
    err = reconstruction_errors(pred, faces, verts, faces, lmk, lmk, int(lmk[30]))
    assert err["rmse"] < 1e-3
    assert err["scale"] == pytest.approx(1000.0, rel=1e-4)


def test_displaced_ground_truth_gives_error_of_the_right_magnitude(face):
    verts, faces, lmk = face
    normals = mesh_vertex_normals(verts, faces)
    rng = np.random.default_rng(1)
    sigma = 0.5  # mm, along the normals
    gt = verts + normals * rng.normal(scale=sigma, size=(len(verts), 1))
    err = reconstruction_errors(verts, faces, gt, faces, lmk, lmk, verts[lmk[30]], crop_radius=85.0)
    assert err["rmse"] == pytest.approx(sigma, rel=0.2)
    assert err["mae"] == pytest.approx(sigma * np.sqrt(2 / np.pi), rel=0.2)
    assert err["median"] < err["p80"] < 3 * sigma
    # A wider crop (FRGC 95 mm) covers more points.
    wide = reconstruction_errors(verts, faces, gt, faces, lmk, lmk, int(lmk[30]), crop_radius=95.0)
    assert wide["n_points"] > err["n_points"]


def test_reconstruction_errors_validate(face):
    verts, faces, lmk = face
    with pytest.raises(ValueError, match="same length"):
        reconstruction_errors(verts, faces, verts, faces, lmk[:10], lmk, 0)
    with pytest.raises(ValueError, match="fewer than 3"):
        reconstruction_errors(verts, faces, verts, faces, lmk, lmk, np.array([1e4, 0, 0]))
