"""3DMM fitting by analysis-by-synthesis: the source photo once, driving frames per frame.

Camera: a pinhole with a FIXED field of view, the project default ``jr2net.face.camera.default_intrinsics``
(focal = 1.92 x the image's shorter side, about 29 degrees across it; principal point at the centre).
Estimating the focal from 68 landmarks of one photo is ill-conditioned (it trades off against the head's
distance); a fixed, plausible portrait FOV keeps the fit stable, and the shape (mm) is unaffected beyond a
slight perspective difference.

Landmark stage (source and driving): Levenberg-Marquardt on the landmark reprojection error over pose
(rotation increments + translation), identity (first ``n_identity`` modes, prior N(0,1)) and expression
(bounds [0,1] by an active set, L2 prior plus an L1 sparsity term: 53 blendshapes can explain landmark
noise in many ways, the L1 keeps the few that matter), with closed-form normal equations on the landmark
rows of the bases only. The 2D jaw landmarks 0-16 (except the chin, 8) are silhouette points: for each
one the model offers a slab of candidate vertices (a cut through the cheek from the landmark vertex back
to the model's ``jawline_left/right`` contour) and, every other iteration, the front-facing candidate
lying furthest outward in the image is the one matched (the occluding contour).

Source fit (``SourceFitter``): (1) a loose landmark fit; its residual gives the landmark noise variance
sigma^2 (IOD units; beyond ``landmark_noise_ref`` it is inflated by (sigma^2/ref)^``landmark_noise_power``,
because large residuals mean a coherent detector error rather than independent noise; then the
refinement below also runs ``photo_iterations_max`` steps instead of ``photo_iterations``), and (2) a short second pass uses
MAP-consistent priors (a unit-variance prior weighs sigma^2 against the squared residuals), so
inconsistent landmarks shrink the shape towards the mean.
(3) Appearance in closed form: the face submesh is rendered in a square crop (``crop_size``) around the
face; on the skin pixels (landmark outline minus brows, eyes and mouth) the image is
``(mean + B gamma) * (H theta)``, linear in the SH light theta for fixed albedo and in gamma for fixed
light, so a few alternating ridge solves with Huber reweighting give albedo and light. (4) Photometric
refinement: ``photo_iterations`` Adam steps on identity, expression, albedo, light and pose with a robust
per-pixel colour loss, a Charbonnier landmark loss (quadratic up to ``photo_landmark_robust`` IOD,
linear beyond, so far-off detections pull less) weighted by ``photo_landmark_weight / sigma^2``, and the
priors; then the appearance is re-solved. (5) A final short landmark pass that changes the photometric
SURFACE as little as the landmarks require: its proximal term is the quadratic form of
:func:`surface_metric` (mean squared similarity-free displacement of the face surface, plus a small
``final_metric_ridge`` in coefficient space) towards the photometric coefficients, weighted
``final_landmark_weight * sigma^2``, so the landmarks are met with coefficient changes that barely move
the surface (an alignment-invariant change, a local expression) rather than by reshaping the face; its
landmark term is reweighted by 1 / distance (floored at ``final_irls_floor``), i.e. it minimises the
mean landmark distance the tolerance is measured in, not the squared one that a few far-off points
dominate; expressions get a stronger L1 (``final_expression_l1``) so that landmark noise is not
explained by spurious blendshapes. If the mean residual stays above ``final_residual_iod`` the proximal
weight is multiplied by ``final_relax_factor``, at most ``final_max_relax`` times (a bounded discrepancy
principle): a good detection is fitted to within the tolerance, while landmarks that disagree with the
model and the photo by far more (a coherent detector error) cannot drag the shape all the way.
The final-pass defaults and ``photo_landmark_robust`` were chosen on synthetic faces of a seed (1)
disjoint from the benchmark's (0), together with the shared photos.
Measured (benchmarks/fitting.py, benchmarks/results/fitting.json, 100 synthetic ICT faces, seed 0): dlib's
landmarks on the renders are ~7.8 % IOD off, coherently (jaw ~14 %, brows ~9 %); with the true 2D
landmarks the landmark stage alone reaches 0.84 mm median mesh RMSE. The defaults reach 1.77 mm median
(p80 2.27; the mean-shape pose-only baseline is 2.28 mm) and expression MAE 0.068 (0.066 for always
zero); the photometric result without step (5) would be 1.48 mm, but then 7 of the 10 shared real
photos stay above 3 % IOD landmark residual (up to 5.6 %). With step (5) every real photo ends below
3 % (worst 2.81 %, alex-lacamoire; generic model worst 2.59 %). The previous final pass (proximal
term in coefficient space, plain least squares) gave 2.26 mm for a real-photo worst of 2.95 %.
Source fit median 0.52 s (512^2, incl. detection); driving frame (landmarks + fit) 7.5 ms median.

Driving fit (``DrivingFitter``): the landmark stage only, pose + expression, warm-started from the
previous frame (3 iterations) with a light pull of beta towards the previous frame.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from jr2net.face.camera import crop_intrinsics, default_intrinsics, model_to_camera, project
from jr2net.face.coeffs import FaceCoefficients
from jr2net.face.landmarks import interocular_distance
from jr2net.face.sh import NEUTRAL_LIGHT_DC, sh_basis
from jr2net.io.images import check_image

if TYPE_CHECKING:
    from jr2net.face.landmarks import FaceDetection
    from jr2net.face.model import FaceModel

log = logging.getLogger("jr2net.face")

JAW = np.arange(17)
CHIN = 8
# Per-landmark weights of the 68 iBUG points: the jaw is a sliding silhouette and dlib places it
# loosely, brows sit on hair; eyes, nose and mouth are the reliable ones.
LANDMARK_WEIGHTS = np.ones(68, dtype=np.float64)
LANDMARK_WEIGHTS[0:17] = 0.5
LANDMARK_WEIGHTS[17:27] = 0.6
LANDMARK_WEIGHTS[27:31] = 0.8


# ---- rotations (numpy, same convention as jr2net.face.camera: R = Rz(roll) Ry(yaw) Rx(pitch)) ----


def euler_to_matrix(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix of (pitch, yaw, roll) radians: ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)``."""
    p, y, r = (float(a) for a in angles)
    cp, sp, cy, sy, cr, sr = (
        math.cos(p),
        math.sin(p),
        math.cos(y),
        math.sin(y),
        math.cos(r),
        math.sin(r),
    )
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ ry @ rx


