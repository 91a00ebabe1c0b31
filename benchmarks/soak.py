"""Soak: many frames over a few concurrent streams against ``jr2net serve`` in its own process; the
server's resident memory (RSS) must stop growing after a warm-up, and no frame may fail.

Default: 10,000 frames over 4 streams (2,500 each, each stream as fast as its window allows),
256x256 output, 128 px crop, s42.jpg driven by d0.mp4 (looped). RSS is sampled from
/proc/PID/status every 0.5 s. Target: RSS growth after warm-up (max after it minus the value at
its end) under 50 MB, zero errors. The suite runs a 500-frame version (tests/test_hardening_load.py).

Run: ``python -m benchmarks.soak [--frames 10000] [--streams 4] [--warmup 1000]``; prints the
figures and writes benchmarks/results/soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

GROWTH_LIMIT_MB = 50.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    """Resident set size of process ``pid`` in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


def face_model_path() -> str | None:
    """The shared ICT model when the shared data has it, else None (the normal lookup)."""
    from jr2net.paths import shared_path

    try:
        return str(shared_path("assets", "ict_face_model.npz"))
    except FileNotFoundError:
        return None


def start_replica(port: int, *extra: str, log_level: str = "WARNING") -> subprocess.Popen:
    """``jr2net serve`` on 127.0.0.1:``port`` in a child process (metrics off unless ``extra``)."""
    cmd = [sys.executable, "-m", "jr2net.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", log_level]
    if "--metrics-port" not in extra:
        cmd += ["--metrics-port", "-1"]
    model = face_model_path()
    if model and "--face-model" not in extra:
        cmd += ["--face-model", model]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    return subprocess.Popen([*cmd, *extra], env=env, stdin=subprocess.DEVNULL)


def wait_serving(address: str, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    """Block until ``address`` answers health SERVING (RuntimeError if ``proc`` exits first)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"jr2net serve exited with {proc.returncode}")
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} not serving after {timeout:g} s")
            time.sleep(0.2)


def stop_replica(proc: subprocess.Popen, timeout: float = 30) -> int:
    """SIGTERM (drain), then SIGKILL after ``timeout``; the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


class RssSampler(threading.Thread):
    """Samples a process's RSS with the number of frames answered so far, until stopped."""

    def __init__(self, pid: int, progress: Any, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.progress, self.interval = pid, progress, interval
        self.samples: list[tuple[float, int, float]] = []  # (seconds, frames answered, RSS MB)
        self._halt = threading.Event()
        self._t0 = time.monotonic()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append((time.monotonic() - self._t0, self.progress(), rss_mb(self.pid)))
            self._halt.wait(self.interval)

    def stop(self) -> list[tuple[float, int, float]]:
        self._halt.set()
        self.join(10)
        self.samples.append((time.monotonic() - self._t0, self.progress(), rss_mb(self.pid)))
        return self.samples


async def _streams(address: str, source: bytes, clip: list[bytes], streams: int, per_stream: int,
                   output: tuple[int, int], crop: int, counts: dict[str, int]) -> list[str]:
    """Run the streams; ``counts`` gets ok / fallback / error totals as replies come."""
    from jr2net.clients.client import AsyncReenactClient, session_config

    config = session_config(source, output_size=output, crop_size=crop)

    async def one() -> str:
        try:
            session = await client.open_session(config)
            items = (clip[i % len(clip)] for i in range(per_stream))
            async for r in session.run(items, decode=False):
                key = ("ok" if r.face_found else "fallback") if r.ok else "error"
                counts[key] += 1
            return ""
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"

    async with AsyncReenactClient(address) as client:
        return list(await asyncio.gather(*(one() for _ in range(streams))))


def run_soak(*, frames: int = 10_000, streams: int = 4, warmup: int = 1000,
             output: tuple[int, int] = (256, 256), crop: int = 128) -> dict[str, Any]:
    """Soak one ``jr2net serve`` child; the report (RSS figures in MB, counts, targets)."""
    from jr2net.clients.loadgen import load_driving_frames
    from jr2net.paths import shared_path

    if streams < 1 or frames < streams or not 0 <= warmup < frames:
        raise ValueError(f"need streams >= 1, frames >= streams, 0 <= warmup < frames; got "
                         f"{streams}, {frames}, {warmup}")
    source = shared_path("data", "images", "s42.jpg").read_bytes()
    clip = load_driving_frames(shared_path("data", "videos", "d0.mp4"), 78)
    port = free_port()
    proc = start_replica(port, "--max-sessions", str(streams), "--no-preload")
    address = f"127.0.0.1:{port}"
    counts = {"ok": 0, "fallback": 0, "error": 0}
    try:
        wait_serving(address, proc)
        start_rss = rss_mb(proc.pid)
        sampler = RssSampler(proc.pid, lambda: sum(counts.values()))
        sampler.start()
        t0 = time.perf_counter()
        failures = asyncio.run(_streams(address, source, clip, streams, frames // streams,
                                        output, crop, counts))
        wall = time.perf_counter() - t0
        samples = sampler.stop()
    finally:
        code = stop_replica(proc)
    after = [rss for _, done, rss in samples if done >= warmup]
    before = [rss for _, done, rss in samples if done < warmup] or after[:1]
    base = before[-1] if before else float("nan")
    growth = (max(after) - base) if after else float("nan")
    answered = sum(counts.values())
    errors = counts["error"] + sum(bool(f) for f in failures)
    return {
        "frames": frames, "streams": streams, "warmup_frames": warmup, "output": list(output),
        "crop": crop, "answered": answered, "ok": counts["ok"], "fallback": counts["fallback"],
        "errors": errors, "failed_streams": [f for f in failures if f],
        "wall_s": round(wall, 1), "throughput_fps": round(answered / wall, 1) if wall else 0.0,
        "rss_mb": {"server_start": round(start_rss, 1), "end_of_warmup": round(base, 1),
                   "max_after_warmup": round(max(after), 1) if after else None,
                   "end": round(samples[-1][2], 1), "growth_after_warmup": round(growth, 1)},
        "rss_samples": [(round(t, 1), n, round(r, 1)) for t, n, r in samples],
        "server_exit_code": code, "load_average": list(os.getloadavg()),
        "targets": {"rss_growth_mb<50": growth < GROWTH_LIMIT_MB,
                    "zero_errors": errors == 0 and answered == frames // streams * streams},
    }


def main() -> None:
    from benchmarks.common import write_results

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=10_000, help="frames over all streams")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1000, help="frames before RSS is judged")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--size", type=int, default=256, help="output side")
    args = parser.parse_args()
    report = run_soak(frames=args.frames, streams=args.streams, warmup=args.warmup,
                      output=(args.size, args.size), crop=args.crop)
    rss = report["rss_mb"]
    print(f"soak: {report['answered']}/{report['frames']} frames over {report['streams']} streams "
          f"in {report['wall_s']} s ({report['throughput_fps']} fps), errors {report['errors']}")
    print(f"server RSS MB: start {rss['server_start']}, end of warm-up {rss['end_of_warmup']}, "
          f"max after {rss['max_after_warmup']}, end {rss['end']}; growth "
          f"{rss['growth_after_warmup']} (target < {GROWTH_LIMIT_MB:g})")
    print("targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}"
                                  for k, v in report["targets"].items()))
    write_results("soak", report)


if __name__ == "__main__":
    main()
