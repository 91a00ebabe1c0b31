"""Fuzzing of image decoding and of the server's request handling, with atheris (libFuzzer) or, where
atheris is missing, a plain bounded random-mutation loop over the same targets.

Targets (each takes bytes; an unexpected exception is a crash):

- ``image``: ``jr2net.protocol.decode_image`` of an ``Image`` (format, still flag and declared size
  taken from the first bytes). It must return uint8 ``[H, W, 3]`` or raise ``InvalidImageError``.
- ``first``: the bytes as the first message of a ``Stream`` to a real server (real geometric
  reenactor, 127.0.0.1). The stream must end with a documented status (INVALID_ARGUMENT,
  FAILED_PRECONDITION) or answer ``SessionReady``; never UNKNOWN/INTERNAL/CANCELLED, no hang, and
  no ERROR logged by the server.
- ``frame``: the bytes as one message of an open session. It must get exactly one reply (an
  ``OutputFrame`` or a ``FrameError``) and the stream must go on; no ERROR logged.

Seeds and every crash found live in ``tests/fuzz/corpus/<target>/`` (``tests/test_fuzz.py``
replays them all). Run: ``python -m benchmarks.fuzz --target image --seconds 300`` (``--engine
random`` for the mutation loop; ``--crash-dir`` where crashes go, default the corpus folder).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "fuzz" / "corpus"
TARGETS = ("image", "first", "frame")
MAX_PIXELS = 1 << 20  # keeps one input's decode in milliseconds
CALL_TIMEOUT_S = 30.0


class FuzzFailure(AssertionError):
    """The target broke its contract for this input."""


# ---- image -----------------------------------------------------------------------------------------


def image_target(data: bytes) -> None:
    """decode_image of an Image built from ``data``: an image or InvalidImageError, nothing else."""
    import numpy as np

    from jr2net.errors import InvalidImageError
    from jr2net.protocol import pb2

    if len(data) < 3:
        return
    fmt, still, side = data[0] % 5, bool(data[1] & 1), data[2]
    width = height = side if fmt == pb2.RAW_RGB24 else 0
    msg = pb2.Image(format=fmt, data=data[3:], width=width, height=height)
    try:
        from jr2net.protocol import decode_image

        image = decode_image(msg, MAX_PIXELS, still=still)
    except InvalidImageError:
        return
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
            and image.shape[2] == 3):
        raise FuzzFailure(f"decode_image returned {type(image).__name__} "
                          f"{getattr(image, 'shape', None)} {getattr(image, 'dtype', None)}")


# ---- the server ------------------------------------------------------------------------------------


class _ErrorLog(logging.Handler):
    """Collects ERROR records logged while the server handles an input."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class ServerTargets:
    """One in-process server (real geometric reenactor) and the ``first`` / ``frame`` targets."""

    FIRST_OK = ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "OK")

    def __init__(self, face_model: str | None = None) -> None:
        from jr2net.paths import shared_path
        from jr2net.server.app import ServerThread
        from jr2net.server.config import ServerConfig

        if face_model is None:
            face_model = str(shared_path("assets", "ict_face_model.npz"))
        config = ServerConfig(host="127.0.0.1", port=0, metrics_port=-1, max_sessions=4,
                              max_in_flight=1, idle_timeout=10, write_timeout=10,
                              max_message_bytes=4 << 20, max_frame_pixels=MAX_PIXELS,
                              face_model=face_model, workers=2)
        self.thread = ServerThread(config).start()
        self.errors = _ErrorLog()
        logging.getLogger().addHandler(self.errors)
        self.source = (shared_path("data", "images", "obama.jpg")).read_bytes()
        self._session: Any = None

    def close(self) -> None:
        logging.getLogger().removeHandler(self.errors)
        if self._session is not None:
            self.thread.call(self._close_session(), CALL_TIMEOUT_S)
        self.thread.stop()

    def _check_logs(self, what: str) -> None:
        if self.errors.records:
            record = self.errors.records[0]
            self.errors.records.clear()
            raise FuzzFailure(f"{what}: the server logged an ERROR: {record.getMessage()}")

    def _method(self, channel: Any) -> Any:
        from jr2net.protocol import SERVICE_NAME, pb2

        return channel.stream_stream(f"/{SERVICE_NAME}/Stream", request_serializer=None,
                                     response_deserializer=pb2.StreamResponse.FromString)

    # -- first message --

    async def _first(self, data: bytes) -> str:
        import grpc

        async with grpc.aio.insecure_channel(self.thread.address) as channel:
            call = self._method(channel)(timeout=CALL_TIMEOUT_S)
            await call.write(data)
            try:
                reply = await call.read()
                if reply is not grpc.aio.EOF and reply.WhichOneof("kind") == "ready":
                    call.cancel()
                    return "OK"
                if reply is not grpc.aio.EOF:
                    raise FuzzFailure(f"first message answered {reply.WhichOneof('kind')!r}")
                await call.done_writing()
                return (await call.code()).name
            except grpc.aio.AioRpcError as exc:
                return exc.code().name

    def first_target(self, data: bytes) -> None:
        code = self.thread.call(self._first(data), CALL_TIMEOUT_S + 10)
        if code not in self.FIRST_OK:
            raise FuzzFailure(f"first message: status {code}")
        self._check_logs("first message")

    # -- mid-stream --

    async def _open(self) -> Any:
        import grpc

        from jr2net.clients.client import session_config
        from jr2net.protocol import pb2

        channel = grpc.aio.insecure_channel(self.thread.address)
        call = self._method(channel)()
        config = session_config(self.source, output_size=(64, 64), crop_size=64)
        await call.write(pb2.StreamRequest(config=config).SerializeToString())
        reply = await call.read()
        if reply is grpc.aio.EOF or reply.WhichOneof("kind") != "ready":
            raise RuntimeError(f"could not open the fuzzing session: {reply}")
        return channel, call

    async def _close_session(self) -> None:
        channel, call = self._session
        self._session = None
        call.cancel()
        await channel.close()

    async def _frame(self, data: bytes) -> None:
        import grpc

        if self._session is None:
            self._session = await self._open()
        _, call = self._session
        try:
            await call.write(data)
            reply = await asyncio.wait_for(call.read(), CALL_TIMEOUT_S)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            await self._close_session()
            raise FuzzFailure(f"mid-stream message ended the stream: {exc}") from None
        if reply is grpc.aio.EOF:
            await self._close_session()
            raise FuzzFailure("mid-stream message ended the stream")
        if reply.WhichOneof("kind") not in ("output", "error"):
            raise FuzzFailure(f"mid-stream message answered {reply.WhichOneof('kind')!r}")
        if reply.WhichOneof("kind") == "error" and reply.error.code not in ("INVALID_ARGUMENT",
                                                                            "DROPPED"):
            raise FuzzFailure(f"mid-stream FrameError {reply.error.code}: {reply.error.message}")

    def frame_target(self, data: bytes) -> None:
        self.thread.call(self._frame(data), CALL_TIMEOUT_S + 10)
        self._check_logs("mid-stream message")


