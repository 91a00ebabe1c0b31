"""Multi-scale PatchGAN discriminator (pix2pixHD / SPADE) for DCNet's hinge adversarial loss.

Each scale is an N-layer PatchGAN over the input average-pooled 2^k times; ``forward`` returns,
per scale, the list of intermediate activations (for the feature-matching loss) ending with the
patch logits ``[B,1,h,w]``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from jr2net.models.spade import maybe_sn, param_free_norm


class PatchDiscriminator(nn.Module):
    """Conv4×4 stride-2 stack ×``n_layers``, one stride-1 conv, then a 1-channel logit conv."""

    def __init__(
        self,
        in_channels: int,
        channels: int = 64,
        n_layers: int = 3,
        spectral_norm: bool = True,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        pad = 2  # ceil((4 - 1) / 2), as pix2pixHD
        stages: list[nn.Module] = [
            nn.Sequential(
                maybe_sn(nn.Conv2d(in_channels, channels, 4, 2, pad), spectral_norm),
                nn.LeakyReLU(0.2),
            )
        ]
        nf = channels
        for n in range(1, n_layers + 1):
            nf_prev, nf = nf, min(nf * 2, 512)
            stride = 2 if n < n_layers else 1
            stages.append(
                nn.Sequential(
                    maybe_sn(nn.Conv2d(nf_prev, nf, 4, stride, pad), spectral_norm),
                    param_free_norm(norm, nf),
                    nn.LeakyReLU(0.2),
                )
            )
        stages.append(nn.Conv2d(nf, 1, 4, 1, pad))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class MultiScaleDiscriminator(nn.Module):
    """``n_scales`` PatchGANs on the input at full, ½, ¼ … resolution (average pooled)."""

    def __init__(
        self,
        in_channels: int,
        n_scales: int = 2,
        channels: int = 64,
        n_layers: int = 3,
        spectral_norm: bool = True,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("n_scales", n_scales),
                        ("channels", channels), ("n_layers", n_layers)):  # fmt: skip
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if norm not in ("instance", "batch"):
            raise ValueError(f"unknown norm {norm!r}; choose instance or batch")
        self.in_channels = in_channels
        self.discriminators = nn.ModuleList(
            PatchDiscriminator(in_channels, channels, n_layers, spectral_norm, norm)
            for _ in range(n_scales)
        )

    def forward(self, x: Tensor) -> list[list[Tensor]]:
        """Per scale (finest first): intermediate features, the last entry being the logits."""
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"input must be [B,{self.in_channels},H,W], got {getattr(x, 'shape', type(x))}"
            )
        out = []
        for k, d in enumerate(self.discriminators):
            if k:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            out.append(d(x))
        return out
