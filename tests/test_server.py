"""The streaming server end to end: a real grpc.aio server on 127.0.0.1, the real geometric pipeline,
real PyAV decoding, metrics scraped over HTTP."""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import threading
import time
import urllib.request
import zlib
from pathlib import Path

import av
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from jr2net.clients.client import AsyncReenactClient, ReenactClient, make_frame, session_config
from jr2net.io.images import encode_image
from jr2net.pipeline.base import FrameResult
from jr2net.protocol import SERVICE_NAME, pb2, pb2_grpc
from jr2net.server.app import ReenactmentServer
from jr2net.server.config import ReenactorFactory, ServerConfig

OUT_SIZE = (192, 192)


class LoopThread:
    """One event loop in a thread for every server and async client of this module."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 120.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def read_frames(path: Path, count: int | None = None, start: int = 0) -> list[np.ndarray]:
    frames = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i >= start:
                frames.append(frame.to_ndarray(format="rgb24"))
            if count is not None and len(frames) >= count:
                break
    return frames


def scrape(server: ReenactmentServer) -> dict[tuple[str, tuple], float]:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def metric(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture(scope="module")
def loop():
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="module")
def reenactor(ict_model_path):
    """The real geometric reenactor, built once by the server's factory and shared by the servers."""
    return ReenactorFactory(ServerConfig(face_model=str(ict_model_path))).get("geometric")


def start_server(loop: LoopThread, reenactor, **settings) -> ReenactmentServer:
    base = dict(host="127.0.0.1", port=0, metrics_port=-1, preload=False)
    base.update(settings)
    return loop.run(ReenactmentServer(ServerConfig(**base), {"geometric": reenactor}).start())


@pytest.fixture(scope="module")
def server(loop, reenactor):
    srv = start_server(loop, reenactor, metrics_port=0, max_sessions=4, max_in_flight=4,
                       max_message_bytes=4 * 1024 * 1024)
    yield srv
    loop.run(srv.stop(0))


@pytest.fixture(scope="module")
def source_bytes(images_dir) -> bytes:
    return (images_dir / "obama.jpg").read_bytes()


@pytest.fixture(scope="module")
def d0_frames(videos_dir) -> list[np.ndarray]:
    return read_frames(videos_dir / "d0.mp4")


def run_stream(loop, address, source, frames, *, token=None, window=None, **config):
    """Stream ``frames`` through an async client on the module loop; returns (ready, results)."""

    async def go():
        async with AsyncReenactClient(address, token=token) as client:
            session = await client.open_session(session_config(source, **config))
            results = [r async for r in session.run(frames, window=window, decode=False)]
            return session.ready, results

    return loop.run(go())


def rpc_error(loop, coro_fn) -> grpc.aio.AioRpcError:
    async def go():
        try:
            await coro_fn()
        except grpc.aio.AioRpcError as exc:
            return exc
        raise AssertionError("the call succeeded, an RpcError was expected")

    return loop.run(go())


def open_session_error(loop, address, source, token=None, **config) -> grpc.aio.AioRpcError:
    async def attempt():
        async with AsyncReenactClient(address, token=token) as client:
            await client.open_session(session_config(source, **config))

    return rpc_error(loop, attempt)


# ---- the main path -------------------------------------------------------------------------------


def test_d0_round_trip_every_frame_answered_in_order(server, source_bytes, d0_frames):
    before = scrape(server)
    with ReenactClient(server.address) as client:
        results = list(client.stream(source_bytes, d0_frames, output_size=(256, 256)))
        ready = client.last_ready
    assert len(d0_frames) == 78
    assert [r.frame_id for r in results] == list(range(78))
    assert all(r.ok for r in results), [(r.frame_id, r.error_message) for r in results if not r.ok]
    assert all(r.image.shape == (256, 256, 3) for r in results)
    assert sum(r.face_found for r in results) >= 70  # d0 is a talking head throughout
    assert ready.session_id and ready.mode == "geometric" and ready.setup_seconds > 0
    assert (ready.output_width, ready.output_height) == (256, 256)
    assert json.loads(ready.source_fit_json)  # the fit summary is a JSON object
    stages = set(results[-1].timings)
    assert {"queue", "decode", "handoff", "pipeline", "encode", "total"} <= stages
    after = scrape(server)
    answered = sum(metric(after, "jr2net_frames_total", result=k) - metric(before, "jr2net_frames_total", result=k)
                   for k in ("ok", "fallback"))
    assert answered == 78
    count = "jr2net_frame_latency_seconds_count"
    assert metric(after, count, stage="total") - metric(before, count, stage="total") == 78
    assert wait_until(lambda: metric(scrape(server), "jr2net_sessions_active") == 0)


