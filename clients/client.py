"""Python client library for the JR2Net streaming server.

``AsyncReenactClient`` (grpc.aio) and ``ReenactClient`` (blocking, on grpc's synchronous API, so it
can be used from any thread without an event loop) both open a session, stream frames keeping at
most ``window`` frames unanswered (default: the window the server granted, so the server never
has to drop) and yield one :class:`StreamResult` per frame, in the order the frames were sent.

Frames may be uint8 ``[H, W, 3]`` RGB arrays (encoded as ``frame_format``), already-encoded
JPEG/PNG ``bytes``, or ready-made ``pb2.Frame`` messages (full control, e.g. for tests); or
motion-capture rows instead of images: ``MocapRow`` (expression ``[E]`` in
``SessionReady.expression_names`` order, optional head pose; sent as a ``MocapFrame``) or ready-made
``pb2.MocapFrame`` messages. Both kinds may be mixed in one stream.

A draining server answers the frames it can no longer take with ``FrameError{"UNAVAILABLE"}``,
then ends the stream with status UNAVAILABLE. A grpc.aio client must stop writing at the first
UNAVAILABLE (reply or status): a write that races the server's end of the stream turns the status
into INTERNAL and can lose replies the server had sent. ``AsyncSession.run`` does so (it
half-closes and reads the remaining replies); code that writes to ``AsyncSession.call`` itself
must do the same. Reconnect to another replica after it: UNAVAILABLE is safe to retry.

A replica that dies mid-stream behind a proxy (nginx resets the client's stream with HTTP/2
``RST_STREAM`` INTERNAL_ERROR, which grpc reports as INTERNAL) is raised as
:class:`ReplicaLostError`, an ``AioRpcError`` (so also a ``grpc.RpcError``) with status UNAVAILABLE
and the transport's details: it is the same "reconnect to another replica" case.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from jr2net.protocol import (
    FORMAT_NAMES,
    MocapRow,
    decode_image,
    frame_message,
    image_message,
    mocap_message,
    pb2,
    pb2_grpc,
)
from jr2net.protocol.tables import format_value, mode_value, pose_mode_value

make_frame = frame_message  # the client library's name for it (``jr2net.protocol.frame_message``)
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024


class ReplicaLostError(grpc.aio.AioRpcError):
    """UNAVAILABLE: the stream was reset by the transport (the replica behind a proxy died); retry elsewhere."""

    def __init__(self, details: str) -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                         details=f"replica lost mid-stream ({details}); reconnect to another replica")


def replica_lost(exc: grpc.RpcError) -> ReplicaLostError | None:
    """The ``ReplicaLostError`` for a stream reset by the transport (RST_STREAM, as INTERNAL); else None."""
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    details = (exc.details() if callable(getattr(exc, "details", None)) else "") or ""
    if code == grpc.StatusCode.INTERNAL and "RST_STREAM" in details:
        return ReplicaLostError(details)
    return None


class ProtocolError(RuntimeError):
    """The server broke the protocol (e.g. a reply out of order)."""


@dataclass
class StreamResult:
    """The reply to one frame: an output image or an error."""

    frame_id: int
    capture_ts_us: int
    latency_s: float  # client clock: frame sent -> reply received
    error_code: str = ""  # "" for an output; else FrameError.code (e.g. "DROPPED")
    error_message: str = ""
    data: bytes = b""  # encoded output
    format: str = ""
    width: int = 0
    height: int = 0
    image: np.ndarray | None = None  # decoded uint8 [H, W, 3] when decode=True
    timings: dict[str, float] = field(default_factory=dict)
    face_found: bool = False
    fallback: str = ""

    @property
    def ok(self) -> bool:
        return not self.error_code


def _read_bytes(value: str | Path | bytes | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def session_config(
    source: str | Path | bytes | np.ndarray,
    *,
    mode: str = "",
    output_format: str = "JPEG",
    output_size: tuple[int, int] = (0, 0),
    quality: int = 90,
    pose_mode: str = "relative",
    crop_size: int = 0,
    max_in_flight: int = 0,
    options: dict[str, str] | None = None,
) -> Any:
    """Build a ``SessionConfig`` (``mode`` "" = the server's default; sizes 0 = server defaults)."""
    mode_v = mode_value(mode)
    format_v = format_value(output_format, "output_format")
    pose_v = pose_mode_value(pose_mode)
    return pb2.SessionConfig(
        source=image_message(source), output_format=format_v,
        output_width=int(output_size[0]), output_height=int(output_size[1]), quality=quality,
        mode=mode_v, pose_mode=pose_v, crop_size=crop_size, max_in_flight=max_in_flight,
        options=options or {},
    )


def stream_request(frame_id: int, item: Any, frame_format: str = "JPEG", frame_quality: int = 90) -> Any:
    """The ``StreamRequest`` carrying one stream item: a ``MocapFrame`` for a ``MocapRow`` /
    ``pb2.MocapFrame``, else a ``Frame`` (``make_frame``); ready-made messages keep their ids."""
    if isinstance(item, (MocapRow, pb2.MocapFrame)):
        return pb2.StreamRequest(mocap=mocap_message(frame_id, item))
    return pb2.StreamRequest(frame=make_frame(frame_id, item, frame_format, frame_quality))


def _request_id(request: Any) -> int:
    return getattr(request, request.WhichOneof("kind")).frame_id


def _result(response: Any, sent_at: float, decode: bool) -> StreamResult:
    latency = time.perf_counter() - sent_at
    kind = response.WhichOneof("kind")
    if kind == "error":
        e = response.error
        return StreamResult(e.frame_id, e.capture_ts_us, latency, e.code or "UNKNOWN", e.message)
    if kind != "output":
        raise ProtocolError(f"expected an OutputFrame or FrameError, got {kind!r}")
    o = response.output
    image = decode_image(o) if decode else None
    return StreamResult(o.frame_id, o.capture_ts_us, latency, data=o.data,
                        format=FORMAT_NAMES.get(o.format, ""),
                        width=o.width, height=o.height, image=image, timings=dict(o.timings),
                        face_found=o.face_found, fallback=o.fallback)


def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def _channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)]


