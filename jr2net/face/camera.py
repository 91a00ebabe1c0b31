"""Head pose and pinhole camera (DESIGN §3): model space -> OpenCV camera -> pixels.

``X_cam = R_flip · (R(pitch, yaw, roll) · X + t)`` with ``R_flip = diag(1, −1, −1)`` and
``R = Rz(roll) · Ry(yaw) · Rx(pitch)`` (radians, right-handed rotations about the model axes;
model +x is the subject's left, +y up, +z out of the face). Hence:

* +yaw turns the face towards model +x: the head turns to *its own left* (image right);
* +pitch turns the face towards model −y: the head nods *down*;
* +roll turns model +x towards +y: the head tilts so its left side goes up (counter-clockwise
  in the image as the viewer sees it).

``t`` is in model axes (mm), so ``t = (0, 0, −d)`` puts the model origin ``d`` mm in front of the
camera. Pixel (row i, col j) has its centre at ``(x=j, y=i)``.

This module is the one home of these conventions: batched torch functions on (pitch, yaw, roll)
angles, single-mesh torch helpers on rotation matrices (``pose_points``, ``rotate_to_camera``,
``camera_to_model``; the per-frame pipeline), and numpy float64 twins for the landmark solver
(``euler_to_matrix``, ``matrix_to_euler``, ``so3_exp``, ``model_to_camera_np``,
``rotate_to_camera_np``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

# Typical framing: model origin 500 mm in front of the camera; see default_focal.
DEFAULT_DISTANCE_MM = 500.0
# A crop of side S shows roughly this many mm at the default distance (whole head, some margin).
DEFAULT_FIELD_MM = 260.0

_FLIP = (1.0, -1.0, -1.0)
FLIP_NP = np.array(_FLIP)
"""``R_flip`` as a numpy vector (elementwise: ``diag(1,-1,-1) · x == x * FLIP_NP``)."""


def _check(t: Tensor, shape_tail: tuple[int, ...], arg: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != len(shape_tail) + 1 or tuple(t.shape[1:]) != shape_tail:
        want = ",".join(["B"] + [str(s) for s in shape_tail])
        raise ValueError(f"{arg} must be [{want}], got {tuple(t.shape)}")


def euler_rotation(angles: Tensor) -> Tensor:
    """Rotation matrices ``[B,3,3] = Rz(roll)·Ry(yaw)·Rx(pitch)`` for ``angles [B,3]`` (pitch, yaw, roll)."""
    _check(angles, (3,), "angles")
    p, y, r = angles.unbind(-1)
    cp, sp, cy, sy, cr, sr = p.cos(), p.sin(), y.cos(), y.sin(), r.cos(), r.sin()
    # Rz(r) · Ry(y) · Rx(p), expanded.
    rows = [
        cr * cy, cr * sy * sp - sr * cp, cr * sy * cp + sr * sp,
        sr * cy, sr * sy * sp + cr * cp, sr * sy * cp - cr * sp,
        -sy, cy * sp, cy * cp,
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).view(*angles.shape[:-1], 3, 3)


def rotation_to_euler(rot: Tensor) -> Tensor:
    """Inverse of ``euler_rotation``: (pitch, yaw, roll) ``[B,3]`` with yaw in [−π/2, π/2]."""
    _check(rot, (3, 3), "rot")
    pitch = torch.atan2(rot[:, 2, 1], rot[:, 2, 2])
    yaw = torch.atan2(-rot[:, 2, 0], torch.sqrt(rot[:, 0, 0] ** 2 + rot[:, 1, 0] ** 2))
    roll = torch.atan2(rot[:, 1, 0], rot[:, 0, 0])
    return torch.stack([pitch, yaw, roll], dim=-1)


_FLIP_TENSORS: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def _flip(x: Tensor) -> Tensor:
    key = (x.dtype, x.device)
    f = _FLIP_TENSORS.get(key)
    if f is None:  # one constant per dtype/device (per-frame calls skip the allocation)
        with torch.inference_mode(False):  # usable by autograd even if first made in inference
            f = _FLIP_TENSORS[key] = torch.tensor(_FLIP, dtype=x.dtype, device=x.device)
    return x * f


def flip(x: Tensor) -> Tensor:
    """``R_flip · x`` for vectors along the last axis (its own inverse: model <-> camera axes)."""
    return _flip(x)


def model_to_camera(verts: Tensor, angles: Tensor, translation: Tensor) -> Tensor:
    """Camera-frame points ``[B,N,3] = R_flip·(R·X + t)`` for model points ``verts [B,N,3]``."""
    if not isinstance(verts, Tensor) or verts.dim() != 3 or verts.shape[-1] != 3:
        raise ValueError(f"verts must be a [B,N,3] tensor, got {getattr(verts, 'shape', type(verts))}")
    _check(angles, (3,), "angles")
    _check(translation, (3,), "translation")
    rot = euler_rotation(angles)
    return _flip(torch.matmul(verts, rot.transpose(1, 2)) + translation.unsqueeze(1))


def rotate_normals(normals: Tensor, angles: Tensor) -> Tensor:
    """Camera-frame normals ``R_flip·R·n`` for model-space ``normals [B,N,3]`` (or [B,3,...])."""
    _check(angles, (3,), "angles")
    if not isinstance(normals, Tensor) or normals.dim() != 3 or normals.shape[-1] != 3:
        raise ValueError(f"normals must be a [B,N,3] tensor, got {getattr(normals, 'shape', None)}")
    return _flip(torch.matmul(normals, euler_rotation(angles).transpose(1, 2)))


def pose_matrix(angles: Tensor, translation: Tensor) -> Tensor:
    """The 4×4 model→camera transform ``[B,4,4]`` (``X_cam = T · [X; 1]``)."""
    _check(angles, (3,), "angles")
    _check(translation, (3,), "translation")
    flip = angles.new_tensor(_FLIP)
    top = torch.cat([flip[:, None] * euler_rotation(angles), (flip * translation)[..., None]], dim=2)
    bottom = angles.new_tensor([0.0, 0.0, 0.0, 1.0]).expand(angles.shape[0], 1, 4)
    return torch.cat([top, bottom], dim=1)


def relative_transform(
    angles_src: Tensor, translation_src: Tensor, angles_dst: Tensor, translation_dst: Tensor
) -> Tensor:
    """``src_T_dst [B,4,4]``: maps destination-camera points of a rigid head to the source camera."""
    t_src = pose_matrix(angles_src, translation_src)
    t_dst = pose_matrix(angles_dst, translation_dst)
    return t_src @ torch.linalg.inv(t_dst)


def _as_batch(value: Tensor | float, batch: int, like: Tensor | None, arg: str) -> Tensor:
    if isinstance(value, Tensor):
        if value.dim() == 0:
            value = value.reshape(1)
        if value.dim() != 1 or value.shape[0] not in (1, batch):
            raise ValueError(f"{arg} must be a scalar or [B], got {tuple(value.shape)}")
        return value.to(torch.float32 if not value.is_floating_point() else value.dtype).expand(batch)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{arg} must be a number or tensor, got {type(value).__name__}")
    device = like.device if like is not None else None
    return torch.full((batch,), float(value), device=device)


def intrinsics(
    focal: Tensor | float, cx: Tensor | float, cy: Tensor | float, batch: int = 1
) -> Tensor:
    """Pinhole ``K [B,3,3]`` with equal focal lengths (pixels) and principal point (cx, cy)."""
    for v in (focal, cx, cy):
        if isinstance(v, Tensor) and v.dim() == 1:
            batch = max(batch, v.shape[0])
    like = next((v for v in (focal, cx, cy) if isinstance(v, Tensor)), None)
    f = _as_batch(focal, batch, like, "focal")
    px = _as_batch(cx, batch, like, "cx").to(f)
    py = _as_batch(cy, batch, like, "cy").to(f)
    if (f <= 0).any():
        raise ValueError("focal must be positive")
    zero, one = torch.zeros_like(f), torch.ones_like(f)
    return torch.stack([f, zero, px, zero, f, py, zero, zero, one], dim=-1).view(batch, 3, 3)


def default_focal(size: int | Sequence[int]) -> float:
    """Focal length (pixels) that frames the head (≈DEFAULT_FIELD_MM) at DEFAULT_DISTANCE_MM."""
    side = min(size) if isinstance(size, Sequence) else int(size)
    return side * DEFAULT_DISTANCE_MM / DEFAULT_FIELD_MM


def default_intrinsics(size: int | Sequence[int], batch: int = 1) -> Tensor:
    """``K [B,3,3]`` for an ``(H, W)`` (or square) image: default focal, centred principal point."""
    h, w = (size, size) if not isinstance(size, Sequence) else (size[0], size[1])
    return intrinsics(default_focal((h, w)), (w - 1) / 2.0, (h - 1) / 2.0, batch=batch)


def project(points_cam: Tensor, K: Tensor) -> Tensor:
    """Pixel coordinates ``[B,N,2]`` (x, y) of camera-frame points; z is clamped to ≥1e-6."""
    if not isinstance(points_cam, Tensor) or points_cam.dim() != 3 or points_cam.shape[-1] != 3:
        raise ValueError(f"points_cam must be a [B,N,3] tensor, got {getattr(points_cam, 'shape', None)}")
    _check(K, (3, 3), "K")
    if K.shape[0] not in (1, points_cam.shape[0]):
        raise ValueError(f"K batch {K.shape[0]} does not match points batch {points_cam.shape[0]}")
    p = torch.matmul(points_cam, K.transpose(1, 2))
    return p[..., :2] / p[..., 2:3].clamp(min=1e-6)


def project_planes(points_cam: Tensor, K: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel x and y ``[N]`` of camera-frame points ``[N,3]`` (one camera ``K`` ``[3,3]``):
    ``project``'s values as one ``K @ P.T`` product, ~3x faster on CPU for per-pixel point maps."""
    q = K @ points_cam.T
    z = q[2].clamp(min=1e-6)
    return q[0] / z, q[1] / z


