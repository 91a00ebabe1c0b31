"""Driving a geometric session by motion capture: expression coefficients (and an optional head
rotation) per frame instead of a driving image.

A mocap frame becomes a driving "fit" of the source's own identity: its expression is the frame's
β (face-model names, ``jr2net.io.arkit_csv`` maps ARKit takes onto them), its pose the source's
with the frame's head yaw / pitch / roll added (radians, in the face model's angle convention:
``angles = (pitch, yaw, roll)``), in the source's camera. The session's ``Recombiner`` then poses
the source relative to the first frame, as with a driving video, and renders the frame with the
geometric path's renderer and compositor. ``reenact_take`` writes one output frame per CSV row,
at the take's frame rate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
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


def mocap_fit(session: Any, expression: np.ndarray, head: np.ndarray | None = None) -> MocapFit:
    """The fit of a mocap frame for ``session`` (a ``GeometricSession``): ``expression [E]`` in
    [0,1], ``head`` (yaw, pitch, roll) radians added to the source's pose, or None."""
    src = session.source_fit
    beta = np.asarray(expression, dtype=np.float32).reshape(-1)
    E = src.coeffs.expression.shape[1]
    if beta.shape != (E,) or not np.isfinite(beta).all():
        raise ValueError(f"expression must be {E} finite values, got shape {beta.shape}")
    if beta.min() < 0 or beta.max() > 1:
        raise ValueError("expression values must be in [0, 1]")
    angles = src.coeffs.angles.clone()
    if head is not None:
        yaw, pitch, roll = (float(v) for v in np.asarray(head, dtype=np.float64).reshape(3))
        angles = angles + angles.new_tensor([[pitch, yaw, roll]])
    coeffs = src.coeffs.replace(
        expression=torch.as_tensor(beta[None], dtype=src.coeffs.expression.dtype), angles=angles
    )
    return MocapFit(coeffs, src.K, tuple(src.image_size))


def process_mocap(session: Any, expression: np.ndarray, head: np.ndarray | None = None) -> FrameResult:
    """Reenact one mocap frame in ``session`` (a ``GeometricSession``)."""
    from .geometric import STAGES, FrameAnalysis

    t0 = time.perf_counter()
    timings = dict.fromkeys(STAGES, 0.0)
    with torch.inference_mode():
        fit = mocap_fit(session, expression, head)
        target, normals = session._recombine(fit)
        timings["recombine"] = time.perf_counter() - t0
        target.ratio = session._relight_ratio(normals)
    return session.synthesise(FrameAnalysis(target, timings, time.perf_counter() - t0))


def reenact_take(
    source: np.ndarray,
    take_csv: str | Path,
    out: str | Path,
    *,
    fps: float | None = None,
    csv_fps: float = 60.0,
    face_model: str | None = None,
    crop_size: int = 256,
    max_frames: int | None = None,
) -> dict[str, Any]:
    """Reenact ``source`` (uint8 HWC) with a Live Link Face take: one output frame per CSV row,
    written at ``fps`` (default: the take's rate, ``csv_fps``). Returns a summary dict."""
    from jr2net.io.arkit_csv import read_live_link_csv
    from jr2net.io.video import VideoWriter

    from .base import SessionOptions
    from .geometric import GeometricReenactor

    take = read_live_link_csv(take_csv, csv_fps)
    reenactor = GeometricReenactor(face_model)
    session = reenactor.start_session(source, SessionOptions(crop_size=crop_size))
    beta = take.expressions(reenactor.model.expression_names)
    n = len(take) if max_frames is None else min(len(take), max_frames)
    times = []
    with VideoWriter(out, fps or take.fps) as writer:
        for i in range(n):
            t0 = time.perf_counter()
            res = process_mocap(session, beta[i], None if take.head is None else take.head[i])
            times.append(time.perf_counter() - t0)
            writer.write(res.image)
    session.close()
    return {
        "frames": n,
        "rows": len(take),
        "take_seconds": take.duration,
        "fps": float(fps or take.fps),
        "ms_per_frame_median": 1000 * float(np.median(times)) if times else float("nan"),
        "out": str(out),
    }
