"""3DMM fitting by analysis-by-synthesis: the source photo once, driving frames per frame.

One module per role:

- ``solver``: ``LandmarkSolver``, the landmark stage both fitters share (Gauss-Newton /
  Levenberg-Marquardt on 68 landmarks, jaw on the silhouette);
- ``source``: ``SourceFitter`` (landmarks, then photometric refinement and a final landmark pass);
  ``photometric`` holds its crop, skin mask and closed-form appearance;
- ``driving``: ``DrivingFitter`` (per frame, pose + expression, warm-started, tracker inside);
- ``results``: ``FitResult``, ``LandmarkParams``, ``LandmarkFitInfo``;
- ``geometry``: jaw-contour candidates and ``surface_metric``.

Camera: a pinhole with a FIXED field of view, the project default
``jr2net.face.camera.default_intrinsics`` (focal = 1.92 x the image's shorter side, about 29
degrees across it; principal point at the centre). Estimating the focal from 68 landmarks of one
photo is ill-conditioned (it trades off against the head's distance); a fixed, plausible portrait
FOV keeps the fit stable, and the shape (mm) is unaffected beyond a slight perspective difference.
Rotations follow ``jr2net.face.camera`` (numpy twins ``euler_to_matrix`` / ``matrix_to_euler``,
re-exported here).
"""

from jr2net.face.camera import euler_to_matrix, matrix_to_euler
from jr2net.face.fitting.driving import DrivingFitter
from jr2net.face.fitting.geometry import surface_metric
from jr2net.face.fitting.results import (
    FitResult,
    LandmarkFitInfo,
    LandmarkParams,
    params_to_coeffs,
)
from jr2net.face.fitting.solver import LANDMARK_WEIGHTS, LandmarkSolver
from jr2net.face.fitting.source import SourceFitter

__all__ = [
    "LANDMARK_WEIGHTS",
    "DrivingFitter",
    "FitResult",
    "LandmarkFitInfo",
    "LandmarkParams",
    "LandmarkSolver",
    "SourceFitter",
    "euler_to_matrix",
    "matrix_to_euler",
    "params_to_coeffs",
    "surface_metric",
]
