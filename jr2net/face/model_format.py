"""The face-model file format (DESIGN §5): the ``.npz`` keys and their validation."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from jr2net.errors import FaceModelError

REQUIRED_KEYS = (
    "vertices",
    "faces",
    "identity_basis",
    "expression_basis",
    "expression_names",
    "landmarks68",
)
OPTIONAL_KEYS = (
    "uvs",
    "faces_uv",
    "region",
    "region_names",
    "jawline_left",
    "jawline_right",
    "albedo_mean",
    "albedo_basis",
    "name",
    "source",
    "units",
)


def validate_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Check keys, shapes, dtypes and index ranges of npz-format arrays; FaceModelError if bad."""
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise FaceModelError(f"face model is missing keys {missing}")
    a = {k: np.asarray(v) for k, v in arrays.items()}

    def fail(msg: str) -> None:
        raise FaceModelError(f"invalid face model: {msg}")

    verts = a["vertices"]
    if verts.ndim != 2 or verts.shape[1] != 3 or verts.shape[0] < 3:
        fail(f"vertices must be [V,3], got {verts.shape}")
    if verts.dtype.kind != "f" or not np.isfinite(verts).all():
        fail("vertices must be finite floats")
    V = verts.shape[0]

    def check_index(key: str, upper: int, ndim: int = 1, last: int | None = None) -> None:
        arr = a[key]
        if arr.dtype.kind not in "iu":
            fail(f"{key} must be integers, got {arr.dtype}")
        if arr.ndim != ndim or (last is not None and arr.shape[-1] != last):
            fail(f"{key} has shape {arr.shape}")
        if arr.size and (arr.min() < 0 or arr.max() >= upper):
            fail(f"{key} indices out of range [0, {upper})")

    check_index("faces", V, ndim=2, last=3)
    if a["faces"].shape[0] == 0:
        fail("faces is empty")
    for key in ("identity_basis", "expression_basis"):
        b = a[key]
        if b.ndim != 3 or b.shape[1:] != (V, 3):
            fail(f"{key} must be [n,{V},3], got {b.shape}")
        if b.dtype.kind != "f" or not np.isfinite(b).all():
            fail(f"{key} must be finite floats")
    names = a["expression_names"]
    if names.ndim != 1 or names.shape[0] != a["expression_basis"].shape[0]:
        fail(
            f"expression_names has {names.shape} entries for {a['expression_basis'].shape[0]} shapes"
        )
    if names.dtype.kind not in "US":
        fail("expression_names must be strings")
    check_index("landmarks68", V)
    if a["landmarks68"].shape != (68,):
        fail(f"landmarks68 must be [68], got {a['landmarks68'].shape}")
    for key in ("jawline_left", "jawline_right"):
        if key in a:
            check_index(key, V)
    if "uvs" in a:
        uvs = a["uvs"]
        if uvs.ndim != 2 or uvs.shape[1] != 2:
            fail(f"uvs must be [T,2], got {uvs.shape}")
        if "faces_uv" in a:
            check_index("faces_uv", uvs.shape[0], ndim=2, last=3)
            if a["faces_uv"].shape != a["faces"].shape:
                fail("faces_uv must have the same shape as faces")
    if "region" in a:
        if "region_names" not in a:
            fail("region needs region_names")
        check_index("region", max(len(a["region_names"]), 1))
        if a["region"].shape != (V,):
            fail(f"region must be [V], got {a['region'].shape}")
    if ("albedo_mean" in a) != ("albedo_basis" in a):
        fail("albedo_mean and albedo_basis come together")
    if "albedo_mean" in a:
        if a["albedo_mean"].shape != (V, 3):
            fail(f"albedo_mean must be [V,3], got {a['albedo_mean'].shape}")
        if a["albedo_basis"].ndim != 3 or a["albedo_basis"].shape[1:] != (V, 3):
            fail(f"albedo_basis must be [G,V,3], got {a['albedo_basis'].shape}")
    return a
