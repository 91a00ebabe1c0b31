"""Reenact a driving video, or a motion-capture take, with a source photo through a real gRPC
server (``jr2net reenact``).

``server`` is the address of a running server (``jr2net reenact`` without ``--server`` starts one
in-process on 127.0.0.1 with ``jr2net.server.app.local_server``, so the same code path, protocol,
drop policy and metrics, is used as against a remote replica). ``reenact_video`` sends the
driving video's frames as images; ``reenact_take`` sends a Live Link Face take's rows as
``MocapFrame``s (docs/mocap.md). Outputs: an H.264 mp4 (keeping a driving video's audio),
optionally a side-by-side video (source | driving | output; a take: source | output) and a
contact sheet PNG (driving, or for a take the source, above output for a few evenly spaced frames).

Frames that come back as a FrameError (none with the default window) are written as the previous
output (or the source at output size) so the video keeps the driving timing; they are counted in
the summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jr2net.clients.client import AsyncReenactClient, StreamResult, session_config
from jr2net.io.arkit_csv import MocapTake
from jr2net.protocol import MocapRow

CONTACT_SHEET_FRAMES = 6
CONTACT_CELL_HEIGHT = 192


@dataclass
class ReenactSummary:
    """What a reenactment run produced and how fast."""

    frames: int = 0
    outputs: int = 0
    fallback_frames: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    fps: float = 0.0
    setup_s: float = 0.0
    first_output_unix: float = 0.0  # time.time() when the first reply arrived
    startup_s: float = 0.0  # process start -> first output frame (set by ``jr2net reenact``)
    latency_ms_p50: float = 0.0
    latency_ms_p95: float = 0.0
    latency_ms_p99: float = 0.0
    output_size: tuple[int, int] = (0, 0)
    server: str = ""
    out: str = ""
    side_by_side: str = ""
    contact_sheet: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _even(v: float) -> int:
    return max(2, int(round(v / 2.0)) * 2)


def default_output_size(source_hw: tuple[int, int], longest: int = 512) -> tuple[int, int]:
    """(width, height) with the source's aspect ratio, longest side ``longest``, both even."""
    h, w = source_hw
    s = longest / max(h, w)
    return _even(w * s), _even(h * s)


def _resize_to_height(img: np.ndarray, height: int) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    if h == height:
        return img
    width = max(1, round(w * height / h))
    return np.asarray(Image.fromarray(img).resize((width, height), Image.Resampling.BILINEAR))


def side_by_side_frame(
    source: np.ndarray, driving: np.ndarray | None, output: np.ndarray
) -> np.ndarray:
    """source | driving | output at the output's height (source | output without a driving image)."""
    h = output.shape[0]
    panels = [source] if driving is None else [source, driving]
    return np.concatenate([_resize_to_height(p, h) for p in panels] + [output], axis=1)


def contact_sheet(
    pairs: list[tuple[np.ndarray, np.ndarray]], cell_height: int = CONTACT_CELL_HEIGHT
) -> np.ndarray:
    """A grid with one column per (driving, output) pair: driving on top, output below."""
    if not pairs:
        raise ValueError("pairs: no frames for the contact sheet")
    columns = []
    for driving, output in pairs:
        top = _resize_to_height(driving, cell_height)
        bottom = _resize_to_height(output, cell_height)
        width = max(top.shape[1], bottom.shape[1])
        col = np.full((2 * cell_height, width, 3), 255, np.uint8)
        for row, img in ((0, top), (1, bottom)):
            x = (width - img.shape[1]) // 2
            col[row * cell_height : (row + 1) * cell_height, x : x + img.shape[1]] = img
        columns.append(col)
        columns.append(np.full((2 * cell_height, 4, 3), 255, np.uint8))
    return np.concatenate(columns[:-1], axis=1)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


@dataclass
class _Drive:
    """What drives a run: ``items(ready)`` checks the server's SessionReady and gives the stream's
    (item, driving image or None) pairs; ``total`` rows (0: unknown) at ``fps``."""

    items: Callable[[Any], AsyncIterator[tuple[Any, np.ndarray | None]]]
    total: int
    fps: float
    audio_from: Path | None = None