def matrix_to_euler(R: np.ndarray) -> np.ndarray:
    """Inverse of :func:`euler_to_matrix` (yaw in [-90, 90] degrees)."""
    sy = -float(R[2, 0])
    yaw = math.asin(max(-1.0, min(1.0, sy)))
    if abs(sy) < 0.999999:
        pitch = math.atan2(R[2, 1], R[2, 2])
        roll = math.atan2(R[1, 0], R[0, 0])
    else:  # gimbal lock: put everything in roll
        pitch = 0.0
        roll = math.atan2(-R[0, 1], R[1, 1])
    return np.array([pitch, yaw, roll])


def _so3_exp(w: np.ndarray) -> np.ndarray:
    theta = float(np.linalg.norm(w))
    wx = np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]])
    if theta < 1e-12:
        return np.eye(3) + wx
    a = math.sin(theta) / theta
    b = (1 - math.cos(theta)) / theta**2
    return np.eye(3) + a * wx + b * (wx @ wx)


_FLIP = np.array([1.0, -1.0, -1.0])


def _vertex_normals_np(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    fn = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    n = np.zeros_like(verts)
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


# ---- landmark stage ---------------------------------------------------------------------------


@dataclass
class LandmarkParams:
    """Pose and shape coefficients of the landmark solver (numpy, float64)."""

    R: np.ndarray  # [3,3] model rotation (before the OpenCV flip)
    t: np.ndarray  # [3]
    alpha: np.ndarray  # [K]
    beta: np.ndarray  # [E]

    def copy(self) -> LandmarkParams:
        return LandmarkParams(self.R.copy(), self.t.copy(), self.alpha.copy(), self.beta.copy())

    @property
    def angles(self) -> np.ndarray:
        return matrix_to_euler(self.R)


@dataclass
class LandmarkFitInfo:
    """Diagnostics of one landmark solve."""

    vertex_ids: (
        np.ndarray
    )  # [68] model vertex ids matched to the 68 landmarks (jaw: the chosen contour)
    projected: np.ndarray  # [68,2] model landmarks projected
    residual_px: float  # mean Euclidean landmark distance (pixels, unweighted)
    iterations: int


def _build_contour_candidates(
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
        self.candidates = _build_contour_candidates(
            vertices, faces, landmarks68, jl, jr, region_mask
        )
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
        self.normals = _vertex_normals_np(vertices, faces)[self.rows]
        self.landmarks68 = landmarks68
        self.weights = LANDMARK_WEIGHTS.copy()
        # Outward direction of each jaw landmark (from the head's vertical axis) to pick the silhouette.
        centre = vertices[landmarks68].mean(axis=0)
        out = vertices[landmarks68[:17]] - np.array([0.0, centre[1], centre[2] - 60.0])
        self.jaw_outward = out / np.linalg.norm(out, axis=1, keepdims=True)
        iod_model = np.linalg.norm(vertices[landmarks68[36]] - vertices[landmarks68[45]])
        self.model_iod = float(iod_model)

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
        Xc = (X @ params.R.T + params.t) * _FLIP
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
        Xc = (X @ params.R.T + params.t) * _FLIP
        n = (self.normals @ params.R.T) * _FLIP
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
            o3 = ((self.jaw_outward[i] @ params.R.T) * _FLIP) * 5.0
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
    ) -> tuple[LandmarkParams, LandmarkFitInfo]:
        """Levenberg-Marquardt on the weighted landmark error (residuals in units of the inter-ocular distance).

        ``w_identity`` / ``w_expression`` weight the L2 priors on alpha / beta against the squared residual
        in IOD units; ``beta_ref`` with ``w_smooth`` pulls beta towards a reference (temporal smoothing),
        ``alpha_ref`` with ``w_alpha_ref`` alpha (keeping a photometric estimate). ``shape_ref``
        (``[K+E]`` stacked alpha, beta) with ``w_shape_ref`` pulls both with the quadratic form
        ``shape_metric`` (``[K+E, K+E]``, e.g. the surface metric of :func:`surface_metric`).
        """
        target = np.asarray(target, dtype=np.float64)
        K = np.asarray(K, dtype=np.float64)
        if target.shape != (68, 2):
            raise ValueError(f"target landmarks must be [68,2], got {target.shape}")
        p = self.init_pose(target, K) if params is None else params.copy()
        iod = max(float(np.linalg.norm(target[36] - target[45])), 1.0)
        lw = self.weights if weights is None else np.asarray(weights, np.float64)
        w = np.sqrt(lw)[:, None] / iod  # per-landmark residual scale
        Kn, En = self.n_identity, self.n_expression
        f = np.array([K[0, 0], K[1, 1]])
        c = np.array([K[0, 2], K[1, 2]])
        lam = 1e-3
        total = pose_iterations + iterations
        sel = np.arange(68)
        use_metric = shape_ref is not None and shape_metric is not None and w_shape_ref > 0
        if use_metric:
            fit_idx = np.concatenate(
                ([np.arange(Kn)] if fit_identity else [])
                + ([Kn + np.arange(En)] if fit_expression else [])
                + [np.zeros(0, np.int64)]
            ).astype(np.int64)
            M = np.asarray(shape_metric, np.float64)[np.ix_(fit_idx, fit_idx)]

        def residual(pp: LandmarkParams, sel: np.ndarray):
            X = self.shape_rows(pp.alpha, pp.beta)[sel]
            Xc = (X @ pp.R.T + pp.t) * _FLIP
            uv = Xc[:, :2] / Xc[:, 2:3] * f + c
            r = ((uv - target) * w).ravel()
            return r, X, Xc

        def cost(pp: LandmarkParams, r: np.ndarray, do_shape: bool) -> float:
            e = float(r @ r)
            if do_shape:
                if fit_identity:
                    e += w_identity * float(pp.alpha @ pp.alpha)
                    if alpha_ref is not None and w_alpha_ref > 0:
                        d = pp.alpha - alpha_ref
                        e += w_alpha_ref * float(d @ d)
                if fit_expression:
                    e += w_expression * float(pp.beta @ pp.beta) + w_expression_l1 * float(
                        pp.beta.sum()
                    )
                    if beta_ref is not None and w_smooth > 0:
                        d = pp.beta - beta_ref
                        e += w_smooth * float(d @ d)
                if use_metric:
                    d = np.concatenate([pp.alpha, pp.beta])[fit_idx] - shape_ref[fit_idx]
                    e += w_shape_ref * float(d @ M @ d)
            return e

        it = 0
        for it in range(total):
            do_shape = it >= pose_iterations and (fit_identity or fit_expression)
            if contour and (it % 2 == 0 or it == total - 1):
                sel = self.select_contour(p, K)
            r, X, Xc = residual(p, sel)
            # d uv / d Xc  [68,2,3]
            z = Xc[:, 2]
            P = np.zeros((68, 2, 3))
            P[:, 0, 0] = f[0] / z
            P[:, 1, 1] = f[1] / z
            P[:, 0, 2] = -f[0] * Xc[:, 0] / z**2
            P[:, 1, 2] = -f[1] * Xc[:, 1] / z**2
            P *= w[:, :, None]
            PF = P * _FLIP  # d uv / d (R X + t)
            RX = X @ p.R.T
            # d(RX)/dw = -[RX]_x
            skew = np.zeros((68, 3, 3))
            skew[:, 0, 1], skew[:, 0, 2] = RX[:, 2], -RX[:, 1]
            skew[:, 1, 0], skew[:, 1, 2] = -RX[:, 2], RX[:, 0]
            skew[:, 2, 0], skew[:, 2, 1] = RX[:, 1], -RX[:, 0]
            cols = [np.einsum("nij,njk->nik", PF, skew), PF]
            if do_shape:
                B = self.basis[sel]  # [68,3,K+E]
                RB = np.einsum("ij,njk->nik", p.R, B)
                JB = np.einsum("nij,njk->nik", PF, RB)
                if not fit_identity:
                    JB = JB[:, :, Kn:]
                elif not fit_expression:
                    JB = JB[:, :, :Kn]
                cols.append(JB)
            J = np.concatenate(cols, axis=2).reshape(136, -1)
            H = J.T @ J
            g = J.T @ r
            prior_diag = np.zeros(J.shape[1])
            x_shape = np.zeros(0)
            if do_shape:
                parts, diag = [], []
                if fit_identity:
                    ga = w_identity * p.alpha
                    da = np.full(Kn, w_identity)
                    if alpha_ref is not None and w_alpha_ref > 0:
                        ga = ga + w_alpha_ref * (p.alpha - alpha_ref)
                        da = da + w_alpha_ref
                    parts.append(ga)
                    diag.append(da)
                if fit_expression:
                    gb = w_expression * p.beta + 0.5 * w_expression_l1
                    db = np.full(En, w_expression)
                    if beta_ref is not None and w_smooth > 0:
                        gb = gb + w_smooth * (p.beta - beta_ref)
                        db = db + w_smooth
                    parts.append(gb)
                    diag.append(db)
                g[6:] += np.concatenate(parts)
                prior_diag[6:] = np.concatenate(diag)
                x_shape = np.concatenate(
                    ([p.alpha] if fit_identity else []) + ([p.beta] if fit_expression else [])
                )
            H[np.diag_indices_from(H)] += prior_diag
            if do_shape and use_metric:
                d = x_shape - shape_ref[fit_idx]
                g[6:] += w_shape_ref * (M @ d)
                H[6:, 6:] += w_shape_ref * M
            base_cost = cost(p, r, do_shape)
            # Expressions at a bound with the gradient pushing outward stay fixed this step.
            free = np.ones(J.shape[1], dtype=bool)
            if do_shape and fit_expression:
                e0 = 6 + (Kn if fit_identity else 0)
                gb = g[e0:]
                free[e0:] = ~(((p.beta <= 0) & (gb > 0)) | ((p.beta >= 1) & (gb < 0)))
            for _ in range(6):
                Hd = H[np.ix_(free, free)].copy()
                Hd[np.diag_indices_from(Hd)] *= 1 + lam
                Hd[np.diag_indices_from(Hd)] += 1e-9
                step = np.zeros(J.shape[1])
                try:
                    step[free] = -np.linalg.solve(Hd, g[free])
                except np.linalg.LinAlgError:
                    lam *= 10
                    continue
                q = p.copy()
                q.R = _so3_exp(step[:3]) @ p.R
                q.t = p.t + step[3:6]
                if do_shape:
                    xs = x_shape + step[6:]
                    if fit_identity:
                        q.alpha = xs[:Kn]
                        xs = xs[Kn:]
                    if fit_expression:
                        q.beta = np.clip(xs, 0.0, 1.0)
                rq, _, Xcq = residual(q, sel)
                if np.all(Xcq[:, 2] > 1e-3) and cost(q, rq, do_shape) <= base_cost:
                    p = q
                    lam = max(lam / 3, 1e-7)
                    break
                lam *= 8
        uv, _ = self.project(p, K, sel)
        res = float(np.linalg.norm(uv - target, axis=1).mean())
        info = LandmarkFitInfo(self.rows[sel], uv, res, it + 1)
        return p, info


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


@dataclass
class _Timer:
    timings: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, t0: float) -> float:
        t1 = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + (t1 - t0)
        return t1


