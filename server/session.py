"""One streaming session: frame admission with the drop policy, serial processing off the event loop,
and strictly ordered replies.

Every admitted frame gets a *slot* in ``replies`` (arrival order). A single worker coroutine per
session takes queued slots one at a time and runs decode -> ``ReenactmentSession.process`` -> encode
in the server's shared thread pool, so the pipeline sees frames serially and in order. A writer
coroutine sends the slots' replies in arrival order, so clients see replies in the order they sent
frames. Drop policy (also in proto/jr2net.proto): at most ``max_in_flight`` frames are unanswered
(queued or being processed); a frame arriving when that many are unanswered makes the OLDEST QUEUED
frame answer ``FrameError{code: "DROPPED"}`` (if every unanswered frame is already being
processed, the new frame itself is dropped).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from jr2net.errors import InvalidImageError, NoFaceError
from jr2net.server.metrics import ServerMetrics
from jr2net.server.protocol import pb2

log = logging.getLogger(__name__)

FORMAT_NAMES = {pb2.JPEG: "JPEG", pb2.PNG: "PNG", pb2.RAW_RGB24: "RAW_RGB24"}


def sniff_format(data: bytes) -> str:
    """JPEG or PNG from the magic bytes (for IMAGE_FORMAT_UNSPECIFIED); InvalidImageError otherwise."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    raise InvalidImageError(
        "format UNSPECIFIED and the data is neither JPEG nor PNG; set format (RAW_RGB24 needs it)"
    )


def format_name(fmt: int, data: bytes) -> str:
    """The ``jr2net.io.images`` format name for a protocol ImageFormat value."""
    if fmt == pb2.IMAGE_FORMAT_UNSPECIFIED:
        return sniff_format(data)
    if fmt not in FORMAT_NAMES:
        raise InvalidImageError(f"unknown image format enum value {fmt}")
    return FORMAT_NAMES[fmt]


def decode_image(msg: Any, max_pixels: int) -> Any:
    """Decode an ``Image``/``Frame`` message to uint8 [H, W, 3]; InvalidImageError if unusable."""
    from jr2net.io.images import decode_frame

    data = bytes(msg.data)
    if not data:
        raise InvalidImageError("empty image data (0 bytes)")
    if msg.width * msg.height > max_pixels:
        raise InvalidImageError(
            f"declared size {msg.width}x{msg.height} exceeds the server limit of {max_pixels} pixels"
        )
    return decode_frame(data, format_name(msg.format, data), msg.width, msg.height, max_pixels=max_pixels)


@dataclass
class OutputSpec:
    """How the session encodes its outputs."""

    format: int = pb2.JPEG
    quality: int = 90


@dataclass
class _Slot:
    frame_id: int
    capture_ts_us: int
    admitted: float  # perf_counter at admission
    future: asyncio.Future
    frame: Any = None  # the pb2.Frame while queued; None once started or answered
    timings: dict[str, float] = field(default_factory=dict)


