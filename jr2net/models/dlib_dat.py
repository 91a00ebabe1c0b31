"""Reader for dlib's DNN serialisation (``.dat`` files written by ``dlib::serialize(net)``).

dlib writes a network as nested layers, outermost first: each wrapper writes its version, then
its sub-network, then (for a computational layer) its details. So a file is the loss layer, one
version integer per wrapper from the top down, the input layer, and then every layer's details
from the input upwards. Integers use dlib's variable-length code (a control byte: bit 7 = sign,
low 4 bits = byte count, then little-endian bytes), floats outside tensors are a mantissa and an
exponent in that code, strings a length then bytes, bools one ASCII '0'/'1', tensors a header
then raw little-endian float32. The wiring (which tag an ``add_prev`` reads) lives in the C++
type, not the file, so the caller passes the layer sequence it expects and the reader checks
each layer's type against it. Only the layer types dlib's face-recognition ResNet uses are read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jr2net.errors import JR2NetError

# Wrapper kinds a structure may name: computational layers (their details are in the file) and
# the tag/skip wrappers (only a version integer).
LAYER_KINDS = ("con", "affine", "relu", "max_pool", "avg_pool", "add_prev", "fc")
WRAPPER_KINDS = ("tag", "skip")


class DlibDatError(JR2NetError, ValueError):
    """A dlib ``.dat`` file is truncated, corrupt, or holds a different network than expected."""


@dataclass
class DnnLayer:
    """One computational layer read from the file: its kind, dlib version tag and values."""

    kind: str
    version: str
    values: dict[str, object] = field(default_factory=dict)


@dataclass
class DnnFile:
    """A whole network: loss and input settings, and the layers from the input upwards."""

    loss: dict[str, object]
    input: dict[str, object]
    layers: list[DnnLayer]


class _Reader:
    def __init__(self, data: bytes, name: str) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.name = name

    def fail(self, what: str) -> DlibDatError:
        return DlibDatError(f"{self.name}: {what} at byte {self.pos} of {len(self.data)}")

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"truncated file (needed {n} more bytes)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        ctrl = self.take(1)[0]
        size = ctrl & 0x0F
        if size == 0 or size > 8 or ctrl & 0x70:
            raise self.fail(f"bad integer control byte 0x{ctrl:02x}")
        value = int.from_bytes(self.take(size), "little")
        return -value if ctrl & 0x80 else value

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        if exponent == 32000:
            return math.inf
        if exponent == 32001:
            return -math.inf
        if exponent == 32002:
            return math.nan
        return math.ldexp(float(mantissa), exponent)

    def str(self) -> str:
        n = self.int()
        if n > 256:
            raise self.fail(f"implausible string length {n}")
        return bytes(self.take(n)).decode("latin-1")

    def bool(self) -> bool:
        ch = self.take(1)[0]
        if ch not in (ord("0"), ord("1")):
            raise self.fail(f"bad bool byte 0x{ch:02x}")
        return ch == ord("1")

    def expect_int(self, allowed: Sequence[int], what: str) -> int:
        value = self.int()
        if value not in allowed:
            raise self.fail(f"unexpected {what} version {value} (expected one of {list(allowed)})")
        return value

    def shape(self) -> tuple[int, int, int, int]:
        """An ``alias_tensor``: only a shape."""
        self.expect_int([1], "alias_tensor")
        return (self.int(), self.int(), self.int(), self.int())

    def tensor(self) -> np.ndarray:
        self.expect_int([2], "tensor")
        shape = (self.int(), self.int(), self.int(), self.int())
        if min(shape) < 0:
            raise self.fail(f"negative tensor shape {shape}")
        count = math.prod(shape)
        raw = self.take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)


def _split(params: np.ndarray, shapes: Sequence[tuple[int, ...]], r: _Reader) -> list[np.ndarray]:
    flat = params.reshape(-1)
    sizes = [math.prod(s) for s in shapes]
    if sum(sizes) != flat.size:
        raise r.fail(f"parameter count {flat.size} does not match shapes {list(shapes)}")
    out, start = [], 0
    for s, n in zip(shapes, sizes, strict=True):
        out.append(flat[start : start + n].reshape(s).copy())
        start += n
    return out


def _con(r: _Reader, version: str) -> dict[str, object]:
    params = r.tensor()
    num_filters, nr, nc = r.int(), r.int(), r.int()
    stride, padding = (r.int(), r.int()), (r.int(), r.int())
    filters, biases = r.shape(), r.shape()
    for _ in range(4):  # learning-rate and weight-decay multipliers
        r.float()
    use_bias = r.bool() if version in ("con_5", "con_6") else True
    use_relu = r.bool() if version == "con_6" else False
    if use_relu:
        raise r.fail("con_ layers with a fused relu are not supported")
    shapes = [filters, biases] if use_bias and math.prod(biases) else [filters]
    parts = _split(params, shapes, r)
    if filters[0] != num_filters or filters[2:] != (nr, nc):
        raise r.fail(f"con_ filter shape {filters} disagrees with {num_filters}x{nr}x{nc}")
    weight = parts[0]
    bias = parts[1].reshape(-1) if len(parts) > 1 else np.zeros(num_filters, np.float32)
    return {"weight": weight, "bias": bias, "stride": stride, "padding": padding}


def _affine(r: _Reader, version: str) -> dict[str, object]:
    params = r.tensor()
    gamma, beta = r.shape(), r.shape()
    mode = r.int()
    disabled = r.bool() if version == "affine_2" else False
    if disabled:
        raise r.fail("disabled affine_ layers are not supported")
    g, b = _split(params, [gamma, beta], r)
    return {"gamma": g.reshape(-1), "beta": b.reshape(-1), "mode": mode}


def _pool(r: _Reader, version: str) -> dict[str, object]:
    nr, nc = r.int(), r.int()
    stride, padding = (r.int(), r.int()), (r.int(), r.int())
    return {"window": (nr, nc), "stride": stride, "padding": padding}


def _fc(r: _Reader, version: str) -> dict[str, object]:
    num_outputs, num_inputs = r.int(), r.int()
    params = r.tensor()
    weights, biases = r.shape(), r.shape()
    bias_mode = r.int()  # 0: FC_HAS_BIAS, 1: FC_NO_BIAS
    for _ in range(4):
        r.float()
    use_bias = r.bool() if version == "fc_3" else True
    has_bias = bias_mode == 0 and use_bias
    parts = _split(params, [weights, biases] if has_bias else [weights], r)
    if parts[0].reshape(-1).size != num_inputs * num_outputs:
        raise r.fail(f"fc_ weights {weights} disagree with {num_inputs}x{num_outputs}")
    weight = parts[0].reshape(num_inputs, num_outputs)
    bias = parts[1].reshape(-1) if has_bias else None
    return {"weight": weight, "bias": bias}


def _relu(r: _Reader, version: str) -> dict[str, object]:
    if version == "relu_2" and r.bool():
        raise r.fail("disabled relu_ layers are not supported")
    return {}


def _add_prev(r: _Reader, version: str) -> dict[str, object]:
    return {}


# dlib version tag -> (kind, details reader)
_DETAILS = {
    **{v: ("con", _con) for v in ("con_4", "con_5", "con_6")},
    **{v: ("affine", _affine) for v in ("affine_", "affine_2")},
    "max_pool_2": ("max_pool", _pool),
    "avg_pool_2": ("avg_pool", _pool),
    **{v: ("fc", _fc) for v in ("fc_2", "fc_3")},
    **{v: ("relu", _relu) for v in ("relu_", "relu_2")},
    "add_prev_": ("add_prev", _add_prev),
}


def _details(r: _Reader, expected: str, index: int) -> DnnLayer:
    version = r.str()
    entry = _DETAILS.get(version)
    if entry is None:
        raise r.fail(f"layer {index}: unsupported layer type {version!r} (expected {expected})")
    kind, reader = entry
    if kind != expected:
        raise r.fail(f"layer {index}: found {version!r} where the network has {expected}")
    return DnnLayer(kind, version, reader(r, version))


def _input(r: _Reader) -> dict[str, object]:
    version = r.str()
    if version != "input_rgb_image_sized":
        raise r.fail(f"unsupported input layer {version!r} (expected input_rgb_image_sized)")
    mean = (r.float(), r.float(), r.float())
    return {"mean_rgb": mean, "size": (r.int(), r.int())}


def _loss(r: _Reader) -> dict[str, object]:
    r.expect_int([1], "add_loss_layer")
    version = r.str()
    if version == "loss_metric_":
        return {"type": version, "margin": 0.1, "distance_threshold": 0.75}
    if version != "loss_metric_2":
        raise r.fail(f"unsupported loss layer {version!r} (expected loss_metric_2)")
    return {"type": version, "margin": r.float(), "distance_threshold": r.float()}


def parse_dnn(data: bytes, structure: Sequence[str], name: str = "<bytes>") -> DnnFile:
    """Parse a serialised ``loss_metric`` network whose wrappers, from the input upwards, are
    ``structure`` (kinds from ``LAYER_KINDS`` and ``WRAPPER_KINDS``; the first must be a layer).
    Raises DlibDatError naming the byte offset when the file does not match."""
    kinds = list(structure)
    bad = [k for k in kinds if k not in LAYER_KINDS + WRAPPER_KINDS]
    if bad or not kinds or kinds[0] not in LAYER_KINDS:
        raise ValueError(f"invalid structure: unknown kinds {bad} or not starting with a layer")
    r = _Reader(bytes(data), name)
    loss = _loss(r)
    versions = [0] * len(kinds)
    for i in range(len(kinds) - 1, -1, -1):
        if kinds[i] in WRAPPER_KINDS:
            versions[i] = r.expect_int([1], f"add_{kinds[i]}_layer (wrapper {i})")
        elif i == 0:
            versions[i] = r.expect_int([2, 3], "input add_layer")
        else:
            versions[i] = r.expect_int([1, 2], f"add_layer (wrapper {i})")
    inp = _input(r)
    layers = []
    for i, kind in enumerate(kinds):
        if kind in WRAPPER_KINDS:
            continue
        layers.append(_details(r, kind, i))
        for _ in range(3):  # setup-called, gradient-stale, output-disabled flags
            r.bool()
        r.tensor()  # x_grad
        r.tensor()  # cached_output
        if i == 0:
            r.tensor()  # grad_final
            if versions[i] >= 3:
                r.int()  # sample expansion factor
        elif versions[i] == 2:
            r.tensor()  # params_grad
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} unexpected trailing bytes")
    return DnnFile(loss, inp, layers)


def read_dnn(path: str | Path, structure: Sequence[str]) -> DnnFile:
    """``parse_dnn`` on a file; FileNotFoundError when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dlib model file not found: {path}")
    return parse_dnn(path.read_bytes(), structure, name=str(path))
