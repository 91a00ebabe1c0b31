"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``) in PyTorch.

The network is dlib's ``anet_type`` from ``dnn_face_recognition_ex.cpp``: a 7x7/2 conv stem and a
3x3/2 max pool, 14 residual blocks (32, 64, 128, 256, 256 channels), a global average and a
128-D fc without bias. Its weights (public domain) ship in the ``face-recognition-models``
package; ``convert_face_id_weights`` reads dlib's ``.dat`` (``jr2net.models.dlib_dat``) once into
``<cache>/models/face_id_resnet.pt``, folding every ``affine`` (frozen batch norm) into the conv
before it. dlib specifics kept here: the input is ``(255*rgb - mean) / 256``; stride-2 convs and
pools have no padding; a down-sampling block adds the 2x2-average-pooled input to the block
output with dlib's ``add_prev`` rule (the smaller tensor is zero-padded at the end of the
channel, row and column axes); the descriptor is the raw fc output (not L2-normalised).

``align_face_chips`` is a differentiable version of ``dlib.get_face_chip``: the same similarity
fit to dlib's mean-face template, the same chip rectangle, and the same 5-tap pyramid that dlib
samples from when the face is more than ~2x the chip size.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

FORMAT = "jr2net.face_id/1"
CHIP_SIZE = 150
MIN_SIZE = 103  # smallest input the stride chain accepts

# (channels, down-sampling) per residual block, from the input upwards: dlib's alevel4 .. alevel0.
BLOCKS = [(32, False)] * 3 + [(64, True)] + [(64, False)] * 3 + [(128, True)] + [(128, False)] * 2
BLOCKS += [(256, True)] + [(256, False)] * 2 + [(256, True)]
LEVEL_ENDS = (2, 6, 9, 12, 13)  # last block of each resolution level (what ``features`` returns)

_STEM = ["con", "affine", "relu", "max_pool"]
_BLOCK = ["tag", "con", "affine", "relu", "con", "affine", "add_prev", "relu"]
_BLOCK_DOWN = ["tag", "con", "affine", "relu", "con", "affine", "tag", "skip", "avg_pool"]
_BLOCK_DOWN += ["add_prev", "relu"]


def dnn_structure() -> list[str]:
    """dlib's wrapper sequence for ``anet_type``, from the input upwards (for ``dlib_dat``)."""
    seq = list(_STEM)
    for _, down in BLOCKS:
        seq += _BLOCK_DOWN if down else _BLOCK
    return seq + ["avg_pool", "fc"]


def _add_padded(a: Tensor, b: Tensor) -> Tensor:
    """dlib's ``add_prev``: sum over the larger shape, each operand zero-padded at the end."""
    if a.shape == b.shape:
        return a + b
    shape = [max(x, y) for x, y in zip(a.shape, b.shape, strict=True)]

    def pad(t: Tensor) -> Tensor:
        return F.pad(
            t, (0, shape[3] - t.shape[3], 0, shape[2] - t.shape[2], 0, shape[1] - t.shape[1])
        )

    return pad(a) + pad(b)


class _Block(nn.Module):
    """relu(conv-affine-relu-conv-affine (x) + x), x 2x2-average-pooled when down-sampling."""

    def __init__(self, cin: int, cout: int, down: bool) -> None:
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        skip = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(_add_padded(y, skip))


