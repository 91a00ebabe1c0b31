"""The geometric path's driving-pixel transfers, mouth interior and gaze, behind one switchboard.

``DrivingTransfers`` reads ``options.extra["mouth"]`` (``transfer``, default, or ``synthetic``:
``jr2net.pipeline.mouth``) and ``options.extra["gaze"]`` (``1``, default, or ``0``:
``jr2net.pipeline.gaze``) and applies the enabled ones to a frame's face layer, timing each
(the ``mouth`` and ``gaze`` stages of the session's timings).
"""

from __future__ import annotations

import time

import numpy as np
from torch import Tensor

from jr2net.pipeline.gaze import GazeTransfer
from jr2net.pipeline.mouth import MOUTH_MODES, MouthTransfer

OFF = ("0", "false", "no")


class DrivingTransfers:
    """Mouth and gaze transfer of one session (module doc)."""

    def __init__(
        self, mesh, model, source: np.ndarray, source_landmarks: np.ndarray, extra: dict
    ) -> None:
        mode = extra.get("mouth", "transfer")
        if mode not in MOUTH_MODES:
            raise ValueError(f"options.extra['mouth'] must be one of {MOUTH_MODES}, got {mode!r}")
        self.mouth = MouthTransfer(mesh, model) if mode == "transfer" else None
        on = str(extra.get("gaze", "1")) not in OFF
        self.gaze = GazeTransfer(mesh, model, source, source_landmarks) if on else None

    def apply(
        self,
        face: Tensor,
        rast: Tensor,
        verts_cam: Tensor,
        K_crop: Tensor,
        driving: tuple | None,
        timings: dict[str, float],
    ) -> Tensor:
        """``face`` ``[1,3,L,L]`` with the driving ``(frame, 68 landmarks)``'s mouth interior and
        gaze (unchanged when ``driving`` is None, e.g. motion-capture frames); times both."""
        t0 = time.perf_counter()
        if driving is not None and self.mouth is not None:
            face = self.mouth.apply(face, rast, verts_cam, K_crop, *driving)
        t1 = time.perf_counter()
        if driving is not None and self.gaze is not None:
            face = self.gaze.apply(face, verts_cam, K_crop, rast.shape[1], *driving)
        timings["mouth"], timings["gaze"] = t1 - t0, time.perf_counter() - t1
        return face
