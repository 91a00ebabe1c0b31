"""Triangle rasterisation (DESIGN §4): autograd wrapper of the C++/CUDA ``rasterize`` kernel."""

from __future__ import annotations

import operator

import torch
from torch.autograd.function import once_differentiable

from jr2net import _C

NEAR_Z: float = float(_C.rasterize_default_near_z)
"""Default near plane (scene units): triangles with a vertex at camera z <= NEAR_Z are dropped."""


def _check_tensor(value: object, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"rasterize: {name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _check_size(size: object) -> tuple[int, int]:
    try:
        if (
            isinstance(size, str | bytes)
            or len(size) != 2
            or any(isinstance(s, bool) for s in size)
        ):
            raise TypeError
        H, W = (operator.index(s) for s in size)
    except TypeError:
        raise TypeError(f"rasterize: size must be a pair of ints (H, W), got {size!r}") from None
    if H <= 0 or W <= 0:
        raise ValueError(f"rasterize: size must be positive, got (H, W) = ({H}, {W})")
    return H, W


def prepare_faces(faces: object, name: str = "faces") -> torch.Tensor:
    """Faces as a contiguous int32 [F,3] tensor; integer dtypes are converted, others rejected."""
    faces = _check_tensor(faces, name)
    if faces.is_floating_point() or faces.is_complex() or faces.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (int32 preferred), got {faces.dtype}")
    if faces.dtype != torch.int32:
        if faces.numel() and (faces.min() < 0 or faces.max() >= 2**31):
            raise ValueError(f"{name}: vertex ids out of int32 range")
        faces = faces.to(torch.int32)
    return faces.contiguous()


class _Rasterize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, verts, faces, K, H, W, cull_backfaces, near_z):  # type: ignore[override]
        rast = _C.rasterize_fwd(verts, faces, K, H, W, cull_backfaces, near_z)
        ctx.save_for_backward(verts, faces, K, rast)
        return rast

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_rast):  # type: ignore[override]
        verts, faces, K, rast = ctx.saved_tensors
        grad_verts = None
        if ctx.needs_input_grad[0]:
            grad_verts = _C.rasterize_bwd(grad_rast.contiguous(), verts, faces, K, rast)
        return grad_verts, None, None, None, None, None, None


def rasterize(
    verts_cam: torch.Tensor,
    faces: torch.Tensor,
    K: torch.Tensor,
    size: tuple[int, int],
    cull_backfaces: bool = False,
    near_z: float = NEAR_Z,
) -> torch.Tensor:
    """Rasterise camera-space triangles: rast [B,H,W,4] = (u, v, z_cam, face_id+1), 0 off-mesh.

    verts_cam [B,V,3] float32/float64 (OpenCV camera), faces [F,3] int (converted to int32),
    K [B,3,3] or [3,3] (third row taken as [0,0,1]). Pixel (i, j) samples the centre (x=j, y=i)
    with a top-left tie rule; nearest z wins (ties: lower face id). (u, v) are perspective-correct
    barycentrics of vertices 0 and 1; u, v and z are differentiable w.r.t. verts_cam (not K).
    Triangles with a vertex at z <= near_z are dropped; degenerate ones draw nothing.
    cull_backfaces drops triangles that are clockwise on screen (back-facing for meshes wound
    counter-clockwise seen from outside, like ICT-FaceKit).
    """
    verts_cam = _check_tensor(verts_cam, "verts_cam")
    K = _check_tensor(K, "K")
    H, W = _check_size(size)
    faces = prepare_faces(faces)
    if verts_cam.dim() == 3 and K.dim() == 2 and K.shape == (3, 3):
        K = K.expand(verts_cam.shape[0], 3, 3)
    elif verts_cam.dim() == 3 and K.dim() == 3 and K.shape[0] == 1 and verts_cam.shape[0] > 1:
        K = K.expand(verts_cam.shape[0], 3, 3)
    if K.is_floating_point() and verts_cam.is_floating_point():
        K = K.to(verts_cam.dtype)
    return _Rasterize.apply(
        verts_cam.contiguous(), faces, K.contiguous(), H, W, bool(cull_backfaces), float(near_z)
    )
