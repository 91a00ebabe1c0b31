"""Barycentric attribute interpolation (DESIGN §4): autograd wrapper of the ``interpolate`` kernel."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from jr2net import _C
from jr2net.ops.rasterize import prepare_faces


class _Interpolate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, attr, rast, faces):  # type: ignore[override]
        out = _C.interpolate_fwd(attr, rast, faces)
        ctx.save_for_backward(attr, rast, faces)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        attr, rast, faces = ctx.saved_tensors
        grad_attr, grad_rast = _C.interpolate_bwd(grad_out.contiguous(), attr, rast, faces)
        return (
            grad_attr if ctx.needs_input_grad[0] else None,
            grad_rast if ctx.needs_input_grad[1] else None,
            None,
        )


def interpolate(attr: torch.Tensor, rast: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Interpolate per-vertex attributes over a rasterisation: [B,H,W,C], zeros off-mesh.

    attr [B,V,C] or [V,C] (shared by the batch); rast [B,H,W,4] from ``rasterize``. Each pixel gets
    u*a0 + v*a1 + (1-u-v)*a2 for its face; differentiable w.r.t. attr and rast channels u, v.
    """
    for value, name in ((attr, "attr"), (rast, "rast")):
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"interpolate: {name} must be a torch.Tensor, got {type(value).__name__}"
            )
    faces = prepare_faces(faces)
    shared = attr.dim() == 2
    if shared:
        attr = attr.unsqueeze(0)
    if attr.is_floating_point() and rast.is_floating_point() and rast.dtype != attr.dtype:
        raise TypeError(f"interpolate: rast dtype {rast.dtype} must match attr dtype {attr.dtype}")
    return _Interpolate.apply(attr.contiguous(), rast.contiguous(), faces)
