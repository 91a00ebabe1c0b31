"""Apple ARKit / Live Link Face motion-capture CSV: read, validate, write, map to the face model.

A Live Link Face take is a CSV with the header ``Timecode, BlendShapeCount``, Apple's 52 ARKit
blendshapes in Live Link Face's column order (``EyeBlinkLeft`` … ``TongueOut``, values in [0,1]),
then ``HeadYaw, HeadPitch, HeadRoll, LeftEyeYaw, LeftEyePitch, LeftEyeRoll, RightEyeYaw,
RightEyePitch, RightEyeRoll`` (radians). ``Timecode`` is ``HH:MM:SS:FF.mmm``: frame ``FF`` at the
take's frame rate (Live Link Face records at 60 fps) plus a sub-frame fraction ``.mmm``; a row's
time is ``h·3600 + m·60 + s + (FF + 0.mmm) / fps``, relative to the first row.

The face model's expressions are ICT-FaceKit's 53 ARKit-style names (DESIGN §3): ``EyeBlinkLeft``
is ``eyeBlink_L``, and ARKit's unpaired ``BrowInnerUp`` and ``CheekPuff`` drive both
``browInnerUp_L/_R`` and ``cheekPuff_L/_R``; ``TongueOut`` has no ICT shape and is dropped (the
reverse map writes 0). Names are matched case-insensitively, so camelCase headers
(``eyeBlinkLeft``) read too. Every error is a ``MocapCSVError`` naming the file, line and column.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Live Link Face's column order of Apple's 52 ARKit blendshapes.
ARKIT_NAMES: tuple[str, ...] = (
    "EyeBlinkLeft", "EyeLookDownLeft", "EyeLookInLeft", "EyeLookOutLeft", "EyeLookUpLeft",
    "EyeSquintLeft", "EyeWideLeft", "EyeBlinkRight", "EyeLookDownRight", "EyeLookInRight",
    "EyeLookOutRight", "EyeLookUpRight", "EyeSquintRight", "EyeWideRight", "JawForward",
    "JawRight", "JawLeft", "JawOpen", "MouthClose", "MouthFunnel", "MouthPucker", "MouthRight",
    "MouthLeft", "MouthSmileLeft", "MouthSmileRight", "MouthFrownLeft", "MouthFrownRight",
    "MouthDimpleLeft", "MouthDimpleRight", "MouthStretchLeft", "MouthStretchRight",
    "MouthRollLower", "MouthRollUpper", "MouthShrugLower", "MouthShrugUpper", "MouthPressLeft",
    "MouthPressRight", "MouthLowerDownLeft", "MouthLowerDownRight", "MouthUpperUpLeft",
    "MouthUpperUpRight", "BrowDownLeft", "BrowDownRight", "BrowInnerUp", "BrowOuterUpLeft",
    "BrowOuterUpRight", "CheekPuff", "CheekSquintLeft", "CheekSquintRight", "NoseSneerLeft",
    "NoseSneerRight", "TongueOut",
)  # fmt: skip
POSE_NAMES: tuple[str, ...] = (
    "HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
    "RightEyeYaw", "RightEyePitch", "RightEyeRoll",
)  # fmt: skip
HEADER: tuple[str, ...] = ("Timecode", "BlendShapeCount", *ARKIT_NAMES, *POSE_NAMES)
DEFAULT_FPS = 60.0
_DIRECTIONS = ("jawLeft", "jawRight", "mouthLeft", "mouthRight")
_TIMECODE = re.compile(r"^(\d{1,3}):(\d{2}):(\d{2})[:;](\d{2,3})(?:\.(\d+))?$")


class MocapCSVError(ValueError):
    """A motion-capture CSV is malformed; the message names the file, line and column."""


def model_names_for(arkit_name: str) -> tuple[str, ...]:
    """The face-model expression names ARKit shape ``arkit_name`` drives (``()`` for TongueOut).

    ``EyeBlinkLeft`` -> ``("eyeBlink_L",)``; ``BrowInnerUp`` -> ``("browInnerUp_L",
    "browInnerUp_R")``; ``JawLeft`` -> ``("jawLeft",)`` (a direction, not a side)."""
    base = arkit_name[0].lower() + arkit_name[1:]
    if base == "tongueOut":
        return ()
    if base in _DIRECTIONS:  # a movement to one side, not one side of a pair
        return (base,)
    for side, tag in (("Left", "_L"), ("Right", "_R")):
        if base.endswith(side):
            return (base[: -len(side)] + tag,)
    if base in ("browInnerUp", "cheekPuff"):
        return (base + "_L", base + "_R")
    return (base,)


def _index(model_names: Sequence[str]) -> dict[str, int]:
    return {n.lower(): i for i, n in enumerate(model_names)}


def arkit_to_model(arkit: np.ndarray, model_names: Sequence[str]) -> np.ndarray:
    """ARKit weights ``[N,52]`` (``ARKIT_NAMES`` order) -> face-model expressions ``[N,E]``.

    Model shapes no ARKit shape drives stay 0; ARKit shapes the model lacks are dropped."""
    arkit = np.asarray(arkit, dtype=np.float32)
    if arkit.ndim != 2 or arkit.shape[1] != len(ARKIT_NAMES):
        raise ValueError(f"ARKit weights must be [N,{len(ARKIT_NAMES)}], got {arkit.shape}")
    idx = _index(model_names)
    out = np.zeros((len(arkit), len(model_names)), np.float32)
    for j, name in enumerate(ARKIT_NAMES):
        for m in model_names_for(name):
            if m.lower() in idx:
                out[:, idx[m.lower()]] = arkit[:, j]
    return out


def model_to_arkit(beta: np.ndarray, model_names: Sequence[str]) -> np.ndarray:
    """Face-model expressions ``[N,E]`` -> ARKit weights ``[N,52]``: a split shape's two sides are
    averaged into the ARKit one; shapes the model lacks (TongueOut) are 0."""
    beta = np.asarray(beta, dtype=np.float32)
    if beta.ndim != 2 or beta.shape[1] != len(model_names):
        raise ValueError(f"expressions must be [N,{len(model_names)}], got {beta.shape}")
    idx = _index(model_names)
    out = np.zeros((len(beta), len(ARKIT_NAMES)), np.float32)
    for j, name in enumerate(ARKIT_NAMES):
        cols = [idx[m.lower()] for m in model_names_for(name) if m.lower() in idx]
        if cols:
            out[:, j] = beta[:, cols].mean(axis=1)
    return out


@dataclass
class MocapTake:
    """A motion-capture take: per row its time (s, from the first row), ARKit weights ``[N,52]``
    and, when the CSV has them, head ``[N,3]`` and eye ``[N,6]`` yaw/pitch/roll (radians)."""

    times: np.ndarray
    timecodes: list[str]
    arkit: np.ndarray
    head: np.ndarray | None
    eyes: np.ndarray | None
    fps: float

    def __len__(self) -> int:
        return len(self.times)

    @property
    def duration(self) -> float:
        """Seconds from the first to the last row plus one frame."""
        return float(self.times[-1] + 1.0 / self.fps) if len(self) else 0.0

    def expressions(self, model_names: Sequence[str]) -> np.ndarray:
        """The take's expressions ``[N,E]`` in the face model's names (``arkit_to_model``)."""
        return arkit_to_model(self.arkit, model_names)


def parse_timecode(text: str, fps: float = DEFAULT_FPS) -> float:
    """Seconds of a ``HH:MM:SS:FF[.mmm]`` timecode at ``fps``; ValueError when malformed."""
    m = _TIMECODE.match(text.strip())
    if not m:
        raise ValueError(f"timecode {text!r} is not HH:MM:SS:FF.mmm")
    h, mi, s, f = (int(m.group(k)) for k in range(1, 5))
    sub = float("0." + m.group(5)) if m.group(5) else 0.0
    if mi >= 60 or s >= 60:
        raise ValueError(f"timecode {text!r}: minutes and seconds must be < 60")
    if f >= math.ceil(fps):
        raise ValueError(f"timecode {text!r}: frame {f} is not below the frame rate {fps:g}")
    return h * 3600.0 + mi * 60.0 + s + (f + sub) / fps


def format_timecode(seconds: float, fps: float = DEFAULT_FPS) -> str:
    """``HH:MM:SS:FF.mmm`` of ``seconds`` at ``fps`` (the inverse of ``parse_timecode``)."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"seconds must be finite and >= 0, got {seconds}")
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    milli = int(round(seconds * fps * 1000))  # thousandths of a frame
    frames, sub = divmod(milli, 1000)
    secs = int(frames // fps)
    f = int(frames - math.ceil(secs * fps - 1e-9))
    if f < 0:  # float rounding at a second boundary
        secs, f = secs - 1, int(frames - math.ceil((secs - 1) * fps - 1e-9))
    h, rem = divmod(int(secs), 3600)
    mi, s = divmod(rem, 60)
    return f"{h:02d}:{mi:02d}:{s:02d}:{int(f):02d}.{sub:03d}"


def _column_map(header: list[str], where: str) -> dict[str, int]:
    known = {n.lower(): n for n in HEADER}
    cols: dict[str, int] = {}
    for j, raw in enumerate(header):
        name = raw.strip()
        canon = known.get(name.lower())
        if canon is None:
            raise MocapCSVError(f"{where}:1, column {j + 1} ({name!r}): unknown column")
        if canon in cols:
            raise MocapCSVError(f"{where}:1, column {j + 1} ({name!r}): duplicate column")
        cols[canon] = j
    missing = [n for n in ("Timecode", *ARKIT_NAMES) if n not in cols]
    if missing:
        raise MocapCSVError(f"{where}:1: missing column(s) {', '.join(missing)}")
    present = [n for n in POSE_NAMES if n in cols]
    if present and len(present) != len(POSE_NAMES):
        lack = [n for n in POSE_NAMES if n not in cols]
        raise MocapCSVError(f"{where}:1: missing column(s) {', '.join(lack)}")
    return cols


def read_live_link_csv(path: str | Path, fps: float = DEFAULT_FPS) -> MocapTake:
    """Read and check a Live Link Face CSV (see the module docstring).

    Raises FileNotFoundError, or MocapCSVError naming the line and column of: a missing or
    unknown column, a row with another column count than the header, a value that is not a
    number, NaN or infinite, a blendshape outside [0, 1], a malformed or decreasing timecode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"motion-capture CSV not found: {path}")
    if not (isinstance(fps, (int, float)) and fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    where = str(path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows or not any(c.strip() for c in rows[0]):
        raise MocapCSVError(f"{where}:1: empty file (no header)")
    cols = _column_map(rows[0], where)
    names = [h.strip() for h in rows[0]]
    has_pose = "HeadYaw" in cols
    times, codes, arkit, pose = [], [], [], []
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(names):
            raise MocapCSVError(
                f"{where}:{lineno}: {len(row)} values, but the header has {len(names)} columns"
            )
        code = row[cols["Timecode"]].strip()
        try:
            t = parse_timecode(code, fps)
        except ValueError as exc:
            raise MocapCSVError(f"{where}:{lineno}, column Timecode: {exc}") from None
        if times and t < times[-1] - 1e-9:
            raise MocapCSVError(
                f"{where}:{lineno}, column Timecode: {code} is earlier than the previous row"
            )

        def value(name: str, unit: bool, row=row, lineno=lineno) -> float:
            text = row[cols[name]].strip()
            try:
                v = float(text)
            except ValueError:
                raise MocapCSVError(
                    f"{where}:{lineno}, column {name}: {text!r} is not a number"
                ) from None
            if not math.isfinite(v):
                raise MocapCSVError(f"{where}:{lineno}, column {name}: {text} is not finite")
            if unit and not -1e-6 <= v <= 1 + 1e-6:
                raise MocapCSVError(f"{where}:{lineno}, column {name}: {v:g} is outside [0, 1]")
            return min(max(v, 0.0), 1.0) if unit else v

        if "BlendShapeCount" in cols:
            text = row[cols["BlendShapeCount"]].strip()
            if not text.isdigit():
                raise MocapCSVError(
                    f"{where}:{lineno}, column BlendShapeCount: {text!r} is not a whole number"
                )
        times.append(t)
        codes.append(code)
        arkit.append([value(n, True) for n in ARKIT_NAMES])
        if has_pose:
            pose.append([value(n, False) for n in POSE_NAMES])
    if not times:
        raise MocapCSVError(f"{where}: no data rows after the header")
    t = np.asarray(times, np.float64)
    p = np.asarray(pose, np.float32) if has_pose else None
    return MocapTake(
        times=t - t[0],
        timecodes=codes,
        arkit=np.asarray(arkit, np.float32),
        head=None if p is None else p[:, :3],
        eyes=None if p is None else p[:, 3:],
        fps=float(fps),
    )


def write_live_link_csv(
    path: str | Path,
    expressions: np.ndarray,
    model_names: Sequence[str],
    *,
    fps: float = DEFAULT_FPS,
    head: np.ndarray | None = None,
    start_seconds: float = 0.0,
) -> Path:
    """Write a coefficient track ``[N,E]`` (the face model's names, values in [0,1]) as a Live
    Link Face CSV at ``fps`` (one row per frame), with optional head yaw/pitch/roll ``[N,3]``
    (radians; eyes 0)."""
    beta = np.asarray(expressions, dtype=np.float64)
    if beta.ndim != 2 or len(beta) == 0:
        raise ValueError(f"expressions must be a non-empty [N,E] array, got {beta.shape}")
    if not np.isfinite(beta).all() or beta.min() < 0 or beta.max() > 1:
        raise ValueError("expressions must be finite and in [0, 1]")
    arkit = model_to_arkit(beta, model_names)
    pose = np.zeros((len(beta), len(POSE_NAMES)), np.float64)
    if head is not None:
        head = np.asarray(head, dtype=np.float64)
        if head.shape != (len(beta), 3) or not np.isfinite(head).all():
            raise ValueError(f"head must be a finite [{len(beta)},3] array, got {head.shape}")
        pose[:, :3] = head
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(HEADER)
        for i in range(len(beta)):
            code = format_timecode(start_seconds + i / fps, fps)
            w.writerow(
                [code, len(ARKIT_NAMES) + len(POSE_NAMES)]
                + [f"{v:.6f}" for v in arkit[i]]
                + [f"{v:.6f}" for v in pose[i]]
            )
    return path


def sample_take(
    model_names: Sequence[str], seconds: float = 2.0, fps: float = DEFAULT_FPS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A smooth synthetic take (expressions ``[N,E]``, head ``[N,3]`` radians): keyframes of the
    large-expression prior every half second, eased in between, with a slow head sway. The
    documentation's sample and the tests' takes are made with it."""
    from jr2net.face.synthetic import large_expression

    rng = np.random.default_rng(seed)
    n = max(1, int(round(seconds * fps)))
    n_keys = max(2, int(math.ceil(seconds / 0.5)) + 1)
    keys = np.stack([large_expression(model_names, rng) for _ in range(n_keys)])
    keys[0] = 0.0
    u = np.arange(n) / fps / 0.5
    k = np.minimum(u.astype(int), n_keys - 2)
    a = u - k
    a = a * a * (3 - 2 * a)  # smoothstep
    beta = keys[k] * (1 - a[:, None]) + keys[k + 1] * a[:, None]
    t = np.arange(n) / fps
    head = np.stack([0.15 * np.sin(2 * np.pi * t / 4), 0.05 * np.sin(2 * np.pi * t / 3),
                     0.03 * np.sin(2 * np.pi * t / 5)], axis=1)  # fmt: skip
    return np.clip(beta, 0.0, 1.0).astype(np.float32), head.astype(np.float32)


def track_from_fit_jsonl(path: str | Path) -> tuple[np.ndarray, list[str], float, np.ndarray]:
    """A ``jr2net fit-video`` track (``<stem>_fit.jsonl``) as (expressions ``[N,E]``, expression
    names, fps, head yaw/pitch/roll ``[N,3]`` radians); frames without a face repeat the last
    face frame (neutral before the first)."""
    import json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fit track not found: {path}")
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    if not lines or not lines[0].get("header"):
        raise ValueError(f"{path}: not a jr2net fit-video track (no header line)")
    names = list(lines[0]["expression_names"])
    fps = float(lines[0].get("fps") or DEFAULT_FPS)
    beta, head = np.zeros(len(names), np.float32), np.zeros(3, np.float32)
    rows, poses = [], []
    for rec in lines[1:]:
        if rec.get("face_found"):
            beta = np.clip(np.asarray(rec["expression"], np.float32), 0.0, 1.0)
            pitch, yaw, roll = rec["angles"]
            head = np.asarray([yaw, pitch, roll], np.float32)
        rows.append(beta)
        poses.append(head)
    if not rows:
        raise ValueError(f"{path}: the track has no frames")
    return np.stack(rows), names, fps, np.stack(poses)