async def _stream_to_video(
    source: Path,
    drive: _Drive,
    out: Path,
    *,
    server: str,
    token: str | None = None,
    root_certificates: str | Path | None = None,
    side_by_side: str | Path | None = None,
    contact_sheet_path: str | Path | None = None,
    pose_mode: str = "relative",
    crop_size: int = 256,
    output_size: tuple[int, int] | None = None,
    mode: str = "",
    window: int | None = None,
    quality: int = 90,
    options: dict[str, str] | None = None,
    progress: bool = True,
    wire_format: str = "JPEG",
    wait_server: Callable[[], Awaitable[Any]] | None = None,
) -> ReenactSummary:
    """Open a session for ``source``, stream ``drive``'s items, write one output frame per item
    (a FrameError repeats the previous output); the shared body of the two entry points.

    ``wire_format``: how frames travel both ways (JPEG, or RAW_RGB24 for a loopback server: no
    encode/decode at either end). ``wait_server`` (awaited just before the session opens) waits for
    a server that is still starting, so its start-up overlaps ours."""
    from tqdm import tqdm

    from jr2net.io.images import load_image, save_image
    from jr2net.io.video import VideoWriter

    src_img = load_image(source)  # raises FileNotFoundError / InvalidImageError early
    total = drive.total
    size = output_size or default_output_size(src_img.shape[:2])
    summary = ReenactSummary(output_size=(int(size[0]), int(size[1])), out=str(out), server=server)
    sheet_ids = (
        set(
            np.linspace(0, max(total - 1, 0), min(CONTACT_SHEET_FRAMES, max(total, 1)))
            .round()
            .astype(int)
            .tolist()
        )
        if contact_sheet_path
        else set()
    )
    driving_frames: dict[int, np.ndarray | None] = {}
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    latencies: list[float] = []
    writer = sbs_writer = bar = None
    try:
        config = session_config(
            source.read_bytes(),
            mode=mode,
            output_size=tuple(size),
            pose_mode=pose_mode,
            crop_size=crop_size,
            quality=quality,
            options=options,
            output_format=wire_format,
        )
        if wait_server is not None:
            await wait_server()
        async with AsyncReenactClient(
            server, token=token, root_certificates=root_certificates
        ) as client:
            session = await client.open_session(config)
            summary.setup_s = session.ready.setup_seconds
            pending = drive.items(session.ready)
            # After the source fit, so the rate shown is the streaming rate.
            bar = tqdm(total=total or None, unit="frame", desc="reenact", disable=not progress)
            out.parent.mkdir(parents=True, exist_ok=True)
            writer = VideoWriter(out, drive.fps, audio_from=drive.audio_from)
            if side_by_side:
                Path(side_by_side).parent.mkdir(parents=True, exist_ok=True)
                sbs_writer = VideoWriter(side_by_side, drive.fps, audio_from=drive.audio_from)
            placeholder = np.asarray(_resize_to_height(src_img, int(size[1])))

            async def items() -> AsyncIterator[Any]:
                i = 0
                async for item, driving in pending:
                    driving_frames[i] = driving
                    yield item
                    i += 1

            t0 = time.perf_counter()
            last: np.ndarray | None = None
            result: StreamResult
            async for result in session.run(items(), window=window, frame_format=wire_format):
                if not summary.first_output_unix:
                    summary.first_output_unix = time.time()
                drv = driving_frames.pop(result.frame_id)
                summary.frames += 1
                if result.ok:
                    summary.outputs += 1
                    summary.fallback_frames += int(not result.face_found)
                    latencies.append(result.latency_s)
                    last = result.image
                else:
                    summary.errors[result.error_code] = summary.errors.get(result.error_code, 0) + 1
                image = last if last is not None else placeholder
                await asyncio.to_thread(writer.write, image)
                if sbs_writer is not None:
                    await asyncio.to_thread(
                        sbs_writer.write, side_by_side_frame(src_img, drv, image)
                    )
                if result.frame_id in sheet_ids:
                    pairs.append((src_img if drv is None else drv, image))
                bar.update(1)
                if latencies:
                    bar.set_postfix(latency_ms=f"{1000 * latencies[-1]:.0f}", refresh=False)
            summary.wall_s = time.perf_counter() - t0
    finally:
        if bar is not None:
            bar.close()
        for w in (writer, sbs_writer):
            if w is not None:
                await asyncio.to_thread(w.close)
    summary.fps = summary.frames / summary.wall_s if summary.wall_s > 0 else 0.0
    summary.latency_ms_p50 = 1000 * _percentile(latencies, 50)
    summary.latency_ms_p95 = 1000 * _percentile(latencies, 95)
    summary.latency_ms_p99 = 1000 * _percentile(latencies, 99)
    if side_by_side:
        summary.side_by_side = str(side_by_side)
    if contact_sheet_path and pairs:
        Path(contact_sheet_path).parent.mkdir(parents=True, exist_ok=True)
        save_image(contact_sheet_path, contact_sheet(pairs))
        summary.contact_sheet = str(contact_sheet_path)
    return summary


