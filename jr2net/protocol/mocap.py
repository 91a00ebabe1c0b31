"""Motion-capture frames: ``MocapRow`` (arrays) <-> ``pb2.MocapFrame``, and the one check of their
values, shared by the server's admission, the pipeline (``jr2net.pipeline.mocap``) and the clients.

A row is a face-model expression vector ``[E]`` in [0, 1] (``SessionReady.expression_names``
order) and an optional head pose: (yaw, pitch, roll) radians within [-pi, pi] and an optional
translation (x, y, z) millimetres within [-1000, 1000], both added to the source's fitted pose
(proto/jr2net.proto ``HeadPose``, docs/mocap.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from jr2net.protocol.messages import pb2

MAX_ANGLE = math.pi  # |yaw|, |pitch|, |roll| in radians
MAX_TRANSLATION_MM = 1000.0  # |x|, |y|, |z| of a head translation


@dataclass(frozen=True)
class MocapRow:
    """One motion-capture frame as arrays (what a client sends and a session reenacts)."""

    expression: np.ndarray  # [E] weights in [0, 1], face-model order
    head: np.ndarray | None = None  # (yaw, pitch, roll) radians, or None: the source's pose
    translation: np.ndarray | None = None  # (x, y, z) mm, or None; only with ``head``
    capture_ts_us: int | None = None  # None: the client's clock when the message is made


def _vector(values: Any, what: str) -> tuple[np.ndarray | None, str]:
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        return None, f"{what} must be numbers: {exc}"
    return arr, ""


def row_problem(row: MocapRow, n_expression: int) -> str:
    """What makes ``row`` unusable for a face model with ``n_expression`` shapes ("" if nothing);
    each message names the value at fault."""
    beta, problem = _vector(row.expression, "expression")
    if problem:
        return problem
    if beta.size != n_expression:
        return (f"expression has {beta.size} values, the face model has {n_expression} "
                "(SessionReady.expression_names)")
    bad = np.flatnonzero(~np.isfinite(beta))
    if bad.size:
        return f"expression[{bad[0]}] is {beta[bad[0]]}, not finite"
    out = np.flatnonzero((beta < 0) | (beta > 1))
    if out.size:
        return f"expression[{out[0]}] = {beta[out[0]]:g} is outside [0, 1]"
    if row.translation is not None and row.head is None:
        return "a translation needs a head pose"
    for what, values, names, limit in (
        ("head", row.head, ("yaw", "pitch", "roll"), MAX_ANGLE),
        ("translation", row.translation, ("x", "y", "z"), MAX_TRANSLATION_MM),
    ):
        if values is None:
            continue
        arr, problem = _vector(values, what)
        if problem:
            return problem
        if arr.size != 3:
            return f"{what} must have 3 values ({', '.join(names)}), got {arr.size}"
        for name, v in zip(names, arr, strict=True):
            if not math.isfinite(v):
                return f"{what}.{name} is {v}, not finite"
            if abs(v) > limit:
                return f"{what}.{name} = {v:g} is outside [-{limit:g}, {limit:g}]"
    return ""


def mocap_row(msg: Any) -> MocapRow:
    """The arrays of a ``pb2.MocapFrame`` (float32; ``head`` / ``translation`` None when unset)."""
    head = translation = None
    if msg.HasField("head"):
        h = msg.head
        head = np.array([h.yaw, h.pitch, h.roll], dtype=np.float32)
        if h.HasField("translation"):
            t = h.translation
            translation = np.array([t.x, t.y, t.z], dtype=np.float32)
    return MocapRow(np.asarray(msg.expression, dtype=np.float32), head, translation,
                    msg.capture_ts_us)


def mocap_problem(msg: Any, n_expression: int) -> str:
    """The server's admission check of a ``pb2.MocapFrame`` ("" if usable): ``frame_id`` and
    :func:`row_problem`; ``n_expression`` 0: the session takes no motion-capture frames."""
    if msg.frame_id < 0:
        return f"frame_id must be >= 0, got {msg.frame_id}"
    if n_expression <= 0:
        return "this session's mode takes no MocapFrames (send image Frames)"
    return row_problem(mocap_row(msg), n_expression)


def mocap_message(frame_id: int, row: MocapRow | Any, capture_ts_us: int | None = None) -> Any:
    """A ``pb2.MocapFrame`` from a :class:`MocapRow` (or a MocapFrame, passed through). Values are
    sent unchecked (the server answers bad ones with a FrameError); ``capture_ts_us`` overrides
    the row's."""
    if isinstance(row, pb2.MocapFrame):
        return row
    ts = capture_ts_us if capture_ts_us is not None else row.capture_ts_us
    if ts is None:
        ts = int(time.time() * 1e6)
    msg = pb2.MocapFrame(frame_id=frame_id, capture_ts_us=int(ts),
                         expression=np.asarray(row.expression, dtype=np.float32).ravel().tolist())
    if row.head is not None:
        yaw, pitch, roll = (float(v) for v in np.asarray(row.head, dtype=np.float64).reshape(3))
        msg.head.SetInParent()  # present even when every angle is 0
        msg.head.yaw, msg.head.pitch, msg.head.roll = yaw, pitch, roll
        if row.translation is not None:
            msg.head.translation.SetInParent()
            x, y, z = (float(v) for v in np.asarray(row.translation, dtype=np.float64).reshape(3))
            msg.head.translation.x, msg.head.translation.y, msg.head.translation.z = x, y, z
    return msg
