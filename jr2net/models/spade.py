"""SPADE building blocks for DCNet's generator (Park et al. 2019): normalise, then ×(1+γ) + β.

γ and β are predicted per pixel from the condition stack resized to the feature's resolution.
Within one residual block the condition embedding (the shared conv + ReLU) is computed once and
reused by both SPADE layers, which keeps the full-resolution stages cheap on a CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

NORMS = ("instance", "batch")


def param_free_norm(kind: str, channels: int) -> nn.Module:
    """The normalisation SPADE modulates (no affine parameters of its own)."""
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=False)
    raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")


def maybe_sn(module: nn.Module, enabled: bool) -> nn.Module:
    """``module`` with spectral normalisation on its weight when ``enabled``."""
    return _spectral_norm(module) if enabled else module


class SPADE(nn.Module):
    """Param-free norm of ``x`` modulated by γ, β convolved from a condition embedding."""

    def __init__(self, channels: int, hidden: int, norm: str = "instance") -> None:
        super().__init__()
        self.norm = param_free_norm(norm, channels)
        self.gamma_beta = nn.Conv2d(hidden, 2 * channels, 3, padding=1)

    def forward(self, x: Tensor, embedding: Tensor) -> Tensor:
        gamma, beta = self.gamma_beta(embedding).chunk(2, dim=1)
        return torch.addcmul(beta, self.norm(x), gamma + 1)


class SPADEResBlock(nn.Module):
    """(SPADE → LeakyReLU → conv3×3) × ``layers`` (1 or 2) with an identity shortcut."""

    def __init__(
        self,
        channels: int,
        cond_channels: int,
        hidden: int,
        norm: str = "instance",
        spectral_norm: bool = False,
        layers: int = 2,
    ) -> None:
        super().__init__()
        if layers not in (1, 2):
            raise ValueError(f"layers must be 1 or 2, got {layers!r}")
        self.embed = nn.Sequential(nn.Conv2d(cond_channels, hidden, 3, padding=1), nn.ReLU())
        self.spade1 = SPADE(channels, hidden, norm)
        self.conv1 = maybe_sn(nn.Conv2d(channels, channels, 3, padding=1), spectral_norm)
        self.spade2 = SPADE(channels, hidden, norm) if layers == 2 else None
        self.conv2 = (
            maybe_sn(nn.Conv2d(channels, channels, 3, padding=1), spectral_norm)
            if layers == 2
            else None
        )
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """``cond`` is area-resized to ``x``'s resolution (callers pass it at full resolution)."""
        if cond.shape[-2:] != x.shape[-2:]:
            cond = F.interpolate(cond, size=x.shape[-2:], mode="area")
        emb = self.embed(cond)
        dx = self.conv1(self.act(self.spade1(x, emb)))
        if self.spade2 is not None:
            dx = self.conv2(self.act(self.spade2(dx, emb)))
        return x + dx
