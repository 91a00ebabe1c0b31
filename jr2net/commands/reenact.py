"""``jr2net reenact``: drive a source photo with a video, or a motion-capture take, through a real
gRPC server."""

from __future__ import annotations

import argparse

NAME = "reenact"
HELP = ("reenact a driving video (or a Live Link Face take) with a source face through the gRPC "
        "server (a local child `jr2net serve` by default)")
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
    parser.add_argument("--driving-csv", metavar="CSV",
                        help="drive by a Live Link Face take instead (docs/mocap.md): its rows are "
                             "streamed as MocapFrames, one output frame per row at the take's rate")
    parser.add_argument("--csv-fps", type=float, default=60.0,
                        help="frame rate of the take's timecodes (Live Link Face: 60)")
    parser.add_argument("--realtime", action="store_true",
                        help="with --driving-csv: send each row at its timecode, as a live "
                             "capture would (default: as fast as the server answers)")
    parser.add_argument("--out", required=True, help="output H.264 mp4")
    parser.add_argument("--server", metavar="HOST:PORT",
                        help="server to use; default: start a local one on 127.0.0.1 (a free port)")
    parser.add_argument("--local-server", choices=LOCAL_SERVERS, default="process",
                        help="without --server: a child `jr2net serve` process (default; it does "
                             "not share this process's GIL and starts while the video is opened) "
                             "or a server thread in this process")
    parser.add_argument("--wire", choices=tuple(WIRE_FORMATS), default="auto",
                        help="frame encoding both ways: jpeg, raw (RGB, no codec work: for a "
                             "loopback server) or auto (default: raw for the local server, jpeg "
                             "for --server)")
    parser.add_argument("--token", help="bearer token (default: $JR2NET_TOKEN)")
    parser.add_argument("--tls-ca", metavar="PEM", help="CA certificate(s) to verify a TLS server")
    parser.add_argument("--side-by-side", metavar="MP4", help="also write source | driving | output")
    parser.add_argument("--contact-sheet", metavar="PNG",
                        help="also write a grid of a few frames (driving over output)")
    parser.add_argument("--max-frames", type=int, metavar="N",
                        help="stop after N driving frames (or take rows)")
    parser.add_argument("--pose-mode", choices=("relative", "absolute"), default="relative",
                        help="relative (default; other identity) or absolute (same identity) head pose")
    parser.add_argument("--mode", choices=("geometric", "learned"), default="",
                        help="pipeline (default: the server's default, geometric)")
    parser.add_argument("--crop-size", type=int, default=256, help="face crop side the pipeline renders at")
    parser.add_argument("--size", type=_size, metavar="WxH",
                        help="output size (default: the source's aspect ratio, longest side 512)")
    parser.add_argument("--quality", type=int, default=90,
                        help="JPEG quality of the streamed outputs (with --wire jpeg)")
    parser.add_argument("--window", type=int, metavar="N",
                        help="frames in flight (default: the server's grant, which never drops)")
    parser.add_argument("--face-model", metavar="FILE", help="face model for the local server")
    parser.add_argument("--checkpoints", metavar="RUN",
                        help="training run folder (dcnet/best.pt, recnet/best.pt) for the local "
                             "server: enables --mode learned")
    parser.add_argument("--recnet", metavar="FILE", help="RecNet checkpoint (local server)")
    parser.add_argument("--dcnet", metavar="FILE", help="DCNet checkpoint (local server)")
    parser.add_argument("--etnet", metavar="CKPT",
                        help="ETNet (etnet or recaugnet checkpoint) as the driving expression "
                             "tracker of the local server; --option expression=fitter opts out")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="pipeline option (SessionOptions.extra), repeatable; e.g. light=none, "
                        "expression=relative, feather=8 (every option: docs/operations.md)")
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
    nets = {k: getattr(args, k) for k in ("checkpoints", "recnet", "dcnet", "etnet") if getattr(args, k)}
    return dict(max_sessions=1, face_model=args.face_model, **nets)


def run(args: argparse.Namespace) -> int:
    import signal
    import sys
    import threading

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
    if not args.server and args.local_server == "process":
        # Started first, so the server's start-up overlaps everything below. It checks its own
        # settings (a bad path: ServerStartError with its message, when we wait for it).
        from jr2net.server.child import ServerProcess

        child = ServerProcess(preload=False, **_local_settings(args)).start()
    # SIGTERM ends the run like Ctrl-C, so the child is stopped on that path too (and on Linux
    # the kernel stops it if this process is killed outright: ServerProcess).
    previous = None
    if child is not None and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return _run(args, options, child)
    except KeyboardInterrupt:
        print("jr2net reenact: interrupted", file=sys.stderr)
        return 130
    finally:
        if child is not None:
            child.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace, options: dict[str, str], child) -> int:
    """``run`` once the local child server (if any) is starting."""
    import contextlib
    import json
    import os
    import sys

    import grpc

    from jr2net.clients.reenact import reenact_take, reenact_video
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
            if take is not None:
                summary = reenact_take(args.source, take, args.out, realtime=args.realtime, **common)
            else:
                summary = reenact_video(args.source, args.driving, args.out, **common)
    except grpc.RpcError as exc:
        code = exc.code().name if hasattr(exc, "code") else "?"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        print(f"jr2net reenact: server refused: {code}: {details}", file=sys.stderr)
        return 1
    except ServerStartError as exc:
        print(f"jr2net reenact: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, JR2NetError) as exc:
        print(f"jr2net reenact: {exc}", file=sys.stderr)
        return 2
    started = _process_started_at()
    if started is not None and summary.first_output_unix:
        summary.startup_s = summary.first_output_unix - started
    print(json.dumps(summary.to_dict(), indent=2))
    return 0 if not summary.errors else 1


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
