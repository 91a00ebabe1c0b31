"""Source fit (``SourceFitter``): one photo, once per session, by analysis-by-synthesis.


(1) a loose landmark fit; its residual gives the landmark noise variance
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
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from jr2net.face.camera import (
    default_intrinsics,
    euler_to_matrix,
    matrix_to_euler,
    model_to_camera,
    project,
)
from jr2net.face.coeffs import FaceCoefficients
from jr2net.face.dense_landmarks import DENSE_WEIGHT, dense_target, landmark_weights
from jr2net.face.fitting.adam import Adam
from jr2net.face.fitting.geometry import surface_metric
from jr2net.face.fitting.photometric import PhotoCrop, photo_crop, solve_appearance
from jr2net.face.fitting.results import (
    FitResult,
    LandmarkFitInfo,
    LandmarkParams,
    Timer,
    params_to_coeffs,
    safe_iod,
)
from jr2net.face.fitting.solver import LandmarkSolver
from jr2net.io.images import check_image

if TYPE_CHECKING:
    from jr2net.face.landmarks import FaceDetection
    from jr2net.face.model import FaceModel


class SourceFitter:
    """Fits one photo: detection, landmark Gauss-Newton, then a photometric refinement.

    Stages and weights are described in the module docstring; the defaults were tuned on synthetic
    faces (benchmarks/fitting.py; the final-pass ones on seed 1, not the benchmark's seed 0) and the
    shared photos. ``w_*`` weigh the landmark
    stage's priors in squared-IOD units (``prior_scale_*`` times the estimated noise variance in its
    second pass), ``photo_*`` the photometric refinement. ``photometric=False`` stops after the
    landmark stage (albedo = model mean, neutral light). ``time_budget_s`` caps the refinement loop.
    Not thread-safe (one fitter per thread); the model may be shared. ``detector`` picks the face
    detector when ``fit`` gets no detection (:func:`jr2net.face.landmarks.resolve_detector`);
    detections with a MediaPipe mesh add its dense term (weight ``w_dense`` relative to the 68
    landmarks) to the landmark stage (not to the final pass: on seed-1 renders that was better,
    1.44 against 1.54 mm median RMSE).
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
        detector: str | None = None,
        w_dense: float = DENSE_WEIGHT,
    ) -> None:
        from jr2net.face.landmarks import resolve_detector

        self.detector = resolve_detector(detector)
        self.w_dense = float(w_dense)
        self.final_residual_iod = float(final_residual_iod)
        self.final_max_relax = int(final_max_relax)
        self.final_relax_factor = float(final_relax_factor)
        self.final_metric_ridge = float(final_metric_ridge)
        self.final_irls_floor = float(final_irls_floor)
        self.final_expression_l1 = float(final_expression_l1)
        self._metric: np.ndarray | None = None
        self._prepare_lock = threading.RLock()

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

    def prepare(self) -> None:
        """Build what every fit uses and the first one would otherwise build (~0.15 s of CPU):
        the face submesh and its renderer, the albedo (read from the cache), the surface metric.
        Thread-safe, so it can run in a thread while something else (the first detection) does;
        a fit that needs them meanwhile waits."""
        sub, _ = self._render_setup()
        with self._prepare_lock:
            _ = sub.albedo  # built (or read from the user cache) on first access
        self._surface_metric()

    def _render_setup(self):
        with self._prepare_lock:
            if self._renderer is None:
                from jr2net.face.renderer import FaceRenderer

                sub = self.model
                if self.model.region is not None and "face" in self.model.region_names:
                    sub = self.model.subset(["face"])
                self._render_model = sub
                self._renderer = FaceRenderer(sub)
            return self._render_model, self._renderer

    def _surface_metric(self) -> np.ndarray:
        """``surface_metric`` of the model plus the final pass's ridge (built once)."""
        with self._prepare_lock:
            if self._metric is None:
                G = surface_metric(self.model, self.n_identity)
                self._metric = G + self.final_metric_ridge * np.eye(len(G))
            return self._metric

    def fit(self, image: np.ndarray, detection: FaceDetection | None = None) -> FitResult:
        """Fit the largest face of ``image`` (uint8 HWC RGB); raises NoFaceError when there is none."""
        image = check_image(image)
        timer = Timer()
        t0 = time.perf_counter()
        if detection is None:
            from jr2net.face.landmarks import find_largest_face

            detection = find_largest_face(image, self.detector)
        dense = dense_target(self.solver, self.model, detection, self.w_dense)
        self.solver.weights = landmark_weights(detection)
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
            **dense,
        )
        # MAP priors: the weight of a unit-variance prior against squared residuals is the landmark
        # noise variance, estimated from this loose first fit; a short second pass uses it.
        d2 = np.sum((info.projected - target) ** 2, axis=1) / safe_iod(target) ** 2
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
                **dense,
            )
        t0 = timer.add("landmarks", t0)
        coeffs = params_to_coeffs(p, self.model, self.n_albedo)
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
            residual_iod=res / safe_iod(target),
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
        metric = self._surface_metric()
        q = LandmarkParams(
            euler_to_matrix(coeffs.angles[0].double().numpy()),
            coeffs.translation[0].double().numpy(),
            coeffs.identity[0].double().numpy(),
            coeffs.expression[0].double().numpy(),
        )
        x0 = np.concatenate([q.alpha, q.beta])
        iod = safe_iod(target)
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
                    shape_metric=metric,
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
        timer: Timer,
        sigma2: float,
        iterations: int,
    ) -> tuple[FaceCoefficients, np.ndarray]:
        """Steps (3)-(4): appearance in closed form, then ``iterations`` Adam steps of the
        photometric refinement and the appearance again. Returns the coefficients and the model
        vertex ids matched to the landmarks (jaw contour fixed to the landmark stage's choice)."""
        t0 = time.perf_counter()
        sub, renderer = self._render_setup()
        S = self.crop_size
        pc = photo_crop(image, K, target, S)
        t0 = timer.add("photo_setup", t0)

        # Landmark rows (jaw contour fixed to the landmark stage's choice).
        vid = self.solver.select_contour(p, K[0].double().numpy())
        vid = self.solver.rows[vid]

        c = coeffs.clone()
        with torch.no_grad():
            out = renderer.render(c, pc.K, (S, S))
            gamma, light = self._appearance(out, pc, sub)
        c.albedo = gamma
        c.light = light
        t0 = timer.add("appearance", t0)
        if iterations <= 0:
            return c, vid
        c = self._refine(c, pc, vid, sigma2, iterations, renderer)
        with torch.no_grad():  # re-solve the appearance for the refined geometry
            out = renderer.render(c, pc.K, (S, S))
            c.albedo, c.light = self._appearance(out, pc, sub)
        timer.add("photometric", t0)
        return c, vid

    def _appearance(self, out, pc: PhotoCrop, sub: FaceModel) -> tuple[torch.Tensor, torch.Tensor]:
        return solve_appearance(out, pc.image, pc.skin, sub, self.n_albedo, self.max_pixels)

    def _refine(
        self,
        c: FaceCoefficients,
        pc: PhotoCrop,
        vid: np.ndarray,
        sigma2: float,
        iterations: int,
        renderer,
    ) -> FaceCoefficients:
        """Adam on identity, expression, albedo, light and pose: robust colour loss on the skin,
        Charbonnier landmark loss weighted ``photo_landmark_weight / sigma2``, and the priors."""
        S = self.crop_size
        tgt_c = torch.as_tensor(pc.landmarks, dtype=torch.float32)[None]
        lw = torch.as_tensor(self.solver.weights, dtype=torch.float32)[None, :, None]
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
        opt = Adam(  # torch.optim.Adam's update; constructing that one imports torch._dynamo
            [{"params": [v], "lr": lrs[k] * self.photo_lr} for k, v in params.items() if lrs[k] > 0]
        )
        iod_c = safe_iod(pc.landmarks)
        budget = self.time_budget_s
        start = time.perf_counter()
        for _ in range(iterations):
            cc = FaceCoefficients(**params)
            out = renderer.render(cc, pc.K, (S, S))
            mask = out.mask * pc.skin
            diff = torch.sqrt(((out.image - pc.image) ** 2).sum(dim=1, keepdim=True) + 1e-8)
            l_photo = (diff * mask).sum() / mask.sum().clamp(min=1.0)
            X = self._rows_shape(vid, params["identity"], params["expression"])
            uv = project(model_to_camera(X, params["angles"], params["translation"]), pc.K)
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
        return FaceCoefficients(**{k: v.detach() for k, v in params.items()})
