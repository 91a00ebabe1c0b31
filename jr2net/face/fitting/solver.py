"""The landmark stage: closed-form Gauss-Newton / Levenberg-Marquardt on 68 2D landmarks.

Unknowns: pose (rotation increments + translation), identity (first ``n_identity`` modes, prior
N(0,1)) and expression (bounds [0,1] by an active set, L2 prior plus an L1 sparsity term: 53
blendshapes can explain landmark noise in many ways, the L1 keeps the few that matter), with
closed-form normal equations on the landmark rows of the bases only. The 2D jaw landmarks 0-16
(except the chin, 8) are silhouette points: for each one the model offers a slab of candidate
vertices (a cut through the cheek from the landmark vertex back to the model's
``jawline_left/right`` contour) and, every other iteration, the front-facing candidate lying
furthest outward in the image is the one matched (the occluding contour). Used by both the
source and the driving fitter. Optional dense term (``enable_dense``, ``solve(dense_target=)``): 2D
points on fixed model vertices (MediaPipe's mesh, :mod:`jr2net.face.dense_landmarks`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from jr2net.face.camera import (
    FLIP_NP,
    euler_to_matrix,
    model_to_camera_np,
    rotate_to_camera_np,
    so3_exp,
)
from jr2net.face.dense_landmarks import dense_terms
from jr2net.face.fitting.geometry import CHIN, contour_candidates
from jr2net.face.fitting.results import LandmarkFitInfo, LandmarkParams
from jr2net.face.mesh import vertex_normals_np

if TYPE_CHECKING:
    from jr2net.face.model import FaceModel

JAW = np.arange(17)
__all__ = ["CHIN", "JAW", "LANDMARK_WEIGHTS", "LandmarkSolver"]
# Per-landmark weights of the 68 iBUG points: the jaw is a sliding silhouette and dlib places it
# loosely, brows sit on hair; eyes, nose and mouth are the reliable ones.
LANDMARK_WEIGHTS = np.ones(68, dtype=np.float64)
LANDMARK_WEIGHTS[0:17] = 0.5
LANDMARK_WEIGHTS[17:27] = 0.6
LANDMARK_WEIGHTS[27:31] = 0.8


class LandmarkSolver:
    """Closed-form Gauss-Newton fit of pose / identity / expression to 68 2D landmarks.

    Holds the landmark rows (and jaw contour candidates) of the model's bases in float64 numpy, so one
    iteration is a few small dense products and a ~140x140 solve.
    """

    def __init__(
        self,
        vertices: np.ndarray,
        faces: np.ndarray,
        identity_basis: np.ndarray,
        expression_basis: np.ndarray,
        landmarks68: np.ndarray,
        jawline_left: np.ndarray | None = None,
        jawline_right: np.ndarray | None = None,
        region_mask: np.ndarray | None = None,
        n_identity: int = 80,
    ) -> None:
        vertices = np.asarray(vertices, dtype=np.float64)
        faces = np.asarray(faces, dtype=np.int64)
        landmarks68 = np.asarray(landmarks68, dtype=np.int64)
        if landmarks68.shape != (68,):
            raise ValueError(f"landmarks68 must have 68 entries, got {landmarks68.shape}")
        self.n_identity = int(min(n_identity, identity_basis.shape[0]))
        self.n_expression = int(expression_basis.shape[0])
        jl = None if jawline_left is None else np.asarray(jawline_left, dtype=np.int64)
        jr = None if jawline_right is None else np.asarray(jawline_right, dtype=np.int64)
        self.candidates = contour_candidates(vertices, faces, landmarks68, jl, jr, region_mask)
        # All vertex ids we need rows for: the 68 landmarks first, then jaw candidates.
        extra = np.unique(
            np.concatenate([c[1:] for c in self.candidates] + [np.zeros(0, np.int64)])
        )
        extra = extra[~np.isin(extra, landmarks68)]
        self.rows = np.concatenate([landmarks68, extra])
        pos = {int(v): k for k, v in enumerate(self.rows)}
        self.cand_rows = [np.array([pos[int(v)] for v in c]) for c in self.candidates]
        self.mean = vertices[self.rows]  # [N,3]
        self.id_basis = np.asarray(
            identity_basis[: self.n_identity][:, self.rows], np.float64
        )  # [K,N,3]
        self.ex_basis = np.asarray(expression_basis[:, self.rows], np.float64)  # [E,N,3]
        # Stacked [N,3,K+E] for the linear shape model of the needed rows.
        self.basis = np.concatenate(
            [self.id_basis.transpose(1, 2, 0), self.ex_basis.transpose(1, 2, 0)], axis=2
        )
        self.normals = vertex_normals_np(vertices, faces)[self.rows]
        self.landmarks68 = landmarks68
        self.weights = LANDMARK_WEIGHTS.copy()
        # Outward direction of each jaw landmark (from the head's vertical axis) to pick the silhouette.
        centre = vertices[landmarks68].mean(axis=0)
        out = vertices[landmarks68[:17]] - np.array([0.0, centre[1], centre[2] - 60.0])
        self.jaw_outward = out / np.linalg.norm(out, axis=1, keepdims=True)
        iod_model = np.linalg.norm(vertices[landmarks68[36]] - vertices[landmarks68[45]])
        self.model_iod = float(iod_model)
        self.dense_rows: np.ndarray | None = None  # solver rows of the dense points
        self.dense_weights: np.ndarray | None = None
        self._arrays = (vertices, faces, identity_basis, expression_basis)

    def enable_dense(self, vertex_ids: np.ndarray, weights: np.ndarray) -> None:
        """Add rows for the dense points' model vertices ``[D]`` (per-point weights ``[D]``)."""
        vertex_ids, weights = np.asarray(vertex_ids, np.int64), np.asarray(weights, np.float64)
        if vertex_ids.shape != weights.shape or vertex_ids.ndim != 1:
            raise ValueError("dense vertex_ids and weights must be matching 1-D arrays")
        verts, faces, idb, exb = self._arrays
        new = np.setdiff1d(np.unique(vertex_ids), self.rows)
        self.rows = np.concatenate([self.rows, new])
        self.mean = np.concatenate([self.mean, verts[new]])
        ib = np.asarray(idb[: self.n_identity][:, new], np.float64).transpose(1, 2, 0)
        eb = np.asarray(exb[:, new], np.float64).transpose(1, 2, 0)
        self.basis = np.concatenate([self.basis, np.concatenate([ib, eb], axis=2)])
        self.normals = np.concatenate([self.normals, vertex_normals_np(verts, faces)[new]])
        pos = {int(v): k for k, v in enumerate(self.rows)}
        self.dense_rows = np.array([pos[int(v)] for v in vertex_ids], np.int64)
        self.dense_weights = weights

    @classmethod
    def from_model(cls, model: FaceModel, n_identity: int = 80) -> LandmarkSolver:
        """Build from a :class:`jr2net.face.model.FaceModel` (contour candidates restricted to 'face')."""
        region_mask = None
        if getattr(model, "region", None) is not None and "face" in list(model.region_names):
            region_mask = model.region.cpu().numpy() == list(model.region_names).index("face")
        jl = model.jawline_left.cpu().numpy() if model.jawline_left is not None else None
        jr = model.jawline_right.cpu().numpy() if model.jawline_right is not None else None
        return cls(
            model.vertices.detach().cpu().numpy(),
            model.faces.cpu().numpy(),
            model.identity_basis.detach().cpu().numpy(),
            model.expression_basis.detach().cpu().numpy(),
            model.landmarks68.cpu().numpy(),
            jl,
            jr,
            region_mask,
            n_identity=n_identity,
        )

    # -- helpers --------------------------------------------------------------------------------

    def zero_params(self) -> LandmarkParams:
        return LandmarkParams(
            np.eye(3),
            np.array([0.0, 0.0, 600.0]),
            np.zeros(self.n_identity),
            np.zeros(self.n_expression),
        )

    def shape_rows(self, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
        """Model-space positions of the needed rows ``[N,3]``."""
        return self.mean + self.basis @ np.concatenate([alpha, beta])

    def init_pose(self, target: np.ndarray, K: np.ndarray) -> LandmarkParams:
        """Frontal pose at the distance and position that match the landmarks' scale and centre."""
        p = self.zero_params()
        f = float(K[0, 0])
        iod_px = float(np.linalg.norm(target[36] - target[45]))
        span = max(iod_px, 0.25 * float(np.ptp(target, axis=0).max()), 1.0)
        z = f * self.model_iod / span
        c = target[27:48].mean(axis=0)  # eyes + nose: stable centre
        mc = self.mean[:68][27:48].mean(axis=0)
        x = (c[0] - K[0, 2]) * z / f - mc[0]
        y = -((c[1] - K[1, 2]) * z / f) - mc[1]
        p.t = np.array([x, y, -z - mc[2]])  # X_cam = flip(R X + t): z_cam = -(z_model + t_z)
        # Roll from the eye line.
        dx, dy = target[45] - target[36]
        p.R = euler_to_matrix(np.array([0.0, 0.0, -math.atan2(dy, dx)]))
        return p

    def project(self, params: LandmarkParams, K: np.ndarray, rows: np.ndarray | None = None):
        X = self.shape_rows(params.alpha, params.beta)
        if rows is not None:
            X = X[rows]
        Xc = model_to_camera_np(X, params.R, params.t)
        z = Xc[:, 2:3]
        uv = Xc[:, :2] / z * np.array([K[0, 0], K[1, 1]]) + np.array([K[0, 2], K[1, 2]])
        return uv, Xc

    def select_contour(
        self, params: LandmarkParams, K: np.ndarray, X: np.ndarray | None = None
    ) -> np.ndarray:
        """Row index (into ``self.rows``) matched to each of the 68 landmarks, jaw on the silhouette."""
        sel = np.arange(68)
        if X is None:
            X = self.shape_rows(params.alpha, params.beta)
        Xc = model_to_camera_np(X, params.R, params.t)
        n = rotate_to_camera_np(self.normals, params.R)
        f = np.array([K[0, 0], K[1, 1]])
        uv = Xc[:, :2] / Xc[:, 2:3] * f
        for i in range(17):
            cand = self.cand_rows[i]
            if len(cand) == 1:
                continue
            facing = np.einsum("ij,ij->i", n[cand], Xc[cand]) < 0.0
            if not facing.any():
                continue
            # Outward 2D direction of this landmark: project a small step along the model outward vector.
            o3 = rotate_to_camera_np(self.jaw_outward[i], params.R) * 5.0
            p0 = uv[i]
            p1 = (Xc[i, :2] + o3[:2]) / (Xc[i, 2] + o3[2]) * f
            o2 = p1 - p0
            o2 /= max(np.linalg.norm(o2), 1e-9)
            score = (uv[cand] - p0) @ o2
            score[~facing] = -np.inf
            sel[i] = cand[int(np.argmax(score))]
        return sel

    # -- the solver -------------------------------------------------------------------------------

    def solve(
        self,
        target: np.ndarray,
        K: np.ndarray,
        params: LandmarkParams | None = None,
        *,
        fit_identity: bool = True,
        fit_expression: bool = True,
        iterations: int = 20,
        pose_iterations: int = 4,
        w_identity: float = 2e-4,
        w_expression: float = 1e-5,
        beta_ref: np.ndarray | None = None,
        w_smooth: float = 0.0,
        alpha_ref: np.ndarray | None = None,
        w_alpha_ref: float = 0.0,
        w_expression_l1: float = 0.0,
        contour: bool = True,
        shape_ref: np.ndarray | None = None,
        shape_metric: np.ndarray | None = None,
        w_shape_ref: float = 0.0,
        weights: np.ndarray | None = None,
        dense_target: np.ndarray | None = None,
        w_dense: float = 0.0,
    ) -> tuple[LandmarkParams, LandmarkFitInfo]:
        """Levenberg-Marquardt on the weighted landmark error (residuals in units of the inter-ocular distance).

        ``w_identity`` / ``w_expression`` weight the L2 priors on alpha / beta against the squared residual
        in IOD units; ``beta_ref`` with ``w_smooth`` pulls beta towards a reference (temporal smoothing),
        ``alpha_ref`` with ``w_alpha_ref`` alpha (keeping a photometric estimate). ``shape_ref``
        (``[K+E]`` stacked alpha, beta) with ``w_shape_ref`` pulls both with the quadratic form
        ``shape_metric`` (``[K+E, K+E]``, e.g. the surface metric of :func:`surface_metric`).
        ``dense_target`` (``[D, 2]`` pixels, after :meth:`enable_dense`) adds the dense term with
        total weight ``w_dense`` times the 68 landmarks' (the reported residual stays the 68's).
        """
        target = np.asarray(target, dtype=np.float64)
        K = np.asarray(K, dtype=np.float64)
        if target.shape != (68, 2):
            raise ValueError(f"target landmarks must be [68,2], got {target.shape}")
        p = self.init_pose(target, K) if params is None else params.copy()
        iod = max(float(np.linalg.norm(target[36] - target[45])), 1.0)
        lw = self.weights if weights is None else np.asarray(weights, np.float64)
        dense = dense_terms(self, dense_target, w_dense, float(lw.sum()))
        data = _Data(
            target if dense is None else np.concatenate([target, dense[1]]),
            np.sqrt(lw if dense is None else np.concatenate([lw, dense[2]]))[:, None] / iod,
            np.array([K[0, 0], K[1, 1]]),
            np.array([K[0, 2], K[1, 2]]),
            np.zeros(0, np.int64) if dense is None else dense[0],
        )
        priors = _Priors(
            self.n_identity, self.n_expression, fit_identity, fit_expression, w_identity,
            w_expression, w_expression_l1, beta_ref, w_smooth, alpha_ref, w_alpha_ref,
            shape_ref, shape_metric, w_shape_ref,
        )  # fmt: skip
        lam = 1e-3
        total = pose_iterations + iterations
        sel = np.arange(68)
        it = 0
        for it in range(total):
            do_shape = it >= pose_iterations and (fit_identity or fit_expression)
            if contour and (it % 2 == 0 or it == total - 1):
                sel = np.concatenate([self.select_contour(p, K), data.extra_rows])
            elif it == 0:
                sel = np.concatenate([sel, data.extra_rows])
            r, X, Xc = self._residual(p, sel, data)
            J = self._jacobian(p, X, Xc, sel, data, do_shape, priors)
            H = J.T @ J
            g = J.T @ r
            x_shape = priors.add_to_normal_equations(H, g, p) if do_shape else np.zeros(0)
            base_cost = priors.cost(float(r @ r), p, do_shape)
            # Expressions at a bound with the gradient pushing outward stay fixed this step.
            free = np.ones(J.shape[1], dtype=bool)
            if do_shape and fit_expression:
                e0 = 6 + (self.n_identity if fit_identity else 0)
                gb = g[e0:]
                free[e0:] = ~(((p.beta <= 0) & (gb > 0)) | ((p.beta >= 1) & (gb < 0)))
            p, lam = self._damped_step(
                p, H, g, free, lam, x_shape, do_shape, sel, data, priors, base_cost
            )
        sel = sel[:68]
        uv, _ = self.project(p, K, sel)
        res = float(np.linalg.norm(uv - target, axis=1).mean())
        info = LandmarkFitInfo(self.rows[sel], uv, res, it + 1)
        return p, info

    def _residual(
        self, pp: LandmarkParams, sel: np.ndarray, data: _Data
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Weighted residuals ``[2N]``, model points ``[N,3]`` and camera points of ``sel``."""
        X = self.shape_rows(pp.alpha, pp.beta)[sel]
        Xc = model_to_camera_np(X, pp.R, pp.t)
        uv = Xc[:, :2] / Xc[:, 2:3] * data.f + data.c
        r = ((uv - data.target) * data.w).ravel()
        return r, X, Xc

    def _jacobian(
        self,
        p: LandmarkParams,
        X: np.ndarray,
        Xc: np.ndarray,
        sel: np.ndarray,
        data: _Data,
        do_shape: bool,
        priors: _Priors,
    ) -> np.ndarray:
        """``[2N, 6 (+K) (+E)]``: d residual / d (rotation increment, translation, shape)."""
        f = data.f
        n = len(sel)
        # d uv / d Xc  [N,2,3]
        z = Xc[:, 2]
        P = np.zeros((n, 2, 3))
        P[:, 0, 0] = f[0] / z
        P[:, 1, 1] = f[1] / z
        P[:, 0, 2] = -f[0] * Xc[:, 0] / z**2
        P[:, 1, 2] = -f[1] * Xc[:, 1] / z**2
        P *= data.w[:, :, None]
        PF = P * FLIP_NP  # d uv / d (R X + t)
        RX = X @ p.R.T
        # d(RX)/dw = -[RX]_x
        skew = np.zeros((n, 3, 3))
        skew[:, 0, 1], skew[:, 0, 2] = RX[:, 2], -RX[:, 1]
        skew[:, 1, 0], skew[:, 1, 2] = -RX[:, 2], RX[:, 0]
        skew[:, 2, 0], skew[:, 2, 1] = RX[:, 1], -RX[:, 0]
        cols = [PF @ skew, PF]
        if do_shape:
            B = self.basis[sel]  # [N,3,K+E]; only the fitted columns (batched matmul, not einsum)
            if not priors.fit_identity:
                B = B[:, :, self.n_identity :]
            elif not priors.fit_expression:
                B = B[:, :, : self.n_identity]
            cols.append(PF @ (p.R @ B))
        return np.concatenate(cols, axis=2).reshape(2 * n, -1)

    def _damped_step(
        self,
        p: LandmarkParams,
        H: np.ndarray,
        g: np.ndarray,
        free: np.ndarray,
        lam: float,
        x_shape: np.ndarray,
        do_shape: bool,
        sel: np.ndarray,
        data: _Data,
        priors: _Priors,
        base_cost: float,
    ) -> tuple[LandmarkParams, float]:
        """One Levenberg-Marquardt step: up to 6 damping levels until the cost does not rise.

        Returns the (possibly unchanged) parameters and the updated damping ``lam``.
        """
        Kn = self.n_identity
        for _ in range(6):
            Hd = H[np.ix_(free, free)].copy()
            Hd[np.diag_indices_from(Hd)] *= 1 + lam
            Hd[np.diag_indices_from(Hd)] += 1e-9
            step = np.zeros(H.shape[1])
            try:
                step[free] = -np.linalg.solve(Hd, g[free])
            except np.linalg.LinAlgError:
                lam *= 10
                continue
            q = p.copy()
            q.R = so3_exp(step[:3]) @ p.R
            q.t = p.t + step[3:6]
            if do_shape:
                xs = x_shape + step[6:]
                if priors.fit_identity:
                    q.alpha = xs[:Kn]
                    xs = xs[Kn:]
                if priors.fit_expression:
                    q.beta = np.clip(xs, 0.0, 1.0)
            rq, _, Xcq = self._residual(q, sel, data)
            if np.all(Xcq[:, 2] > 1e-3) and priors.cost(float(rq @ rq), q, do_shape) <= base_cost:
                return q, max(lam / 3, 1e-7)
            lam *= 8
        return p, lam


@dataclass
class _Data:
    """The landmark targets of one solve and their scaling."""

    target: np.ndarray  # [N,2] pixels (the 68 landmarks, then any dense points)
    w: np.ndarray  # [N,1] per-point residual scale (sqrt weight / IOD)
    f: np.ndarray  # [2] focal lengths
    c: np.ndarray  # [2] principal point
    extra_rows: np.ndarray  # [N-68] solver rows of the dense points


@dataclass
class _Priors:
    """Which shape coefficients one solve fits and the priors on them (see ``solve``)."""

    n_identity: int
    n_expression: int
    fit_identity: bool
    fit_expression: bool
    w_identity: float
    w_expression: float
    w_expression_l1: float
    beta_ref: np.ndarray | None
    w_smooth: float
    alpha_ref: np.ndarray | None
    w_alpha_ref: float
    shape_ref: np.ndarray | None
    shape_metric: np.ndarray | None
    w_shape_ref: float

    def __post_init__(self) -> None:
        self.use_metric = (
            self.shape_ref is not None and self.shape_metric is not None and self.w_shape_ref > 0
        )
        if self.use_metric:
            Kn, En = self.n_identity, self.n_expression
            self.fit_idx = np.concatenate(
                ([np.arange(Kn)] if self.fit_identity else [])
                + ([Kn + np.arange(En)] if self.fit_expression else [])
                + [np.zeros(0, np.int64)]
            ).astype(np.int64)
            self.M = np.asarray(self.shape_metric, np.float64)[np.ix_(self.fit_idx, self.fit_idx)]

    def cost(self, e: float, pp: LandmarkParams, do_shape: bool) -> float:
        """Data cost ``e`` plus the priors of ``pp`` (only in shape iterations)."""
        if do_shape:
            if self.fit_identity:
                e += self.w_identity * float(pp.alpha @ pp.alpha)
                if self.alpha_ref is not None and self.w_alpha_ref > 0:
                    d = pp.alpha - self.alpha_ref
                    e += self.w_alpha_ref * float(d @ d)
            if self.fit_expression:
                e += self.w_expression * float(pp.beta @ pp.beta) + self.w_expression_l1 * float(
                    pp.beta.sum()
                )
                if self.beta_ref is not None and self.w_smooth > 0:
                    d = pp.beta - self.beta_ref
                    e += self.w_smooth * float(d @ d)
            if self.use_metric:
                d = np.concatenate([pp.alpha, pp.beta])[self.fit_idx] - self.shape_ref[self.fit_idx]
                e += self.w_shape_ref * float(d @ self.M @ d)
        return e

    def add_to_normal_equations(
        self, H: np.ndarray, g: np.ndarray, p: LandmarkParams
    ) -> np.ndarray:
        """Add the priors' gradient to ``g`` and curvature to ``H`` (in place, shape columns 6:);
        returns the fitted shape coefficients stacked as the columns are."""
        parts, diag = [], []
        if self.fit_identity:
            ga = self.w_identity * p.alpha
            da = np.full(self.n_identity, self.w_identity)
            if self.alpha_ref is not None and self.w_alpha_ref > 0:
                ga = ga + self.w_alpha_ref * (p.alpha - self.alpha_ref)
                da = da + self.w_alpha_ref
            parts.append(ga)
            diag.append(da)
        if self.fit_expression:
            gb = self.w_expression * p.beta + 0.5 * self.w_expression_l1
            db = np.full(self.n_expression, self.w_expression)
            if self.beta_ref is not None and self.w_smooth > 0:
                gb = gb + self.w_smooth * (p.beta - self.beta_ref)
                db = db + self.w_smooth
            parts.append(gb)
            diag.append(db)
        g[6:] += np.concatenate(parts)
        prior_diag = np.zeros(H.shape[0])
        prior_diag[6:] = np.concatenate(diag)
        H[np.diag_indices_from(H)] += prior_diag
        x_shape = np.concatenate(
            ([p.alpha] if self.fit_identity else []) + ([p.beta] if self.fit_expression else [])
        )
        if self.use_metric:
            d = x_shape - self.shape_ref[self.fit_idx]
            g[6:] += self.w_shape_ref * (self.M @ d)
            H[6:, 6:] += self.w_shape_ref * self.M
        return x_shape
