"""3D reconstruction error (DESIGN §8): landmark similarity alignment, ICP, point-to-plane error.

Protocol (FaceWarehouse-style, 85 mm crop; FRGC MAE uses 95 mm):

1. similarity-align the prediction to the ground truth on corresponding landmarks (Umeyama);
2. crop the ground truth to the vertices within ``crop_radius`` mm of its nose tip;
3. refine with ICP: every cropped ground-truth point is paired with its nearest predicted
   vertex, and the prediction is re-aligned (similarity) to those pairs, a few iterations;
4. error of each cropped ground-truth point = its distance to the tangent plane of the aligned
   prediction at the nearest predicted vertex (vertex normal).

Direction: **ground truth -> prediction**. The ground truth is the fixed, cropped reference (so
errors are in its millimetres and parts of the prediction outside the crop, such as ears or the
neck, cost nothing); the prediction moves. All arrays are numpy, computed in float64.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

__all__ = [
    "similarity_align",
    "apply_similarity",
    "icp_align",
    "mesh_vertex_normals",
    "point_to_plane_errors",
    "reconstruction_errors",
]

Similarity = tuple[float, np.ndarray, np.ndarray]


def _points(x: object, name: str, dim: int = 3) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != dim or a.shape[0] == 0:
        raise ValueError(f"{name} must be [N, {dim}] with N > 0, got {list(a.shape)}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf")
    return a


def similarity_align(
    src_pts: np.ndarray,
    dst_pts: np.ndarray,
    weights: np.ndarray | None = None,
    with_scale: bool = True,
) -> Similarity:
    """Least-squares ``(s, R, t)`` with ``dst ~ s R src + t`` (Umeyama 1991; no reflection).

    Works in any dimension (``[N, D]`` points); ``with_scale=False`` gives a rigid fit (s = 1).
    """
    src = np.asarray(src_pts, dtype=np.float64)
    dst = np.asarray(dst_pts, dtype=np.float64)
    if src.ndim != 2 or src.shape != dst.shape:
        raise ValueError(
            f"src_pts {list(src.shape)} and dst_pts {list(dst.shape)} must be the same [N, D]"
        )
    n, d = src.shape
    if n < d:
        raise ValueError(f"need at least {d} point pairs for a {d}-D similarity, got {n}")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != (n,) or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be [N], non-negative, with a positive sum")
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    xs, xd = src - mu_s, dst - mu_d
    cov = (xd * w[:, None]).T @ xs
    u, sv, vt = np.linalg.svd(cov)
    sign = np.ones(d)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0
    rot = u @ np.diag(sign) @ vt
    var_s = (w * (xs**2).sum(1)).sum()
    s = float((sv * sign).sum() / var_s) if with_scale and var_s > 0 else 1.0
    t = mu_d - s * rot @ mu_s
    return s, rot, t


def apply_similarity(points: np.ndarray, transform: Similarity) -> np.ndarray:
    """``s R p + t`` for each row ``p`` of ``points``."""
    s, rot, t = transform
    return s * np.asarray(points, dtype=np.float64) @ rot.T + t


def _compose(a: Similarity, b: Similarity) -> Similarity:
    """The similarity ``a`` after ``b``: x -> a(b(x))."""
    sa, ra, ta = a
    sb, rb, tb = b
    return sa * sb, ra @ rb, sa * ra @ tb + ta


def icp_align(
    moving: np.ndarray,
    fixed: np.ndarray,
    init: Similarity | None = None,
    iterations: int = 10,
    with_scale: bool = True,
    reject_factor: float = 3.0,
) -> Similarity:
    """Refine ``(s, R, t)`` taking ``moving`` points onto the ``fixed`` points (ICP).

    Each iteration pairs every *fixed* point with its nearest transformed *moving* point (so
    ``fixed`` may be a crop of the surface ``moving`` samples), drops pairs farther than
    ``reject_factor`` x their median distance, and re-solves the similarity. Stops early when
    the update is negligible.
    """
    mov = _points(moving, "moving")
    fix = _points(fixed, "fixed")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    cur: Similarity = init if init is not None else (1.0, np.eye(3), np.zeros(3))
    tree = cKDTree(mov)
    extent = max(float(np.ptp(fix, axis=0).max()), 1e-9)
    for _ in range(iterations):
        s, rot, t = cur
        # Query in the moving frame: inverse-transform the fixed points (tree built once).
        q = (fix - t) @ rot / s
        dist, idx = tree.query(q)
        dist = dist * s
        keep = dist <= reject_factor * max(np.median(dist), 1e-9)
        if keep.sum() < 3:
            break
        pairs = mov[idx[keep]]
        new = similarity_align(pairs, fix[keep], with_scale=with_scale)
        moved = np.linalg.norm(apply_similarity(pairs, new) - apply_similarity(pairs, cur), axis=1)
        cur = new
        if moved.mean() < 1e-6 * extent:
            break
    return cur


def mesh_vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals ``[V, 3]`` (orientation follows the face winding)."""
    import torch

    from jr2net.face.model import vertex_normals

    v = _points(vertices, "vertices")
    f = np.asarray(faces)
    if f.ndim != 2 or f.shape[1] != 3 or not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"faces must be an integer [F, 3] array, got {f.dtype} {list(f.shape)}")
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError("faces index outside the vertex array")
    n = vertex_normals(torch.from_numpy(v)[None], torch.from_numpy(f.astype(np.int64)))
    return n[0].numpy()