# ---- asyncio client ------------------------------------------------------------------------------


class AsyncSession:
    """An open stream: ``ready`` holds the server's SessionReady; :meth:`run` streams frames."""

    def __init__(self, call: Any, ready: Any) -> None:
        self.call = call
        self.ready = ready

    async def run(
        self,
        frames: Iterable[Any] | AsyncIterable[Any],
        *,
        window: int | None = None,
        frame_format: str = "JPEG",
        frame_quality: int = 90,
        decode: bool = True,
        pace_fps: float = 0.0,
        first_id: int = 0,
    ) -> AsyncIterator[StreamResult]:
        """Send ``frames`` (ids ``first_id``, ``first_id+1``, ...) and yield their results in order.

        ``window``: most frames unanswered at once (default: the server's grant). ``pace_fps`` > 0
        sends on a fixed clock (a live camera); a sender that falls behind does not burst to catch up.
        """
        window = window or self.ready.max_in_flight or 1
        slots = asyncio.Semaphore(window)
        sent: deque[tuple[int, float]] = deque()
        sender_error: list[BaseException] = []
        unavailable = asyncio.Event()  # the server is draining: write nothing more

        async def frame_source() -> AsyncIterator[Any]:
            if isinstance(frames, AsyncIterable):
                async for f in frames:
                    yield f
            else:
                for f in frames:
                    yield f

        async def send() -> None:
            try:
                start = time.perf_counter()
                i = 0
                async for item in frame_source():
                    if pace_fps > 0:
                        delay = start + i / pace_fps - time.perf_counter()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    await slots.acquire()
                    if unavailable.is_set() or self.call.done():
                        break
                    if isinstance(item, np.ndarray):  # encoding takes a while: off the loop
                        request = await asyncio.to_thread(stream_request, first_id + i, item,
                                                          frame_format, frame_quality)
                    else:
                        request = stream_request(first_id + i, item, frame_format, frame_quality)
                    if unavailable.is_set():
                        break
                    sent.append((_request_id(request), time.perf_counter()))
                    await self.call.write(request)
                    i += 1
                if not self.call.done():
                    await self.call.done_writing()
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # surfaced by the reader below
                if self.call.done() or unavailable.is_set():
                    return  # the server ended the stream: the reader reports its status
                sender_error.append(exc)
                self.call.cancel()

        sender = asyncio.create_task(send())
        try:
            while True:
                response = await self.call.read()
                if response is grpc.aio.EOF:
                    break
                if not sent:
                    raise ProtocolError("reply received for a frame that was never sent")
                frame_id, sent_at = sent.popleft()
                result = (await asyncio.to_thread(_result, response, sent_at, True) if decode
                          else _result(response, sent_at, False))
                if result.frame_id != frame_id:
                    raise ProtocolError(f"reply for frame {result.frame_id}, expected {frame_id}")
                if result.error_code == "UNAVAILABLE":
                    unavailable.set()
                slots.release()
                yield result
            await sender
            if sender_error:
                raise sender_error[0]
            if sent:
                raise ProtocolError(f"stream ended with {len(sent)} frames unanswered")
        except grpc.aio.AioRpcError as exc:
            if sender_error:
                raise sender_error[0] from None
            lost = replica_lost(exc)
            if lost is not None:
                raise lost from exc
            raise
        finally:
            if not sender.done():
                sender.cancel()
            if not self.call.done():
                self.call.cancel()