def crop_intrinsics(
    K: Tensor, box: Sequence[float] | Tensor, out_size: int | Sequence[int]
) -> Tensor:
    """Intrinsics of the crop ``image[y0:y1, x0:x1]`` resized to ``out_size`` (H, W) or square.

    ``box = (x0, y0, x1, y1)`` (may be fractional; ``[B,4]`` tensor for per-item boxes). The crop's
    pixel j' samples x = x0 − ½ + (j' + ½)·(x1 − x0)/W — the half-pixel convention of
    ``F.interpolate(align_corners=False)``, ``F.grid_sample(align_corners=False)`` and PIL.
    """
    _check(K, (3, 3), "K")
    h_out, w_out = (out_size, out_size) if not isinstance(out_size, Sequence) else out_size
    box_t = torch.as_tensor(box, dtype=K.dtype, device=K.device)
    if box_t.dim() == 1:
        box_t = box_t.unsqueeze(0)
    if box_t.dim() != 2 or box_t.shape[1] != 4:
        raise ValueError(f"box must be (x0, y0, x1, y1) or [B,4], got {tuple(box_t.shape)}")
    x0, y0, x1, y1 = box_t.unbind(-1)
    if ((x1 - x0) <= 0).any() or ((y1 - y0) <= 0).any():
        raise ValueError(f"box must have x1 > x0 and y1 > y0, got {box_t.tolist()}")
    sx = w_out / (x1 - x0)
    sy = h_out / (y1 - y0)
    # Scaling + shift: x' = sx·(x − x0 + ½) − ½ for every row of K (affine in pixel space).
    A = torch.zeros(box_t.shape[0], 3, 3, dtype=K.dtype, device=K.device)
    A[:, 0, 0] = sx
    A[:, 0, 2] = sx * (0.5 - x0) - 0.5
    A[:, 1, 1] = sy
    A[:, 1, 2] = sy * (0.5 - y0) - 0.5
    A[:, 2, 2] = 1.0
    return A @ K


