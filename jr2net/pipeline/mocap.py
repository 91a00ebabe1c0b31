"""Driving a session by motion capture: expression coefficients (and an optional head pose) per
frame instead of a driving image, in the geometric and the learned path.

A mocap frame (``jr2net.protocol.mocap.MocapRow``, checked there) becomes a driving "fit" of the
source's own identity: its expression is the row's β (face-model names; ``jr2net.io.arkit_csv``
maps ARKit takes onto them), its pose the source's with the row's head yaw / pitch / roll added
(radians, the face model's angles ``(pitch, yaw, roll)``) and its translation added (mm), in the
source's camera. The session's ``Recombiner`` then poses the source as for a driving video
(``pose_mode`` relative: the change since the first frame; absolute: as given) and the session's
own stage 2 renders it. The server streams takes this way (``MocapFrame``); the temporal filter
of driving fits is not applied (the values are the capture's, not a noisy landmark fit).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .base import FrameResult


@dataclass
class MocapFit:
    """The driving fit a mocap frame stands for (what the recombiner reads of a fit)."""

    coeffs: Any  # FaceCoefficients, batch 1
    K: Tensor
    image_size: tuple[int, int]
    timings: dict[str, float] = field(default_factory=dict)


def _kind(session: Any) -> str:
    """"geometric" / "learned" for the sessions that take mocap frames, else ""."""
    from .geometric import GeometricSession

    if isinstance(session, GeometricSession):
        return "geometric"
    if callable(getattr(session, "analyse_fit", None)) and hasattr(session, "source_fit"):
        return "learned"  # LearnedSession (not imported here: it pulls in the training code)
    return ""


def expression_names(session: Any) -> list[str]:
    """The face-model expression names a mocap row of ``session`` is in ([] if it takes none)."""
    if not _kind(session):
        return []
    model = getattr(session, "model", None) or session.reenactor.model
    return list(model.expression_names)


def mocap_fit(source_fit: Any, row: Any) -> MocapFit:
    """The fit of mocap ``row`` (a ``MocapRow``) on ``source_fit`` (the session's source fit);
    ValueError when the row is unusable (``jr2net.protocol.mocap.row_problem``)."""
    from jr2net.protocol.mocap import row_problem

    E = source_fit.coeffs.expression.shape[1]
    problem = row_problem(row, E)
    if problem:
        raise ValueError(problem)
    beta = np.asarray(row.expression, dtype=np.float32).reshape(1, E)
    coeffs = source_fit.coeffs
    angles, translation = coeffs.angles.clone(), coeffs.translation.clone()
    if row.head is not None:
        yaw, pitch, roll = (float(v) for v in np.asarray(row.head, dtype=np.float64).reshape(3))
        angles = angles + angles.new_tensor([[pitch, yaw, roll]])
    if row.translation is not None:
        translation = translation + translation.new_tensor(
            np.asarray(row.translation, dtype=np.float64).reshape(1, 3))
    coeffs = coeffs.replace(
        expression=torch.as_tensor(beta, dtype=coeffs.expression.dtype),
        angles=angles, translation=translation,
    )  # fmt: skip
    return MocapFit(coeffs, source_fit.K, tuple(source_fit.image_size))


def analyse_mocap(session: Any, row: Any) -> Any:
    """Stage 1 of a mocap frame in ``session``: what its ``synthesise`` takes (a
    ``FrameAnalysis`` or ``LearnedAnalysis``). ValueError for a bad row or a session that takes
    no mocap frames."""
    kind = _kind(session)
    if not kind:
        raise ValueError(f"{type(session).__name__} sessions take no motion-capture frames")
    t0 = time.perf_counter()
    fit = mocap_fit(session.source_fit, row)
    if kind == "learned":
        from .learned import STAGES as LEARNED_STAGES

        return session.analyse_fit(fit, dict.fromkeys(LEARNED_STAGES, 0.0), t0)
    from .geometric import STAGES, FrameAnalysis

    timings = dict.fromkeys(STAGES, 0.0)
    with torch.inference_mode():
        target, normals = session._recombine(fit)
        t1 = time.perf_counter()
        timings["recombine"] = t1 - t0
        target.ratio = session._relight_ratio(normals)
        timings["relight"] = time.perf_counter() - t1
    return FrameAnalysis(target, timings, time.perf_counter() - t0)


def process_mocap(session: Any, row: Any) -> FrameResult:
    """Reenact one mocap ``row`` in ``session`` (both stages)."""
    return session.synthesise(analyse_mocap(session, row))