def _png_header_claiming(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + b"\x00" * 64)


def test_corrupt_and_hostile_frames_get_frame_errors_and_the_stream_continues(
        loop, server, source_bytes, d0_frames):
    good = make_frame(9, d0_frames[0])
    truncated = encode_image(d0_frames[1])[:500]  # a corrupt JPEG mid-stream
    hostile = [
        pb2.StreamRequest(frame=make_frame(0, d0_frames[0])),
        pb2.StreamRequest(frame=pb2.Frame(frame_id=1, format=pb2.JPEG, data=truncated)),
        pb2.StreamRequest(frame=pb2.Frame(frame_id=-7, format=pb2.JPEG, data=good.data)),
        pb2.StreamRequest(frame=pb2.Frame(frame_id=1, data=np.random.default_rng(0).bytes(3000))),
        pb2.StreamRequest(frame=pb2.Frame(frame_id=2, format=pb2.RAW_RGB24, data=b"\x00" * 30,
                                          width=4_000_000_000, height=4_000_000_000)),
        pb2.StreamRequest(frame=pb2.Frame(frame_id=3, format=pb2.RAW_RGB24, data=b"\x00" * 30,
                                          width=64, height=64)),
        pb2.StreamRequest(frame=pb2.Frame(frame_id=4, format=pb2.PNG, data=_png_header_claiming(60000, 60000))),
        pb2.StreamRequest(frame=pb2.Frame(frame_id=5, format=99, data=good.data)),
        pb2.StreamRequest(frame=pb2.Frame(frame_id=6, format=pb2.JPEG, data=b"")),
        pb2.StreamRequest(frame=pb2.Frame(frame_id=7, format=pb2.JPEG, data=good.data, width=5000, height=5000)),
        pb2.StreamRequest(frame=pb2.Frame(frame_id=8, format=pb2.RAW_RGB24, data=b"\x00" * 48,
                                          width=4, height=4)),  # decodes, but too small for a face
        pb2.StreamRequest(config=session_config(source_bytes)),
        pb2.StreamRequest(),
        pb2.StreamRequest(frame=good),
    ]

    async def go():
        async with grpc.aio.insecure_channel(server.address) as channel:
            call = pb2_grpc.ReenactmentStub(channel).Stream()
            await call.write(pb2.StreamRequest(config=session_config(source_bytes, output_size=OUT_SIZE)))
            assert (await call.read()).WhichOneof("kind") == "ready"
            replies = []
            for request in hostile:  # lock-step, so the drop policy stays out of this test
                await call.write(request)
                replies.append(await call.read())
            await call.done_writing()
            assert await call.read() is grpc.aio.EOF
            return replies, await call.code()

    replies, code = loop.run(go())
    assert code == grpc.StatusCode.OK
    assert len(replies) == len(hostile)  # exactly one reply per request, in order
    assert replies[0].WhichOneof("kind") == "output" and replies[0].output.frame_id == 0
    assert replies[-1].WhichOneof("kind") == "output" and replies[-1].output.frame_id == 9
    assert all(r.WhichOneof("kind") == "error" for r in replies[1:-1])
    errors = [r.error for r in replies[1:-1]]
    assert [e.frame_id for e in errors[:10]] == [1, -7, 1, 2, 3, 4, 5, 6, 7, 8]
    assert {e.code for e in errors} == {"INVALID_ARGUMENT"}
    assert "JPEG" in errors[0].message
    assert "frame_id" in errors[1].message and "exceeds" in errors[3].message
    assert "small" in errors[9].message
    assert "SessionConfig" in errors[10].message
    with ReenactClient(server.address) as client:
        assert client.server_info().version


def test_drop_policy_answers_every_frame_and_drops_only_queued_ones(loop, server, source_bytes, d0_frames):
    frames = [make_frame(i, f) for i, f in enumerate(d0_frames[:16])]  # pre-encoded: sent in a burst
    ready, results = run_stream(loop, server.address, source_bytes, frames, window=len(frames),
                                output_size=OUT_SIZE, max_in_flight=3)
    assert ready.max_in_flight == 3
    assert [r.frame_id for r in results] == list(range(16))
    codes = [r.error_code for r in results]
    assert set(codes) <= {"", "DROPPED"}
    assert codes[0] == "" and codes[-1] == ""  # the first starts at once; the newest is never dropped
    assert codes.count("DROPPED") >= 1


