"""Client library and CLIs against real servers: windowed streaming, `jr2net reenact`, `jr2net bench
server` and `jr2net serve` (a subprocess drained by SIGTERM)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from jr2net.cli import main as cli_main
from jr2net.clients.client import AsyncReenactClient, ReenactClient, session_config
from jr2net.io.video import VideoReader
from jr2net.paths import PROJECT_ROOT
from jr2net.server.app import ServerThread
from jr2net.server.config import ServerConfig

TOKEN = "bench-token"


@pytest.fixture(scope="module")
def server(ict_model_path):
    """A server in its own thread, built through the factory (no injected pipeline), with auth."""
    cfg = ServerConfig(host="127.0.0.1", port=0, metrics_port=-1, max_in_flight=2, token=TOKEN,
                       face_model=str(ict_model_path))
    with ServerThread(cfg) as st:
        yield st


@pytest.fixture(scope="module")
def frames(videos_dir) -> list[np.ndarray]:
    return VideoReader(videos_dir / "d0.mp4").read_all(max_frames=10)


def test_async_client_keeps_the_window_so_the_server_never_drops(server, frames, images_dir):
    """The server grants a window of 2 and would drop beyond it; the client never lets that happen.
    (The blocking client is covered the same way by test_server's d0 round trip.)"""
    source = images_dir / "obama.jpg"

    async def run_async():
        async with AsyncReenactClient(server.address, token=TOKEN) as client:
            assert (await client.server_info()).auth_required
            session = await client.open_session(session_config(source, output_size=(128, 128)))
            return session.ready, [r async for r in session.run(frames)]

    ready, results = asyncio.run(run_async())  # a loop of its own, beside the server's
    assert ready.max_in_flight == 2
    assert [r.frame_id for r in results] == list(range(len(frames)))
    assert all(r.ok for r in results), [r.error_code for r in results]
    assert all(r.image.shape == (128, 128, 3) for r in results)


def test_bench_server_reports_throughput_latency_and_errors(server, tmp_path, images_dir, videos_dir, capsys):
    out = tmp_path / "bench.json"
    rc = cli_main(["bench", "server", "--server", server.address, "--token", TOKEN, "--streams", "2",
                   "--frames", "6", "--fps", "0", "--source", str(images_dir / "obama.jpg"),
                   "--driving", str(videos_dir / "d0.mp4"), "--json", str(out)])
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert rc == 0, printed
    assert report["frames_sent"] == 12 and report["frames_answered"] == 12
    assert report["errors"] == 0 and report["dropped"] == 0 and not report["failed_streams"]
    assert report["throughput_fps"] > 0
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]
    assert {"total", "pipeline", "decode", "encode"} <= set(report["stages"])
    assert "end_to_end" in printed and "throughput" in printed


def test_reenact_cli_writes_video_with_audio_side_by_side_and_contact_sheet(tmp_path, images_dir, videos_dir,
                                                                           ict_model_path, capsys):
    driving = videos_dir / "d11.mp4"  # has an AAC track
    out, sbs, sheet = tmp_path / "out.mp4", tmp_path / "sbs.mp4", tmp_path / "sheet.png"
    rc = cli_main(["reenact", "--source", str(images_dir / "obama.jpg"), "--driving", str(driving),
                   "--out", str(out), "--side-by-side", str(sbs), "--contact-sheet", str(sheet),
                   "--max-frames", "8", "--size", "256x256", "--face-model", str(ict_model_path),
                   "--no-progress"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert summary["frames"] == 8 and summary["outputs"] == 8 and not summary["errors"]
    assert summary["server"].startswith("127.0.0.1:")
    video = VideoReader(out)
    assert (video.frame_count, video.width, video.height) == (8, 256, 256)
    assert video.has_audio
    side = VideoReader(sbs)
    assert side.frame_count == 8 and side.height == 256
    assert side.width >= 256 + 256 + 200  # source (910x1137 -> 205 wide) | driving | output
    grid = np.asarray(Image.open(sheet))
    assert grid.shape[0] == 2 * 192 and grid.shape[1] > 192 * 3


def test_reenact_cli_against_a_server_reports_a_no_face_source(server, tmp_path, images_dir, videos_dir, capsys):
    rc = cli_main(["reenact", "--source", str(images_dir / "s31.jpg"), "--driving",
                   str(videos_dir / "d0.mp4"), "--out", str(tmp_path / "x.mp4"), "--max-frames", "2",
                   "--server", server.address, "--token", TOKEN, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "INVALID_ARGUMENT" in err and "no face" in err
    assert not (tmp_path / "x.mp4").exists()


def test_serve_process_drains_and_exits_on_sigterm(ict_model_path):
    env = dict(os.environ, JR2NET_MAX_SESSIONS="3", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jr2net.cli", "serve", "--host", "127.0.0.1", "--port", "0",
         "--metrics-port", "-1", "--no-preload", "--face-model", str(ict_model_path)],
        cwd=PROJECT_ROOT, env=env, stderr=subprocess.PIPE, text=True,
    )
    try:
        address = None
        deadline = time.monotonic() + 60
        lines = []
        while time.monotonic() < deadline and address is None:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            match = re.search(r"serving on (\S+:\d+)", line)
            if match:
                address = match.group(1)
        assert address, "".join(lines)
        with ReenactClient(address) as client:
            assert client.server_info().limits.max_sessions == 3  # from the environment
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
        rest = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 0
    assert "draining" in rest


def test_serve_help_documents_every_setting_and_the_precedence(capsys):
    from jr2net.server.config import SETTINGS

    with pytest.raises(SystemExit):
        cli_main(["serve", "--help"])
    text = capsys.readouterr().out
    for name in SETTINGS:
        assert "--" + name.replace("_", "-") in text
        assert f"JR2NET_{name.upper()}" in text
    assert "precedence" in text and "--config" in text and "DROPPED" in text


def test_paths_are_strings_or_paths(images_dir):
    # session_config accepts str, Path and bytes for the source and refuses other types clearly.
    source = images_dir / "obama.jpg"
    assert session_config(str(source)).source.data == session_config(Path(source)).source.data
    with pytest.raises(TypeError, match="image must be"):
        session_config(12345)
    with pytest.raises(FileNotFoundError):
        session_config(images_dir / "missing.jpg")