def point_to_plane_errors(
    points: np.ndarray,
    ref_vertices: np.ndarray,
    ref_faces: np.ndarray | None = None,
    ref_normals: np.ndarray | None = None,
) -> np.ndarray:
    """Unsigned distance of each point ``[N, 3]`` to the tangent plane of the reference surface
    at its nearest reference vertex: ``|n_j . (p - v_j)|``, ``[N]``.

    The surface normals come from ``ref_normals`` or are computed from ``ref_faces``.
    """
    p = _points(points, "points")
    v = _points(ref_vertices, "ref_vertices")
    if ref_normals is None:
        if ref_faces is None:
            raise ValueError("give ref_faces or ref_normals")
        n = mesh_vertex_normals(v, ref_faces)
    else:
        n = _points(ref_normals, "ref_normals")
        if n.shape != v.shape:
            raise ValueError(f"ref_normals {list(n.shape)} must match ref_vertices {list(v.shape)}")
        n = n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    _, idx = cKDTree(v).query(p)
    return np.abs(((p - v[idx]) * n[idx]).sum(1))


def reconstruction_errors(
    pred_verts: np.ndarray,
    pred_faces: np.ndarray,
    gt_verts: np.ndarray,
    gt_faces: np.ndarray | None,
    pred_lmk_idx: np.ndarray,
    gt_lmk_idx: np.ndarray,
    nose_tip_gt: int | np.ndarray,
    crop_radius: float = 85.0,
    icp_iterations: int = 10,
    with_scale: bool = True,
) -> dict[str, float]:
    """Point-to-plane errors of the cropped ground truth to the aligned prediction (module doc).

    ``nose_tip_gt`` is a ground-truth vertex index or a 3-D point; ``gt_faces`` is not needed by
    this direction (accepted for symmetry, may be None). Returns ``rmse``, ``median``, ``p80``
    (80th percentile), ``mae`` (mean), in the ground truth's units (mm), plus ``n_points`` and
    the fitted ``scale``.
    """
    pv = _points(pred_verts, "pred_verts")
    gv = _points(gt_verts, "gt_verts")
    pl = np.asarray(pred_lmk_idx, dtype=np.int64).reshape(-1)
    gl = np.asarray(gt_lmk_idx, dtype=np.int64).reshape(-1)
    if pl.shape != gl.shape or len(pl) < 3:
        raise ValueError("pred_lmk_idx and gt_lmk_idx must have the same length (>= 3)")
    if pl.min() < 0 or pl.max() >= len(pv) or gl.min() < 0 or gl.max() >= len(gv):
        raise ValueError("landmark index outside the vertex array")
    if crop_radius <= 0:
        raise ValueError(f"crop_radius must be positive, got {crop_radius}")
    nose = np.asarray(nose_tip_gt)
    if nose.ndim == 0:
        if not 0 <= int(nose) < len(gv):
            raise ValueError(f"nose_tip_gt index {int(nose)} outside gt_verts")
        nose = gv[int(nose)]
    else:
        nose = nose.astype(np.float64).reshape(3)

    transform = similarity_align(pv[pl], gv[gl], with_scale=with_scale)
    crop = gv[np.linalg.norm(gv - nose, axis=1) <= crop_radius]
    if len(crop) < 3:
        raise ValueError(f"fewer than 3 ground-truth vertices within {crop_radius} of the nose tip")
    transform = icp_align(
        pv, crop, init=transform, iterations=icp_iterations, with_scale=with_scale
    )
    aligned = apply_similarity(pv, transform)
    normals = mesh_vertex_normals(aligned, pred_faces)
    err = point_to_plane_errors(crop, aligned, ref_normals=normals)
    return {
        "rmse": float(np.sqrt((err**2).mean())),
        "median": float(np.median(err)),
        "p80": float(np.percentile(err, 80)),
        "mae": float(err.mean()),
        "n_points": int(len(err)),
        "scale": float(transform[0]),
    }
