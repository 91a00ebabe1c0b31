"""One streaming session: frame admission with the drop policy, two-stage processing off the event
loop, and strictly ordered replies.

Every admitted frame gets a *slot* in ``replies`` (arrival order). Frames go through two stages, each
run in the server's shared thread pool by its own coroutine, serially and in arrival order:

1. decode -> ``analyse`` (tracking and fitting) for a ``StagedSession``, else decode -> ``process``;
2. ``synthesise`` (rendering and compositing) for a ``StagedSession`` -> encode.

Stage 1 of frame n+1 overlaps stage 2 of frame n (at most one analysed frame waits between them), so
on a multi-core machine a stream sustains the rate of its slower stage rather than the sum of both.
A writer coroutine sends the slots' replies in arrival order, so clients see replies in the order
they sent frames. Drop policy (also in proto/jr2net.proto): at most ``max_in_flight`` frames are
unanswered (queued or being processed); a frame arriving when that many are unanswered makes the
OLDEST QUEUED frame answer ``FrameError{code: "DROPPED"}`` (if every unanswered frame is already
being processed, the new frame itself is dropped).

Two guards end a stream whose client misbehaves and free its slot: ``idle_timeout`` (nothing sent
and nothing in flight) and ``write_timeout`` (a reply waits that long for the client to read it:
a stalled reader would otherwise hold its slot for ever). Bytes that are not a ``StreamRequest``
are answered in order with ``FrameError{frame_id: -1, code: "INVALID_ARGUMENT"}``.

A ``MocapFrame`` (motion capture: expression coefficients and a head pose, no image) takes the
same slots, drop policy and stages: its stage 1 is ``jr2net.pipeline.mocap.analyse_mocap``
instead of decode + ``analyse``. Its values are checked at admission
(``jr2net.protocol.mocap_problem``), so a bad one is answered at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import Error as ProtobufError

from jr2net.errors import InvalidImageError, NoFaceError
from jr2net.pipeline.base import StagedSession
from jr2net.pipeline.mocap import analyse_mocap, process_mocap
from jr2net.protocol import (
    decode_image,
    frame_problem,
    mocap_problem,
    mocap_row,
    output_message,
    pb2,
)
from jr2net.protocol.tables import output_format
from jr2net.server.metrics import ServerMetrics

log = logging.getLogger(__name__)

DRAIN_EOF_GRACE_S = 2.0  # a draining stream waits this long for the client to half-close


@dataclass
class OutputSpec:
    """How the session encodes its outputs."""

    format: int = output_format(0)  # ImageFormat; UNSPECIFIED resolves to JPEG
    quality: int = 90


@dataclass(frozen=True)
class MalformedRequest:
    """What :func:`read_request` returns for bytes that do not parse as a ``StreamRequest``."""

    error: str


async def read_request(context: grpc.aio.ServicerContext) -> Any:
    """The next request, ``grpc.aio.EOF``, or a :class:`MalformedRequest` (never a DecodeError)."""
    try:
        return await context.read()
    except ProtobufError as exc:
        return MalformedRequest(str(exc) or type(exc).__name__)


def _consume_outcome(future: asyncio.Future) -> None:
    """Retrieve an abandoned write's outcome (so asyncio logs no 'exception never retrieved')."""
    if not future.cancelled():
        future.exception()


