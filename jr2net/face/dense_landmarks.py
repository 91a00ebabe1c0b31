"""The 468 MediaPipe mesh points as face-model vertices: a dense landmark term for the fitters.

The mesh's topology is not the face model's, so each mesh point is matched once per face model
(cached in ``cache_dir()/models/mediapipe/dense_<model sha256 prefix>.npz``) on synthetic renders of
that model, where every vertex's true image position is known: ``n`` random faces
(:func:`jr2net.face.synthetic.random_coeffs`, seed ``seed``, yaw within +-35 degrees) are rendered
at 256², the mesh is run on each, and each mesh point takes the face-region vertex whose projection
lies closest to it on average (squared distance in inter-ocular units). Its weight is the inverse of
that mean squared distance (floored at ``floor``² so near-perfect points do not dominate, then
normalised to mean 1 over the points): mesh points that slide along the silhouette or sit
inconsistently on the surface pull less. Points whose root-mean-square distance exceeds
``max_rms_iod`` get weight 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from jr2net.face.model import FaceModel

MAP_VERSION = 1
DENSE_SEED = 1  # disjoint from the fitting benchmark's seed 0
SIZE = 256
# Total weight of the mesh term relative to the 68 landmarks' (chosen on seed-1 renders).
DENSE_WEIGHT = 1.0
# Dense points the driving fitter keeps (best weighted): its per-frame time budget.
DRIVING_DENSE_POINTS = 100


@dataclass
class SyntheticMeshSample:
    """One synthetic render with its ground truth and the mesh found on it (pixel centres)."""

    image: np.ndarray  # uint8 [S,S,3]
    vertices_2d: np.ndarray  # [V,2] every model vertex projected
    landmarks68: np.ndarray  # [68,2] true 2D landmarks (jaw on the silhouette)
    dense: np.ndarray | None  # [468,3] mesh points, None when no face was found
    yaw_deg: float


def synthetic_mesh_samples(
    model: FaceModel, n: int, seed: int = DENSE_SEED, yaw_max_deg: float = 35.0
) -> list[SyntheticMeshSample]:
    """``n`` synthetic renders of ``model`` with their true vertex / landmark positions and mesh."""
    import math

    import torch

    from jr2net.face.camera import default_intrinsics, model_to_camera, project
    from jr2net.face.fitting import LandmarkSolver
    from jr2net.face.mediapipe import detect_faces
    from jr2net.face.renderer import FaceRenderer
    from jr2net.face.synthetic import (
        backgrounds,
        random_coeffs,
        render_composite,
        render_model,
        true_landmarks,
    )

    rng = np.random.default_rng(seed)
    renderer = FaceRenderer(render_model(model))
    solver = LandmarkSolver.from_model(model)
    K = default_intrinsics((SIZE, SIZE))
    bgs = backgrounds(rng, n, SIZE)
    out = []
    for i in range(n):
        c = random_coeffs(model, rng, yaw_max_deg)
        image = render_composite(renderer, c, K, bgs[i])
        with torch.no_grad():
            X = model.shape(c.identity, c.expression)
            uv = project(model_to_camera(X, c.angles, c.translation), K)[0].double().numpy()
        dets = detect_faces(image)
        out.append(
            SyntheticMeshSample(
                image,
                uv,
                true_landmarks(solver, model, c, K),
                dets[0].dense.astype(np.float64) if dets else None,
                math.degrees(float(c.angles[0, 1])),
            )
        )
    return out


@dataclass
class DenseMap:
    """Model vertex and weight of each of the 468 mesh points, with the residual it was fitted at."""

    vertices: np.ndarray  # int64 [468]
    weights: np.ndarray  # float64 [468], mean 1 over the used points, 0 = unused
    rms_iod: np.ndarray  # float64 [468] RMS image distance to the vertex on the renders / IOD
    model_sha256: str
    n_samples: int


def derive_dense_map(
    model: FaceModel,
    samples: list[SyntheticMeshSample],
    floor: float = 0.01,
    max_rms_iod: float = 0.06,
) -> DenseMap:
    """Match each mesh point to the face-region vertex nearest on average (module docstring)."""
    keep = np.arange(model.n_vertices)
    if model.region is not None and "face" in list(model.region_names):
        keep = np.flatnonzero(model.region.cpu().numpy() == list(model.region_names).index("face"))
    cost = np.zeros((468, len(keep)))
    used = 0
    for s in samples:
        if s.dense is None:
            continue
        iod = float(np.linalg.norm(s.landmarks68[36] - s.landmarks68[45]))
        v = s.vertices_2d[keep] / iod
        p = s.dense[:, :2] / iod
        cost += (p**2).sum(1)[:, None] + (v**2).sum(1)[None] - 2.0 * p @ v.T
        used += 1
    if used == 0:
        raise ValueError("no mesh was found on any synthetic render: cannot derive the dense map")
    cost /= used
    best = np.argmin(cost, axis=1)
    ms = np.maximum(cost[np.arange(468), best], 0.0)
    w = 1.0 / np.maximum(ms, floor**2)
    rms = np.sqrt(ms)
    w[rms > max_rms_iod] = 0.0
    w /= max(w[w > 0].mean(), 1e-12)
    return DenseMap(keep[best].astype(np.int64), w, rms, model.sha256, used)


def _cache_path(model: FaceModel) -> Path:
    from jr2net.face.mediapipe_assets import mediapipe_models_dir

    return mediapipe_models_dir() / f"dense_v{MAP_VERSION}_{model.sha256[:16]}.npz"


def dense_map(model: FaceModel, n: int = 40) -> DenseMap:
    """The model's dense map, derived on ``n`` renders on first use and cached by its sha256."""
    path = _cache_path(model)
    if path.is_file():
        z = np.load(path)
        meta = json.loads(str(z["meta"]))
        if meta.get("model_sha256") == model.sha256:
            return DenseMap(z["vertices"], z["weights"], z["rms_iod"], model.sha256, meta["n"])
    import logging

    logging.getLogger("jr2net.face").info(
        "deriving the MediaPipe mesh -> %s vertex map on %d synthetic renders (cached)",
        model.name,
        n,
    )
    m = derive_dense_map(model, synthetic_mesh_samples(model, n))
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"model_sha256": m.model_sha256, "n": m.n_samples, "version": MAP_VERSION})
    tmp = path.with_suffix(".part.npz")
    np.savez(tmp, vertices=m.vertices, weights=m.weights, rms_iod=m.rms_iod, meta=meta)
    tmp.replace(path)
    return m


