"""Video sources: plain video trees and the VoxCeleb2 layout, frame sampling, and the split rule.

Layouts (``detect_video_layout``):

* ``voxceleb2``: ``<root>/<id>/<video_id>/<clip>.mp4``, or extracted frames
  ``<root>/<id>/<video_id>/<clip>/*.jpg``; the identity is ``<id>`` (a person), the video name
  ``<id>/<video_id>/<clip>``. Chosen when every video sits exactly three levels down (or every
  frame folder two levels down).
* ``plain``: any tree of video files; the identity and name are the path below the root
  without the suffix (``d0``, ``talks/alice``).

Split (``split_of``): an identity named in ``heldout_identities`` is held out whole; otherwise the
last ``heldout_tail`` fraction of each video's frames is held out too, so training never sees
the end of a clip that evaluation uses.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")


def split_of(
    identity: str,
    frame_index: int,
    n_frames: int,
    heldout_identities: Iterable[str],
    heldout_tail: float = 0.2,
) -> str:
    """``"heldout"`` for a held-out identity or a frame in the last ``heldout_tail`` of its
    video (frame ``i`` of ``n`` is in the tail when ``i >= ceil((1 - tail) * n)``), else
    ``"train"``."""
    if n_frames < 1 or not 0 <= frame_index < n_frames:
        raise ValueError(f"frame_index {frame_index} is not in a video of {n_frames} frames")
    if not 0.0 <= heldout_tail < 1.0:
        raise ValueError(f"heldout_tail must be in [0, 1), got {heldout_tail}")
    if identity in set(heldout_identities):
        return "heldout"
    first_tail = int(np.ceil((1.0 - heldout_tail) * n_frames - 1e-9))
    return "heldout" if frame_index >= first_tail else "train"


@dataclass(frozen=True)
class VideoItem:
    """One video: a file, or a folder of extracted frames (``frames`` kind)."""

    path: Path
    name: str  # unique within the source, e.g. "d0" or "id00012/abc/00001"
    identity: str  # the person: VoxCeleb2 <id>, else the name
    kind: str = "file"  # "file" | "frames"

    def frame_count(self) -> int:
        """Number of frames (container count for files, image count for frame folders)."""
        if self.kind == "frames":
            return len(_frame_files(self.path))
        from jr2net.io.video import VideoReader

        return VideoReader(self.path).frame_count

    def frames(self, max_frames: int = 0) -> Iterator[tuple[int, np.ndarray | None]]:
        """``(index, uint8 HWC RGB frame)`` for every frame (the first ``max_frames`` if > 0).

        An extracted frame that does not decode comes as ``(index, None)``; a video file that
        cannot be opened or decoded raises ``jr2net.errors.VideoError``."""
        if self.kind == "frames":
            from jr2net.errors import InvalidImageError
            from jr2net.io.images import load_image

            files = _frame_files(self.path)
            for i, f in enumerate(files[:max_frames] if max_frames else files):
                try:
                    yield i, load_image(f)
                except InvalidImageError:
                    yield i, None
            return
        from jr2net.io.video import VideoReader

        it = iter(VideoReader(self.path))
        try:
            for i, frame in enumerate(it):
                if max_frames and i >= max_frames:
                    break
                yield i, frame
        finally:
            it.close()  # type: ignore[attr-defined]


def sampled(frame_index: int, stride: int) -> bool:
    """Whether frame ``frame_index`` is kept with a sampling ``stride`` (frames 0, s, 2s, ...)."""
    return frame_index % stride == 0


def _frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)


def _check_root(root: str | Path) -> Path:
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"video folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    return root


def detect_video_layout(root: str | Path) -> str:
    """``"voxceleb2"`` or ``"plain"`` for a video folder (see the module docstring)."""
    root = _check_root(root)
    files = [p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()]
    if files:
        depths = {len(p.relative_to(root).parts) for p in files}
        return "voxceleb2" if depths == {3} else "plain"
    frame_dirs = {p.parent for p in root.rglob("*") if p.suffix.lower() in FRAME_SUFFIXES}
    if frame_dirs and {len(d.relative_to(root).parts) for d in frame_dirs} == {3}:
        return "voxceleb2"
    return "plain"


def list_videos(root: str | Path, layout: str | None = None) -> list[VideoItem]:
    """The videos under ``root`` sorted by name; a missing folder is FileNotFoundError, a folder
    without videos (or VoxCeleb2 frame folders) ValueError, both naming the path."""
    root = _check_root(root)
    layout = detect_video_layout(root) if layout is None else layout
    if layout not in ("plain", "voxceleb2"):
        raise ValueError(f"unknown video layout {layout!r}; use 'plain' or 'voxceleb2'")
    items = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES:
            name = rel.with_suffix("").as_posix()
            identity = rel.parts[0] if layout == "voxceleb2" else name
            items.append(VideoItem(p, name, identity, "file"))
        elif layout == "voxceleb2" and p.is_dir() and len(rel.parts) == 3 and _frame_files(p):
            items.append(VideoItem(p, rel.as_posix(), rel.parts[0], "frames"))
    if not items:
        raise ValueError(
            f"no videos in {root} (looked for {', '.join(VIDEO_SUFFIXES)} files, or VoxCeleb2 "
            "frame folders <id>/<video_id>/<clip>/*.jpg)"
        )
    return items