# ---- results ----------------------------------------------------------------------------------


@dataclass
class FitResult:
    """One fitted face: coefficients (batch 1), full-image intrinsics and diagnostics."""

    coeffs: FaceCoefficients
    K: torch.Tensor  # [1,3,3] intrinsics of the full image
    image_size: tuple[int, int]  # (H, W)
    detection: FaceDetection  # the detected 68 landmarks
    landmarks_fit: np.ndarray  # [68,2] model landmarks projected (jaw: matched contour vertices)
    residual_px: float  # mean landmark distance, pixels
    residual_iod: float  # residual_px / inter-ocular distance
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    landmark_vertices: np.ndarray | None = None  # [68] model vertex ids matched (jaw contour)

    def to_dict(self, expression_names: list[str] | None = None) -> dict:
        """JSON-friendly summary: coefficients, K, image size, landmarks and residuals."""
        return {
            "coefficients": self.coeffs.to_dict(expression_names),
            "K": self.K[0].tolist(),
            "image_size": list(self.image_size),
            "box": [float(v) for v in self.detection.box],
            "landmarks_detected": np.asarray(self.detection.landmarks).round(2).tolist(),
            "landmarks_fit": np.asarray(self.landmarks_fit).round(2).tolist(),
            "residual_px": self.residual_px,
            "residual_iod": self.residual_iod,
            "timings": dict(self.timings),
        }


