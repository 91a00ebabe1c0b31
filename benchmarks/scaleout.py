"""Scale-out: two ``jr2net serve`` replicas behind a real nginx (``grpc_pass``), all on 127.0.0.1.

The nginx configuration is the one in docs/operations.md (its ``nginx`` code block), with the
replica and listen ports replaced by free ones. The run: open streams through nginx and check they
spread over both replicas; stop one replica mid-run (``--kill term``: SIGTERM, it drains;
``--kill kill``: SIGKILL, a crash); record how its streams end while the survivor's go on; then open
new streams, which must all succeed on the survivor (nginx takes the dead replica out after the
first refused connection: ``max_fails=1``, and retries that stream on the other one).

Run: ``python -m benchmarks.scaleout [--streams 4] [--frames 150] [--kill term|kill|both]``;
prints the figures and writes benchmarks/results/scaleout.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.soak import free_port, start_replica, stop_replica, wait_serving

DOCS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
DOC_REPLICAS = ("127.0.0.1:50051", "127.0.0.1:50052")
DOC_LISTEN = "127.0.0.1:8080"
OUT, CROP = (128, 128), 64


def nginx_binary() -> str:
    """The nginx executable; FileNotFoundError saying how to install it (``make nginx``)."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if not found:
        raise FileNotFoundError("nginx is not installed: run `make nginx` "
                                "(apt-get install -y nginx)")
    return found


def nginx_config(replicas: list[int], listen: int) -> str:
    """docs/operations.md's nginx configuration with these loopback ports."""
    blocks = re.findall(r"```nginx\n(.*?)```", DOCS.read_text(), re.S)
    if len(blocks) != 1:
        raise ValueError(f"{DOCS}: expected one ```nginx block, found {len(blocks)}")
    text = blocks[0]
    for doc, port in zip(DOC_REPLICAS, replicas, strict=True):
        if doc not in text:
            raise ValueError(f"{DOCS}: the nginx block has no upstream {doc}")
        text = text.replace(doc, f"127.0.0.1:{port}")
    if DOC_LISTEN not in text:
        raise ValueError(f"{DOCS}: the nginx block does not listen on {DOC_LISTEN}")
    return text.replace(DOC_LISTEN, f"127.0.0.1:{listen}")


