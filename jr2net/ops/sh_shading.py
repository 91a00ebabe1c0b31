"""Spherical-harmonics shading (DESIGN §3): autograd wrapper of the C++/CUDA ``sh_shading`` kernel."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from jr2net import _C


def _tensor_arg(value: object, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"sh_shading: {name} must be a torch.Tensor, got {type(value).__name__}")
    return value.contiguous()


class _ShShading(torch.autograd.Function):
    @staticmethod
    def forward(ctx, normals, albedo, sh, mask):  # type: ignore[override]
        image, irradiance = _C.sh_shading_fwd(normals, albedo, sh, mask)
        ctx.save_for_backward(normals, albedo, sh, mask)
        ctx.set_materialize_grads(False)
        return image, irradiance

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_image, grad_irradiance):  # type: ignore[override]
        normals, albedo, sh, mask = ctx.saved_tensors
        needs = list(ctx.needs_input_grad[:4])
        needs[3] = needs[3] and mask is not None
        gi = grad_image.contiguous() if grad_image is not None else None
        gr = grad_irradiance.contiguous() if grad_irradiance is not None else None
        return _C.sh_shading_bwd(gi, gr, normals, albedo, sh, mask, needs)


def sh_shading(
    normals: torch.Tensor,
    albedo: torch.Tensor,
    sh: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shade with 9-band SH lighting: returns (image, irradiance), both [B,3,H,W].

    irradiance = mask · Σ_b sh[:,b] H_b(n) with camera-frame normals [B,3,H,W] used as given (the
    caller normalises), image = albedo ⊙ irradiance; sh is [B,9,3]. The optional mask [B,1,H,W]
    multiplies (bool masks are converted), so outputs are 0 where it is 0. Differentiable w.r.t.
    normals, albedo, sh and a floating mask (first order only).
    """
    normals = _tensor_arg(normals, "normals")
    albedo = _tensor_arg(albedo, "albedo")
    sh = _tensor_arg(sh, "sh")
    if mask is not None:
        mask = _tensor_arg(mask, "mask")
        if not mask.is_floating_point():
            mask = mask.to(normals.dtype)
    return _ShShading.apply(normals, albedo, sh, mask)