class StreamSession:
    """The per-stream state machine; see the module docstring."""

    def __init__(
        self,
        session_id: str,
        pipeline_session: Any,
        *,
        output: OutputSpec,
        max_in_flight: int,
        max_frame_pixels: int,
        idle_timeout: float,
        pool: concurrent.futures.Executor,
        metrics: ServerMetrics,
        write: Callable[[Any], Any],
    ) -> None:
        self.session_id = session_id
        self.pipeline = pipeline_session
        self.output = output
        self.max_in_flight = max_in_flight
        self.max_frame_pixels = max_frame_pixels
        self.idle_timeout = idle_timeout
        self.pool = pool
        self.metrics = metrics
        self._write = write
        self._loop = asyncio.get_running_loop()
        self.replies: deque[_Slot] = deque()
        self.pending: deque[_Slot] = deque()
        self.processing: _Slot | None = None
        self._running: concurrent.futures.Future | None = None
        self._work = asyncio.Event()
        self._slot_added = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self.draining = False
        self.eof = False
        self.last_activity = self._loop.time()
        # Result of the stream: None = ended normally, else (status code, details).
        self.finished: asyncio.Future = self._loop.create_future()
        self.frames_in = 0

    # ---- admission (event loop) ----------------------------------------------------------------

    @property
    def unanswered(self) -> int:
        return len(self.pending) + (self.processing is not None)

    def _new_slot(self, frame_id: int, ts: int) -> _Slot:
        slot = _Slot(frame_id, ts, time.perf_counter(), self._loop.create_future())
        self.replies.append(slot)
        self._slot_added.set()
        # Bound the reply backlog (answered but not yet written): stop reading until it drains.
        if len(self.replies) >= 8 * self.max_in_flight + 16:
            self._space.clear()
        return slot

    def _answer_error(self, slot: _Slot, code: str, message: str, result: str) -> None:
        slot.frame = None
        self.metrics.frames.labels(result=result).inc()
        if not slot.future.done():
            slot.future.set_result(pb2.StreamResponse(error=pb2.FrameError(
                frame_id=slot.frame_id, capture_ts_us=slot.capture_ts_us, code=code, message=message,
            )))

    def reply_error(self, code: str, message: str, frame_id: int = -1) -> None:
        """Queue an in-order FrameError that belongs to no frame (e.g. a repeated SessionConfig)."""
        self._answer_error(self._new_slot(frame_id, 0), code, message, "invalid")

    def admit(self, frame: Any) -> None:
        """Take one Frame from the client: answer it at once if it must be refused, else queue it."""
        self.frames_in += 1
        slot = self._new_slot(frame.frame_id, frame.capture_ts_us)
        if self.draining:
            self._answer_error(slot, "UNAVAILABLE", "server is draining; frame not processed",
                               "unavailable")
            return
        problem = self._cheap_check(frame)
        if problem:
            self._answer_error(slot, "INVALID_ARGUMENT", problem, "invalid")
            return
        if self.unanswered >= self.max_in_flight:
            if self.pending:
                old = self.pending.popleft()
                self._answer_error(
                    old, "DROPPED",
                    f"dropped: more than max_in_flight={self.max_in_flight} frames unanswered "
                    "(oldest queued frame is dropped)", "dropped",
                )
            else:
                self._answer_error(
                    slot, "DROPPED",
                    f"dropped: max_in_flight={self.max_in_flight} frames already being processed",
                    "dropped",
                )
                return
        slot.frame = frame
        self.pending.append(slot)
        self._work.set()

    def _cheap_check(self, frame: Any) -> str:
        if frame.frame_id < 0:
            return f"frame_id must be >= 0, got {frame.frame_id}"
        if frame.format not in (pb2.IMAGE_FORMAT_UNSPECIFIED, *FORMAT_NAMES):
            return f"unknown image format enum value {frame.format}"
        if not frame.data:
            return "empty frame data (0 bytes)"
        if frame.width * frame.height > self.max_frame_pixels:
            return (f"declared size {frame.width}x{frame.height} exceeds the server limit of "
                    f"{self.max_frame_pixels} pixels")
        if frame.format == pb2.RAW_RGB24 and len(frame.data) != frame.width * frame.height * 3:
            return (f"RAW_RGB24 frame: got {len(frame.data)} bytes, expected width*height*3 = "
                    f"{frame.width * frame.height * 3}")
        return ""

    def begin_drain(self) -> None:
        """Stop admitting frames; the stream ends UNAVAILABLE once admitted frames are answered."""
        self.draining = True
        self._check_done()

    def _check_done(self) -> None:
        if self.finished.done():
            return
        if self.eof and not self.replies:
            self.finished.set_result(None)
        elif self.draining and not self.replies:
            self.finished.set_result((grpc.StatusCode.UNAVAILABLE,
                                      "server is draining; reconnect to another replica"))

    # ---- coroutines ----------------------------------------------------------------------------

    async def read_loop(self, context: grpc.aio.ServicerContext) -> None:
        """Read requests until the client half-closes."""
        while True:
            await self._space.wait()
            request = await context.read()
            if request is grpc.aio.EOF:
                self.eof = True
                self._check_done()
                return
            self.last_activity = self._loop.time()
            kind = request.WhichOneof("kind")
            if kind == "frame":
                self.admit(request.frame)
            elif kind == "config":
                self.reply_error("INVALID_ARGUMENT", "SessionConfig may only be sent once, first")
            else:
                self.reply_error("INVALID_ARGUMENT", "empty StreamRequest (neither config nor frame)")

    async def write_loop(self) -> None:
        """Send replies strictly in arrival order."""
        while True:
            while not self.replies:
                self._slot_added.clear()
                await self._slot_added.wait()
            slot = self.replies[0]
            response = await slot.future
            await self._write(response)
            self.replies.popleft()
            if len(self.replies) < 4 * self.max_in_flight + 8:
                self._space.set()
            self.last_activity = self._loop.time()
            self._check_done()

    async def work_loop(self) -> None:
        """Process queued frames one at a time in the thread pool."""
        while True:
            while not self.pending:
                self._work.clear()
                await self._work.wait()
            slot = self.pending.popleft()
            frame, slot.frame = slot.frame, None
            self.processing = slot
            slot.timings["queue"] = time.perf_counter() - slot.admitted
            try:
                self._running = self.pool.submit(self._process, frame, slot.timings)
                response, result = await asyncio.wrap_future(self._running)
            finally:
                self.processing = None
            self.metrics.frames.labels(result=result).inc()
            if result in ("ok", "fallback"):
                slot.timings["total"] = time.perf_counter() - slot.admitted
                self.metrics.observe_timings(slot.timings)
                response.output.timings.update(slot.timings)
            if not slot.future.done():
                slot.future.set_result(response)

    async def idle_watch(self) -> None:
        """End the stream DEADLINE_EXCEEDED after ``idle_timeout`` s of silence with nothing in flight."""
        interval = min(1.0, self.idle_timeout / 4)
        while not self.finished.done():
            await asyncio.sleep(interval)
            quiet = self._loop.time() - self.last_activity
            if not self.replies and quiet >= self.idle_timeout and not self.finished.done():
                self.metrics.rejected.labels(reason="idle_timeout").inc()
                self.finished.set_result((
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"stream idle: no message for {self.idle_timeout:g} s",
                ))

    # ---- the thread-pool part ------------------------------------------------------------------

    def _process(self, frame: Any, timings: dict[str, float]) -> tuple[Any, str]:
        """decode -> pipeline -> encode for one frame; never raises (errors become FrameError)."""
        from jr2net.io.images import encode_image

        def error(code: str, message: str) -> Any:
            return pb2.StreamResponse(error=pb2.FrameError(
                frame_id=frame.frame_id, capture_ts_us=frame.capture_ts_us, code=code, message=message,
            ))

        try:
            t0 = time.perf_counter()
            image = decode_image(frame, self.max_frame_pixels)
            t1 = time.perf_counter()
            try:
                result = self.pipeline.process(image)
            except (ValueError, TypeError) as exc:  # the contract's "unusable frame" errors
                raise InvalidImageError(str(exc)) from exc
            t2 = time.perf_counter()
            fmt = self.output.format
            data = encode_image(result.image, FORMAT_NAMES[fmt], quality=self.output.quality)
            t3 = time.perf_counter()
        except (InvalidImageError, NoFaceError) as exc:
            return error("INVALID_ARGUMENT", str(exc)), "invalid"
        except Exception as exc:  # a bug: keep the stream alive, log it with the traceback
            log.exception("session %s: frame %d failed", self.session_id, frame.frame_id)
            return error("INTERNAL", f"internal error: {type(exc).__name__}: {exc}"), "internal"
        timings.update({k: float(v) for k, v in result.timings.items()})
        timings.update({"decode": t1 - t0, "pipeline": t2 - t1, "encode": t3 - t2})
        h, w = result.image.shape[:2]
        out = pb2.OutputFrame(
            frame_id=frame.frame_id, capture_ts_us=frame.capture_ts_us, format=fmt, data=data,
            width=w, height=h, face_found=bool(result.face_found), fallback=result.fallback or "",
        )
        return pb2.StreamResponse(output=out), ("ok" if result.face_found else "fallback")

    def close(self) -> None:
        """Close the pipeline session in the pool once any running frame has finished."""

        def do_close() -> None:
            try:
                self.pipeline.close()
            except Exception:
                log.exception("session %s: close failed", self.session_id)

        running = self._running

        def submit(_: Any = None) -> None:
            try:
                self.pool.submit(do_close)
            except RuntimeError:  # pool already shut down (server stopping)
                do_close()

        if running is not None and not running.done():
            running.add_done_callback(submit)
        else:
            submit()