# ---- the solver's side ------------------------------------------------------------------------


def dense_target(
    solver, model: FaceModel, detection, w_dense: float, max_points: int | None = None
) -> dict:
    """``LandmarkSolver.solve`` keyword arguments of the dense term for ``detection`` (empty
    without a mesh); enables the solver's dense rows from the model's map on first use, keeping
    the ``max_points`` best-weighted points when given (the driving fitter's time budget)."""
    dense = getattr(detection, "dense", None)
    if dense is None or w_dense <= 0:
        return {}
    if solver.dense_rows is None:
        m = dense_map(model)
        w = m.weights.copy()
        if max_points is not None and max_points < int((w > 0).sum()):
            w[np.argsort(-w)[max_points:]] = 0.0
        solver.enable_dense(m.vertices, w)
    return {"dense_target": np.asarray(dense, np.float64)[:, :2], "w_dense": float(w_dense)}


def dense_terms(
    solver, dense_target: np.ndarray | None, w_dense: float, lw_sum: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Solver rows, targets ``[D,2]`` and weights of the used dense points (total weight
    ``w_dense * lw_sum``), or None without a dense term."""
    if dense_target is None or w_dense <= 0:
        return None
    if solver.dense_rows is None or solver.dense_weights is None:
        raise ValueError("dense_target given but the solver has no dense rows (enable_dense)")
    dense_target = np.asarray(dense_target, np.float64)[:, :2]
    if len(dense_target) != len(solver.dense_rows):
        raise ValueError(
            f"dense_target has {len(dense_target)} points, the solver {len(solver.dense_rows)}"
        )
    use = solver.dense_weights > 0
    dw = solver.dense_weights[use]
    dw = dw * (w_dense * lw_sum / max(float(dw.sum()), 1e-12))
    return solver.dense_rows[use], dense_target[use], dw


def landmark_weights(detection) -> np.ndarray:
    """Per-landmark solver weights for ``detection``'s 68 points: the mesh-derived ones
    (:data:`jr2net.face.mediapipe_map.MESH_LANDMARK_WEIGHTS`) for a MediaPipe detection, else
    ``LANDMARK_WEIGHTS`` (tuned for dlib)."""
    if getattr(detection, "dense", None) is None:
        from jr2net.face.fitting.solver import LANDMARK_WEIGHTS

        return LANDMARK_WEIGHTS.copy()
    from jr2net.face.mediapipe_map import MESH_LANDMARK_WEIGHTS

    return MESH_LANDMARK_WEIGHTS.astype(np.float64)
