"""ETNet as the driving expression tracker: the fitter keeps the pose, ETNet gives β.

``ETNetDrivingFitter`` wraps any driving fitter (``fit(frame) -> FitResult | None``, e.g. the
geometric path's ``DrivingFitter``): per frame it runs the wrapped fit (landmark tracking, pose,
the fitter's own expression), crops the face as RecNet / ETNet were trained (``face_crop_box`` of
the detected landmarks, ``crop_image`` at the network's crop size) and replaces the expression by
ETNet's prediction. Timing ``etnet`` is added to the fit's timings. The ETNet comes from an
``etnet`` checkpoint (``training.stages.etnet.load_etnet``) or a RecAugNet one (its ETNet).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def load_tracker_etnet(path: str | Path, face_model: Any) -> torch.nn.Module:
    """The ETNet of an ``etnet`` or ``recaugnet`` / ``reccopynet`` checkpoint (eval mode)."""
    from jr2net.training.checkpoints import load_checkpoint
    from jr2net.training.stages.etnet import load_etnet
    from jr2net.training.stages.recaugnet import load_cascade_net

    stage = load_checkpoint(path)["stage"]
    if stage == "etnet":
        return load_etnet(path, face_model).eval()
    net = load_cascade_net(path, face_model)
    if not hasattr(net, "etnet"):
        raise ValueError(f"{path} is a {stage!r} checkpoint without an ETNet")
    return net.etnet.eval()


class ETNetDrivingFitter:
    """A driving fitter whose expression is ETNet's (see the module docstring)."""

    def __init__(self, base: Any, etnet: torch.nn.Module, device: torch.device | str = "cpu") -> None:
        self.base = base
        self.etnet = etnet.eval().to(device)
        self.device = torch.device(device)

    def reset(self) -> None:
        if hasattr(self.base, "reset"):
            self.base.reset()

    @torch.inference_mode()
    def expression(self, frame: np.ndarray, landmarks68: np.ndarray) -> torch.Tensor:
        """ETNet's β ``[1,E]`` for the face with ``landmarks68`` in ``frame`` (uint8 HWC)."""
        from jr2net.models.recnet import face_crop_box
        from jr2net.training.data.sample import crop_image

        S = int(self.etnet.crop_size)
        crop = crop_image(frame, face_crop_box(np.asarray(landmarks68, np.float64)), S)
        x = torch.from_numpy(crop.copy()).permute(2, 0, 1)[None].float().div(255.0)
        return self.etnet(x.to(self.device)).float().cpu()

    def fit(self, frame: np.ndarray):  # -> FitResult | None
        fit = self.base.fit(frame)
        if fit is None:
            return None
        t0 = time.perf_counter()
        beta = self.expression(frame, fit.detection.landmarks)
        fit.coeffs = fit.coeffs.replace(expression=beta.to(fit.coeffs.expression.dtype))
        fit.timings = {**(fit.timings or {}), "etnet": time.perf_counter() - t0}
        return fit
