"""View-synthesis warps (DESIGN §4, seed Eq. 2): autograd wrappers of the C++/CUDA warp kernels.

Both warps project a 3D point per target pixel into the source camera and sample the source image
bilinearly; the rules (footprint, depth holes, occlusion test) are in ``csrc/ops/warp.h`` and
``jr2net.ops.reference.depth_warp_ref``. First-order gradients only.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from jr2net import _C


def _tensor_arg(op: str, value: object, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")
    return value.contiguous()


def _batched(op: str, value: object, name: str, batch: int, n: int) -> torch.Tensor:
    """A [B,n,n] matrix argument; a single [n,n] or [1,n,n] matrix is broadcast over the batch."""
    t = _tensor_arg(op, value, name)
    if t.dim() == 2 and t.shape == (n, n):
        t = t.unsqueeze(0)
    if t.dim() == 3 and t.shape == (1, n, n) and batch != 1:
        t = t.expand(batch, n, n).contiguous()
    return t


def _rel_eps(op: str, rel_eps: object) -> float:
    if isinstance(rel_eps, bool) or not isinstance(rel_eps, (int, float)):
        raise TypeError(f"{op}: rel_eps must be a float, got {type(rel_eps).__name__}")
    return float(rel_eps)


def _mask_arg(op: str, value: object, name: str, dtype: torch.dtype) -> torch.Tensor:
    t = _tensor_arg(op, value, name)
    return t if t.is_floating_point() else t.to(dtype)


class _DepthWarp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, src, dst_depth, K_src, K_dst, src_T_dst, src_depth, rel_eps):  # type: ignore[override]
        warped, covisible = _C.depth_warp_fwd(
            src, dst_depth, K_src, K_dst, src_T_dst, src_depth, rel_eps
        )
        ctx.save_for_backward(src, dst_depth, K_src, K_dst, src_T_dst, src_depth)
        ctx.rel_eps = rel_eps
        ctx.mark_non_differentiable(covisible)
        ctx.set_materialize_grads(False)
        return warped, covisible

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_warped, _grad_covisible):  # type: ignore[override]
        need_src, need_depth = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if grad_warped is None or not (need_src or need_depth):
            return (None,) * 7
        src, dst_depth, K_src, K_dst, src_T_dst, src_depth = ctx.saved_tensors
        g_src, g_depth = _C.depth_warp_bwd(
            grad_warped.contiguous(),
            src,
            dst_depth,
            K_src,
            K_dst,
            src_T_dst,
            src_depth,
            ctx.rel_eps,
            need_src,
            need_depth,
        )
        return g_src, g_depth, None, None, None, None, None


class _CorrespondenceWarp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, src, points_src, valid, K_src, src_depth, rel_eps):  # type: ignore[override]
        warped, covisible = _C.correspondence_warp_fwd(
            src, points_src, valid, K_src, src_depth, rel_eps
        )
        ctx.save_for_backward(src, points_src, valid, K_src, src_depth)
        ctx.rel_eps = rel_eps
        ctx.mark_non_differentiable(covisible)
        ctx.set_materialize_grads(False)
        return warped, covisible

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_warped, _grad_covisible):  # type: ignore[override]
        need_src, need_points = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if grad_warped is None or not (need_src or need_points):
            return (None,) * 6
        src, points_src, valid, K_src, src_depth = ctx.saved_tensors
        g_src, g_points = _C.correspondence_warp_bwd(
            grad_warped.contiguous(),
            src,
            points_src,
            valid,
            K_src,
            src_depth,
            ctx.rel_eps,
            need_src,
            need_points,
        )
        return g_src, g_points, None, None, None, None


def depth_warp(
    src: torch.Tensor,
    dst_depth: torch.Tensor,
    K_src: torch.Tensor,
    K_dst: torch.Tensor,
    src_T_dst: torch.Tensor,
    src_depth: torch.Tensor | None = None,
    rel_eps: float = 0.02,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp src [B,C,Hs,Ws] into the target view whose z-depth is dst_depth [B,1,Ht,Wt].

    p_s ~ K_src · src_T_dst · D_t(p_t) · K_dst⁻¹ · p_t, bilinear sample of src at p_s. Returns
    (warped [B,C,Ht,Wt], covisible [B,1,Ht,Wt]); covisible is 1 where dst_depth > 0, the bilinear
    footprint lies in the source (0 <= x <= Ws-1, 0 <= y <= Hs-1, with 1e-3 px of slack for
    rounding) and, given src_depth, its four taps have depth > 0 and |z_s - D_s(p_s)| <=
    rel_eps·z_s (D_s bilinear, z_s the point's source-camera z). warped is 0 elsewhere.
    K_* are [B,3,3] (or one [3,3]), src_T_dst [B,4,4] (or [4,4]). Grad w.r.t. src and dst_depth.
    """
    op = "depth_warp"
    src = _tensor_arg(op, src, "src")
    dst_depth = _tensor_arg(op, dst_depth, "dst_depth")
    batch = src.shape[0] if src.dim() > 0 else 0
    K_src = _batched(op, K_src, "K_src", batch, 3)
    K_dst = _batched(op, K_dst, "K_dst", batch, 3)
    src_T_dst = _batched(op, src_T_dst, "src_T_dst", batch, 4)
    if src_depth is not None:
        src_depth = _tensor_arg(op, src_depth, "src_depth")
    return _DepthWarp.apply(
        src, dst_depth, K_src, K_dst, src_T_dst, src_depth, _rel_eps(op, rel_eps)
    )


def correspondence_warp(
    src: torch.Tensor,
    points_src: torch.Tensor,
    valid: torch.Tensor,
    K_src: torch.Tensor,
    src_depth: torch.Tensor | None = None,
    rel_eps: float = 0.02,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp src [B,C,Hs,Ws] to target pixels whose 3D points in the source camera frame are known.

    points_src [B,Ht,Wt,3] (e.g. the source-posed mesh interpolated with the driving rasterisation),
    valid [B,1,Ht,Wt] (> 0.5, or bool) marks pixels with a point. Same projection, sampling and
    covisibility rules as depth_warp. Returns (warped, covisible); grad w.r.t. src and points_src.
    """
    op = "correspondence_warp"
    src = _tensor_arg(op, src, "src")
    points_src = _tensor_arg(op, points_src, "points_src")
    valid = _mask_arg(op, valid, "valid", src.dtype)
    batch = src.shape[0] if src.dim() > 0 else 0
    K_src = _batched(op, K_src, "K_src", batch, 3)
    if src_depth is not None:
        src_depth = _tensor_arg(op, src_depth, "src_depth")
    return _CorrespondenceWarp.apply(
        src, points_src, valid, K_src, src_depth, _rel_eps(op, rel_eps)
    )
