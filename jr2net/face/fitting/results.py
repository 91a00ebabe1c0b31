"""The fitters' result types: landmark-solver parameters and diagnostics, and ``FitResult``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from jr2net.face.camera import matrix_to_euler
from jr2net.face.coeffs import FaceCoefficients
from jr2net.face.landmarks import interocular_distance

if TYPE_CHECKING:
    from jr2net.face.landmarks import FaceDetection
    from jr2net.face.model import FaceModel


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


@dataclass
class Timer:
    """Wall time per named stage (seconds, summed over repeated stages)."""

    timings: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, t0: float) -> float:
        t1 = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + (t1 - t0)
        return t1


def safe_iod(landmarks: np.ndarray) -> float:
    """Inter-ocular distance, floored so degenerate detections never divide by zero."""
    return max(interocular_distance(landmarks), 1e-6)


def params_to_coeffs(
    p: LandmarkParams, model: FaceModel, n_albedo: int, identity: torch.Tensor | None = None
) -> FaceCoefficients:
    """Batch-1 coefficients of solver parameters (``identity`` overrides alpha); the other
    fields as ``FaceCoefficients.zeros``."""
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