def test_drop_policy_drops_the_oldest_queued_frame():
    """Admission alone (no worker running): with a window of 3, frames 3..5 push out 0..2 in order."""
    from concurrent.futures import ThreadPoolExecutor

    from jr2net.server.metrics import ServerMetrics
    from jr2net.server.session import OutputSpec, StreamSession

    async def go():
        async def write(_):
            pass

        with ThreadPoolExecutor(1) as pool:
            session = StreamSession("t", None, output=OutputSpec(), max_in_flight=3,
                                    max_frame_pixels=1 << 20, idle_timeout=30, pool=pool,
                                    metrics=ServerMetrics(), write=write)
            for i in range(6):
                session.admit(pb2.Frame(frame_id=i, format=pb2.JPEG, data=b"x"))
            dropped = [s.frame_id for s in session.replies if s.future.done()]
            return dropped, [s.frame_id for s in session.pending]

    dropped, queued = asyncio.run(go())
    assert dropped == [0, 1, 2]
    assert queued == [3, 4, 5]


class _RecordingPipeline:
    """A pipeline that echoes frames and records the order its stages start and end in.

    ``synthesise(0)`` blocks until ``analyse(1)`` has started: it returns in time only if the
    session overlaps the stages (serial stages would make it time out).
    """

    def __init__(self, staged: bool) -> None:
        self.events: list[tuple[str, int]] = []
        self.second_analysis = threading.Event()
        self.count = 0
        if staged:
            self.analyse, self.synthesise = self._analyse, self._synthesise

    def _analyse(self, frame: np.ndarray) -> tuple[int, np.ndarray]:
        n, self.count = self.count, self.count + 1
        self.events.append(("analyse", n))
        if n == 1:
            self.second_analysis.set()
        return n, frame

    def _synthesise(self, analysis: tuple[int, np.ndarray]) -> FrameResult:
        n, frame = analysis
        self.events.append(("synthesise", n))
        if n == 0 and not self.second_analysis.wait(5.0):
            raise RuntimeError("stage 1 of frame 1 never overlapped stage 2 of frame 0")
        return FrameResult(frame, {"echo": 0.0})

    def process(self, frame: np.ndarray) -> FrameResult:
        self.events.append(("process", self.count))
        self.count += 1
        return FrameResult(frame, {"echo": 0.0})

    def close(self) -> None:
        self.events.append(("close", -1))


def _run_session(pipeline: _RecordingPipeline, frames: int) -> list:
    """Feed ``frames`` JPEG frames to a StreamSession on a 2-thread pool; the responses in order."""
    from concurrent.futures import ThreadPoolExecutor

    from jr2net.server.metrics import ServerMetrics
    from jr2net.server.session import OutputSpec, StreamSession

    data = encode_image(np.full((32, 32, 3), 128, np.uint8), "JPEG")

    async def go():
        written = []

        async def write(response):
            written.append(response)

        with ThreadPoolExecutor(2) as pool:
            session = StreamSession("t", pipeline, output=OutputSpec(), max_in_flight=frames,
                                    max_frame_pixels=1 << 20, idle_timeout=30, pool=pool,
                                    metrics=ServerMetrics(), write=write)
            tasks = [asyncio.create_task(session.work_loop()), asyncio.create_task(session.write_loop())]
            for i in range(frames):
                session.admit(pb2.Frame(frame_id=i, format=pb2.JPEG, data=data, width=32, height=32))
            session.eof = True
            await asyncio.wait_for(session.finished, 10)
            for task in tasks:
                task.cancel()
            session.close()
        return written

    return asyncio.run(go())


def test_staged_pipeline_overlaps_analysis_of_the_next_frame_with_synthesis():
    pipeline = _RecordingPipeline(staged=True)
    written = _run_session(pipeline, 4)
    assert [w.output.frame_id for w in written] == [0, 1, 2, 3], [w.error.message for w in written]
    assert {"queue", "handoff", "decode", "encode", "echo", "total"} <= set(written[0].output.timings)
    analysed = [n for kind, n in pipeline.events if kind == "analyse"]
    synthesised = [n for kind, n in pipeline.events if kind == "synthesise"]
    assert analysed == synthesised == [0, 1, 2, 3]  # each stage in frame order
    assert pipeline.events[-1] == ("close", -1)  # closed after the last frame


def test_single_stage_pipeline_is_served_by_process():
    pipeline = _RecordingPipeline(staged=False)
    written = _run_session(pipeline, 3)
    assert [w.output.frame_id for w in written] == [0, 1, 2]
    assert [kind for kind, _ in pipeline.events] == ["process"] * 3 + ["close"]


def test_no_face_source_is_invalid_argument(loop, server, images_dir):
    err = open_session_error(loop, server.address, (images_dir / "s31.jpg").read_bytes())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no face" in err.details()