# ---- single mesh, rotation matrices (torch) ---------------------------------------------------


def pose_points(verts: Tensor, R: Tensor, t: Tensor) -> Tensor:
    """Model -> camera for one mesh: ``R_flip · (R · X + t)`` for ``verts [V,3]`` -> ``[1,V,3]``.

    ``R [3,3]`` is the model rotation (``euler_rotation`` of the angles), ``t [3]`` in model axes.
    """
    return _flip(verts @ R.T + t).unsqueeze(0).contiguous()


def rotate_to_camera(normals: Tensor, R: Tensor) -> Tensor:
    """Model-space vectors ``[V,3]`` -> camera frame (``R_flip · R · n``)."""
    return _flip(normals @ R.T)


def camera_to_model(points_cam: Tensor, R: Tensor, t: Tensor) -> Tensor:
    """Inverse of :func:`pose_points` for points ``[N,3]``: ``R^T · (R_flip · X_cam − t)``."""
    return (_flip(points_cam) - t) @ R


# ---- numpy twins (float64, the landmark solver) ----------------------------------------------


def euler_to_matrix(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix of (pitch, yaw, roll) radians: ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)``.

    numpy twin of :func:`euler_rotation` for one pose.
    """
    p, y, r = (float(a) for a in angles)
    cp, sp, cy, sy, cr, sr = (
        math.cos(p),
        math.sin(p),
        math.cos(y),
        math.sin(y),
        math.cos(r),
        math.sin(r),
    )
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ ry @ rx


def matrix_to_euler(R: np.ndarray) -> np.ndarray:
    """Inverse of :func:`euler_to_matrix` (yaw in [-90, 90] degrees; gimbal lock -> roll)."""
    sy = -float(R[2, 0])
    yaw = math.asin(max(-1.0, min(1.0, sy)))
    if abs(sy) < 0.999999:
        pitch = math.atan2(R[2, 1], R[2, 2])
        roll = math.atan2(R[1, 0], R[0, 0])
    else:  # gimbal lock: put everything in roll
        pitch = 0.0
        roll = math.atan2(-R[0, 1], R[1, 1])
    return np.array([pitch, yaw, roll])


def so3_exp(w: np.ndarray) -> np.ndarray:
    """Rotation matrix ``exp([w]_x)`` of an axis-angle vector ``w [3]`` (Rodrigues)."""
    theta = float(np.linalg.norm(w))
    wx = np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]])
    if theta < 1e-12:
        return np.eye(3) + wx
    a = math.sin(theta) / theta
    b = (1 - math.cos(theta)) / theta**2
    return np.eye(3) + a * wx + b * (wx @ wx)


def model_to_camera_np(X: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Camera-frame points ``[N,3] = R_flip·(R·X + t)`` of model points ``X [N,3]`` (numpy)."""
    return (X @ R.T + t) * FLIP_NP


def rotate_to_camera_np(normals: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Camera-frame vectors ``R_flip·R·n`` of model-space vectors ``[N,3]`` (numpy)."""
    return (normals @ R.T) * FLIP_NP
