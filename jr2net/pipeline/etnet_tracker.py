"""ETNet as the driving expression tracker: the fitter keeps the pose, ETNet gives β.

``ETNetDrivingFitter`` wraps any driving fitter (``fit(frame) -> FitResult | None``, e.g. the
geometric path's ``DrivingFitter``): per frame it runs the wrapped fit (landmark tracking, pose,
the fitter's own expression), crops the face as RecNet / ETNet were trained (``face_crop_box`` of
the detected landmarks, ``crop_image`` at the network's crop size) and replaces the expression by
ETNet's prediction. Timing ``etnet`` is added to the fit's timings. The ETNet comes from an
``etnet`` checkpoint (``training.stages.etnet.load_etnet``) or a RecAugNet one (its ETNet).

Serving (both paths): a reenactor built with an ETNet checkpoint (``jr2net serve --etnet CKPT``,
``ReenactorSettings.etnet``) loads it once and shares it; its sessions then track expressions
with it by default. The session option ``expression`` (``parse_expression``) takes a transfer
mode (``absolute``, ``relative``), a tracker (``etnet``, ``fitter``) or both (``etnet+relative``);
``etnet`` on a reenactor without an ETNet is refused (ValueError naming ``--etnet``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jr2net.pipeline.recombine import EXPRESSION_MODES

TRACKERS = ("fitter", "etnet")
EXPRESSION_VALUES = (
    *EXPRESSION_MODES, *TRACKERS, *(f"{t}+{m}" for t in TRACKERS for m in EXPRESSION_MODES)
)
"""Every value of the session option ``expression`` (see ``parse_expression``)."""

NO_ETNET = (
    "expression tracker 'etnet' needs an ETNet: start the server with --etnet CKPT (an etnet or "
    "recaugnet checkpoint; `jr2net reenact --etnet CKPT` for the in-process server)"
)


def load_tracker_etnet(path: str | Path | None, face_model: Any) -> torch.nn.Module | None:
    """The ETNet of an ``etnet`` or ``recaugnet`` / ``reccopynet`` checkpoint (eval mode, frozen);
    None for no path. FileNotFoundError (no file) or ``CheckpointError`` (corrupt file, another
    stage, another face model, weights that do not fit)."""
    if path is None:
        return None
    from jr2net.training.checkpoints import CheckpointError, load_checkpoint
    from jr2net.training.stages.etnet import load_etnet
    from jr2net.training.stages.recaugnet import load_cascade_net

    try:
        stage = load_checkpoint(path)["stage"]
        if stage == "etnet":
            net = load_etnet(path, face_model)
        else:
            net = getattr(load_cascade_net(path, face_model), "etnet", None)
            if net is None:
                raise CheckpointError(f"{path} is a {stage!r} checkpoint without an ETNet")
    except (FileNotFoundError, CheckpointError):
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: not a usable ETNet checkpoint ({first})") from None
    if int(net.n_expression) != int(face_model.n_expression):
        raise CheckpointError(f"{path}: ETNet predicts {net.n_expression} expressions, the face "
                              f"model has {face_model.n_expression}")  # fmt: skip
    return net.eval().requires_grad_(False)


def parse_expression(value: str | None, etnet_loaded: bool) -> tuple[str, str]:
    """``(transfer mode, tracker)`` of the session option ``expression``: a transfer mode, a
    tracker, or ``TRACKER+MODE``; the mode defaults to ``absolute``, the tracker to ``etnet``
    when the reenactor has one, else ``fitter``. ValueError for anything else, or ``etnet``
    without an ETNet."""
    text = "absolute" if value is None else str(value)
    if text not in EXPRESSION_VALUES:
        raise ValueError(f"options.extra['expression'] must be one of {EXPRESSION_VALUES}, "
                         f"got {text!r}")  # fmt: skip
    parts = text.split("+")
    tracker = next((p for p in parts if p in TRACKERS), "etnet" if etnet_loaded else "fitter")
    mode = next((p for p in parts if p in EXPRESSION_MODES), "absolute")
    if tracker == "etnet" and not etnet_loaded:
        raise ValueError(NO_ETNET)
    return mode, tracker


def with_tracker(base: Any, etnet: torch.nn.Module | None, tracker: str, device: Any = "cpu") -> Any:
    """``base`` (a driving fitter) as is for tracker ``fitter``, wrapped in ``ETNetDrivingFitter``
    for ``etnet`` (ValueError without an ETNet)."""
    if tracker == "fitter":
        return base
    if tracker != "etnet":
        raise ValueError(f"tracker must be one of {TRACKERS}, got {tracker!r}")
    if etnet is None:
        raise ValueError(NO_ETNET)
    return ETNetDrivingFitter(base, etnet, device)


def move_etnet_timing(timings: dict[str, float], fit: Any) -> None:
    """Report the ETNet pass of ``fit`` as stage ``etnet``, taken out of stage ``fit``."""
    seconds = (getattr(fit, "timings", None) or {}).get("etnet") if fit is not None else None
    if seconds is not None:
        timings["etnet"] = float(seconds)
        timings["fit"] = max(0.0, timings.get("fit", 0.0) - float(seconds))


class ETNetDrivingFitter:
    """A driving fitter whose expression is ETNet's (see the module docstring)."""

    def __init__(self, base: Any, etnet: torch.nn.Module, device: torch.device | str = "cpu") -> None:
        self.base = base
        self.device = torch.device(device)
        self.etnet = etnet if next(etnet.parameters()).device == self.device else etnet.to(device)

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