def _iod(landmarks: np.ndarray) -> float:
    """Inter-ocular distance, floored so degenerate detections never divide by zero."""
    return max(interocular_distance(landmarks), 1e-6)


def _params_to_coeffs(
    p: LandmarkParams, model: FaceModel, n_albedo: int, identity: torch.Tensor | None = None
) -> FaceCoefficients:
    c = FaceCoefficients.zeros(model, n_identity=len(p.alpha), n_albedo=n_albedo)
    c.identity = (
        torch.as_tensor(p.alpha, dtype=torch.float32)[None]
        if identity is None
        else identity.clone()
    )
    c.expression = torch.as_tensor(p.beta, dtype=torch.float32)[None]
    c.angles = torch.as_tensor(matrix_to_euler(p.R), dtype=torch.float32)[None]
    c.translation = torch.as_tensor(p.t, dtype=torch.float32)[None]
    return c


def _skin_polygon(lm: np.ndarray) -> np.ndarray:
    """Face-skin outline from 68 landmarks: the jaw plus the brows lifted onto the forehead."""
    jaw = lm[0:17]
    brows = lm[17:27][::-1].copy()
    up = lm[27] - lm[8]  # chin -> nose bridge, the face's up direction
    brows += 0.18 * up
    return np.concatenate([jaw, brows], axis=0)


# ---- source fitting ---------------------------------------------------------------------------


