"""The embedded ``generic`` face model: a head template generated deterministically by code.

A fresh offline machine has no ICT-FaceKit, so JR2Net builds this template instead (DESIGN §5).
It uses the same npz key format and conventions as the imported ICT model: millimetres, y up,
z out of the face, +x the subject's left, ICT's 53 expression names, dlib's 68-landmark order.

Construction, all closed-form (no data, no randomness):
  * a star-shaped base head: radius about a centre ``_C`` as a function of azimuth ``a`` and
    elevation ``e``, from a sagittal profile (face), a coronal profile (sides) and a
    superellipse blend between them;
  * facial features as z-displacements over the frontal (x, y) plane (nose, brows, cheekbones,
    lips, chin, eye sockets whose lids hug the eyeballs);
  * a Delaunay mesh of the (a, e) domain, denser on the face, with points inserted exactly at
    the landmarks, eye contours (holes, closed by eyeBlink) and a lip slit whose vertices are
    duplicated so the jaw can open the mouth; eyeball caps and a mouth-socket wall behind;
  * identity modes (semantic, local ones plus smooth low-order fields, Löwdin-orthogonalised)
    and 53 expression fields built from the same frontal coordinates.
The build takes ~0.5 s (plus ~0.4 s to import scipy) and is cached per process and on disk:
``<user cache>/generic/generic_<key>.npz``, the key a hash of this package's code, of
``jr2net.face.mesh`` and of the numpy and scipy installs, so a changed build never reads an old
file (a missing or unwritable cache only means building again). ``preview_png`` renders a
contact sheet.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
from pathlib import Path

import numpy as np

from jr2net.face.generic.tables import (
    EXPRESSION_NAMES,
    REGION_NAMES,
    SOURCE,
)

__all__ = ["EXPRESSION_NAMES", "REGION_NAMES", "SOURCE", "generic_face_model", "preview_png"]

log = logging.getLogger("jr2net.face")


def _cache_key() -> str:
    """Hash of what the build depends on: this package's and jr2net.face.mesh's code, numpy's
    version, and scipy's install (path and mtime, read without importing it)."""
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for file in [*sorted(here.glob("*.py")), here.parent / "mesh.py"]:
        h.update(file.name.encode() + b"\0" + file.read_bytes())
    h.update(np.__version__.encode())
    spec = importlib.util.find_spec("scipy")
    if spec is not None and spec.origin:
        h.update(f"{spec.origin}:{os.stat(spec.origin).st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def _cache_path() -> Path:
    from jr2net.paths import cache_dir

    return cache_dir() / "generic" / f"generic_{_cache_key()}.npz"


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, KeyError):
        return None  # absent or corrupt: build
    return arrays if set(arrays) == set(_ARRAY_NAMES) else None


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError as exc:  # read-only cache: build again next time
        log.debug("generic face model not cached (%s)", exc)


_ARRAY_NAMES = ("vertices", "faces", "identity_basis", "expression_basis", "expression_names",
                "landmarks68", "jawline_left", "jawline_right", "region", "region_names", "uvs",
                "faces_uv", "units", "source")  # fmt: skip


@functools.lru_cache(maxsize=1)
def _cached() -> dict[str, np.ndarray]:
    path = _cache_path()
    arrays = _read_cache(path)
    if arrays is None:
        arrays = _build_arrays()
        _write_cache(path, arrays)
    for arr in arrays.values():
        arr.setflags(write=False)
    return arrays


def _build_arrays() -> dict[str, np.ndarray]:
    from jr2net.face.generic.bases import _Ctx, _expression_basis, _identity_basis
    from jr2net.face.generic.mesh import _build

    info = _build()
    ctx = _Ctx(info)
    ident = _identity_basis(ctx)
    expr = _expression_basis(ctx)
    arrays = {
        "vertices": info["verts"].astype(np.float32),
        "faces": info["faces"].astype(np.int32),
        "identity_basis": ident.astype(np.float32),
        "expression_basis": expr.astype(np.float32),
        "expression_names": np.array(EXPRESSION_NAMES, dtype=str),
        "landmarks68": info["landmarks68"].astype(np.int32),
        "jawline_left": info["jaw_L"].astype(np.int32),
        "jawline_right": info["jaw_R"].astype(np.int32),
        "region": info["region"].astype(np.uint8),
        "region_names": np.array(REGION_NAMES, dtype=str),
        "uvs": info["uvs"].astype(np.float32),
        "faces_uv": info["faces"].astype(np.int32),
        "units": np.array("millimetre"),
        "source": np.array(SOURCE),
    }
    assert tuple(arrays) == _ARRAY_NAMES
    return arrays


