"""Driving fit (``DrivingFitter``): per frame, pose + expression, landmark stage only.


Driving fit (``DrivingFitter``): the landmark stage only, pose + expression, warm-started from the
The identity is given (the source's, or a driving person's own) or fitted once on the first face
frame and then frozen.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from jr2net.face.camera import default_intrinsics
from jr2net.face.dense_landmarks import (
    DENSE_WEIGHT,
    DRIVING_DENSE_POINTS,
    dense_target,
    landmark_weights,
)
from jr2net.face.fitting.results import FitResult, LandmarkParams, Timer, params_to_coeffs, safe_iod
from jr2net.face.fitting.solver import LandmarkSolver
from jr2net.io.images import check_image

if TYPE_CHECKING:
    from jr2net.face.model import FaceModel


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
        detector: str | None = None,
        w_dense: float = DENSE_WEIGHT,
        dense_points: int | None = DRIVING_DENSE_POINTS,
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
        from jr2net.face.landmarks import make_tracker, resolve_detector

        self.detector = resolve_detector(detector)
        self.w_dense = float(w_dense)
        self.dense_points = dense_points
        self.tracker = make_tracker(self.detector)
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
        timer = Timer()
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
        dense = dense_target(self.solver, self.model, det, self.w_dense, self.dense_points)
        self.solver.weights = landmark_weights(det)
        if self._identity is None:
            p, info = self.solver.solve(
                target,
                self._Kn,
                w_identity=self.w_identity,
                w_expression=self.w_expression,
                w_expression_l1=self.w_expression_l1,
                **dense,
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
                    **dense,
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
                    **dense,
                )
        self._params = p
        coeffs = params_to_coeffs(p, self.model, 0, identity=self._identity)
        timer.add("fit", t0)
        timer.timings["total"] = sum(timer.timings.values())
        return FitResult(
            coeffs=coeffs,
            K=self._K,
            image_size=(H, W),
            detection=det,
            landmarks_fit=info.projected,
            residual_px=info.residual_px,
            residual_iod=info.residual_px / safe_iod(target),
            timings=timer.timings,
            landmark_vertices=info.vertex_ids,
        )
