"""Load generator: N concurrent streams of M frames at F fps against a server; latency statistics.

Each stream opens a session (timed: session setup), then sends pre-encoded JPEG driving frames on
a fixed clock (``fps`` > 0; a live camera) or as fast as its window allows (``fps`` = 0). The window
defaults to the server's grant, so no frame is dropped; a larger ``window`` with a slow server shows
the drop policy at work. End-to-end latency is client send -> reply; per-stage times are the
server's ``OutputFrame.timings``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jr2net.clients.client import AsyncReenactClient, session_config

STAT_PERCENTILES = (50, 95, 99)


@dataclass
class StreamStats:
    """One stream's raw measurements."""

    setup_s: float = 0.0
    rpc_open_s: float = 0.0
    wall_s: float = 0.0
    started: float = 0.0  # perf_counter when the first frame was sent
    ended: float = 0.0  # perf_counter when the last reply arrived
    latencies: list[float] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=dict)
    results: Counter = field(default_factory=Counter)
    failure: str = ""


def _describe(exc: BaseException) -> str:
    details = exc.details() if hasattr(exc, "details") else str(exc)
    code = exc.code().name if hasattr(exc, "code") else type(exc).__name__
    return f"{code}: {details}"


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def load_driving_frames(driving: str | Path, count: int, quality: int = 90) -> list[bytes]:
    """Up to ``count`` frames of ``driving`` as JPEG bytes (pre-encoded so the client costs little)."""
    from jr2net.io.images import encode_image
    from jr2net.io.video import VideoReader

    frames: list[bytes] = []
    reader = VideoReader(driving)
    try:
        for frame in reader:
            frames.append(encode_image(frame, "JPEG", quality=quality))
            if len(frames) >= count:
                break
    finally:
        close = getattr(reader, "close", None)
        if close is not None:
            close()
    if not frames:
        raise ValueError(f"driving: no frames in {driving}")
    return frames


async def _one_stream(
    client: AsyncReenactClient, config: Any, frames: list[bytes], count: int, fps: float,
    window: int | None,
) -> StreamStats:
    stats = StreamStats()
    t0 = time.perf_counter()
    try:
        session = await client.open_session(config)
    except Exception as exc:  # a refused session is a measured outcome, not a crash
        stats.failure = _describe(exc)
        return stats
    stats.rpc_open_s = time.perf_counter() - t0
    stats.setup_s = session.ready.setup_seconds
    items = (frames[i % len(frames)] for i in range(count))
    t1 = stats.started = time.perf_counter()
    try:
        async for r in session.run(items, window=window, decode=False, pace_fps=fps):
            stats.results[r.error_code or ("ok" if r.face_found else "fallback")] += 1
            if r.ok:
                stats.latencies.append(r.latency_s)
                for stage, seconds in r.timings.items():
                    stats.stages.setdefault(stage, []).append(seconds)
    except Exception as exc:
        stats.failure = _describe(exc)
    stats.ended = time.perf_counter()
    stats.wall_s = stats.ended - t1
    return stats


def summarize(streams: list[StreamStats], wall_s: float, *, fps: float, frames: int) -> dict[str, Any]:
    """Aggregate stream stats into the report dict (latencies in ms).

    Throughput counts answered-OK frames over the streaming span (first frame sent by any stream
    to the last reply), so session set-up is not in it; ``wall_s`` is the whole run.
    """
    lat = [v for s in streams for v in s.latencies]
    results: Counter = Counter()
    for s in streams:
        results.update(s.results)
    answered = sum(results.values())
    ok = results["ok"] + results["fallback"]
    stage_names = sorted({k for s in streams for k in s.stages})
    stages = {}
    for name in stage_names:
        values = [v for s in streams for v in s.stages.get(name, [])]
        stages[name] = {f"p{q}_ms": 1000 * _pct(values, q) for q in STAT_PERCENTILES}
    per_stream_fps = [len(s.latencies) / s.wall_s for s in streams if s.wall_s > 0]
    setups = [s.setup_s for s in streams if not s.failure or s.setup_s]
    spans = [s for s in streams if s.ended > s.started > 0]
    span = max(s.ended for s in spans) - min(s.started for s in spans) if spans else 0.0
    return {
        "streams": len(streams),
        "frames_per_stream": frames,
        "target_fps": fps,
        "wall_s": wall_s,
        "streaming_s": span,
        "frames_sent": frames * len(streams),
        "frames_answered": answered,
        "frames_ok": ok,
        "fallback": results["fallback"],
        "dropped": results["DROPPED"],
        "errors": answered - ok - results["DROPPED"],
        "error_codes": {k: v for k, v in results.items() if k not in ("ok", "fallback")},
        "failed_streams": [s.failure for s in streams if s.failure],
        "throughput_fps": ok / span if span > 0 else 0.0,
        "per_stream_fps_min": min(per_stream_fps) if per_stream_fps else 0.0,
        "latency_ms": {f"p{q}": 1000 * _pct(lat, q) for q in STAT_PERCENTILES}
        | {"mean": 1000 * float(np.mean(lat)) if lat else float("nan")},
        "session_setup_s": {"max": max(setups) if setups else float("nan"),
                            "mean": float(np.mean(setups)) if setups else float("nan")},
        "stages": stages,
    }


async def run_load_async(
    *,
    server: str,
    source: str | Path,
    driving: str | Path,
    streams: int = 1,
    frames: int = 100,
    fps: float = 30.0,
    window: int | None = None,
    token: str | None = None,
    root_certificates: str | Path | None = None,
    crop_size: int = 256,
    output_size: tuple[int, int] = (0, 0),
    driving_frames: list[bytes] | None = None,
) -> dict[str, Any]:
    """Run the load against ``server`` ("host:port"; ``jr2net bench server`` without ``--server``
    starts one in-process with ``jr2net.server.app.local_server``)."""
    if streams < 1 or frames < 1 or fps < 0:
        raise ValueError(f"need streams >= 1, frames >= 1, fps >= 0; got {streams}, {frames}, {fps}")
    clip = driving_frames or await asyncio.to_thread(load_driving_frames, driving, frames)
    config = session_config(Path(source).read_bytes(), crop_size=crop_size, output_size=output_size)
    async with AsyncReenactClient(server, token=token, root_certificates=root_certificates) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(
            _one_stream(client, config, clip, frames, fps, window) for _ in range(streams)))
        wall = time.perf_counter() - t0
    report = summarize(list(results), wall, fps=fps, frames=frames)
    report["server"] = server
    return report


def run_load(**kwargs: Any) -> dict[str, Any]:
    """Blocking wrapper of :func:`run_load_async`."""
    return asyncio.run(run_load_async(**kwargs))


def report_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows: end-to-end latency first, then each server stage."""
    rows = [{"stage": "end_to_end", **{f"p{q}_ms": report["latency_ms"][f"p{q}"]
                                      for q in STAT_PERCENTILES}}]
    rows += [{"stage": name, **values} for name, values in report["stages"].items()]
    return rows
