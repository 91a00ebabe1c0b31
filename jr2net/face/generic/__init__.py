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
The build takes ~0.5 s and is cached per process; ``preview_png`` renders a contact sheet.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from jr2net.face.generic.bases import (
    _Ctx,
    _expression_basis,
    _identity_basis,
    _rot_y,
)
from jr2net.face.generic.mesh import (
    _build,
)
from jr2net.face.generic.tables import (
    EXPRESSION_NAMES,
    REGION_NAMES,
    SOURCE,
)

__all__ = ["EXPRESSION_NAMES", "REGION_NAMES", "SOURCE", "generic_face_model", "preview_png"]


@functools.lru_cache(maxsize=1)
def _cached() -> dict[str, np.ndarray]:
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
    for arr in arrays.values():
        arr.setflags(write=False)
    return arrays


def generic_face_model() -> dict[str, np.ndarray]:
    """The procedural template face model as npz-format arrays (fresh copies; cached build)."""
    return {k: v.copy() for k, v in _cached().items()}


# ---------------------------------------------------------------------------------------------
def _render(verts: np.ndarray, faces: np.ndarray, yaw_deg: float, size: int) -> np.ndarray:
    """Orthographic Lambert render by dense z-buffered splats (numpy only); uint8 [size,size,3]."""
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
