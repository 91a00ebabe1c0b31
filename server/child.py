"""A ``jr2net serve`` child process on a free loopback port, for ``jr2net reenact``.

The child has its own interpreter, so the server's per-frame work does not share the client's GIL,
and it is started first, so its start-up (torch, the face model, the source fit) overlaps the
client's own imports, video decode and source read. It never outlives its parent: it is stopped
(SIGTERM, then SIGKILL) when the ``with`` block ends on any path, and on Linux the kernel also
sends it SIGTERM if the parent dies without cleaning up. A child that exits before it listens is
reported with the last lines it wrote to stderr (:class:`ServerStartError`).

Its settings come from the arguments only: ``JR2NET_<SETTING>`` variables of the caller's
environment (a token, TLS files, a YAML config...) are not passed on, as for the in-thread
``jr2net.server.app.local_server``; ``$JR2NET_FACE_MODEL`` (also read by the face model lookup) is.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import fields
from typing import IO, Any

STOP_TIMEOUT_S = 1.0
READY_TIMEOUT_S = 300.0
KEEP_ENV = {"JR2NET_FACE_MODEL"}


class ServerStartError(RuntimeError):
    """The child server exited (or never listened) before it was ready; the message says why."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port no one listens on now (the child binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def serve_command(port: int, host: str = "127.0.0.1", **settings: Any) -> list[str]:
    """``jr2net serve`` on ``host:port`` without metrics; ``settings`` (ServerConfig names, None
    skipped; booleans as --x / --no-x) become its flags."""
    cmd = [sys.executable, "-m", "jr2net.cli", "serve", "--host", host, "--port", str(port),
           "--metrics-port", "-1", "--log-level", "WARNING"]
    for name, value in settings.items():
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            cmd.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            cmd += [flag, str(value)]
    return cmd


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: ours) without the ``JR2NET_<SETTING>`` server settings and
    ``JR2NET_CONFIG``, so only the given flags configure the child."""
    from jr2net.server.config import ServerConfig

    drop = {f"JR2NET_{f.name.upper()}" for f in fields(ServerConfig)} | {"JR2NET_CONFIG"}
    env = dict(os.environ if env is None else env)
    return {k: v for k, v in env.items() if k not in drop or k in KEEP_ENV}


def _pdeathsig_setter() -> Any:
    """A call that makes the calling process get SIGTERM when its parent's thread dies (Linux
    PR_SET_PDEATHSIG); None elsewhere. libc is loaded here, in the parent: the forked child only
    calls the resolved function (no dlopen between fork and exec)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def set_pdeathsig() -> None:  # pragma: no cover - runs in the forked child
        prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG = 1

    return set_pdeathsig


class ServerProcess:
    """A ``jr2net serve`` child on 127.0.0.1. ``start()`` returns at once; :meth:`wait_ready`
    waits until it listens; :meth:`stop` (also ``__exit__``) ends it on every path."""

    def __init__(self, **settings: Any) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.command = serve_command(self.port, **settings)
        self.process: subprocess.Popen | None = None
        self._stderr: IO[bytes] | None = None

    def start(self) -> ServerProcess:
        self._stderr = tempfile.TemporaryFile(prefix="jr2net-serve-")
        preexec = _pdeathsig_setter()
        self.process = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
            env=child_env(), preexec_fn=preexec,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, "start() first"
        return self.process.pid

    def stderr_text(self) -> str:
        """What the child has written to stderr so far."""
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def _exit_reason(self) -> str:
        """The child's last stderr line (without ``jr2net serve: ``), and how it exited."""
        assert self.process is not None
        lines = [line.strip() for line in self.stderr_text().splitlines() if line.strip()]
        said = lines[-1].removeprefix("jr2net serve: ") if lines else "it wrote nothing to stderr"
        return f"{said} (the local server, jr2net serve, exited with code {self.process.returncode})"

    async def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> str:
        """Wait until the child accepts connections; its address. Raises ServerStartError if it
        exits first (with its last stderr line) or is not listening after ``timeout`` seconds.
        A coroutine, so a Ctrl-C does not wait for it."""
        import asyncio

        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise ServerStartError(self._exit_reason())
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return self.address
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ServerStartError(f"the local server (jr2net serve) was not listening on "
                                       f"{self.address} after {timeout:.0f} s")
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM, SIGKILL after STOP_TIMEOUT_S (its one session is over: nothing to drain);
        waits for it to end."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            except BaseException:  # e.g. a second Ctrl-C while waiting: never leave it running
                proc.kill()
                proc.wait()
                raise
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