@dataclass
class _Slot:
    frame_id: int
    capture_ts_us: int
    admitted: float  # perf_counter at admission
    future: asyncio.Future
    frame: Any = None  # the pb2.Frame / MocapFrame while queued; None once started or answered
    timings: dict[str, float] = field(default_factory=dict)
    analysis: Any = None  # stage 1's output while the slot waits for stage 2
    analysed: float = 0.0  # perf_counter when stage 1 finished


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
        write_timeout: float = 30.0,
        n_expression: int = 0,
    ) -> None:
        self.session_id = session_id
        self.n_expression = n_expression  # MocapFrame.expression length; 0: no MocapFrames
        self.pipeline = pipeline_session
        self.output = output
        self.max_in_flight = max_in_flight
        self.max_frame_pixels = max_frame_pixels
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self.pool = pool
        self.metrics = metrics
        self._write = write
        self._loop = asyncio.get_running_loop()
        self.replies: deque[_Slot] = deque()
        self.pending: deque[_Slot] = deque()
        self.staged = isinstance(pipeline_session, StagedSession)
        self._stage1: _Slot | None = None  # being decoded + analysed
        self._handoff: _Slot | None = None  # analysed, waiting for stage 2
        self._stage2: _Slot | None = None  # being synthesised + encoded
        self._running: set[concurrent.futures.Future] = set()
        self._running_lock = threading.Lock()
        self._close_pending = False
        self._work = asyncio.Event()
        self._handoff_ready = asyncio.Event()
        self._handoff_free = asyncio.Event()
        self._handoff_free.set()
        self._slot_added = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self.draining = False
        self._grace_over = False
        self.eof = False
        self.last_activity = self._loop.time()
        # Result of the stream: None = ended normally, else (status code, details).
        self.finished: asyncio.Future = self._loop.create_future()
        self.frames_in = 0
        self.write_stalled = False  # the write_timeout ended the stream

    # ---- admission (event loop) ----------------------------------------------------------------

    @property
    def unanswered(self) -> int:
        started = (self._stage1, self._handoff, self._stage2)
        return len(self.pending) + sum(slot is not None for slot in started)

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
        """Take one Frame or MocapFrame from the client: answer it at once if it must be refused,
        else queue it."""
        self.frames_in += 1
        slot = self._new_slot(frame.frame_id, frame.capture_ts_us)
        if self.draining:
            self._answer_error(slot, "UNAVAILABLE", "server is draining; frame not processed",
                               "unavailable")
            return
        if isinstance(frame, pb2.MocapFrame):
            problem = mocap_problem(frame, self.n_expression)
        else:
            problem = frame_problem(frame, self.max_frame_pixels)
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

    def begin_drain(self) -> None:
        """Stop admitting frames; the stream ends UNAVAILABLE once admitted frames are answered
        and the client has half-closed (it stops writing at the first UNAVAILABLE reply), or
        ``DRAIN_EOF_GRACE_S`` after the drain began: ending it while the client still writes
        would turn the status into INTERNAL on the client's side."""
        self.draining = True
        self._loop.call_later(DRAIN_EOF_GRACE_S, self._end_grace)
        self._check_done()

    def _end_grace(self) -> None:
        self._grace_over = True
        self._check_done()

    def _check_done(self) -> None:
        if self.finished.done() or self.replies:
            return
        if self.draining and (self.eof or self._grace_over):
            self.finished.set_result((grpc.StatusCode.UNAVAILABLE,
                                      "server is draining; reconnect to another replica"))
        elif self.eof and not self.draining:
            self.finished.set_result(None)

    # ---- coroutines ----------------------------------------------------------------------------

    async def read_loop(self, context: grpc.aio.ServicerContext) -> None:
        """Read requests until the client half-closes."""
        while True:
            await self._space.wait()
            request = await read_request(context)
            if request is grpc.aio.EOF:
                self.eof = True
                self._check_done()
                return
            self.last_activity = self._loop.time()
            if isinstance(request, MalformedRequest):
                self.metrics.rejected.labels(reason="malformed").inc()
                self.reply_error("INVALID_ARGUMENT",
                                 f"malformed StreamRequest (not a jr2net.v1.StreamRequest): "
                                 f"{request.error}")
                continue
            kind = request.WhichOneof("kind")
            if kind in ("frame", "mocap"):
                self.admit(getattr(request, kind))
            elif kind == "config":
                self.reply_error("INVALID_ARGUMENT", "SessionConfig may only be sent once, first")
            else:
                self.reply_error("INVALID_ARGUMENT",
                                 "empty StreamRequest (neither config, frame nor mocap)")

    async def write_loop(self) -> None:
        """Send replies strictly in arrival order; end the stream if the client stops reading."""
        while True:
            while not self.replies:
                self._slot_added.clear()
                await self._slot_added.wait()
            slot = self.replies[0]
            response = await slot.future
            # Not wait_for: a write blocked by flow control does not end when cancelled.
            write = asyncio.ensure_future(self._write(response))
            done, _ = await asyncio.wait((write,), timeout=self.write_timeout)
            if not done:
                write.add_done_callback(_consume_outcome)
                self.write_stalled = True
                self.metrics.rejected.labels(reason="write_stall").inc()
                if not self.finished.done():
                    self.finished.set_result((
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"write stalled: the client read no reply for {self.write_timeout:g} s",
                    ))
                return
            write.result()
            self.replies.popleft()
            if len(self.replies) < 4 * self.max_in_flight + 8:
                self._space.set()
            self.last_activity = self._loop.time()
            self._check_done()

    async def work_loop(self) -> None:
        """Run the two processing stages (see the module docstring) until cancelled."""
        await asyncio.gather(self._stage1_loop(), self._stage2_loop())

    async def _in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        future = self.pool.submit(fn, *args)
        with self._running_lock:
            self._running.add(future)
        future.add_done_callback(self._work_done)
        return await asyncio.wrap_future(future)

    def _work_done(self, future: concurrent.futures.Future) -> None:
        """(Any thread.) Forget a finished pool job; close the pipeline if it was the last one."""
        with self._running_lock:
            self._running.discard(future)
            close_now = self._close_pending and not self._running
            if close_now:
                self._close_pending = False
        if close_now:
            self._submit_close()

    async def _stage1_loop(self) -> None:
        while True:
            while not self.pending:
                self._work.clear()
                await self._work.wait()
            while self._handoff is not None:
                self._handoff_free.clear()
                await self._handoff_free.wait()
            if not self.pending:  # the queued frame was dropped while stage 2 was busy
                continue
            slot = self.pending.popleft()
            frame, slot.frame = slot.frame, None
            self._stage1 = slot
            slot.timings["queue"] = time.perf_counter() - slot.admitted
            try:
                done, outcome = await self._in_pool(self._analyse, frame, slot.timings)
            finally:
                self._stage1 = None
            if done:
                self._answer(slot, *outcome)
                continue
            slot.frame, slot.analysis, slot.analysed = frame, outcome, time.perf_counter()
            self._handoff = slot
            self._handoff_ready.set()

    async def _stage2_loop(self) -> None:
        while True:
            while self._handoff is None:
                self._handoff_ready.clear()
                await self._handoff_ready.wait()
            slot, self._handoff = self._handoff, None
            self._handoff_free.set()
            frame, analysis, slot.frame, slot.analysis = slot.frame, slot.analysis, None, None
            self._stage2 = slot
            slot.timings["handoff"] = time.perf_counter() - slot.analysed
            try:
                outcome = await self._in_pool(self._synthesise, frame, analysis, slot.timings)
            finally:
                self._stage2 = None
            self._answer(slot, *outcome)

    def _answer(self, slot: _Slot, response: Any, result: str) -> None:
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

    @staticmethod
    def _error(frame: Any, code: str, message: str) -> Any:
        return pb2.StreamResponse(error=pb2.FrameError(
            frame_id=frame.frame_id, capture_ts_us=frame.capture_ts_us, code=code, message=message,
        ))

    def _guarded(self, frame: Any, work: Callable[[], Any]) -> tuple[bool, Any]:
        """Run ``work``; errors become (True, (FrameError response, result)), never an exception."""
        try:
            return False, work()
        # ValueError / TypeError: the pipeline contract's "unusable frame" errors.
        except (InvalidImageError, NoFaceError, ValueError, TypeError) as exc:
            return True, (self._error(frame, "INVALID_ARGUMENT", str(exc)), "invalid")
        except Exception as exc:  # a bug: keep the stream alive, log it with the traceback
            log.exception("session %s: frame %d failed", self.session_id, frame.frame_id)
            return True, (self._error(frame, "INTERNAL", f"internal error: {type(exc).__name__}: {exc}"),
                          "internal")

    def _analyse(self, frame: Any, timings: dict[str, float]) -> tuple[bool, Any]:
        """Stage 1 (thread pool): decode, then analyse (or the whole ``process``); a MocapFrame's
        row goes to ``analyse_mocap`` (or ``process_mocap``)."""

        def work() -> Any:
            t0 = time.perf_counter()
            if isinstance(frame, pb2.MocapFrame):
                item = mocap_row(frame)
                step = analyse_mocap if self.staged else process_mocap
                t1 = time.perf_counter()
                out = step(self.pipeline, item)
            else:
                image = decode_image(frame, self.max_frame_pixels)
                t1 = time.perf_counter()
                out = (self.pipeline.analyse if self.staged else self.pipeline.process)(image)
            timings.update({"decode": t1 - t0, "pipeline": time.perf_counter() - t1})
            return out

        return self._guarded(frame, work)

    def _synthesise(self, frame: Any, analysis: Any, timings: dict[str, float]) -> tuple[Any, str]:
        """Stage 2 (thread pool): synthesise (staged sessions), then encode the output frame."""

        def work() -> Any:
            t0 = time.perf_counter()
            result = self.pipeline.synthesise(analysis) if self.staged else analysis
            t1 = time.perf_counter()
            out = output_message(frame, result.image, self.output.format, self.output.quality,
                                 face_found=bool(result.face_found), fallback=result.fallback or "")
            timings.update({k: float(v) for k, v in result.timings.items()})
            timings["pipeline"] = timings.get("pipeline", 0.0) + (t1 - t0)
            timings["encode"] = time.perf_counter() - t1
            return pb2.StreamResponse(output=out), ("ok" if result.face_found else "fallback")

        return self._guarded(frame, work)[1]

    def close(self) -> None:
        """Close the pipeline session in the pool once the frames being processed have finished."""
        with self._running_lock:
            self._close_pending = bool(self._running)
            close_now = not self._close_pending
        if close_now:
            self._submit_close()

    def _submit_close(self) -> None:
        def do_close() -> None:
            try:
                self.pipeline.close()
            except Exception:
                log.exception("session %s: close failed", self.session_id)

        try:
            self.pool.submit(do_close)
        except RuntimeError:  # pool already shut down (server stopping)
            do_close()
