"""Overload: a replica at twice its session limit; extras get RESOURCE_EXHAUSTED, accepted streams keep their p99.

Starts ``jr2net serve --max-sessions N`` in a child process, runs N paced accepted streams alone
(baseline) and then again with N extra clients that keep trying to open sessions, interleaved over
``--rounds`` so a change in the machine's load hits both alike. Prints the median p99 of each and
their ratio (target <= 1.25) and writes benchmarks/results/overload.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import grpc
import numpy as np

from benchmarks.soak import free_port, start_replica, stop_replica, wait_serving
from jr2net.clients.client import AsyncReenactClient, session_config
from jr2net.clients.loadgen import load_driving_frames

P99_RATIO_TARGET = 1.25


async def _accepted_stream(client, config, clip, frames: int, fps: float,
                           stop: asyncio.Event) -> list[float]:
    """A paced stream; sets ``stop`` two replies before its end, while it still holds its slot."""
    session = await client.open_session(config)
    items = (clip[i % len(clip)] for i in range(frames))
    latencies = []
    async for r in session.run(items, decode=False, pace_fps=fps):
        if not r.ok:
            raise RuntimeError(f"an accepted stream got an error: {r.error_message}")
        latencies.append(r.latency_s)
        if len(latencies) == frames - 2:
            stop.set()
    return latencies


async def _extra_stream(client, config, stop: asyncio.Event, codes: list) -> None:
    """A client that keeps trying to open a session (20 tries a second) until ``stop``."""
    while not stop.is_set():
        try:
            session = await client.open_session(config)
            session.call.cancel()
            code = "OPENED"
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        if not stop.is_set():  # answered while every slot was still taken
            codes.append(code)
        await asyncio.sleep(0.05)


async def overload_round(address: str, config, clip, *, sessions: int, extras: int, frames: int,
                         fps: float) -> tuple[list[float], list[str]]:
    """``sessions`` accepted streams of ``frames`` with ``extras`` storming clients; (latencies s, codes)."""
    codes: list[str] = []
    stop = asyncio.Event()
    async with AsyncReenactClient(address) as client:
        accepted = [asyncio.create_task(_accepted_stream(client, config, clip, frames, fps, stop))
                    for _ in range(sessions)]
        while (await client.server_info()).sessions_active < sessions:
            await asyncio.sleep(0.05)  # the extras start once every slot is taken
        storm = [asyncio.create_task(_extra_stream(client, config, stop, codes))
                 for _ in range(extras)]
        latencies = [v for lat in await asyncio.gather(*accepted) for v in lat]
        stop.set()
        await asyncio.gather(*storm)
    return latencies, codes


def run_overload(address: str, source: bytes, clip: list[bytes], *, sessions: int = 2, rounds: int = 5,
                 frames: int = 50, fps: float = 10.0, output: tuple[int, int] = (128, 128),
                 crop: int = 64) -> dict:
    """Interleaved baseline/overload rounds against a running replica; the report dict."""
    config = session_config(source, output_size=output, crop_size=crop)
    baseline, overload, codes = [], [], []
    for _ in range(rounds):
        lat, _ = asyncio.run(overload_round(address, config, clip, sessions=sessions, extras=0,
                                            frames=frames, fps=fps))
        baseline.append(1000 * float(np.percentile(lat, 99)))
        lat, seen = asyncio.run(overload_round(address, config, clip, sessions=sessions,
                                               extras=sessions, frames=frames, fps=fps))
        overload.append(1000 * float(np.percentile(lat, 99)))
        codes += seen
        time.sleep(0.5)
    ratio = statistics.median(overload) / statistics.median(baseline)
    return {
        "sessions": sessions, "extras": sessions, "rounds": rounds, "frames_per_stream": frames,
        "fps": fps, "output": list(output), "crop": crop,
        "p99_ms_baseline": [round(v, 2) for v in baseline],
        "p99_ms_overload": [round(v, 2) for v in overload],
        "p99_ms_baseline_median": round(statistics.median(baseline), 2),
        "p99_ms_overload_median": round(statistics.median(overload), 2),
        "p99_ratio": round(ratio, 3),
        "refused_opens": len(codes), "codes": sorted(set(codes)),
        "targets": {f"p99_ratio<={P99_RATIO_TARGET}": ratio <= P99_RATIO_TARGET,
                    "extras_get_RESOURCE_EXHAUSTED_only": bool(codes) and set(codes) == {"RESOURCE_EXHAUSTED"}},
    }


def main() -> None:
    from benchmarks.common import print_table, write_results
    from jr2net.paths import shared_path

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=2, help="the replica's --max-sessions")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved baseline/overload pairs")
    parser.add_argument("--frames", type=int, default=50, help="frames per accepted stream")
    parser.add_argument("--fps", type=float, default=10.0, help="pace of each accepted stream")
    args = parser.parse_args()
    source = shared_path("data", "images", "s42.jpg").read_bytes()
    clip = load_driving_frames(shared_path("data", "videos", "d0.mp4"), 78)
    port = free_port()
    proc = start_replica(port, "--max-sessions", str(args.sessions), "--max-in-flight", "2")
    address = f"127.0.0.1:{port}"
    try:
        wait_serving(address, proc)
        report = run_overload(address, source, clip, sessions=args.sessions, rounds=args.rounds,
                              frames=args.frames, fps=args.fps)
    finally:
        stop_replica(proc)
    print_table([{"streams": "accepted only", "p99 ms (median)": report["p99_ms_baseline_median"]},
                 {"streams": f"accepted + {args.sessions} storming", "p99 ms (median)":
                  report["p99_ms_overload_median"]}],
                ["streams", "p99 ms (median)"], title="overload at twice the session limit")
    print(f"p99 ratio {report['p99_ratio']:.2f} (target <= {P99_RATIO_TARGET}); "
          f"{report['refused_opens']} refused opens, codes {report['codes']}")
    print("targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}"
                                  for k, v in report["targets"].items()))
    write_results("overload", report)


if __name__ == "__main__":
    main()
