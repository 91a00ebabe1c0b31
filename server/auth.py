"""Bearer-token authentication as a grpc.aio server interceptor, and the token file reader.

Every call but the health checks needs the token, server reflection included (grpcurl:
``-H 'authorization: Bearer TOKEN'``).
"""

from __future__ import annotations

import hmac
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)

# Load balancers and Kubernetes probes cannot send metadata, so health checks stay open.
PUBLIC_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)


def read_token_file(path: str | os.PathLike) -> str:
    """The bearer token: the first line of ``path``, stripped (later lines are ignored).

    Logs a warning when the file can be read by its group or by others (it holds a secret);
    ValueError when the first line is empty, FileNotFoundError when the file is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"token_file: no such file: {path}")
    mode = path.stat().st_mode
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("token_file %s is readable by its group or by others (mode %s); "
                    "chmod 600 it", path, stat.filemode(mode))
    lines = path.read_text().splitlines()
    token = lines[0].strip() if lines else ""
    if not token:
        raise ValueError(f"token_file {path}: the first line is empty (the token goes there)")
    return token


def _deny_handler(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that aborts with UNAUTHENTICATED."""

    async def deny_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def deny_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kw = dict(request_deserializer=handler.request_deserializer,
              response_serializer=handler.response_serializer)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny_stream, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny_stream, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny_unary, **kw)
    return grpc.unary_unary_rpc_method_handler(deny_unary, **kw)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without ``authorization: Bearer <token>`` (constant-time compare)."""

    def __init__(self, token: str, on_reject: Callable[[], None] | None = None) -> None:
        if not token:
            raise ValueError("token must be a non-empty string")
        self._expected = f"Bearer {token}".encode()
        self._on_reject = on_reject

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method or ""
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(PUBLIC_METHOD_PREFIXES):
            return handler
        supplied = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                supplied = value.encode() if isinstance(value, str) else value
                break
        if supplied is not None and hmac.compare_digest(supplied, self._expected):
            return handler
        if self._on_reject is not None:
            self._on_reject()
        reason = "missing" if supplied is None else "invalid"
        return _deny_handler(handler, f"{reason} bearer token (send metadata 'authorization: Bearer <token>')")
