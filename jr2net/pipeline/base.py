"""The contract between the reenactment pipelines (geometric, learned) and their callers.

The server, the CLI and the benchmarks only use these types, so either path can be plugged in.
Images cross this boundary as uint8 ``[H, W, 3]`` RGB numpy arrays (the I/O edge, DESIGN §3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np


@dataclass
class SessionOptions:
    """Per-session settings, carried by the protocol's ``SessionConfig``."""

    output_width: int = 0  # 0: the source image's width
    output_height: int = 0  # 0: the source image's height
    pose_mode: Literal["relative", "absolute"] = "relative"  # relative to the first driving frame
    crop_size: int = 256  # side of the square face crop the pipeline renders at
    extra: dict[str, str] = field(default_factory=dict)  # free-form options (documented per path)


@dataclass
class FrameResult:
    """One reenacted frame: the image, per-stage wall times in seconds, and whether a face was used."""

    image: np.ndarray  # uint8 [H, W, 3]
    timings: dict[str, float]
    face_found: bool = True
    fallback: str = ""  # "" when reenacted; otherwise which documented fallback produced the image


@dataclass
class Reconstruction:
    """Coefficients (and optionally a mesh) reconstructed from one image."""

    coefficients: dict[str, Any]  # name -> list / nested list of floats (JSON-friendly)
    landmarks: np.ndarray  # [68, 2] detected image landmarks (x, y) in pixels
    vertices: np.ndarray | None = None  # [V, 3] model-space mesh, when requested
    faces: np.ndarray | None = None  # [F, 3]
    timings: dict[str, float] = field(default_factory=dict)


class ReenactmentSession(Protocol):
    """One source face driven by a stream of frames; ``process`` is called serially."""

    def process(self, frame: np.ndarray) -> FrameResult: ...

    def close(self) -> None: ...


@runtime_checkable
class StagedSession(Protocol):
    """A session whose ``process`` is ``synthesise(analyse(frame))``, so callers can pipeline it.

    ``analyse`` (tracking and fitting) and ``synthesise`` (rendering and compositing) are each
    called serially and in frame order, but ``analyse`` of frame n+1 may run while ``synthesise``
    of frame n runs in another thread: on a multi-core machine a stream then sustains the rate
    of its slower stage instead of the sum of both.
    """

    def process(self, frame: np.ndarray) -> FrameResult: ...

    def analyse(self, frame: np.ndarray) -> Any: ...

    def synthesise(self, analysis: Any) -> FrameResult: ...

    def close(self) -> None: ...


class Reenactor(Protocol):
    """Creates sessions; shared by all sessions of a server (must be safe to call from threads)."""

    name: str

    def start_session(self, source: np.ndarray, options: SessionOptions) -> ReenactmentSession:
        """Fit the source once. Raises ``jr2net.errors.NoFaceError`` if it has no face."""
        ...

    def reconstruct(self, image: np.ndarray, with_mesh: bool = False) -> Reconstruction: ...
