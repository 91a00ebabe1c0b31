"""The ``jr2net.v1.Reenactment`` servicer: session set-up, the streaming loop and the unary calls."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import platform
import time
import uuid
from typing import Any

import grpc
import numpy as np

from jr2net.errors import InvalidImageError, NoFaceError
from jr2net.pipeline.base import SessionOptions
from jr2net.pipeline.mocap import expression_names
from jr2net.protocol import decode_image, pb2, pb2_grpc
from jr2net.protocol.tables import mode_name, output_format, pose_mode_name
from jr2net.server.config import ReenactorFactory, ServerConfig
from jr2net.server.metrics import ServerMetrics
from jr2net.server.options import check_options
from jr2net.server.session import MalformedRequest, OutputSpec, StreamSession, read_request

log = logging.getLogger(__name__)

MIN_OUTPUT_SIDE, MAX_OUTPUT_SIDE = 16, 4096
MIN_CROP_SIZE, MAX_CROP_SIZE = 64, 1024
# An OutputFrame's fields besides the image bytes (ids, sizes, the timings map), generously.
REPLY_OVERHEAD_BYTES = 16 * 1024
STATUS_GRACE_S = 1.0  # how long a stalled stream's status may wait before the stream is reset


async def _abort_or_reset(context: grpc.aio.ServicerContext, code: grpc.StatusCode,
                          details: str) -> None:
    """End a stream whose client stopped reading: with ``code`` if the transport takes the status
    within ``STATUS_GRACE_S`` (it waits behind the unread replies), else by resetting the stream
    (the client then sees CANCELLED), so the call does not stay open for ever."""
    abort = asyncio.ensure_future(context.abort(code, details))
    done, _ = await asyncio.wait((abort,), timeout=STATUS_GRACE_S)
    if done:
        abort.result()  # raises AbortError, as context.abort does
    abort.add_done_callback(lambda f: f.cancelled() or f.exception())
    raise asyncio.CancelledError("write stalled: stream reset")


class ConfigError(ValueError):
    """A SessionConfig field is unusable (-> INVALID_ARGUMENT)."""


def _tensor(array: Any) -> Any:
    arr = np.asarray(array, dtype=np.float32)
    return pb2.Tensor(shape=list(arr.shape), values=arr.ravel().tolist())


def _numeric_tensors(values: dict[str, Any]) -> dict[str, Any]:
    """The entries that are numeric arrays, as Tensors (names lists etc. stay JSON-only)."""
    out = {}
    for key, value in values.items():
        try:
            arr = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            continue
        out[key] = pb2.Tensor(shape=list(arr.shape), values=arr.ravel().tolist())
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "detach"):  # torch tensor
        return value.detach().cpu().numpy().tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def _output_size(cfg: Any, src_w: int, src_h: int) -> tuple[int, int]:
    """Output (width, height): 0/0 -> source size; one 0 -> keep the source aspect ratio."""
    w, h = int(cfg.output_width), int(cfg.output_height)
    if w == 0 and h == 0:
        return src_w, src_h
    if w == 0:
        w = max(1, round(h * src_w / src_h))
    elif h == 0:
        h = max(1, round(w * src_h / src_w))
    if not (MIN_OUTPUT_SIDE <= w <= MAX_OUTPUT_SIDE and MIN_OUTPUT_SIDE <= h <= MAX_OUTPUT_SIDE):
        raise ConfigError(
            f"output size {w}x{h}: each side must be in {MIN_OUTPUT_SIDE}..{MAX_OUTPUT_SIDE}")
    return w, h


def _fit_summary(session: Any) -> tuple[dict[str, Any], dict[str, float]]:
    """A small JSON summary of the source fit and its stage timings, from what the session exposes
    (``summary`` dict, else the geometric path's ``source_fit`` diagnostics)."""
    summary = getattr(session, "summary", None)
    fit = getattr(session, "source_fit", None)
    timings = dict(getattr(session, "timings", None) or getattr(fit, "timings", None) or {})
    if not isinstance(summary, dict):
        summary = {}
        if fit is not None:
            detection = getattr(fit, "detection", None)
            for key, value in (("box", getattr(detection, "box", None)),
                               ("residual_px", getattr(fit, "residual_px", None)),
                               ("residual_iod", getattr(fit, "residual_iod", None)),
                               ("image_size", getattr(fit, "image_size", None))):
                if value is not None:
                    summary[key] = value
            coeffs = getattr(fit, "coeffs", None)
            for key in ("angles", "translation"):
                if coeffs is not None and getattr(coeffs, key, None) is not None:
                    summary[key] = getattr(coeffs, key)
    with contextlib.suppress(TypeError, ValueError):
        timings = {str(k): float(v) for k, v in timings.items()}
        return _jsonable(summary), timings
    return _jsonable(summary), {}


class ReenactmentServicer(pb2_grpc.ReenactmentServicer):
    """Implements Stream, Reconstruct and GetServerInfo on a shared thread pool."""

    def __init__(
        self,
        config: ServerConfig,
        factory: ReenactorFactory,
        metrics: ServerMetrics,
        pool: concurrent.futures.ThreadPoolExecutor,
    ) -> None:
        self.config = config
        self.factory = factory
        self.metrics = metrics
        self.pool = pool
        self.sessions: dict[str, StreamSession] = {}
        self.slots_used = 0
        self.draining = False
        self.tls = False
        self.auth_required = False

    # ---- lifecycle helpers -----------------------------------------------------------------------

    def begin_drain(self) -> None:
        self.draining = True
        for session in list(self.sessions.values()):
            session.begin_drain()

    def frames_in_flight(self) -> int:
        return sum(s.unanswered for s in self.sessions.values())

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.wrap_future(self.pool.submit(fn, *args))

    async def _refuse(self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, reason: str,
                      message: str) -> None:
        self.metrics.rejected.labels(reason=reason).inc()
        await context.abort(code, message)

    # ---- Stream ----------------------------------------------------------------------------------

    async def Stream(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        if self.draining:
            await self._refuse(context, grpc.StatusCode.UNAVAILABLE, "draining",
                               "server is draining; not accepting new sessions")
        try:
            first = await asyncio.wait_for(read_request(context), self.config.idle_timeout)
        except asyncio.TimeoutError:
            await self._refuse(context, grpc.StatusCode.DEADLINE_EXCEEDED, "idle_timeout",
                               f"no SessionConfig within {self.config.idle_timeout:g} s")
        if first is grpc.aio.EOF:
            return
        if isinstance(first, MalformedRequest):
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "malformed",
                               "the first message is not a jr2net.v1.StreamRequest (malformed "
                               f"protobuf: {first.error}); send a SessionConfig first")
        if self.draining:
            await self._refuse(context, grpc.StatusCode.UNAVAILABLE, "draining",
                               "server is draining; not accepting new sessions")
        if first.WhichOneof("kind") != "config":
            await self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, "no_config",
                               "the first message of a stream must be a SessionConfig")
        cfg = first.config
        try:
            mode, options, output = self._parse_config(cfg)
            self.factory.check_mode(mode)
        except ValueError as exc:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "invalid_config", str(exc))
        if self.slots_used >= self.config.max_sessions:
            await self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "sessions_full",
                               f"all {self.config.max_sessions} session slots are in use")
        self.slots_used += 1
        self.metrics.sessions_active.inc()
        session: StreamSession | None = None
        tasks: list[asyncio.Task] = []
        release = self._releaser(tasks, lambda: session)
        try:
            t0 = time.perf_counter()
            try:
                reenactor = await self._run(self.factory.get, mode)  # built once, off the loop
            except ValueError as exc:  # a registered mode that cannot be built (e.g. no weights)
                await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "invalid_config",
                                   f"mode {mode!r}: {exc}")
            try:
                source, pipeline_session = await self._run(
                    self._start_session, reenactor, cfg, options, output)
            except InvalidImageError as exc:
                await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "invalid_config",
                                   f"source image: {exc}")
            except (ValueError, TypeError) as exc:  # options the pipeline rejects
                await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "invalid_config",
                                   f"session config: {exc}")
            except NoFaceError as exc:
                await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "no_face",
                                   f"no face in the source image: {exc}")
            setup = time.perf_counter() - t0
            self.metrics.session_setup.observe(setup)
            sid = uuid.uuid4().hex[:16]
            window = cfg.max_in_flight or self.config.max_in_flight
            window = max(1, min(window, self.config.max_in_flight))
            names = expression_names(pipeline_session)  # [] when it takes no MocapFrames
            session = StreamSession(
                sid, pipeline_session, output=output, max_in_flight=window,
                max_frame_pixels=self.config.max_frame_pixels,
                idle_timeout=self.config.idle_timeout, pool=self.pool, metrics=self.metrics,
                write=context.write, write_timeout=self.config.write_timeout,
                n_expression=len(names),
            )
            if self.draining:  # drain began while the source was being fitted
                await self._refuse(context, grpc.StatusCode.UNAVAILABLE, "draining",
                                   "server is draining; not accepting new sessions")
            self.sessions[sid] = session
            summary, source_timings = _fit_summary(pipeline_session)
            await context.write(pb2.StreamResponse(ready=pb2.SessionReady(
                session_id=sid, mode=mode, setup_seconds=setup, max_in_flight=window,
                source_width=source.shape[1], source_height=source.shape[0],
                output_width=options.output_width, output_height=options.output_height,
                source_timings=source_timings,
                source_fit_json=json.dumps(_jsonable(summary)) if summary else "",
                expression_names=names,
            )))
            log.info("session %s started (%s, %dx%d source, setup %.3f s)", sid, mode,
                     source.shape[1], source.shape[0], setup)
            coroutines = {"read": session.read_loop(context), "write": session.write_loop(),
                          "work": session.work_loop(), "idle": session.idle_watch()}
            for kind, coro in coroutines.items():
                task = asyncio.create_task(coro)
                task.add_done_callback(lambda t, k=kind, s=session: self._task_done(t, k, s))
                tasks.append(task)
            outcome = await session.finished
            if outcome is not None:
                code, details = outcome
                if session.write_stalled:
                    release()  # the slot is free now, whatever the client does next
                    await _abort_or_reset(context, code, details)
                await context.abort(code, details)
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError:
            log.info("session %s cancelled (%s)", session.session_id if session else "-",
                     "write stalled" if session and session.write_stalled else "by the client")
            raise
        except Exception:
            log.exception("stream failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error (logged)")
        finally:
            release()

    def _releaser(self, tasks: list[asyncio.Task], session: Any) -> Any:
        """A function that frees a stream's slot once (its tasks, session, pipeline, counters)."""
        done = False

        def release() -> None:
            nonlocal done
            if done:
                return
            done = True
            for task in tasks:
                task.cancel()
            live = session()
            if live is not None:
                self.sessions.pop(live.session_id, None)
                live.close()
                log.info("session %s ended (%d frames)", live.session_id, live.frames_in)
            self.slots_used -= 1
            self.metrics.sessions_active.dec()

        return release

    def _task_done(self, task: asyncio.Task, kind: str, session: StreamSession) -> None:
        """A session coroutine died: a failed read/write means the client is gone; else a bug."""
        if task.cancelled() or session.finished.done() or task.exception() is None:
            return
        exc = task.exception()
        if kind in ("read", "write"):
            log.info("session %s: stream closed during %s: %r", session.session_id, kind, exc)
            session.finished.set_result((grpc.StatusCode.CANCELLED, f"stream closed: {exc}"))
        else:
            log.error("session %s: internal error in %s loop", session.session_id, kind, exc_info=exc)
            session.finished.set_result((grpc.StatusCode.INTERNAL, "internal server error (logged)"))

    def _parse_config(self, cfg: Any) -> tuple[str, SessionOptions, OutputSpec]:
        try:  # unknown enum values: ValueError naming the field
            mode = mode_name(cfg.mode) or self.config.default_mode
            pose_mode = pose_mode_name(cfg.pose_mode)
            out_fmt = output_format(cfg.output_format)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        quality = cfg.quality or 90
        if not 1 <= quality <= 100:
            raise ConfigError(f"quality must be in 1..100, got {cfg.quality}")
        crop = cfg.crop_size or 256
        if not MIN_CROP_SIZE <= crop <= MAX_CROP_SIZE:
            raise ConfigError(
                f"crop_size must be in {MIN_CROP_SIZE}..{MAX_CROP_SIZE}, got {cfg.crop_size}")
        if not cfg.source.data:
            raise ConfigError("SessionConfig.source: empty image data")
        check_options(mode, cfg.options, crop)  # OptionError, a ValueError
        options = SessionOptions(
            pose_mode=pose_mode, crop_size=crop, extra=dict(cfg.options))
        return mode, options, OutputSpec(format=out_fmt, quality=quality)

    def _start_session(self, reenactor: Any, cfg: Any, options: SessionOptions,
                       output: OutputSpec) -> tuple[Any, Any]:
        """Thread-pool part of set-up: decode the source, size the output, fit the source."""
        image = decode_image(cfg.source, self.config.max_frame_pixels, still=True)
        w, h = _output_size(cfg, image.shape[1], image.shape[0])
        options.output_width, options.output_height = w, h
        if output.format == pb2.RAW_RGB24:
            need = w * h * 3 + REPLY_OVERHEAD_BYTES
            if need > self.config.max_message_bytes:
                raise ConfigError(
                    f"RAW_RGB24 output {w}x{h} needs ~{need} bytes per reply, over the server's "
                    f"max_message_bytes {self.config.max_message_bytes}; use JPEG/PNG or a "
                    "smaller output size")
        return image, reenactor.start_session(image, options)

    # ---- unary calls -----------------------------------------------------------------------------

    async def Reconstruct(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        if self.draining:
            await self._refuse(context, grpc.StatusCode.UNAVAILABLE, "draining", "server is draining")
        try:
            reenactor = await self._run(self.factory.get, self.config.default_mode)
            rec, image_shape = await self._run(self._reconstruct, reenactor, request)
        except (InvalidImageError, ValueError) as exc:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "invalid_config", str(exc))
        except NoFaceError as exc:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "no_face",
                               f"no face in the image: {exc}")
        except Exception:
            log.exception("Reconstruct failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error (logged)")
        coeffs = {str(k): _jsonable(v) for k, v in rec.coefficients.items()}
        response = pb2.ReconstructResponse(
            coefficients=_numeric_tensors(coeffs),
            coefficients_json=json.dumps(coeffs),
            landmarks=_tensor(rec.landmarks),
            timings={k: float(v) for k, v in rec.timings.items()},
        )
        if request.with_mesh and rec.vertices is not None:
            response.mesh.vertices.CopyFrom(_tensor(rec.vertices))
            if rec.faces is not None:
                response.mesh.faces.extend(np.asarray(rec.faces, dtype=np.int32).ravel().tolist())
        return response

    def _reconstruct(self, reenactor: Any, request: Any) -> tuple[Any, tuple[int, ...]]:
        image = decode_image(request.image, self.config.max_frame_pixels, still=True)
        return reenactor.reconstruct(image, with_mesh=request.with_mesh), image.shape

    async def GetServerInfo(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return self.server_info()

    def server_info(self) -> Any:
        import torch

        from jr2net import __version__

        name = digest = ""
        names: list[str] = []
        for reenactor in self.factory.loaded().values():
            model = getattr(reenactor, "face_model", None) or getattr(reenactor, "model", None)
            if model is not None:
                name = str(getattr(model, "name", ""))
                names = [str(n) for n in getattr(model, "expression_names", [])]
                with contextlib.suppress(Exception):
                    digest = str(model.sha256)
                break
        cuda_compiled = False
        with contextlib.suppress(Exception):
            import jr2net._C as ext

            cuda_compiled = bool(getattr(ext, "with_cuda", False))
        c = self.config
        return pb2.ServerInfo(
            version=__version__,
            modes=self.factory.available_modes(),
            default_mode=c.default_mode,
            face_model_name=name,
            face_model_hash=digest,
            limits=pb2.Limits(
                max_sessions=c.max_sessions, max_in_flight=c.max_in_flight,
                max_message_bytes=c.max_message_bytes, idle_timeout_s=c.idle_timeout,
                max_concurrent_rpcs=c.max_concurrent_rpcs, max_frame_pixels=c.max_frame_pixels,
                workers=c.worker_count,
            ),
            build={
                "cuda_compiled": str(cuda_compiled).lower(),
                "cuda_available": str(torch.cuda.is_available()).lower(),
                "torch": torch.__version__,
                "torch_cuda": str(torch.version.cuda or ""),
                "grpc": grpc.__version__,
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            auth_required=self.auth_required,
            tls=self.tls,
            sessions_active=self.slots_used,
            draining=self.draining,
            expression_names=names,
        )