def _open_channel(
    grpc_api: Any,
    target: str,
    root_certificates: str | Path | bytes | None,
    tls: bool,
    max_message_bytes: int,
) -> Any:
    """A channel from ``grpc`` or ``grpc.aio`` (same call shapes): TLS when roots are given or ``tls``."""
    options = _channel_options(max_message_bytes)
    roots = _read_bytes(root_certificates)
    if roots is not None or tls:
        creds = grpc.ssl_channel_credentials(root_certificates=roots)
        return grpc_api.secure_channel(target, creds, options=options)
    return grpc_api.insecure_channel(target, options=options)


class AsyncReenactClient:
    """grpc.aio client. Use as ``async with AsyncReenactClient("host:port") as client: ...``."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        root_certificates: str | Path | bytes | None = None,
        tls: bool = False,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE,
    ) -> None:
        self.target = target
        self.metadata = _metadata(token)
        self.channel = _open_channel(grpc.aio, target, root_certificates, tls, max_message_bytes)
        self.stub = pb2_grpc.ReenactmentStub(self.channel)

    async def __aenter__(self) -> AsyncReenactClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def server_info(self, timeout: float | None = 30.0) -> Any:
        return await self.stub.GetServerInfo(pb2.ServerInfoRequest(), metadata=self.metadata,
                                             timeout=timeout)

    async def reconstruct(self, image: str | Path | bytes | np.ndarray, with_mesh: bool = False,
                          timeout: float | None = 60.0) -> Any:
        request = pb2.ReconstructRequest(image=image_message(image), with_mesh=with_mesh)
        return await self.stub.Reconstruct(request, metadata=self.metadata, timeout=timeout)

    async def open_session(self, config: Any) -> AsyncSession:
        """Open a stream with a ``SessionConfig`` (see :func:`session_config`); raises AioRpcError."""
        call = self.stub.Stream(metadata=self.metadata)
        try:
            await call.write(pb2.StreamRequest(config=config))
            first = await call.read()
            if first is grpc.aio.EOF:
                await call  # raises the status if the server refused the session
                raise ProtocolError("server closed the stream without a SessionReady")
            if first.WhichOneof("kind") != "ready":
                raise ProtocolError(f"expected SessionReady, got {first.WhichOneof('kind')!r}")
        except BaseException:
            call.cancel()
            raise
        return AsyncSession(call, first.ready)

    async def stream(self, source: str | Path | bytes | np.ndarray, frames: Iterable[Any] | AsyncIterable[Any],
                     *, window: int | None = None, decode: bool = True, pace_fps: float = 0.0,
                     frame_format: str = "JPEG", **config: Any) -> AsyncIterator[StreamResult]:
        """Open a session for ``source`` and yield the results of ``frames`` in order."""
        session = await self.open_session(session_config(source, **config))
        async for result in session.run(frames, window=window, decode=decode, pace_fps=pace_fps,
                                        frame_format=frame_format):
            yield result


# ---- blocking client -----------------------------------------------------------------------------


class ReenactClient:
    """Blocking client on grpc's synchronous API (no event loop needed)."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        root_certificates: str | Path | bytes | None = None,
        tls: bool = False,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE,
    ) -> None:
        self.target = target
        self.metadata = _metadata(token)
        self.channel = _open_channel(grpc, target, root_certificates, tls, max_message_bytes)
        self.stub = pb2_grpc.ReenactmentStub(self.channel)
        self.last_ready: Any = None

    def __enter__(self) -> ReenactClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def server_info(self, timeout: float | None = 30.0) -> Any:
        return self.stub.GetServerInfo(pb2.ServerInfoRequest(), metadata=self.metadata, timeout=timeout)

    def reconstruct(self, image: str | Path | bytes | np.ndarray, with_mesh: bool = False,
                    timeout: float | None = 60.0) -> Any:
        request = pb2.ReconstructRequest(image=image_message(image), with_mesh=with_mesh)
        return self.stub.Reconstruct(request, metadata=self.metadata, timeout=timeout)

    def stream(
        self,
        source: str | Path | bytes | np.ndarray,
        frames: Iterable[Any],
        *,
        window: int | None = None,
        decode: bool = True,
        frame_format: str = "JPEG",
        frame_quality: int = 90,
        **config: Any,
    ) -> Iterator[StreamResult]:
        """Open a session and yield one result per frame, in order; ``last_ready`` gets SessionReady.

        Raises ``grpc.RpcError`` when the server refuses the session or ends the stream.
        """
        cfg = session_config(source, **config)
        granted: queue.Queue[int] = queue.Queue(maxsize=1)
        stop = threading.Event()
        sent: deque[tuple[int, float]] = deque()
        slots = threading.Semaphore(0)  # released once the window is known

        def requests() -> Iterator[Any]:
            yield pb2.StreamRequest(config=cfg)
            n = granted.get()
            if n <= 0:
                return
            for _ in range(n):
                slots.release()
            for i, item in enumerate(frames):
                while not slots.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                request = stream_request(i, item, frame_format, frame_quality)
                sent.append((_request_id(request), time.perf_counter()))
                yield request

        responses = self.stub.Stream(requests(), metadata=self.metadata)
        try:
            try:
                first = next(responses)
            except StopIteration:
                raise ProtocolError("server closed the stream without a SessionReady") from None
            if first.WhichOneof("kind") != "ready":
                raise ProtocolError(f"expected SessionReady, got {first.WhichOneof('kind')!r}")
            self.last_ready = first.ready
            granted.put(window or first.ready.max_in_flight or 1)
            for response in responses:
                if not sent:
                    raise ProtocolError("reply received for a frame that was never sent")
                frame_id, sent_at = sent.popleft()
                result = _result(response, sent_at, decode)
                if result.frame_id != frame_id:
                    raise ProtocolError(f"reply for frame {result.frame_id}, expected {frame_id}")
                slots.release()
                yield result
        except grpc.RpcError as exc:
            lost = replica_lost(exc)
            if lost is not None:
                raise lost from exc
            raise
        finally:
            stop.set()
            if granted.empty():
                granted.put(0)
            responses.cancel()