@pytest.mark.parametrize(
    "source, config, needle",
    [
        (b"not an image at all", {}, "source image"),
        (None, {"crop_size": 8}, "crop_size"),
        (None, {"mode": "learned"}, "learned"),
        (None, {"output_size": (100000, 10)}, "output size"),
    ],
)
def test_bad_session_config_is_invalid_argument(loop, server, source_bytes, source, config, needle):
    err = open_session_error(loop, server.address, source or source_bytes, **config)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.details()


def test_a_mode_whose_factory_refuses_is_invalid_argument(loop, server, source_bytes):
    from jr2net.pipeline import registry

    def needs_weights(settings):
        raise ValueError("needs checkpoints: pass --checkpoints RUN_DIR")

    registry.known_modes()  # built-in modes registered before the snapshot
    saved = dict(registry._MODES)
    registry.register_mode("learned", needs_weights, replace=True)
    try:
        err = open_session_error(loop, server.address, source_bytes, mode="learned")
    finally:
        registry._MODES.clear()
        registry._MODES.update(saved)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs checkpoints" in err.details()


def test_frame_before_config_is_failed_precondition(loop, server, d0_frames):
    async def attempt():
        async with grpc.aio.insecure_channel(server.address) as channel:
            call = pb2_grpc.ReenactmentStub(channel).Stream()
            await call.write(pb2.StreamRequest(frame=make_frame(0, d0_frames[0])))
            await call.read()
            await call

    err = rpc_error(loop, attempt)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_client_cancel_frees_the_session(loop, server, source_bytes, d0_frames):
    async def go():
        async with AsyncReenactClient(server.address) as client:
            session = await client.open_session(session_config(source_bytes, output_size=OUT_SIZE))
            active = metric(await asyncio.to_thread(scrape, server), "jr2net_sessions_active")
            async for _ in session.run(d0_frames[:8], decode=False):
                break  # leaving the loop cancels the call with frames still in flight
            return active

    assert loop.run(go()) == 1
    assert wait_until(lambda: metric(scrape(server), "jr2net_sessions_active") == 0)
    assert server.servicer.sessions == {}


def test_no_face_driving_frames_come_back_as_fallback(loop, server, source_bytes, videos_dir):
    clip = videos_dir / "short_hamilton_clip.mp4"
    frames = read_frames(clip, 4) + read_frames(clip, 3, start=160)
    _, results = run_stream(loop, server.address, source_bytes, frames, output_size=OUT_SIZE)
    assert all(r.ok for r in results), [r.error_message for r in results]
    assert all(not r.face_found and r.fallback for r in results[:4])
    assert {r.fallback for r in results[:4]} <= {"source", "last_output"}
    assert all(r.data for r in results)


def test_health_and_reflection_answer(server):
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE_NAME):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
            ProtoReflectionDescriptorDatabase,
        )

        db = ProtoReflectionDescriptorDatabase(channel)
        assert SERVICE_NAME in db.get_services()
        proto = db.FindFileContainingSymbol(SERVICE_NAME)
        assert proto.name == "jr2net.proto"
        assert {m.name for m in proto.service[0].method} == {"Stream", "Reconstruct", "GetServerInfo"}


def test_reconstruct_and_server_info(server, source_bytes, images_dir):
    with ReenactClient(server.address) as client:
        rec = client.reconstruct(source_bytes, with_mesh=True)
        info = client.server_info()
        with pytest.raises(grpc.RpcError) as no_face:
            client.reconstruct((images_dir / "s31.jpg").read_bytes())
    coeffs = json.loads(rec.coefficients_json)
    assert "expression" in coeffs and "expression" in rec.coefficients
    assert list(rec.landmarks.shape) == [68, 2]
    assert rec.mesh.vertices.shape[1] == 3 and len(rec.mesh.faces) % 3 == 0 and rec.mesh.faces
    assert no_face.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "geometric" in info.modes and info.default_mode == "geometric"
    assert info.face_model_name and len(info.face_model_hash) == 64
    assert info.build["cuda_compiled"] in ("true", "false") and info.build["torch"]
    assert info.limits.max_sessions == 4 and not info.auth_required and not info.tls


# ---- limits, auth, idle --------------------------------------------------------------------------

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def guarded(loop, reenactor):
    srv = start_server(loop, reenactor, token=TOKEN, max_sessions=1, idle_timeout=1.0,
                       max_message_bytes=512 * 1024)
    yield srv
    loop.run(srv.stop(0))


