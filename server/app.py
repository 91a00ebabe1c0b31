"""Server lifecycle: build the grpc.aio server, start, drain on SIGTERM, stop; plus a thread runner.

Drain (SIGTERM/SIGINT or :meth:`ReenactmentServer.drain`): health turns NOT_SERVING, new sessions
and Reconstruct calls get UNAVAILABLE, frames already admitted are finished and answered (frames
sent later get FrameError UNAVAILABLE), each stream then ends with UNAVAILABLE, and the server
stops; whatever is still running after ``drain_timeout`` seconds is cancelled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from jr2net.protocol import SERVICE_NAME, pb2, pb2_grpc
from jr2net.server.auth import BearerTokenInterceptor
from jr2net.server.config import ReenactorFactory, ServerConfig
from jr2net.server.metrics import ServerMetrics
from jr2net.server.servicer import ReenactmentServicer

log = logging.getLogger(__name__)

# grpcio-reflection implements only v1alpha; v1 has the same messages under another package, so
# the same servicer answers both (newer grpcurl and Postman try v1 first).
REFLECTION_V1_SERVICE = "grpc.reflection.v1.ServerReflection"


def enable_reflection(server: grpc.aio.Server, service_names: tuple[str, ...]) -> None:
    """Serve reflection as ``grpc.reflection.v1`` and ``v1alpha``, listing ``service_names``."""
    names = (*service_names, REFLECTION_V1_SERVICE, reflection.SERVICE_NAME)
    servicer = reflection.aio.ReflectionServicer(names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    for service in (REFLECTION_V1_SERVICE, reflection.SERVICE_NAME):
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            service, {"ServerReflectionInfo": handler}),))


class ReenactmentServer:
    """One gRPC server (reenactment service, health, reflection) plus its metrics endpoint.

    ``reenactors`` (mode -> Reenactor) replaces the factory's construction, for embedding.
    """

    def __init__(self, config: ServerConfig, reenactors: dict[str, Any] | None = None) -> None:
        self.config = config.validate()
        if self.config.torch_threads:
            torch.set_num_threads(self.config.torch_threads)
        self.metrics = ServerMetrics()
        self.factory = ReenactorFactory(self.config, reenactors)
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.config.worker_count, thread_name_prefix="jr2net-work")
        self.servicer = ReenactmentServicer(self.config, self.factory, self.metrics, self.pool)
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.metrics_port = -1
        self._stopped: asyncio.Event | None = None

    @property
    def address(self) -> str:
        host = self.config.host
        if host in ("0.0.0.0", "::", "[::]", ""):
            host = "127.0.0.1"
        return f"{host}:{self.port}"

    async def start(self) -> ReenactmentServer:
        """Bind, register services, start serving; preloads the default reenactor if configured."""
        c = self.config
        self._stopped = asyncio.Event()
        if c.preload:
            t0 = time.perf_counter()
            reenactor = await asyncio.wrap_future(self.pool.submit(self.factory.get, c.default_mode))
            if hasattr(reenactor, "warm_up"):
                await asyncio.wrap_future(self.pool.submit(reenactor.warm_up))
            log.info("%s reenactor ready in %.2f s", c.default_mode, time.perf_counter() - t0)
        interceptors = []
        token = c.resolved_token()
        if token:
            interceptors.append(BearerTokenInterceptor(
                token, on_reject=lambda: self.metrics.rejected.labels(reason="unauthenticated").inc()))
            self.servicer.auth_required = True
        options = [
            ("grpc.max_receive_message_length", c.max_message_bytes),
            ("grpc.max_send_message_length", c.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        self.server = grpc.aio.server(
            interceptors=interceptors, options=options,
            maximum_concurrent_rpcs=c.max_concurrent_rpcs,
        )
        pb2_grpc.add_ReenactmentServicer_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        enable_reflection(self.server, (SERVICE_NAME, health.SERVICE_NAME))
        bind = f"[{c.host}]:{c.port}" if ":" in c.host and not c.host.startswith("[") else f"{c.host}:{c.port}"
        if c.tls_cert:
            creds = grpc.ssl_server_credentials(
                [(Path(c.tls_key).read_bytes(), Path(c.tls_cert).read_bytes())])
            self.port = self.server.add_secure_port(bind, creds)
            self.servicer.tls = True
        else:
            self.port = self.server.add_insecure_port(bind)
        if self.port == 0:
            raise OSError(f"could not bind the gRPC port {bind}")
        await self.server.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if c.metrics_port >= 0:
            self.metrics_port = self.metrics.serve_http(c.metrics_host, c.metrics_port)
        log.info("serving on %s:%d (metrics on %s)", c.host, self.port,
                 f"{c.metrics_host}:{self.metrics_port}" if self.metrics_port >= 0 else "off")
        return self

    async def drain(self, timeout: float | None = None) -> bool:
        """Graceful stop; True if every in-flight frame was answered within ``timeout``."""
        timeout = self.config.drain_timeout if timeout is None else timeout
        if self.server is None:
            return True
        log.info("draining (timeout %.1f s): %d sessions, %d frames in flight", timeout,
                 len(self.servicer.sessions), self.servicer.frames_in_flight())
        await self.health.enter_graceful_shutdown()  # every service -> NOT_SERVING
        self.servicer.begin_drain()
        deadline = time.monotonic() + timeout
        while self.servicer.slots_used and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        clean = self.servicer.slots_used == 0
        if not clean:
            log.warning("drain timeout: %d sessions still open; cancelling them",
                        self.servicer.slots_used)
        await self.stop(grace=max(0.0, min(1.0, deadline - time.monotonic())))
        return clean

    async def stop(self, grace: float | None = 0.0) -> None:
        """Stop now (after ``grace`` seconds for running calls) and release everything."""
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None
        self.metrics.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self._stopped is not None:
            self._stopped.set()

    async def wait_closed(self) -> None:
        assert self._stopped is not None, "start() first"
        await self._stopped.wait()


async def serve(config: ServerConfig, reenactors: dict[str, Any] | None = None) -> None:
    """Run a server until SIGTERM/SIGINT, then drain it."""
    server = ReenactmentServer(config, reenactors)
    await server.start()
    loop = asyncio.get_running_loop()
    draining: list[asyncio.Task] = []

    def on_signal(signum: int) -> None:
        if draining:
            log.warning("second signal: stopping now")
            loop.create_task(server.stop(0))
            return
        log.info("received %s: draining", signal.Signals(signum).name)
        draining.append(loop.create_task(server.drain()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await server.wait_closed()


class ServerThread:
    """A server on its own event loop in a daemon thread (in-process use: CLI, tests, benchmarks)."""

    def __init__(self, config: ServerConfig, reenactors: dict[str, Any] | None = None) -> None:
        self.config = config
        self._reenactors = reenactors
        self.server: ReenactmentServer | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="jr2net-server", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.server = ReenactmentServer(self.config, self._reenactors)
            self.loop.run_until_complete(self.server.start())
        except BaseException as exc:  # reported to start()'s caller
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_until_complete(self.server.wait_closed())
        self.loop.close()

    def start(self, timeout: float = 120.0) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"server did not start within {timeout} s")
        if self._error is not None:
            raise self._error
        return self

    @property
    def address(self) -> str:
        assert self.server is not None
        return self.server.address

    @property
    def metrics_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.metrics_port}/metrics"

    def call(self, coro: Any, timeout: float | None = None) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def drain(self, timeout: float | None = None) -> bool:
        assert self.server is not None
        wait = (timeout if timeout is not None else self.config.drain_timeout) + 30
        return self.call(self.server.drain(timeout), wait)

    def stop(self) -> None:
        """Stop the server (if a drain has not already) and wait for its thread to end."""
        if self.server is not None and self._thread.is_alive():
            try:  # the thread ends once the server has stopped, whoever stopped it
                asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop)
            except RuntimeError:  # the loop is already closed
                pass
        self._thread.join(30)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@contextlib.contextmanager
def local_server(config: ServerConfig | None = None, **settings: Any) -> Iterator[str]:
    """A server for the ``with`` block, in its own thread, on 127.0.0.1 (a free port, no metrics
    endpoint unless ``settings`` say otherwise); yields its address ("127.0.0.1:PORT").

    ``config`` is used as is when given; otherwise ``settings`` are ServerConfig fields.
    """
    if config is None:
        config = ServerConfig(**{"host": "127.0.0.1", "port": 0, "metrics_port": -1, **settings})
    with ServerThread(config) as thread:
        yield thread.address


__all__ = ["ReenactmentServer", "ServerThread", "local_server", "serve", "pb2", "pb2_grpc"]
