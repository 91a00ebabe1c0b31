"""Load hardening against ``jr2net serve`` in a child process on 127.0.0.1: a 500-frame soak (RSS
flat after warm-up, no errors; benchmarks/soak.py runs 10,000) and overload at twice the session
limit (the extras get RESOURCE_EXHAUSTED and every accepted frame is answered; the p99 ratio is
measured by benchmarks/overload.py, not here)."""

from __future__ import annotations

import asyncio

import pytest

from benchmarks.overload import overload_round
from benchmarks.soak import free_port, run_soak, start_replica, stop_replica, wait_serving
from jr2net.clients.client import session_config
from jr2net.clients.loadgen import load_driving_frames

MAX_SESSIONS = 2
OUT, CROP = (128, 128), 64


def test_soak_500_frames_over_4_streams_keeps_rss_flat_with_no_errors():
    report = run_soak(frames=500, streams=4, warmup=100, output=OUT, crop=CROP)
    assert report["errors"] == 0 and report["answered"] == 500, report["failed_streams"]
    assert report["rss_mb"]["growth_after_warmup"] < 50, report["rss_mb"]
    assert report["server_exit_code"] == 0


@pytest.fixture(scope="module")
def replica():
    port = free_port()
    proc = start_replica(port, "--max-sessions", str(MAX_SESSIONS), "--max-in-flight", "2")
    address = f"127.0.0.1:{port}"
    try:
        wait_serving(address, proc)
        yield address
    finally:
        stop_replica(proc)


def test_overload_extras_get_resource_exhausted_and_every_accepted_frame_is_answered(
        replica, images_dir, videos_dir):
    config = session_config((images_dir / "s42.jpg").read_bytes(), output_size=OUT, crop_size=CROP)
    clip = load_driving_frames(videos_dir / "d0.mp4", 78)
    latencies, codes = asyncio.run(overload_round(replica, config, clip, sessions=MAX_SESSIONS,
                                                  extras=MAX_SESSIONS, frames=50, fps=10))
    assert len(latencies) == MAX_SESSIONS * 50  # an error on an accepted stream raises
    assert codes and set(codes) == {"RESOURCE_EXHAUSTED"}, set(codes)
