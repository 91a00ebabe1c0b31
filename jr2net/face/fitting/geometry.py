"""Model-derived geometry of the fitters: jaw-contour candidates and the surface metric."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from jr2net.face.model import FaceModel

CHIN = 8  # iBUG index of the chin (the one jaw landmark that is not a silhouette point)


def contour_candidates(
    vertices: np.ndarray,
    faces: np.ndarray,
    landmarks68: np.ndarray,
    jaw_left: np.ndarray | None,
    jaw_right: np.ndarray | None,
    allowed: np.ndarray | None,
    slab_mm: float = 1.8,
    reach_mm: float = 45.0,
) -> list[np.ndarray]:
    """For each jaw landmark, candidate vertex ids on a cut through the cheek (the landmark's own first).

    The cut is the plane through the landmark vertex normal to the jaw curve; candidates are the allowed
    vertices within ``slab_mm`` of it, on the landmark's side of the face, no deeper than the model's
    contour (``jawline_left/right``) and within ``reach_mm``. The chin and models without contour data get
    only their landmark vertex.
    """
    out: list[np.ndarray] = []
    lm = vertices[landmarks68[:17]]
    for i in range(17):
        own = int(landmarks68[i])
        contour = jaw_right if i < CHIN else jaw_left
        if i == CHIN or contour is None or len(contour) == 0:
            out.append(np.array([own], dtype=np.int64))
            continue
        L = lm[i]
        a, b = lm[max(i - 1, 0)], lm[min(i + 1, 16)]
        T = (b - a) / max(np.linalg.norm(b - a), 1e-9)
        cverts = vertices[contour]
        C = cverts[np.argmin(np.linalg.norm(cverts - L, axis=1))]
        d = vertices - L
        sel = np.abs(d @ T) < slab_mm
        sel &= np.sign(vertices[:, 0]) == np.sign(L[0])
        sel &= np.abs(vertices[:, 0]) >= 0.5 * abs(L[0])
        sel &= vertices[:, 2] >= min(L[2], C[2]) - 3.0
        sel &= np.linalg.norm(d, axis=1) <= max(reach_mm, 1.2 * float(np.linalg.norm(C - L)))
        if allowed is not None:
            sel &= allowed
        ids = np.flatnonzero(sel)
        ids = ids[ids != own]
        out.append(np.concatenate([[own], ids]).astype(np.int64))
    return out


def surface_metric(model: FaceModel, n_identity: int) -> np.ndarray:
    """Quadratic form ``[K+E, K+E]`` of the mean squared face-surface displacement (mm^2 per vertex)
    caused by an identity / expression coefficient change, after removing its linearised similarity
    part (what an alignment ignores); normalised so the identity block's mean diagonal is 1."""
    if not 0 <= n_identity <= model.n_identity:
        raise ValueError(f"n_identity must be in [0, {model.n_identity}], got {n_identity}")
    verts = model.vertices.detach().cpu().numpy().astype(np.float64)
    keep = np.arange(len(verts))
    if getattr(model, "region", None) is not None and "face" in list(model.region_names):
        keep = np.flatnonzero(model.region.cpu().numpy() == list(model.region_names).index("face"))
    X = verts[keep] - verts[keep].mean(axis=0)
    rows = torch.as_tensor(keep, dtype=torch.long)
    ids = model.identity_basis[:n_identity, rows].detach().cpu().double().numpy()
    exs = model.expression_basis[:, rows].detach().cpu().double().numpy()
    B = np.concatenate([ids, exs]).reshape(n_identity + len(exs), -1).T  # [3V, K+E]
    # Similarity tangent space at the mean face: translations, rotations (w x X), scale (X).
    eye = np.eye(3)
    T = [np.tile(eye[k], (len(X), 1)) for k in range(3)]
    T += [np.cross(eye[k], X) for k in range(3)] + [X]
    Q, _ = np.linalg.qr(np.stack([t.ravel() for t in T], axis=1))
    B = B - Q @ (Q.T @ B)
    G = B.T @ B / len(X)
    d = np.diag(G)[:n_identity] if n_identity > 0 else np.diag(G)
    return G / max(float(np.mean(d)), 1e-12)
