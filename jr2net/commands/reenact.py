"""``jr2net reenact``: drive a source photo with a video, or a motion-capture take, through a real
gRPC server."""

from __future__ import annotations

import argparse

NAME = "reenact"
HELP = (
    "reenact a driving video (or a Live Link Face take) with a source face through the gRPC "
    "server (a local child `jr2net serve` by default)"
)
LOCAL_SERVERS = ("process", "thread")
WIRE_FORMATS = {"auto": None, "jpeg": "JPEG", "raw": "RAW_RGB24"}


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f"size must be at least 16x16, got {text!r}")
    return w, h


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, help="source face image (JPEG/PNG)")
    parser.add_argument("--driving", help="driving video (its audio is kept)")
    parser.add_argument(
        "--driving-csv",
        metavar="CSV",
        help="drive by a Live Link Face take instead (docs/mocap.md): its rows are "
        "streamed as MocapFrames, one output frame per row at the take's rate",
    )
    parser.add_argument(
        "--csv-fps",
        type=float,
        default=60.0,
        help="frame rate of the take's timecodes (Live Link Face: 60)",
    )
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="with --driving-csv: send each row at its timecode, as a live "
        "capture would (default: as fast as the server answers)",
    )
    parser.add_argument("--out", required=True, help="output H.264 mp4")
    parser.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="server to use; default: start a local one on 127.0.0.1 (a free port)",
    )
    parser.add_argument(
        "--local-server",
        choices=LOCAL_SERVERS,
        default="process",
        help="without --server: a child `jr2net serve` process (default; it does "
        "not share this process's GIL and starts while the video is opened) "
        "or a server thread in this process",
    )
    parser.add_argument(
        "--wire",
        choices=tuple(WIRE_FORMATS),
        default="auto",
        help="frame encoding both ways: jpeg, raw (RGB, no codec work: for a "
        "loopback server) or auto (default: raw for the local server, jpeg "
        "for --server)",
    )
    parser.add_argument("--token", help="bearer token (default: $JR2NET_TOKEN)")
    parser.add_argument("--tls-ca", metavar="PEM", help="CA certificate(s) to verify a TLS server")
    parser.add_argument(
        "--side-by-side", metavar="MP4", help="also write source | driving | output"
    )
    parser.add_argument(
        "--contact-sheet",
        metavar="PNG",
        help="also write a grid of a few frames (driving over output)",
    )
    parser.add_argument(
        "--max-frames", type=int, metavar="N", help="stop after N driving frames (or take rows)"
    )
    parser.add_argument(
        "--pose-mode",
        choices=("relative", "absolute"),
        default="relative",
        help="relative (default; other identity) or absolute (same identity) head pose",
    )
    parser.add_argument(
        "--mode",
        choices=("geometric", "learned"),
        default="",
        help="pipeline (default: the server's default, geometric)",
    )
    parser.add_argument(
        "--crop-size", type=int, default=256, help="face crop side the pipeline renders at"
    )
    parser.add_argument(
        "--size",
        type=_size,
        metavar="WxH",
        help="output size (default: the source's aspect ratio, longest side 512)",
    )
    parser.add_argument(
        "--quality",
        type=int,
        default=90,
        help="JPEG quality of the streamed outputs (with --wire jpeg)",
    )
    parser.add_argument(
        "--window",
        type=int,
        metavar="N",
        help="frames in flight (default: the server's grant, which never drops)",
    )
    parser.add_argument("--face-model", metavar="FILE", help="face model for the local server")
    parser.add_argument(
        "--checkpoints",
        metavar="RUN",
        help="training run folder (dcnet/best.pt, recnet/best.pt) for the local "
        "server: enables --mode learned",
    )
    parser.add_argument("--recnet", metavar="FILE", help="RecNet checkpoint (local server)")
    parser.add_argument("--dcnet", metavar="FILE", help="DCNet checkpoint (local server)")
    parser.add_argument(
        "--etnet",
        metavar="CKPT",
        help="ETNet (etnet or recaugnet checkpoint) as the driving expression "
        "tracker of the local server; --option expression=fitter opts out",
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="pipeline option (SessionOptions.extra), repeatable; e.g. light=none, "
        "expression=relative, feather=8 (every option: docs/operations.md)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _process_started_at() -> float | None:
    """time.time() when this process started (Linux /proc, 10 ms resolution); None elsewhere."""
    import os
    import time

    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


def _local_settings(args: argparse.Namespace) -> dict:
    """ServerConfig settings of the local server (one session, no metrics, the nets given)."""
    nets = {
        k: getattr(args, k) for k in ("checkpoints", "recnet", "dcnet", "etnet") if getattr(args, k)
    }
    return dict(max_sessions=1, face_model=args.face_model, **nets)


def run(args: argparse.Namespace) -> int:
    import sys

    if bool(args.driving) == bool(args.driving_csv):
        print("jr2net reenact: give one of --driving VIDEO or --driving-csv CSV", file=sys.stderr)
        return 2
    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"jr2net reenact: --option expects KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        options[key] = value
    child = None
    # With a child server, Ctrl-C and SIGTERM are recorded and acted on at safe points (an
    # Interrupts): a KeyboardInterrupt raised wherever the main thread happens to be is lost when
    # that is an import's weakref callback, and the child must be stopped on that path too (on
    # Linux the kernel also stops it if this process is killed outright: ServerProcess).
    interrupts = Interrupts()
    try:
        if not args.server and args.local_server == "process":
            interrupts.install()
            # Started first, so the server's start-up overlaps everything below. It checks its
            # own settings (a bad path: ServerStartError with its message, when we wait for it).
            from jr2net.server.child import ServerProcess

            child = ServerProcess(preload=False, **_local_settings(args))
            child.start()
        rc = _run(args, options, child, interrupts)
        interrupts.check()  # a signal whose cancellation something swallowed
        return rc
    except KeyboardInterrupt:
        print("jr2net reenact: interrupted", file=sys.stderr)
        return 130
    finally:
        if child is not None:
            child.stop()
        interrupts.restore()


class Interrupts:
    """SIGINT/SIGTERM handling for ``jr2net reenact``: the handler only records the signal (and
    cancels the running asyncio task, if one is registered by :meth:`guard`); :meth:`check`
    raises KeyboardInterrupt at a safe point. A second signal raises at once. Without
    :meth:`install` (not the main thread, or no child server) it records nothing."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._loop = None
        self._task = None

    def install(self) -> None:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for name in self.SIGNALS:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        second = self.signum is not None
        self.signum = signum
        if second:
            raise KeyboardInterrupt
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            loop.call_soon_threadsafe(task.cancel)

    def check(self) -> None:
        """Raise KeyboardInterrupt if a signal was recorded."""
        if self.signum is not None:
            raise KeyboardInterrupt

    async def guard(self, coro):
        """Await ``coro`` so that a signal cancels it; KeyboardInterrupt if a signal came (before
        or during it, whatever the coroutine made of the cancellation)."""
        import asyncio

        self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        try:
            self.check()
            try:
                result = await coro
            except asyncio.CancelledError:
                self.check()
                raise
            self.check()
            return result
        finally:
            self._loop = self._task = None
            coro.close()


def _run(args: argparse.Namespace, options: dict[str, str], child, interrupts: Interrupts) -> int:
    """``run`` once the local child server (if any) is starting."""
    import asyncio
    import contextlib
    import json
    import os
    import sys

    import grpc

    from jr2net.clients.reenact import reenact_take_async, reenact_video_async
    from jr2net.errors import JR2NetError
    from jr2net.io.arkit_csv import read_live_link_csv
    from jr2net.server.child import ServerStartError

    take = None
    if args.driving_csv:  # a bad take fails here, before the session or any source fit
        try:
            take = read_live_link_csv(args.driving_csv, args.csv_fps)
        except (FileNotFoundError, ValueError) as exc:
            print(f"jr2net reenact: {exc}", file=sys.stderr)
            return 2
    token = args.token or os.environ.get("JR2NET_TOKEN")
    wait_server = None
    if args.server:
        server = contextlib.nullcontext(args.server)
    elif child is not None:
        server = contextlib.nullcontext(child.address)
        wait_server = child.wait_ready
        token = None
    else:
        from jr2net.server.app import local_server

        server = local_server(**_local_settings(args))
        token = None
    wire = WIRE_FORMATS[args.wire] or ("JPEG" if args.server else "RAW_RGB24")
    try:
        with server as address:
            common = dict(
                server=address, token=token, root_certificates=args.tls_ca,
                side_by_side=args.side_by_side, contact_sheet_path=args.contact_sheet,
                max_frames=args.max_frames, pose_mode=args.pose_mode, crop_size=args.crop_size,
                output_size=args.size, mode=args.mode, window=args.window, quality=args.quality,
                options=options, progress=not args.no_progress, wire_format=wire,
                wait_server=wait_server,
            )  # fmt: skip
            interrupts.check()  # one that came during the imports above
            if take is not None:
                main = reenact_take_async(
                    args.source, take, args.out, realtime=args.realtime, **common
                )
            else:
                main = reenact_video_async(args.source, args.driving, args.out, **common)
            summary = asyncio.run(interrupts.guard(main))
    except grpc.RpcError as exc:
        interrupts.check()  # e.g. a terminal's Ctrl-C also reached the child, which drained
        code = exc.code().name if hasattr(exc, "code") else "?"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        print(f"jr2net reenact: server refused: {code}: {details}", file=sys.stderr)
        return 1
    except ServerStartError as exc:
        interrupts.check()
        print(f"jr2net reenact: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, JR2NetError) as exc:
        interrupts.check()
        print(f"jr2net reenact: {exc}", file=sys.stderr)
        return 2
    started = _process_started_at()
    if started is not None and summary.first_output_unix:
        summary.startup_s = summary.first_output_unix - started
    print(json.dumps(summary.to_dict(), indent=2))
    return 0 if not summary.errors else 1