@pytest.mark.parametrize("token", [None, "wrong"])
def test_missing_or_bad_token_is_unauthenticated(loop, guarded, source_bytes, token):
    async def info():
        async with AsyncReenactClient(guarded.address, token=token) as client:
            await client.server_info()

    assert rpc_error(loop, info).code() == grpc.StatusCode.UNAUTHENTICATED
    err = open_session_error(loop, guarded.address, source_bytes, token=token)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    with grpc.insecure_channel(guarded.address) as channel:  # health checks stay open (probes)
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_session_limit_then_idle_timeout(loop, guarded, source_bytes):
    """One slot: a second session gets RESOURCE_EXHAUSTED; the first, left silent, DEADLINE_EXCEEDED."""

    async def go():
        async with AsyncReenactClient(guarded.address, token=TOKEN) as client:
            first = await client.open_session(session_config(source_bytes, output_size=OUT_SIZE))
            try:
                await client.open_session(session_config(source_bytes))
                second = None
            except grpc.aio.AioRpcError as exc:
                second = exc
            t0 = time.monotonic()
            try:
                await first.call.read()
                await first.call
                idle = None
            except grpc.aio.AioRpcError as exc:
                idle = exc
            return second, idle, time.monotonic() - t0

    second, idle, waited = loop.run(go())
    assert second is not None and second.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert idle is not None and idle.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "idle" in idle.details() and 0.9 <= waited < 5
    assert wait_until(lambda: guarded.servicer.slots_used == 0)


def test_idle_before_config_gets_deadline_exceeded(loop, guarded):
    async def silent():
        async with grpc.aio.insecure_channel(guarded.address) as channel:
            call = pb2_grpc.ReenactmentStub(channel).Stream(metadata=(("authorization", f"Bearer {TOKEN}"),))
            await call.read()
            await call

    assert rpc_error(loop, silent).code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_oversize_message_is_rejected(loop, guarded, source_bytes):
    big_source = np.full((500, 500, 3), 128, np.uint8)  # 750 kB RAW > the 512 kB limit

    async def go():
        async with AsyncReenactClient(guarded.address, token=TOKEN) as client:
            config = session_config(source_bytes)
            config.source.CopyFrom(pb2.Image(format=pb2.RAW_RGB24, data=big_source.tobytes(),
                                             width=500, height=500))
            await client.open_session(config)

    assert rpc_error(loop, go).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert wait_until(lambda: guarded.servicer.slots_used == 0)
    with ReenactClient(guarded.address, token=TOKEN) as client:  # still serving
        assert client.server_info().auth_required


# ---- drain ---------------------------------------------------------------------------------------


def test_drain_finishes_in_flight_frames_then_refuses_new_work(loop, reenactor, source_bytes, d0_frames):
    srv = start_server(loop, reenactor, metrics_port=0, max_in_flight=4)
    frames = [make_frame(i, f) for i, f in enumerate(d0_frames[:4])]

    async def go():
        async with AsyncReenactClient(srv.address) as client:
            session = await client.open_session(session_config(source_bytes, output_size=OUT_SIZE))
            for frame in frames:
                await session.call.write(pb2.StreamRequest(frame=frame))
            live = next(iter(srv.servicer.sessions.values()))
            while live.frames_in < len(frames):
                await asyncio.sleep(0.005)
            drain = asyncio.ensure_future(srv.drain(timeout=30))
            await asyncio.sleep(0)
            async with grpc.aio.insecure_channel(srv.address) as channel:
                status = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            try:
                await client.open_session(session_config(source_bytes))
                refused = None
            except grpc.aio.AioRpcError as exc:
                refused = exc.code()
            replies = []
            try:
                while (r := await session.call.read()) is not grpc.aio.EOF:
                    replies.append(r)
                await session.call
                final = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                final = exc.code()
            return status.status, refused, replies, final, await drain

    health_status, refused, replies, final, clean = loop.run(go())
    assert health_status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert refused == grpc.StatusCode.UNAVAILABLE
    assert [r.output.frame_id for r in replies] == [0, 1, 2, 3]  # in-flight frames were finished
    assert all(r.WhichOneof("kind") == "output" for r in replies)
    assert final == grpc.StatusCode.UNAVAILABLE
    assert clean and srv.server is None


def test_tls_server_answers_a_client_that_trusts_its_certificate(loop, reenactor, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    srv = start_server(loop, reenactor, tls_cert=str(cert), tls_key=str(key))
    try:
        with ReenactClient(srv.address, root_certificates=cert) as client:
            assert client.server_info().tls
        with ReenactClient(srv.address) as plain, pytest.raises(grpc.RpcError) as refused:
            plain.server_info(timeout=5)  # a plaintext client cannot talk to it
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        loop.run(srv.stop(0))
