"""Pose and pinhole camera conventions (DESIGN §3)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from jr2net.face.camera import (
    crop_intrinsics,
    default_intrinsics,
    euler_rotation,
    intrinsics,
    model_to_camera,
    pose_matrix,
    project,
    relative_transform,
    rotate_normals,
    rotation_to_euler,
)


def _rx(a: float) -> torch.Tensor:
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def _ry(a: float) -> torch.Tensor:
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])


def _rz(a: float) -> torch.Tensor:
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def test_euler_rotation_is_orthonormal_and_composes_rz_ry_rx() -> None:
    angles = torch.rand(16, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    rot = euler_rotation(angles)
    eye = torch.eye(3).expand(16, 3, 3)
    assert torch.allclose(rot @ rot.transpose(1, 2), eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(16), atol=1e-5)
    for (p, y, r), R in zip(angles.tolist(), rot, strict=True):
        assert torch.allclose(R, _rz(r) @ _ry(y) @ _rx(p), atol=1e-5)
    assert torch.allclose(rotation_to_euler(rot), angles, atol=1e-5)


def test_pose_signs_follow_the_documented_convention() -> None:
    K = intrinsics(500.0, 100.0, 100.0)
    t = torch.tensor([[0.0, 0.0, -500.0]])
    nose = torch.tensor([[[0.0, 0.0, 100.0]]])  # in front of the model origin
    top = torch.tensor([[[0.0, 100.0, 0.0]]])  # above it
    left = torch.tensor([[[100.0, 0.0, 0.0]]])  # the subject's left

    def px(point: torch.Tensor, pitch: float = 0, yaw: float = 0, roll: float = 0) -> torch.Tensor:
        return project(model_to_camera(point, torch.tensor([[pitch, yaw, roll]]), t), K)[0, 0]

    assert px(top)[1] < 100  # model up is image up
    assert px(left)[0] > 100  # subject's left appears on the image right (we face them)
    assert px(nose, yaw=0.3)[0] > 100  # +yaw: head turns to its own left = image right
    assert px(nose, pitch=0.3)[1] > 100  # +pitch: nods down
    lx, ly = px(left, roll=0.3)
    assert ly < 100 and lx > 100  # +roll: the subject's left side goes up in the image


def test_model_to_camera_and_project_match_hand_maths() -> None:
    verts = torch.tensor([[[0.0, 0, 0], [10, 20, 30]]])
    cam = model_to_camera(verts, torch.zeros(1, 3), torch.tensor([[1.0, 2.0, -500.0]]))
    assert torch.allclose(cam, torch.tensor([[[1.0, -2.0, 500.0], [11.0, -22.0, 470.0]]]))
    K = intrinsics(100.0, 50.0, 40.0)
    pts = torch.tensor([[[1.0, 2.0, 10.0], [0.0, 0.0, 7.0]]])
    assert torch.allclose(project(pts, K), torch.tensor([[[60.0, 60.0], [50.0, 40.0]]]))
    # Normals rotate without translation, with the same flip.
    n = rotate_normals(torch.tensor([[[0.0, 0.0, 1.0]]]), torch.zeros(1, 3))
    assert torch.allclose(n, torch.tensor([[[0.0, 0.0, -1.0]]]))  # faces the camera: n_z < 0


def test_pose_matrix_and_relative_transform_agree_with_model_to_camera() -> None:
    g = torch.Generator().manual_seed(1)
    verts = torch.randn(2, 50, 3, generator=g) * 80
    a_s, a_d = torch.randn(2, 3, generator=g) * 0.3, torch.randn(2, 3, generator=g) * 0.3
    t_s = torch.tensor([[5.0, -3.0, -480.0], [0.0, 1.0, -600.0]])
    t_d = torch.tensor([[-5.0, 3.0, -520.0], [2.0, 0.0, -550.0]])
    src, dst = model_to_camera(verts, a_s, t_s), model_to_camera(verts, a_d, t_d)
    homog = torch.cat([verts, torch.ones(2, 50, 1)], -1)
    assert torch.allclose((homog @ pose_matrix(a_s, t_s).transpose(1, 2))[..., :3], src, atol=1e-3)
    rel = relative_transform(a_s, t_s, a_d, t_d)
    mapped = torch.cat([dst, torch.ones(2, 50, 1)], -1) @ rel.transpose(1, 2)
    assert torch.allclose(mapped[..., :3], src, atol=1e-2)


def test_principal_point_is_the_centre_of_the_middle_pixel() -> None:
    K = default_intrinsics((5, 7))
    on_axis = project(torch.tensor([[[0.0, 0.0, 100.0]]]), K)
    assert on_axis.tolist() == [[[3.0, 2.0]]]  # col 3, row 2 of a 5x7 image
    K2 = intrinsics(torch.tensor([100.0, 200.0]), 10.0, 20.0)
    assert K2.shape == (2, 3, 3) and K2[1, 0, 0] == 200.0 and K2[0, 1, 2] == 20.0


def test_crop_intrinsics_follow_slice_and_resize_of_the_image() -> None:
    H, W = 40, 60
    K = intrinsics(80.0, 29.5, 19.5)
    # An image with one bright pixel at (row 16, col 34).
    image = torch.zeros(1, 1, H, W)
    j, i = 34, 16
    image[0, 0, i, j] = 1.0
    box = (20, 8, 44, 26)  # x0, y0, x1, y1: image[8:26, 20:44]
    crop = image[:, :, box[1] : box[3], box[0] : box[2]]
    out = F.interpolate(crop, size=(36, 48), mode="bilinear", align_corners=False)
    K_crop = crop_intrinsics(K, box, (36, 48))
    # The blob's centroid in the resized crop is where pixel (i, j)'s centre maps under K_crop.
    ys, xs = torch.meshgrid(torch.arange(36.0), torch.arange(48.0), indexing="ij")
    w = out[0, 0]
    centroid = torch.stack([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])
    pixel_centre_cam = torch.tensor([[[(j - 29.5) / 80.0 * 50, (i - 19.5) / 80.0 * 50, 50.0]]])
    assert torch.allclose(project(pixel_centre_cam, K_crop)[0, 0], centroid, atol=1e-4)
    with pytest.raises(ValueError, match="box"):
        crop_intrinsics(K, (10, 10, 5, 20), 32)


def test_bad_camera_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="angles"):
        euler_rotation(torch.zeros(3))
    with pytest.raises(ValueError, match="focal"):
        intrinsics(-1.0, 0.0, 0.0)
    with pytest.raises(TypeError, match="focal"):
        intrinsics("500", 0.0, 0.0)
    with pytest.raises(ValueError, match="K"):
        project(torch.zeros(1, 4, 3), torch.eye(3))
    with pytest.raises(ValueError, match="translation"):
        model_to_camera(torch.zeros(1, 4, 3), torch.zeros(1, 3), torch.zeros(1, 2))