class FaceIdNet(nn.Module):
    """dlib's face-recognition ResNet: 150x150 RGB chips in [0,1] -> 128-D descriptors.

    Two chips show the same person when their descriptors are < ~0.6 apart (Euclidean; dlib's
    threshold). Build it with ``load_face_id_net`` (real weights); ``FaceIdNet()`` alone has
    random weights.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean_rgb", torch.tensor([122.782, 117.001, 104.298]))
        self.stem = nn.Conv2d(3, 32, 7, stride=2)
        blocks, cin = [], 32
        for cout, down in BLOCKS:
            blocks.append(_Block(cin, cout, down))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(256, 128, bias=False)

    def _check(self, chips: object) -> Tensor:
        if not isinstance(chips, Tensor):
            raise TypeError(f"chips must be a torch.Tensor [B,3,H,W], got {type(chips).__name__}")
        if chips.ndim != 4 or chips.shape[1] != 3 or min(chips.shape[2:]) < MIN_SIZE:
            raise ValueError(
                f"chips must have shape [B,3,H,W] with H,W >= {MIN_SIZE} "
                f"({CHIP_SIZE} to match dlib), got {list(chips.shape)}"
            )
        if not chips.is_floating_point():
            raise TypeError(f"chips must be a float tensor in [0,1], got {chips.dtype}")
        return chips

    def features(self, chips: Tensor) -> list[Tensor]:
        """Activations for a perceptual loss: the stem (32@35² for 150² chips) and the end of
        each level (32@35², 64@17², 128@8², 256@4², 256@2²), all after their relu."""
        x = self._check(chips)
        mean = self.mean_rgb.to(x).view(1, 3, 1, 1)
        x = (x * 255.0 - mean) / 256.0
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        out = [x]
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in LEVEL_ENDS:
                out.append(x)
        return out

    def forward(self, chips: Tensor) -> Tensor:
        """128-D descriptors ``[B,128]`` (dlib's raw fc output, not normalised)."""
        return self.fc(self.features(chips)[-1].mean(dim=(2, 3)))


# ---------------------------------------------------------------------------------------------
# Weights: conversion from dlib's .dat and the user cache


def weights_path() -> Path:
    """Where the converted weights live: ``<cache>/models/face_id_resnet.pt``."""
    from jr2net.paths import cache_dir

    return cache_dir() / "models" / "face_id_resnet.pt"


def dat_path() -> Path:
    """dlib's ``.dat`` inside the installed ``face-recognition-models`` package."""
    from jr2net.face.landmarks import FACE_RECOGNITION_FILE, models_dir

    return models_dir() / FACE_RECOGNITION_FILE


def _expect(layer, kind: str, **values: object) -> dict:
    from jr2net.models.dlib_dat import DlibDatError

    for key, want in values.items():
        if layer.values.get(key) != want:
            raise DlibDatError(f"{kind} layer has {key}={layer.values.get(key)}, expected {want}")
    return layer.values


def state_dict_from_dat(path: str | Path) -> dict[str, Tensor]:
    """Read dlib's ``.dat`` and return a ``FaceIdNet`` state dict (affine folded into convs)."""
    from jr2net.models.dlib_dat import DlibDatError, read_dnn

    dnn = read_dnn(path, dnn_structure())
    layers = iter(dnn.layers)
    conv_geometry = {}
    for name, m in FaceIdNet().named_modules():
        if isinstance(m, nn.Conv2d):
            conv_geometry[name] = {"stride": m.stride, "padding": m.padding}

    def conv(name: str) -> tuple[Tensor, Tensor]:
        c = _expect(next(layers), "con", **conv_geometry[name])
        a = _expect(next(layers), "affine")
        w, b = torch.from_numpy(c["weight"]), torch.from_numpy(c["bias"])
        g, beta = torch.from_numpy(a["gamma"]), torch.from_numpy(a["beta"])
        if g.numel() != w.shape[0] or beta.numel() != w.shape[0]:
            raise DlibDatError(f"affine after {name} has {g.numel()} channels, conv {w.shape[0]}")
        return w * g.view(-1, 1, 1, 1), b * g + beta

    sd: dict[str, Tensor] = {}
    sd["stem.weight"], sd["stem.bias"] = conv("stem")
    next(layers)  # relu
    _expect(next(layers), "max_pool", window=(3, 3), stride=(2, 2), padding=(0, 0))
    for i, (_, down) in enumerate(BLOCKS):
        sd[f"blocks.{i}.conv1.weight"], sd[f"blocks.{i}.conv1.bias"] = conv(f"blocks.{i}.conv1")
        next(layers)  # relu
        sd[f"blocks.{i}.conv2.weight"], sd[f"blocks.{i}.conv2.bias"] = conv(f"blocks.{i}.conv2")
        if down:
            _expect(next(layers), "avg_pool", window=(2, 2), stride=(2, 2), padding=(0, 0))
        next(layers)  # add_prev
        next(layers)  # relu
    _expect(next(layers), "avg_pool", window=(0, 0), stride=(1, 1), padding=(0, 0))
    fc = _expect(next(layers), "fc", bias=None)
    sd["fc.weight"] = torch.from_numpy(np.ascontiguousarray(fc["weight"].T))
    sd["mean_rgb"] = torch.tensor(dnn.input["mean_rgb"], dtype=torch.float32)
    if dnn.input["size"] != (CHIP_SIZE, CHIP_SIZE):
        raise DlibDatError(f"input size {dnn.input['size']}, expected {CHIP_SIZE}x{CHIP_SIZE}")
    FaceIdNet().load_state_dict(sd)  # shape check
    return sd


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert_face_id_weights(
    dat: str | Path | None = None, out: str | Path | None = None
) -> tuple[Path, int, str]:
    """Convert dlib's ``.dat`` (default: the installed package's) to a torch file (default:
    ``weights_path()``); written atomically. Returns (path, tensor count, sha256 of the file)."""
    src = Path(dat) if dat is not None else dat_path()
    sd = state_dict_from_dat(src)
    dest = Path(out) if out is not None else weights_path()
    dest.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "source": src.name,
        "source_sha256": _sha256(src),
        "state_dict": sd,
    }
    buf = io.BytesIO()  # saved in memory: torch.save names the archive after the file
    torch.save(payload, buf)
    fd, tmp = tempfile.mkstemp(prefix=dest.name, suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest, len(sd), _sha256(dest)


def load_face_id_net(device: str | torch.device | None = None) -> FaceIdNet:
    """The pretrained ``FaceIdNet`` in eval mode with frozen parameters, from the user cache;
    converts dlib's ``.dat`` on first use (one line on stderr)."""
    path = weights_path()
    payload = None
    if path.is_file():
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(
                f"cannot read face-id weights {path} ({exc}); delete the file or run "
                "`jr2net assets face-id` to convert them again"
            ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        print(f"jr2net: converting dlib's face-recognition ResNet into {path}", file=sys.stderr)
        convert_face_id_weights(out=path)
        payload = torch.load(path, map_location="cpu", weights_only=True)
    net = FaceIdNet()
    net.load_state_dict(payload["state_dict"])
    net.eval().requires_grad_(False)
    return net.to(device) if device is not None else net


# ---------------------------------------------------------------------------------------------
# Differentiable face-chip alignment (dlib.get_face_chip)

# dlib's mean face (get_face_chip_details), points 17-67 in [0,1] chip units.
_MEAN_X = (
    0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124, 0.904991,
    0.98004, 0.490127, 0.490127, 0.490127, 0.490127, 0.36688, 0.426036, 0.490127, 0.554217,
    0.613373, 0.121737, 0.187122, 0.265825, 0.334606, 0.260918, 0.182743, 0.645647, 0.714428,
    0.793132, 0.858516, 0.79751, 0.719335, 0.254149, 0.340985, 0.428858, 0.490127, 0.551395,
    0.639268, 0.726104, 0.642159, 0.556721, 0.490127, 0.423532, 0.338094, 0.290379, 0.428096,
    0.490127, 0.552157, 0.689874, 0.553364, 0.490127, 0.42689,
)  # fmt: skip
_MEAN_Y = (
    0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891, 0.0187482,
    0.038915, 0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326, 0.609345, 0.628106,
    0.609345, 0.587326, 0.216423, 0.178758, 0.179852, 0.231733, 0.245099, 0.244077, 0.231733,
    0.179852, 0.178758, 0.216423, 0.244077, 0.245099, 0.780233, 0.745405, 0.727388, 0.742578,
    0.727388, 0.745405, 0.780233, 0.864805, 0.902192, 0.909281, 0.902192, 0.864805, 0.784792,
    0.778746, 0.785343, 0.778746, 0.784792, 0.824182, 0.831803, 0.824182,
)  # fmt: skip
# dlib fits the nose, eyes and upper lip only (no jaw, eyebrows or lower lip).
_USED_68 = [i for i in range(27, 68) if not (55 <= i <= 59 or 65 <= i <= 67)]
_TEMPLATE_5 = (
    (0.8595674595992, 0.2134981538014), (0.6460604764104, 0.2289674387677),
    (0.1205750620789, 0.2137274526848), (0.3340850613712, 0.2290642403242),
    (0.4901123135679, 0.6277975316475),
)  # fmt: skip
_PYR_TAPS = (1.0, 4.0, 6.0, 4.0, 1.0)
_PYR_SHIFT = (1.25, 0.75)  # dlib's pyramid_down<2>::point_down(p) = p/2 - shift


def _template(n_points: int) -> tuple[list[int], Tensor]:
    if n_points == 68:
        pts = [(_MEAN_X[i - 17], _MEAN_Y[i - 17]) for i in _USED_68]
        return _USED_68, torch.tensor(pts, dtype=torch.float64)
    return list(range(5)), torch.tensor(_TEMPLATE_5, dtype=torch.float64)


def _pyramid_down(x: Tensor) -> Tensor:
    """dlib's pyramid_down<2>: separable [1 4 6 4 1]/16 filter, valid, every other pixel."""
    taps = torch.tensor(_PYR_TAPS, dtype=x.dtype, device=x.device) / 16.0
    c = x.shape[1]
    x = F.conv2d(x, taps.view(1, 1, 1, 5).expand(c, 1, 1, 5), stride=(1, 2), groups=c)
    return F.conv2d(x, taps.view(1, 1, 5, 1).expand(c, 1, 5, 1), stride=(2, 1), groups=c)


def align_face_chips(
    images: Tensor, landmarks68: Tensor, size: int = CHIP_SIZE, padding: float = 0.25
) -> Tensor:
    """Face chips ``[B,3,size,size]`` cut from ``images [B,3,H,W]`` the way dlib.get_face_chip
    cuts them for ``landmarks68 [B,68,2]`` (or dlib's 5-point ``[B,5,2]``), pixel coordinates
    with pixel centres at integers. Differentiable in the images and the landmarks.

    Left to dlib: it truncates to uint8 (the chip and each pyramid level, so its chips are ~0.5
    grey level darker per step), and anchors its pyramid at its own crop box, so with a pyramid
    a few high-contrast pixels differ by more (shared photos: mean |diff| <= 1.2 grey levels)."""
    if not isinstance(images, Tensor) or not isinstance(landmarks68, Tensor):
        raise TypeError("images and landmarks68 must be torch.Tensors")
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor [B,C,H,W], got {list(images.shape)}")
    b = images.shape[0]
    if landmarks68.shape not in ((b, 68, 2), (b, 5, 2)):
        raise ValueError(
            f"landmarks68 must have shape [{b},68,2] or [{b},5,2], got {list(landmarks68.shape)}"
        )
    if not isinstance(size, int) or size < 2 or not padding >= 0:
        raise ValueError(f"size must be an int >= 2 and padding >= 0, got {size!r}, {padding!r}")
    if b == 0:
        return images.new_zeros(0, images.shape[1], size, size)
    idx, template = _template(landmarks68.shape[1])
    src = ((template.to(images.device) + padding) / (2 * padding + 1)) * size  # chip pixels
    dst = landmarks68[:, idx].to(torch.float64)  # image pixels
    # Least-squares similarity chip -> image (dlib's find_similarity_transform, no reflection).
    a = src - src.mean(0)
    d = dst - dst.mean(1, keepdim=True)
    norm = (a**2).sum()
    p = (a[None, :, 0] * d[..., 0] + a[None, :, 1] * d[..., 1]).sum(1) / norm
    q = (a[None, :, 0] * d[..., 1] - a[None, :, 1] * d[..., 0]).sum(1) / norm
    rot = torch.stack([torch.stack([p, -q], -1), torch.stack([q, p], -1)], -2)  # [B,2,2]
    t = dst.mean(1) - rot @ src.mean(0)
    scale = torch.sqrt(p**2 + q**2)
    # dlib's chip rectangle: centred on tform(size/2), side size*scale - 1 across size-1 pixels.
    centre = rot @ torch.full((2,), size / 2.0, dtype=torch.float64, device=images.device) + t
    step = (size * scale - 1.0) / (size - 1) / scale
    lin = rot * step[:, None, None]  # chip pixel offset -> image offset
    # Pyramid level as dlib picks it: halve the rect while the halved one exceeds the chip area.
    levels = []
    for s in scale.detach().cpu().tolist():
        side, level = size * s, 0
        while ((side - 1.0) / 2.0 + 1.0) ** 2 > size * size:
            side, level = (side - 1.0) / 2.0 + 1.0, level + 1
        levels.append(level)
    pyramid = [images]
    while len(pyramid) <= max(levels) and min(pyramid[-1].shape[2:]) > 8:
        pyramid.append(_pyramid_down(pyramid[-1]))
    half = (size - 1) / 2.0
    shift = torch.tensor(_PYR_SHIFT, dtype=torch.float64, device=images.device)
    chips: list[Tensor | None] = [None] * b
    for level in sorted(set(levels)):
        rows = [i for i, lv in enumerate(levels) if lv == level]
        use = min(level, len(pyramid) - 1)
        img = pyramid[use]
        m, o = lin[rows], centre[rows]
        for _ in range(use):  # point_down on the mapping
            m, o = m / 2.0, o / 2.0 - shift
        h, w = img.shape[2:]
        to_norm = torch.tensor([2.0 / (w - 1), 2.0 / (h - 1)], dtype=torch.float64, device=o.device)
        theta_lin = m * half * to_norm[None, :, None]
        theta_off = o * to_norm - 1.0
        theta = torch.cat([theta_lin, theta_off[..., None]], -1).to(images.dtype)
        grid = F.affine_grid(theta, [len(rows), images.shape[1], size, size], align_corners=True)
        out = F.grid_sample(
            img[rows], grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )
        for j, i in enumerate(rows):
            chips[i] = out[j]
    return torch.stack(chips)  # type: ignore[arg-type]