class SourceFitter:
    """Fits one photo: detection, landmark Gauss-Newton, then a photometric refinement.

    Stages and weights are described in the module docstring; the defaults were tuned on synthetic
    faces (benchmarks/fitting.py; the final-pass ones on seed 1, not the benchmark's seed 0) and the
    shared photos. ``w_*`` weigh the landmark
    stage's priors in squared-IOD units (``prior_scale_*`` times the estimated noise variance in its
    second pass), ``photo_*`` the photometric refinement. ``photometric=False`` stops after the
    landmark stage (albedo = model mean, neutral light). ``time_budget_s`` caps the refinement loop.
    Not thread-safe (one fitter per thread); the model may be shared.
    """

    def __init__(
        self,
        model: FaceModel,
        *,
        n_identity: int = 80,
        n_albedo: int | None = None,
        photometric: bool = True,
        crop_size: int = 128,
        photo_iterations: int = 20,
        photo_lr: float = 2.0,
        photo_landmark_weight: float = 3e-2,
        photo_landmark_robust: float = 0.015,
        photo_expression_l1: float = 5e-3,
        photo_prior_identity: float = 4.4e-4,
        photo_pose_lr: float = 1.0,
        final_landmark_weight: float = 48.0,
        photo_prior_expression: float = 1.3e-4,
        max_pixels: int = 4000,
        landmark_noise_ref: float = 3.5e-4,
        landmark_noise_power: float = 4.0,
        photo_iterations_max: int = 60,
        w_identity: float = 2e-4,
        w_expression: float = 1e-5,
        w_expression_l1: float = 3e-3,
        prior_scale_identity: float = 1.0,
        prior_scale_expression: float = 1.0,
        time_budget_s: float | None = None,
        final_residual_iod: float = 0.027,
        final_max_relax: int = 7,
        final_relax_factor: float = 0.5,
        final_metric_ridge: float = 0.1,
        final_irls_floor: float = 0.01,
        final_expression_l1: float = 2e-2,
    ) -> None:
        self.final_residual_iod = float(final_residual_iod)
        self.final_max_relax = int(final_max_relax)
        self.final_relax_factor = float(final_relax_factor)
        self.final_metric_ridge = float(final_metric_ridge)
        self.final_irls_floor = float(final_irls_floor)
        self.final_expression_l1 = float(final_expression_l1)
        self._metric: np.ndarray | None = None

        self.model = model
        self.solver = LandmarkSolver.from_model(model, n_identity=n_identity)
        self.n_identity = self.solver.n_identity
        self.photometric = bool(photometric)
        self.crop_size = int(crop_size)
        self.photo_iterations = int(photo_iterations)
        self.max_pixels = int(max_pixels)
        self.landmark_noise_ref = float(landmark_noise_ref)
        self.landmark_noise_power = float(landmark_noise_power)
        self.photo_iterations_max = int(photo_iterations_max)
        self.photo_lr = float(photo_lr)
        self.photo_landmark_weight = float(photo_landmark_weight)
        self.photo_landmark_robust = float(photo_landmark_robust)
        self.photo_expression_l1 = float(photo_expression_l1)
        self.photo_prior_identity = float(photo_prior_identity)
        self.photo_pose_lr = float(photo_pose_lr)
        self.final_landmark_weight = float(final_landmark_weight)
        self.photo_prior_expression = float(photo_prior_expression)
        self.w_identity = float(w_identity)
        self.w_expression = float(w_expression)
        self.w_expression_l1 = float(w_expression_l1)
        self.prior_scale_identity = float(prior_scale_identity)
        self.prior_scale_expression = float(prior_scale_expression)
        self.time_budget_s = time_budget_s
        self._n_albedo = n_albedo
        self._render_model: FaceModel | None = None
        self._renderer = None
        self._rows_t: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def n_albedo(self) -> int:
        return (
            self.model.n_albedo
            if self._n_albedo is None
            else min(self._n_albedo, self.model.n_albedo)
        )

    def _render_setup(self):
        if self._renderer is None:
            from jr2net.face.renderer import FaceRenderer

            sub = self.model
            if self.model.region is not None and "face" in self.model.region_names:
                sub = self.model.subset(["face"])
            self._render_model = sub
            self._renderer = FaceRenderer(sub)
        return self._render_model, self._renderer

    def fit(self, image: np.ndarray, detection: FaceDetection | None = None) -> FitResult:
        """Fit the largest face of ``image`` (uint8 HWC RGB); raises NoFaceError when there is none."""
        image = check_image(image)
        timer = _Timer()
        t0 = time.perf_counter()
        if detection is None:
            from jr2net.face.landmarks import detect_largest_face

            detection = detect_largest_face(image)
        t0 = timer.add("detect", t0)
        H, W = image.shape[:2]
        K = default_intrinsics((H, W))
        Kn = K[0].double().numpy()
        target = np.asarray(detection.landmarks, dtype=np.float64)
        p, info = self.solver.solve(
            target,
            Kn,
            w_identity=self.w_identity,
            w_expression=self.w_expression,
            w_expression_l1=self.w_expression_l1,
        )
        # MAP priors: the weight of a unit-variance prior against squared residuals is the landmark
        # noise variance, estimated from this loose first fit; a short second pass uses it.
        d2 = np.sum((info.projected - target) ** 2, axis=1) / _iod(target) ** 2
        sigma2 = float(np.clip(d2.mean() / 2.0, 5e-5, 1e-2))
        inflation = 1.0
        if self.landmark_noise_ref > 0:
            # Residuals well above what a good detection leaves mean the detector erred coherently
            # (not independent noise): trust the landmarks steeply less beyond that level.
            inflation = max(1.0, sigma2 / self.landmark_noise_ref) ** self.landmark_noise_power
            sigma2 *= inflation
        if self.prior_scale_identity > 0 or self.prior_scale_expression > 0:
            p, info = self.solver.solve(
                target,
                Kn,
                p,
                iterations=8,
                pose_iterations=0,
                w_identity=max(self.w_identity, self.prior_scale_identity * sigma2),
                w_expression=max(self.w_expression, self.prior_scale_expression * sigma2),
                w_expression_l1=self.w_expression_l1,
            )
        t0 = timer.add("landmarks", t0)
        coeffs = _params_to_coeffs(p, self.model, self.n_albedo)
        vid = info.vertex_ids
        if self.photometric:
            iterations = self.photo_iterations if inflation < 2.0 else self.photo_iterations_max
            coeffs, vid = self._photometric(image, K, target, coeffs, p, timer, sigma2, iterations)
            t0 = time.perf_counter()
            if self.final_landmark_weight > 0:
                coeffs, info = self._final_pass(target, Kn, coeffs, sigma2)
                vid = info.vertex_ids
                t0 = timer.add("landmarks_final", t0)
        lm_fit = self._project_vertices(coeffs, K, vid)
        res = float(np.linalg.norm(lm_fit - target, axis=1).mean())
        timer.timings["total"] = sum(timer.timings.values())
        return FitResult(
            coeffs=coeffs.detach(),
            K=K,
            image_size=(H, W),
            detection=detection,
            landmarks_fit=lm_fit,
            residual_px=res,
            residual_iod=res / _iod(target),
            timings=timer.timings,
            landmark_vertices=vid,
        )

    def _final_pass(
        self, target: np.ndarray, Kn: np.ndarray, coeffs: FaceCoefficients, sigma2: float
    ) -> tuple[FaceCoefficients, LandmarkFitInfo]:
        """Back to the landmarks, changing the photometric surface as little as they allow.

        Proximal term: the surface metric (mm^2 of similarity-free face displacement, plus a small
        ridge in coefficient space) towards the photometric coefficients. Landmark term: reweighted
        least squares by 1 / distance (floored), i.e. the mean landmark distance that the residual
        tolerance is measured in, so a few far-off detections do not drag the shape. The proximal
        weight is loosened by ``final_relax_factor`` until the residual is within
        ``final_residual_iod`` or the relaxations run out.
        """
        if self._metric is None:
            G = surface_metric(self.model, self.n_identity)
            self._metric = G + self.final_metric_ridge * np.eye(len(G))
        q = LandmarkParams(
            euler_to_matrix(coeffs.angles[0].double().numpy()),
            coeffs.translation[0].double().numpy(),
            coeffs.identity[0].double().numpy(),
            coeffs.expression[0].double().numpy(),
        )
        x0 = np.concatenate([q.alpha, q.beta])
        iod = _iod(target)
        w_ref = self.final_landmark_weight * sigma2
        for _ in range(self.final_max_relax + 1):
            for _irls in range(2):
                sel = self.solver.select_contour(q, Kn)
                uv, _ = self.solver.project(q, Kn, sel)
                d = np.linalg.norm(uv - target, axis=1) / iod
                lw = 1.0 / np.maximum(d, self.final_irls_floor)
                if float(d @ d) > 1e-12:  # same data term at the start
                    lw *= float(d @ d) / float(lw @ d**2)
                else:
                    lw = np.ones(68)
                q, info = self.solver.solve(
                    target,
                    Kn,
                    q,
                    iterations=6,
                    pose_iterations=0,
                    w_identity=self.w_identity,
                    w_expression=self.w_expression,
                    w_expression_l1=self.final_expression_l1,
                    shape_ref=x0,
                    shape_metric=self._metric,
                    w_shape_ref=w_ref,
                    weights=lw,
                )
            # Discrepancy principle: loosen the pull towards the photometric solution until
            # the landmark residual is within the tolerance a good detection leaves.
            if info.residual_px / iod <= self.final_residual_iod:
                break
            w_ref *= self.final_relax_factor
        coeffs.identity = torch.as_tensor(q.alpha, dtype=torch.float32)[None]
        coeffs.expression = torch.as_tensor(q.beta, dtype=torch.float32)[None]
        coeffs.angles = torch.as_tensor(matrix_to_euler(q.R), dtype=torch.float32)[None]
        coeffs.translation = torch.as_tensor(q.t, dtype=torch.float32)[None]
        return coeffs, info

    def _project_vertices(
        self, coeffs: FaceCoefficients, K: torch.Tensor, vid: np.ndarray
    ) -> np.ndarray:
        X = self._rows_shape(vid, coeffs.identity, coeffs.expression)
        Xc = model_to_camera(X, coeffs.angles, coeffs.translation)
        return project(Xc, K)[0].detach().double().numpy()

    def _rows_shape(self, vid: np.ndarray, identity: torch.Tensor, expression: torch.Tensor):
        """Model-space positions ``[1,68,3]`` of these vertex ids (all among the solver's rows)."""
        if self._rows_t is None:
            self._rows_t = (
                torch.as_tensor(self.solver.mean, dtype=torch.float32),
                torch.as_tensor(self.solver.basis, dtype=torch.float32),
            )
        mean, basis = self._rows_t
        pos = {int(v): k for k, v in enumerate(self.solver.rows)}
        r = torch.as_tensor([pos[int(v)] for v in vid], dtype=torch.long)
        coef = torch.cat([identity, expression], dim=1)[0]
        k = identity.shape[1]
        B = basis[r]
        B = torch.cat([B[..., :k], B[..., self.n_identity :]], dim=2)
        return (mean[r] + B @ coef)[None]

    def _photometric(
        self,
        image: np.ndarray,
        K: torch.Tensor,
        target: np.ndarray,
        coeffs: FaceCoefficients,
        p: LandmarkParams,
        timer: _Timer,
        sigma2: float,
        iterations: int,
    ) -> tuple[FaceCoefficients, np.ndarray]:
        import torch.nn.functional as F
        from PIL import Image, ImageDraw

        t0 = time.perf_counter()
        sub, renderer = self._render_setup()
        S = self.crop_size
        # Square crop around the landmarks, widened for the forehead.
        lo, hi = target.min(axis=0), target.max(axis=0)
        side = 1.5 * float(max(hi - lo))
        cx, cy = (lo + hi) / 2.0
        cy -= 0.08 * side
        box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        Kc = crop_intrinsics(K, box, S)
        img = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255.0
        Hh, Ww = image.shape[:2]
        # Sample the crop (half-pixel convention of crop_intrinsics), zeros outside the photo.
        js = (torch.arange(S, dtype=torch.float32) + 0.5) * (side / S) + box[0] - 0.5
        is_ = (torch.arange(S, dtype=torch.float32) + 0.5) * (side / S) + box[1] - 0.5
        gx = (js + 0.5) / Ww * 2 - 1
        gy = (is_ + 0.5) / Hh * 2 - 1
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None]
        if side / S > 1.5:  # pre-blur big downscales a little (cheap anti-aliasing)
            k = int(min(side / S, 4))
            img = F.avg_pool2d(img, k, stride=1, padding=k // 2)[..., :Hh, :Ww]
        crop = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        inside = ((grid.abs() <= 1).all(dim=-1)).float()[:, None]
        # Skin region from the landmarks (in crop pixels).
        lm_c = (target - np.array(box[:2])) * (S / side) + (S / side - 1) / 2.0
        pil = Image.new("L", (S, S), 0)
        draw = ImageDraw.Draw(pil)
        draw.polygon([tuple(q) for q in _skin_polygon(lm_c).tolist()], fill=255)
        # Not skin (or not modelled by a smooth albedo): brows, eyes with lashes, the mouth opening.
        band = max(1, int(round(0.22 * _iod(lm_c))))
        for part in (lm_c[17:22], lm_c[22:27]):
            draw.line([tuple(q) for q in part.tolist()], fill=0, width=band, joint="curve")
        for part in (lm_c[36:42], lm_c[42:48], lm_c[60:68]):
            draw.polygon([tuple(q) for q in part.tolist()], fill=0)
            pts = [tuple(q) for q in part.tolist()]
            draw.line(pts + pts[:1], fill=0, width=max(1, band // 3))
        skin = torch.from_numpy(np.asarray(pil) > 0).float()[None, None] * inside
        t0 = timer.add("photo_setup", t0)

        # Landmark rows (jaw contour fixed to the landmark stage's choice).
        vid = self.solver.select_contour(p, K[0].double().numpy())
        vid = self.solver.rows[vid]
        tgt_c = torch.as_tensor(lm_c, dtype=torch.float32)[None]
        lw = torch.as_tensor(self.solver.weights, dtype=torch.float32)[None, :, None]

        c = coeffs.clone()
        with torch.no_grad():
            out = renderer.render(c, Kc, (S, S))
            gamma, light = self._solve_appearance(out, crop, skin, sub)
        c.albedo = gamma
        c.light = light
        t0 = timer.add("appearance", t0)
        if iterations <= 0:
            return c, vid
        params = {
            "identity": c.identity.clone().requires_grad_(True),
            "expression": c.expression.clone().requires_grad_(True),
            "albedo": c.albedo.clone().requires_grad_(True),
            "angles": c.angles.clone().requires_grad_(True),
            "translation": c.translation.clone().requires_grad_(True),
            "light": c.light.clone().requires_grad_(True),
        }
        lrs = {
            "identity": 0.05,
            "expression": 0.02,
            "albedo": 0.05,
            "angles": 0.003 * self.photo_pose_lr,
            "translation": 0.5 * self.photo_pose_lr,
            "light": 0.02,
        }
        opt = torch.optim.Adam(
            [{"params": [v], "lr": lrs[k] * self.photo_lr} for k, v in params.items() if lrs[k] > 0]
        )
        iod_c = _iod(lm_c)
        budget = self.time_budget_s
        start = time.perf_counter()
        for _ in range(iterations):
            cc = FaceCoefficients(**params)
            out = renderer.render(cc, Kc, (S, S))
            mask = out.mask * skin
            diff = torch.sqrt(((out.image - crop) ** 2).sum(dim=1, keepdim=True) + 1e-8)
            l_photo = (diff * mask).sum() / mask.sum().clamp(min=1.0)
            X = self._rows_shape(vid, params["identity"], params["expression"])
            uv = project(model_to_camera(X, params["angles"], params["translation"]), Kc)
            d2 = (((uv - tgt_c) / iod_c) ** 2).sum(dim=-1, keepdim=True)
            rc = self.photo_landmark_robust
            if rc > 0:  # Charbonnier: d^2 near zero, linear beyond rc (far-off landmarks pull less)
                d2 = 2 * rc * (torch.sqrt(d2 + rc * rc) - rc)
            l_lm = (d2 * lw).sum() / 68.0
            l_reg = (
                self.photo_prior_identity * (params["identity"] ** 2).sum()
                + self.photo_prior_expression * (params["expression"] ** 2).sum()
                + 1e-3 * (params["albedo"] ** 2).sum()
                + self.photo_expression_l1 * params["expression"].sum()  # sparse (beta >= 0)
            )
            loss = l_photo + (self.photo_landmark_weight / sigma2) * l_lm + l_reg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                params["expression"].clamp_(0.0, 1.0)
            if budget is not None and time.perf_counter() - start > budget:
                break
        c = FaceCoefficients(**{k: v.detach() for k, v in params.items()})
        with torch.no_grad():  # re-solve the appearance for the refined geometry
            out = renderer.render(c, Kc, (S, S))
            c.albedo, c.light = self._solve_appearance(out, crop, skin, sub)
        timer.add("photometric", t0)
        return c, vid

    def _solve_appearance(
        self, out, crop: torch.Tensor, skin: torch.Tensor, sub: FaceModel, rounds: int = 3
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Albedo coefficients ``[1,G]`` and SH light ``[1,9,3]`` in closed form for fixed geometry.

        The image is ``(mean + B gamma) * (H theta)`` per channel: linear in theta for fixed gamma and
        in gamma for fixed theta, so a few alternating ridge solves (with Huber reweighting) on the
        covered skin pixels replace an iterative optimiser. Priors: gamma ~ N(0, 1) (the albedo
        basis is scaled for it), a tiny ridge on theta.
        """
        G = self.n_albedo
        m = ((out.mask * skin)[0, 0] > 0).flatten()
        idx = torch.nonzero(m).squeeze(1)
        light = torch.zeros(1, 9, 3)
        light[0, 0] = NEUTRAL_LIGHT_DC
        gamma = torch.zeros(1, G)
        if idx.numel() < 50:
            return gamma, light
        if idx.numel() > self.max_pixels:  # even subsample: the solve needs a few thousand pixels
            idx = idx[torch.linspace(0, idx.numel() - 1, self.max_pixels).long()]
        rast = out.rast[0].reshape(-1, 4)[idx]
        fid = rast[:, 3].long() - 1
        tri = sub.faces.long()[fid]  # [N,3]
        w = torch.stack([rast[:, 0], rast[:, 1], 1 - rast[:, 0] - rast[:, 1]], dim=1)  # [N,3]
        alb = sub.albedo
        mean = (alb.mean[tri] * w[..., None]).sum(1)  # [N,3]
        basis = alb.basis[:G].permute(1, 0, 2)  # [V,G,3]
        Bp = (basis[tri] * w[:, :, None, None]).sum(1)  # [N,G,3]
        Hb = sh_basis(out.normals)[0].reshape(9, -1)[:, idx].T  # [N,9]
        obs = crop[0].reshape(3, -1)[:, idx].T  # [N,3]
        N = obs.shape[0]
        weights = torch.ones(N, 1)
        eye9, eyeG = torch.eye(9), torch.eye(G)
        lam = 2.5e-3 * N / 1000.0  # prior weight relative to the per-pixel noise (~0.05)
        for r in range(rounds):
            albedo = mean + torch.einsum("ngc,g->nc", Bp, gamma[0])
            for ch in range(3):
                A = Hb * albedo[:, ch : ch + 1]
                Aw = A * weights
                light[0, :, ch] = torch.linalg.solve(Aw.T @ A + 1e-4 * eye9, Aw.T @ obs[:, ch])
            irr = Hb @ light[0]  # [N,3]
            D = (Bp * irr[:, None, :]).permute(0, 2, 1).reshape(3 * N, G)
            rhs = (obs - irr * mean).reshape(3 * N)
            wr = weights.expand(N, 3).reshape(3 * N, 1)
            gamma = torch.linalg.solve((D * wr).T @ D + lam * eyeG, (D * wr).T @ rhs)[None]
            if r < rounds - 1:  # Huber weights against hair, shadows, specularities
                albedo = mean + torch.einsum("ngc,g->nc", Bp, gamma[0])
                res = (albedo * irr - obs).norm(dim=1, keepdim=True)
                weights = (0.05 / res.clamp(min=0.05)).clamp(max=1.0)
        return gamma, light


# ---- driving fitting --------------------------------------------------------------------------


class DrivingFitter:
    """Per-frame pose + expression fit of a video, warm-started, with the landmark tracker inside.

    Identity: the given one (``[1,K]`` or ``[K]``), else fitted once from the landmarks of the first
    face frame and then frozen. Expressions are pulled lightly towards the previous frame's.
    """

    def __init__(
        self,
        model: FaceModel,
        *,
        identity: torch.Tensor | None = None,
        n_identity: int = 80,
        iterations: int = 3,
        w_expression: float = 1e-5,
        w_smooth: float = 1e-4,
        w_identity: float = 2e-4,
        w_expression_l1: float = 2e-3,
    ) -> None:
        if identity is not None:
            if not isinstance(identity, torch.Tensor):
                raise TypeError(f"identity must be a torch.Tensor, got {type(identity).__name__}")
            identity = identity.detach().float().reshape(1, -1).cpu()
            if identity.shape[1] > model.n_identity:
                raise ValueError(
                    f"identity has {identity.shape[1]} coefficients; the model has {model.n_identity}"
                )
            n_identity = identity.shape[1]
        self.model = model
        self.solver = LandmarkSolver.from_model(model, n_identity=n_identity)
        self.iterations = int(iterations)
        self.w_expression = float(w_expression)
        self.w_smooth = float(w_smooth)
        self.w_identity = float(w_identity)
        self.w_expression_l1 = float(w_expression_l1)
        self._given_identity = identity
        from jr2net.face.landmarks import LandmarkTracker

        self.tracker = LandmarkTracker()
        self.reset()

    def reset(self) -> None:
        """Forget the tracked face and the previous frame (a new clip starts)."""
        self.tracker = type(self.tracker)()
        self._params: LandmarkParams | None = None
        self._identity = self._given_identity
        self._K: torch.Tensor | None = None
        self._size: tuple[int, int] | None = None

    @property
    def identity(self) -> torch.Tensor | None:
        """The identity in use (given, or fitted on the first face frame), ``[1,K]``."""
        return self._identity

    def fit(self, frame: np.ndarray) -> FitResult | None:
        """Fit one frame (uint8 HWC RGB); None when no face is found in it."""
        frame = check_image(frame, "frame")
        timer = _Timer()
        t0 = time.perf_counter()
        det = self.tracker.update(frame)
        t0 = timer.add("track", t0)
        if det is None:
            self._params = None  # re-initialise the pose when the face comes back
            return None
        H, W = frame.shape[:2]
        if self._size != (H, W):
            self._K = default_intrinsics((H, W))
            self._Kn = self._K[0].double().numpy()
            self._size = (H, W)
            self._params = None
        target = np.asarray(det.landmarks, dtype=np.float64)
        if self._identity is None:
            p, info = self.solver.solve(
                target,
                self._Kn,
                w_identity=self.w_identity,
                w_expression=self.w_expression,
                w_expression_l1=self.w_expression_l1,
            )
            self._identity = torch.as_tensor(p.alpha, dtype=torch.float32)[None]
        else:
            prev = self._params
            if prev is None:
                prev = self.solver.init_pose(target, self._Kn)
                prev.alpha = self._identity[0].double().numpy()
                p, info = self.solver.solve(
                    target,
                    self._Kn,
                    prev,
                    fit_identity=False,
                    w_expression=self.w_expression,
                    w_expression_l1=self.w_expression_l1,
                )
            else:
                p, info = self.solver.solve(
                    target,
                    self._Kn,
                    prev,
                    fit_identity=False,
                    iterations=self.iterations,
                    pose_iterations=0,
                    w_expression=self.w_expression,
                    beta_ref=prev.beta,
                    w_smooth=self.w_smooth,
                    w_expression_l1=self.w_expression_l1,
                )
        self._params = p
        coeffs = _params_to_coeffs(p, self.model, 0, identity=self._identity)
        timer.add("fit", t0)
        timer.timings["total"] = sum(timer.timings.values())
        return FitResult(
            coeffs=coeffs,
            K=self._K,
            image_size=(H, W),
            detection=det,
            landmarks_fit=info.projected,
            residual_px=info.residual_px,
            residual_iod=info.residual_px / _iod(target),
            timings=timer.timings,
            landmark_vertices=info.vertex_ids,
        )