def make_target(name: str) -> tuple[Callable[[bytes], None], Callable[[], None]]:
    """(the target function, its clean-up) for ``name``."""
    if name == "image":
        return image_target, lambda: None
    if name not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {name!r}")
    targets = ServerTargets()
    return getattr(targets, f"{name}_target"), targets.close


# ---- engines ---------------------------------------------------------------------------------------


def corpus_inputs(target: str) -> list[tuple[Path, bytes]]:
    """Every seed and regression input of ``target``, sorted by name."""
    folder = CORPUS / target
    return [(p, p.read_bytes()) for p in sorted(folder.iterdir()) if p.is_file()] if folder.is_dir() else []


def save_crash(crash_dir: Path, data: bytes) -> Path:
    crash_dir.mkdir(parents=True, exist_ok=True)
    path = crash_dir / f"crash-{hashlib.sha1(data).hexdigest()}"
    path.write_bytes(data)
    return path


def mutate(data: bytes, rng: random.Random, pool: list[bytes]) -> bytes:
    """One to four random edits: bit flip, byte set, insert, delete, duplicate, splice, truncate."""
    buf = bytearray(data or b"\x00")
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        i = rng.randrange(len(buf)) if buf else 0
        if op == 0 and buf:
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[i] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op == 2:
            buf[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3 and len(buf) > 1:
            del buf[i:i + rng.randint(1, min(16, len(buf) - i))]
        elif op == 4 and buf:
            j = rng.randrange(len(buf))
            buf[i:i] = buf[j:j + rng.randint(1, 32)]
        elif op == 5 and pool:
            other = rng.choice(pool)
            buf = buf[:i] + bytearray(other[rng.randrange(len(other) or 1):])
        elif op == 6 and len(buf) > 1:
            del buf[rng.randrange(1, len(buf)):]
    return bytes(buf[:1 << 20])


def run_random(target: str, seconds: float, runs: int, crash_dir: Path, seed: int = 0) -> dict:
    """The plain engine: mutate corpus inputs for ``seconds`` or ``runs`` inputs; stop at a crash."""
    fn, cleanup = make_target(target)
    rng = random.Random(seed)
    corpus = corpus_inputs(target)
    pool = [data for _, data in corpus] or [b""]
    t0, n, crash = time.monotonic(), 0, None
    try:
        for path, data in corpus:  # the corpus itself first: the regression inputs
            n += 1
            try:
                fn(data)
            except Exception as exc:
                crash = (path, f"{type(exc).__name__}: {exc}")
                break
        while crash is None and n < runs and time.monotonic() - t0 < seconds:
            data = mutate(rng.choice(pool), rng, pool)
            n += 1
            try:
                fn(data)
            except Exception as exc:
                crash = (save_crash(crash_dir, data), f"{type(exc).__name__}: {exc}")
    finally:
        cleanup()
    return {"target": target, "engine": "random", "inputs": n,
            "seconds": round(time.monotonic() - t0, 1),
            "crash": None if crash is None else {"file": str(crash[0]), "error": crash[1]}}


def run_atheris(target: str, seconds: float, runs: int, crash_dir: Path) -> None:
    """libFuzzer through atheris (does not return: libFuzzer exits, 0 when no crash was found)."""
    import atheris

    with atheris.instrument_imports(include=["jr2net.protocol", "jr2net.io.images",
                                             "jr2net.server"]):
        import jr2net.io.images  # noqa: F401
        import jr2net.protocol  # noqa: F401
        import jr2net.server.servicer  # noqa: F401
        import jr2net.server.session  # noqa: F401
    fn, _cleanup = make_target(target)

    def one_input(data: bytes) -> None:
        fn(bytes(data))

    crash_dir.mkdir(parents=True, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f"jr2net-fuzz-{target}-")  # libFuzzer's growing corpus
    argv = [sys.argv[0], f"-max_total_time={int(max(1, seconds))}", f"-runs={runs}",
            f"-artifact_prefix={crash_dir}/", "-max_len=65536", "-rss_limit_mb=4096",
            "-print_final_stats=1", work, str(CORPUS / target)]
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


def have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", choices=TARGETS, default="image")
    parser.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto",
                        help="auto: atheris when installed, else the random-mutation loop")
    parser.add_argument("--seconds", type=float, default=300.0, help="stop after this long")
    parser.add_argument("--runs", type=int, default=10**9, help="stop after this many inputs")
    parser.add_argument("--crash-dir", type=Path, default=None,
                        help="where crashing inputs are written (default tests/fuzz/corpus/TARGET)")
    parser.add_argument("--seed", type=int, default=0, help="random engine seed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    crash_dir = args.crash_dir or CORPUS / args.target
    engine = args.engine if args.engine != "auto" else ("atheris" if have_atheris() else "random")
    print(f"fuzz {args.target}: engine {engine}, {args.seconds:g} s, at most {args.runs} inputs",
          flush=True)
    if engine == "atheris":
        run_atheris(args.target, args.seconds, args.runs, crash_dir)
        return
    report = run_random(args.target, args.seconds, args.runs, crash_dir, args.seed)
    print(report, flush=True)
    sys.exit(1 if report["crash"] else 0)


if __name__ == "__main__":
    main()
