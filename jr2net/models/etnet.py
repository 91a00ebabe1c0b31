"""ETNet (DESIGN §1): a ResNet regressing expression β ∈ [0,1]; RecAugNet = RecNet + ETNet.

β uses RecNet's ``unit_interval`` parametrisation and a zero-initialised head, so an untrained
ETNet predicts the neutral expression and still receives gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from jr2net.face.coeffs import FaceCoefficients
from jr2net.models.recnet import IMAGENET_MEAN, IMAGENET_STD, RecNet, unit_interval
from jr2net.models.resnet import ResNet


class ETNet(nn.Module):
    """Expression regressor over ``[B,3,S,S]`` crops in [0,1] (the canonical RecNet crop)."""

    def __init__(
        self,
        backbone: str = "resnet34",
        crop_size: int = 224,
        n_expression: int = 53,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        if isinstance(n_expression, bool) or not isinstance(n_expression, int) or n_expression < 1:
            raise ValueError(f"n_expression must be a positive int, got {n_expression!r}")
        if isinstance(crop_size, bool) or not isinstance(crop_size, int) or crop_size < 32:
            raise ValueError(f"crop_size must be an int >= 32, got {crop_size!r}")
        self.crop_size = crop_size
        self.n_expression = n_expression
        self.backbone = ResNet(backbone, width=width, num_classes=None)
        self.head = nn.Linear(self.backbone.out_channels, n_expression)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        """β ``[B, n_expression]`` in [0,1]."""
        S = self.crop_size
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1:] != (3, S, S):
            raise ValueError(f"images must be [B,3,{S},{S}], got {getattr(images, 'shape', None)}")
        return unit_interval(self.head(self.backbone((images - self.mean) / self.std)))


class RecAugNet(nn.Module):
    """RecNet whose expression head is replaced by an ETNet (DESIGN §1, stage ``recaugnet``).

    The RecNet's own expression head is frozen (``requires_grad=False``) and skipped, so DDP sees
    no unused trainable parameters.
    """

    def __init__(self, recnet: RecNet, etnet: ETNet) -> None:
        super().__init__()
        if not isinstance(recnet, RecNet) or not isinstance(etnet, ETNet):
            raise TypeError("RecAugNet needs a RecNet and an ETNet")
        if etnet.n_expression != recnet.n_expression:
            raise ValueError(
                f"ETNet predicts {etnet.n_expression} expressions, RecNet {recnet.n_expression}"
            )
        if etnet.crop_size != recnet.crop_size:
            raise ValueError(
                f"crop sizes differ: RecNet {recnet.crop_size}, ETNet {etnet.crop_size}"
            )
        self.recnet = recnet
        self.etnet = etnet
        self.etnet_frozen = False
        recnet.heads["expression"].requires_grad_(False)

    def freeze_etnet(self) -> RecAugNet:
        """Keep ETNet's β as trained: no gradients, BatchNorm statistics fixed (eval mode even
        while the RecNet part trains), so RecNet's objective cannot pull the expression away."""
        self.etnet_frozen = True
        self.etnet.requires_grad_(False)
        self.etnet.eval()
        return self

    def train(self, mode: bool = True) -> RecAugNet:
        super().train(mode)
        if self.etnet_frozen:
            self.etnet.eval()
        return self

    @property
    def crop_size(self) -> int:
        return self.recnet.crop_size

    def forward(self, images: Tensor) -> FaceCoefficients:
        """RecNet's coefficients (canonical camera) with ETNet's expression."""
        if self.etnet_frozen:
            with torch.no_grad():
                beta = self.etnet(images)
        else:
            beta = self.etnet(images)
        return self.recnet(images, expression=beta)