def _check_max_frames(max_frames: int | None) -> None:
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")


async def reenact_video_async(
    source: str | Path,
    driving: str | Path,
    out: str | Path,
    *,
    max_frames: int | None = None,
    **kwargs: Any,
) -> ReenactSummary:
    """The asyncio implementation of :func:`reenact_video`."""
    from jr2net.io.video import VideoReader

    _check_max_frames(max_frames)
    reader = VideoReader(Path(driving))
    total = reader.frame_count or 0
    if max_frames is not None:
        total = min(total, max_frames) if total else max_frames
    it = iter(reader)
    # The first frame is decoded while the session opens (a starting server, the source fit).
    first = asyncio.ensure_future(asyncio.to_thread(next, it, None))

    def items(ready: Any) -> AsyncIterator[tuple[Any, np.ndarray | None]]:
        async def frames() -> AsyncIterator[tuple[Any, np.ndarray | None]]:
            frame = await first
            i = 0
            while frame is not None and (max_frames is None or i < max_frames):
                yield frame, frame
                i += 1
                if max_frames is None or i < max_frames:
                    frame = await asyncio.to_thread(next, it, None)

        return frames()

    try:
        return await _stream_to_video(
            Path(source), _Drive(items, total, reader.fps, Path(driving)), Path(out), **kwargs
        )
    finally:
        # A decode still running in its thread must end before the decoder is closed.
        await asyncio.wait([first])
        if not first.cancelled():
            first.exception()  # retrieved: raised above already if it mattered
        with contextlib.suppress(ValueError):  # a later decode still running: closed when collected
            getattr(it, "close", lambda: None)()
        close = getattr(reader, "close", None)
        if close is not None:
            close()


async def reenact_take_async(
    source: str | Path,
    take: MocapTake | str | Path,
    out: str | Path,
    *,
    csv_fps: float = 60.0,
    realtime: bool = False,
    max_frames: int | None = None,
    **kwargs: Any,
) -> ReenactSummary:
    """The asyncio implementation of :func:`reenact_take`."""
    from jr2net.io.arkit_csv import read_live_link_csv

    _check_max_frames(max_frames)
    if not isinstance(take, MocapTake):
        take = read_live_link_csv(take, csv_fps)  # MocapCSVError before anything else
    n = len(take) if max_frames is None else min(len(take), max_frames)

    def items(ready: Any) -> AsyncIterator[tuple[Any, np.ndarray | None]]:
        names = list(ready.expression_names)
        if not names:
            raise ValueError(f"the server's {ready.mode!r} sessions take no motion-capture frames")
        beta = take.expressions(names)

        async def rows() -> AsyncIterator[tuple[Any, np.ndarray | None]]:
            start = time.perf_counter()
            for i in range(n):
                if realtime:
                    delay = start + float(take.times[i]) - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                head = None if take.head is None else take.head[i]
                yield MocapRow(beta[i], head, None, int(round(float(take.times[i]) * 1e6))), None

        return rows()

    return await _stream_to_video(Path(source), _Drive(items, n, take.fps), Path(out), **kwargs)


def reenact_video(
    source: str | Path, driving: str | Path, out: str | Path, **kwargs: Any
) -> ReenactSummary:
    """Reenact ``driving`` with the face of ``source`` into ``out`` (mp4); see the module docstring.

    Keyword arguments: server ("host:port", required), token, root_certificates,
    side_by_side (mp4 path), contact_sheet_path (png path), max_frames, pose_mode, crop_size,
    output_size ((w, h); default: source aspect, longest side 512), mode, window, quality,
    options, progress, wire_format ("JPEG" default, "RAW_RGB24"), wait_server (a coroutine
    function awaited before the session opens, e.g. ``ServerProcess.wait_ready``).
    """
    return asyncio.run(reenact_video_async(source, driving, out, **kwargs))


def reenact_take(
    source: str | Path, take: MocapTake | str | Path, out: str | Path, **kwargs: Any
) -> ReenactSummary:
    """Reenact ``source`` by a Live Link Face take (a CSV path, read at ``csv_fps``, or a
    ``MocapTake``) into ``out`` (mp4): one ``MocapFrame`` per row, its timecode as
    ``capture_ts_us``, one output frame per row at the take's frame rate.

    Keyword arguments: those of :func:`reenact_video`, plus csv_fps (default 60) and realtime
    (send each row at its timecode, as a live capture would; default: as fast as the server
    answers). The side-by-side video is source | output, the contact sheet source over output.
    """
    return asyncio.run(reenact_take_async(source, take, out, **kwargs))
