"""The 68 landmarks of a face model under coefficients, as the fitter matches them (the RecNet
loss, its evaluation and ``jr2net fit --recnet`` share this one definition)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from jr2net.face.camera import euler_to_matrix, model_to_camera, project
from jr2net.face.coeffs import FaceCoefficients
from jr2net.face.fitting import LandmarkParams, LandmarkSolver

if TYPE_CHECKING:
    from jr2net.face.model import FaceModel


class ModelLandmarks:
    """The 68 landmarks of a face model under coefficients, as the fitter matches them.

    Points 0-16 except the chin (8) slide on the occluding contour: per sample, the front-facing
    candidate of ``jr2net.face.fitting.LandmarkSolver.select_contour`` (chosen without gradient),
    the other points are fixed vertices. Only the solver's few hundred rows of the bases are
    evaluated, so projecting is cheap (no full mesh). ``contour=False`` uses the fixed
    ``landmarks68`` vertices throughout.
    """

    def __init__(self, model: FaceModel, n_identity: int, contour: bool = True) -> None:
        if n_identity > model.n_identity:
            raise ValueError(f"n_identity {n_identity} exceeds the model's {model.n_identity}")
        self.solver = LandmarkSolver.from_model(model, n_identity=n_identity)
        self.n_identity = self.solver.n_identity
        self.contour = bool(contour)
        self._mean = torch.as_tensor(self.solver.mean, dtype=torch.float32)  # [N,3]
        basis = torch.as_tensor(self.solver.basis, dtype=torch.float32)  # [N,3,K+E]
        self._basis = basis.permute(2, 0, 1).reshape(basis.shape[2], -1)  # [K+E, N*3]

    def rows(self, coeffs: FaceCoefficients) -> Tensor:
        """Model-space positions ``[B,N,3]`` of the solver's rows (landmarks + jaw candidates)."""
        ident = coeffs.identity
        k = ident.shape[1]
        if k > self.n_identity:
            raise ValueError(f"identity has {k} coefficients; the landmarks know {self.n_identity}")
        if k < self.n_identity:
            ident = F.pad(ident, (0, self.n_identity - k))
        coef = torch.cat([ident, coeffs.expression], dim=1)
        basis = self._basis.to(coef)
        return self._mean.to(coef) + (coef @ basis).view(coef.shape[0], -1, 3)

    def select(self, coeffs: FaceCoefficients, K: Tensor, X: Tensor | None = None) -> Tensor:
        """Row indices ``[B,68]`` (into ``solver.rows``) matched to the 68 landmarks."""
        B = coeffs.batch_size
        if not self.contour:
            return torch.arange(68).expand(B, 68)
        X = self.rows(coeffs) if X is None else X
        Xn = X.detach().double().cpu().numpy()
        ang = coeffs.angles.detach().double().cpu().numpy()
        t = coeffs.translation.detach().double().cpu().numpy()
        Kn = K.detach().double().cpu().numpy()
        if Kn.ndim == 2:
            Kn = Kn[None]
        alpha, beta = np.zeros(self.n_identity), np.zeros(self.solver.n_expression)
        out = []
        for b in range(B):  # X is given, so only the pose matters
            p = LandmarkParams(euler_to_matrix(ang[b]), t[b], alpha, beta)
            out.append(self.solver.select_contour(p, Kn[b % len(Kn)], X=Xn[b]))
        return torch.as_tensor(np.stack(out), dtype=torch.long)

    def vertex_ids(self, coeffs: FaceCoefficients, K: Tensor) -> Tensor:
        """Model vertex ids ``[B,68]`` matched to the landmarks (jaw: the chosen contour)."""
        sel = self.select(coeffs, K)
        return torch.as_tensor(self.solver.rows)[sel]

    def project(self, coeffs: FaceCoefficients, K: Tensor) -> Tensor:
        """Pixel positions ``[B,68,2]`` under intrinsics ``K`` (``[B,3,3]`` or ``[3,3]``)."""
        if K.dim() == 2:
            K = K.unsqueeze(0)
        X = self.rows(coeffs)
        sel = self.select(coeffs, K, X).to(X.device)
        pts = torch.gather(X, 1, sel[..., None].expand(-1, -1, 3))
        cam = model_to_camera(pts, coeffs.angles, coeffs.translation)
        return project(cam, K.to(cam).expand(cam.shape[0], 3, 3))
