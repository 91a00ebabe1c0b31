"""ResNet-18/34/50 with torchvision's parameter names and shapes, plus a width multiplier.

At ``width=1.0`` a torchvision ``resnet{18,34,50}`` state dict loads with ``strict=True``
(``load_torchvision_weights``). Built with ``num_classes=None`` the network is a feature extractor
(no ``fc``): ``forward`` returns the pooled ``[B, out_channels]`` features. No ImageNet weights
are shipped: networks start from scratch or from a checkpoint the user supplies.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

# name -> (block type, blocks per stage)
_ARCHS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
RESNET_NAMES = tuple(_ARCHS)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convs with a residual (torchvision's BasicBlock)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 → 3×3 (stride here, as torchvision v1.5) → 1×1 ×4 with a residual."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision-layout ResNet; ``width`` scales every stage's channels (64·width, …).

    Initialisation as torchvision's with ``zero_init_residual=True`` (each block starts as the
    identity), which suits training from scratch.
    """

    classifier_prefixes = ("fc.",)

    def __init__(
        self,
        name: str = "resnet50",
        width: float = 1.0,
        num_classes: int | None = 1000,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if name not in _ARCHS:
            raise ValueError(f"unknown ResNet {name!r}; choose one of {RESNET_NAMES}")
        if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
            raise ValueError(f"width must be a positive number, got {width!r}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
        kind, layers = _ARCHS[name]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.name = name
        self.width = float(width)
        planes = [max(1, int(round(c * width))) for c in (64, 128, 256, 512)]
        self.inplanes = planes[0]
        self.conv1 = nn.Conv2d(in_channels, planes[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, planes[0], layers[0])
        self.layer2 = self._make_layer(block, planes[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, planes[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, planes[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.out_channels = planes[3] * block.expansion
        self.fc = nn.Linear(self.out_channels, num_classes) if num_classes is not None else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Zero the last BN of each residual branch: every block starts as the identity.
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block: type, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled features ``[B, out_channels]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]``, or the pooled features when built without ``fc``."""
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ValueError(f"ResNet input must be [B,C,H,W], got {getattr(x, 'shape', type(x))}")
        feats = self.forward_features(x)
        return feats if self.fc is None else self.fc(feats)


def resnet(
    name: str, width: float = 1.0, num_classes: int | None = None, in_channels: int = 3
) -> ResNet:
    """A ResNet by name; ``num_classes=None`` (default) gives a pooled-feature extractor."""
    return ResNet(name, width=width, num_classes=num_classes, in_channels=in_channels)


def load_torchvision_weights(module: nn.Module, path: str | Path) -> nn.Module:
    """Load a torchvision-format state dict file into ``module`` with ``strict=True``.

    The file may hold the state dict itself or ``{"state_dict": ...}``. Classifier keys
    (``module.classifier_prefixes``: ``fc.`` / ``classifier.``) are dropped when the module was
    built without a classifier; any other missing, unexpected or mis-shaped key raises ValueError
    naming them. Returns ``module``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise ValueError(f"cannot read weights {path}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    own = module.state_dict()
    prefixes = tuple(getattr(module, "classifier_prefixes", ()))
    if prefixes and not any(k.startswith(prefixes) for k in own):
        state = {k: v for k, v in state.items() if not k.startswith(prefixes)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:5]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:5]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:3]})")
        raise ValueError(
            f"weights {path} do not match {type(module).__name__}: " + "; ".join(parts)
        )
    module.load_state_dict(state, strict=True)
    return module
