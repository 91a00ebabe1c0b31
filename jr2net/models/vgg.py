"""VGG-19 with torchvision's parameter names (``features.N``, ``classifier.N``), for perceptual losses.

``features_at`` returns the ReLU activations pix2pixHD / SPADE use (relu1_1 … relu5_1) of [0,1]
images, normalised inside with the ImageNet mean/std so torchvision weights (user-supplied:
none ship offline) see the inputs they were trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512, "M")  # fmt: skip
# Index in ``features`` of each named ReLU (torchvision's vgg19 layout).
VGG_LAYERS = {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11, "relu4_1": 20, "relu5_1": 29}
PERCEPTUAL_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


class VGG19(nn.Module):
    """torchvision-layout VGG-19 (no batch norm); ``classifier=False`` omits the 120M-param head."""

    classifier_prefixes = ("classifier.",)

    def __init__(self, classifier: bool = True, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in _CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU(inplace=False)]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = (
            nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096),
                nn.ReLU(True),
                nn.Dropout(),
                nn.Linear(4096, 4096),
                nn.ReLU(True),
                nn.Dropout(),
                nn.Linear(4096, num_classes),
            )  # fmt: skip
            if classifier
            else None
        )
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of ImageNet-normalised input (torchvision semantics); needs the classifier."""
        if self.classifier is None:
            raise RuntimeError("this VGG19 was built with classifier=False; use features_at")
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)

    def features_at(
        self, images: Tensor, layers: Sequence[str] = PERCEPTUAL_LAYERS
    ) -> list[Tensor]:
        """Activations at the named ReLUs (in the order asked) of ``images [B,3,H,W]`` in [0,1]."""
        unknown = [n for n in layers if n not in VGG_LAYERS]
        if unknown:
            raise ValueError(f"unknown VGG layer(s) {unknown}; known: {list(VGG_LAYERS)}")
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B,3,H,W], got {getattr(images, 'shape', None)}")
        wanted = {VGG_LAYERS[n]: n for n in layers}
        out: dict[str, Tensor] = {}
        x = (images - self.mean) / self.std
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in wanted:
                out[wanted[i]] = x
            if i >= max(wanted):
                break
        return [out[n] for n in layers]