def generic_face_model() -> dict[str, np.ndarray]:
    """The procedural template face model as npz-format arrays (fresh copies; cached build)."""
    return {k: v.copy() for k, v in _cached().items()}


# ---------------------------------------------------------------------------------------------
def _render(verts: np.ndarray, faces: np.ndarray, yaw_deg: float, size: int) -> np.ndarray:
    """Orthographic Lambert render by dense z-buffered splats (numpy only); uint8 [size,size,3]."""
    from jr2net.face.generic.bases import _rot_y

    r = _rot_y(yaw_deg)
    p = verts.astype(np.float64) @ r.T
    n = np.cross(p[faces[:, 1]] - p[faces[:, 0]], p[faces[:, 2]] - p[faces[:, 0]])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    light = np.array([0.3, 0.4, 1.0]) / np.linalg.norm([0.3, 0.4, 1.0])
    shade = 0.15 + 0.85 * np.clip(n @ light, 0.0, 1.0)
    scale = size / 250.0
    s = np.stack([p[:, 0] * scale + size / 2, (20.0 - p[:, 1]) * scale + size / 2, p[:, 2]], 1)
    tri = s[faces]
    ext = np.linalg.norm(tri[:, [1, 2, 0], :2] - tri[:, :, :2], axis=2).max(1)
    ks = np.clip(np.ceil(ext * 1.5), 1, 200).astype(int)
    pts, col = [], []
    for k in np.unique(ks):
        sel = ks == k
        i, j = np.meshgrid(np.arange(k + 1), np.arange(k + 1), indexing="ij")
        m = i + j <= k
        w = np.stack([i[m], j[m], k - i[m] - j[m]], 1) / k
        pts.append(np.einsum("sk,fkc->fsc", w, tri[sel]).reshape(-1, 3))
        col.append(np.repeat(shade[sel] * (n[sel, 2] > 0), len(w)))
    q, c = np.concatenate(pts), np.concatenate(col)
    px, py = q[:, 0].round().astype(int), q[:, 1].round().astype(int)
    ok = (px >= 0) & (px < size) & (py >= 0) & (py < size)
    idx, z, c = py[ok] * size + px[ok], q[ok, 2], c[ok]
    order = np.lexsort((-z, idx))
    idx, c = idx[order], c[order]
    first = np.ones(len(idx), bool)
    first[1:] = idx[1:] != idx[:-1]
    img = np.full(size * size, 0.25)
    img[idx[first]] = c[first]
    return np.repeat((img.reshape(size, size, 1) * 255).astype(np.uint8), 3, axis=2)


def preview_png(path: str | Path, size: int = 256) -> Path:
    """Save a contact sheet (front / 3-4 / side) of neutral, jawOpen, eyeBlink_L, mouthSmile_L and
    a fixed random identity, to eyeball that the template looks like a face."""
    from PIL import Image

    m = _cached()
    v, f, names = m["vertices"], m["faces"], list(m["expression_names"])
    alpha = np.random.default_rng(0).standard_normal(len(m["identity_basis"]))
    shapes = [v] + [
        v + m["expression_basis"][names.index(k)] for k in ("jawOpen", "eyeBlink_L", "mouthSmile_L")
    ]
    shapes.append(v + np.tensordot(alpha, m["identity_basis"], 1))
    rows = [np.concatenate([_render(s, f, yaw, size) for s in shapes], 1) for yaw in (0, -35, -90)]
    out = Path(path)
    Image.fromarray(np.concatenate(rows, 0)).save(out)
    return out