class Cluster:
    """Two replicas and nginx in front of them, started and stopped by the caller."""

    def __init__(self, max_sessions: int = 4) -> None:
        self.ports = [free_port(), free_port()]
        self.proxy_port = free_port()
        self.max_sessions = max_sessions
        self.replicas: list[subprocess.Popen] = []
        self.nginx: subprocess.Popen | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="jr2net-nginx-"))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.proxy_port}"

    def replica_address(self, i: int) -> str:
        return f"127.0.0.1:{self.ports[i]}"

    def start(self) -> Cluster:
        binary = nginx_binary()
        conf = self.dir / "nginx.conf"
        conf.write_text(nginx_config(self.ports, self.proxy_port))
        self.replicas = [start_replica(port, "--max-sessions", str(self.max_sessions),
                                       "--drain-timeout", "10") for port in self.ports]
        for i, proc in enumerate(self.replicas):
            wait_serving(self.replica_address(i), proc)
        globals_ = f"daemon off; pid {self.dir}/nginx.pid; error_log {self.dir}/error.log info;"
        check = subprocess.run([binary, "-t", "-p", str(self.dir), "-c", str(conf), "-g", globals_],
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t refused the docs' configuration:\n{check.stderr}")
        self.nginx = subprocess.Popen([binary, "-p", str(self.dir), "-c", str(conf), "-g", globals_],
                                      stdin=subprocess.DEVNULL)
        wait_serving(self.address, self.nginx, timeout=30)  # health through the proxy
        return self

    def sessions(self, i: int) -> int:
        from jr2net.clients.client import ReenactClient

        with ReenactClient(self.replica_address(i)) as client:
            return int(client.server_info(timeout=5).sessions_active)

    def nginx_log(self) -> str:
        path = self.dir / "error.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.nginx.wait(10)
            if self.nginx.poll() is None:
                self.nginx.kill()
        for proc in self.replicas:
            stop_replica(proc)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def cluster(max_sessions: int = 4) -> Iterator[Cluster]:
    c = Cluster(max_sessions)
    try:
        yield c.start()
    finally:
        c.stop()


async def _stream(client: Any, config: Any, clip: list[bytes], frames: int, fps: float,
                  opened: list[str]) -> dict[str, Any]:
    """One stream; its outcome: status name, replies, frame errors."""
    import grpc

    replies = errors = 0
    try:
        session = await client.open_session(config)
        opened.append(session.ready.session_id)
        async for r in session.run((clip[i % len(clip)] for i in range(frames)), decode=False,
                                   pace_fps=fps):
            replies += 1
            errors += not r.ok
        status = "OK"
        details = ""
    except grpc.aio.AioRpcError as exc:
        status, details = exc.code().name, exc.details() or ""
    return {"status": status, "replies": replies, "frame_errors": errors, "details": details[:160]}


async def _scenario(c: Cluster, kill: str, streams: int, frames: int, fps: float,
                    after: int) -> dict[str, Any]:
    from jr2net.clients.client import AsyncReenactClient, session_config
    from jr2net.clients.loadgen import load_driving_frames
    from jr2net.paths import shared_path

    config = session_config(shared_path("data", "images", "s42.jpg").read_bytes(),
                            output_size=OUT, crop_size=CROP)
    clip = load_driving_frames(shared_path("data", "videos", "d0.mp4"), 78)
    opened: list[str] = []
    async with AsyncReenactClient(c.address) as client:
        tasks = [asyncio.create_task(_stream(client, config, clip, frames, fps, opened))
                 for _ in range(streams)]
        t0 = time.monotonic()
        while len(opened) < streams and time.monotonic() - t0 < 60:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # frames flowing on every stream
        spread = [await asyncio.to_thread(c.sessions, i) for i in (0, 1)]
        victim = 0 if spread[0] else 1
        c.replicas[victim].send_signal(signal.SIGTERM if kill == "term" else signal.SIGKILL)
        await asyncio.to_thread(c.replicas[victim].wait, 30)
        first = await asyncio.gather(*tasks)
        t1 = time.monotonic()
        new = await asyncio.gather(*(_stream(client, config, clip, 5, 0, []) for _ in range(after)))
        new_s = time.monotonic() - t1
    survivor = 1 - victim
    on_victim = spread[victim]
    ended = sorted(r["status"] for r in first)
    return {
        "kill": kill, "streams": streams, "frames_per_stream": frames,
        "sessions_per_replica_before": spread, "victim": victim,
        "victim_exit_code": c.replicas[victim].returncode,
        "victim_streams_status": [r["status"] for r in first if r["status"] != "OK"],
        "survivor_streams_ok": sum(r["status"] == "OK" and r["replies"] == frames for r in first),
        "first_streams": first, "first_streams_status": ended,
        "new_streams_ok": sum(r["status"] == "OK" and r["replies"] == 5 for r in new),
        "new_streams": after, "new_streams_s": round(new_s, 2),
        "new_streams_detail": [r for r in new if r["status"] != "OK"],
        "survivor_sessions_after": await asyncio.to_thread(c.sessions, survivor),
        "nginx_took_it_out": "upstream server temporarily disabled" in c.nginx_log(),
        "expected_victim_streams": on_victim,
    }


def run_scaleout(kill: str = "term", streams: int = 4, frames: int = 150, fps: float = 10.0,
                 after: int = 4) -> dict[str, Any]:
    """One scenario on a fresh cluster (see the module docstring); the report."""
    if kill not in ("term", "kill"):
        raise ValueError(f"kill must be 'term' or 'kill', got {kill!r}")
    with cluster(max_sessions=max(4, streams, after)) as c:
        report = asyncio.run(_scenario(c, kill, streams, frames, fps, after))
    report["load_average"] = list(os.getloadavg())
    return report


def main() -> None:
    from benchmarks.common import write_results

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--frames", type=int, default=150, help="frames per stream (10 fps)")
    parser.add_argument("--after", type=int, default=8, help="new streams after the kill")
    parser.add_argument("--kill", choices=("term", "kill", "both"), default="both")
    args = parser.parse_args()
    runs = {}
    for kill in (("term", "kill") if args.kill == "both" else (args.kill,)):
        r = run_scaleout(kill, args.streams, args.frames, after=args.after)
        runs[kill] = r
        print(f"{kill}: sessions per replica {r['sessions_per_replica_before']}; victim's streams "
              f"ended {r['victim_streams_status']}; survivor streams complete "
              f"{r['survivor_streams_ok']}; new streams ok {r['new_streams_ok']}/{r['new_streams']} "
              f"in {r['new_streams_s']} s; nginx took the replica out: {r['nginx_took_it_out']}")
    write_results("scaleout", {"runs": runs})


if __name__ == "__main__":
    main()
