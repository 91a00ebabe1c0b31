"""``jr2net bench``: load generators. ``jr2net bench server`` drives a streaming server."""

from __future__ import annotations

import argparse

NAME = "bench"
HELP = "load generators (bench server: N streams x M frames at F fps; latency, drops, errors)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    p = sub.add_parser("server", help="stream frames to a server and report throughput and latency",
                       description="Open --streams sessions at once; each sends --frames frames at "
                       "--fps (0: as fast as the window allows). Prints a table of end-to-end and "
                       "per-stage latency percentiles plus throughput, drops and errors, and the "
                       "report as JSON (to --json FILE, else to stdout after the table).")
    p.add_argument("--streams", type=int, default=1, help="concurrent sessions")
    p.add_argument("--frames", type=int, default=100, help="frames per stream")
    p.add_argument("--fps", type=float, default=30.0, help="send rate per stream (0: unpaced)")
    p.add_argument("--source", help="source image (default: shared obama.jpg)")
    p.add_argument("--driving", help="driving video, looped (default: shared d0.mp4)")
    p.add_argument("--server", metavar="HOST:PORT", help="default: an in-process server on loopback")
    p.add_argument("--token", help="bearer token (default: $JR2NET_TOKEN)")
    p.add_argument("--tls-ca", metavar="PEM", help="CA certificate(s) to verify a TLS server")
    p.add_argument("--window", type=int, help="frames in flight per stream (default: server grant)")
    p.add_argument("--crop-size", type=int, default=256)
    p.add_argument("--json", metavar="FILE", help="write the JSON report here")


def run(args: argparse.Namespace) -> int:
    import contextlib
    import json
    import os
    import sys
    from pathlib import Path

    from jr2net.clients.loadgen import report_rows, run_load
    from jr2net.paths import shared_path

    try:
        source = args.source or str(shared_path("data", "images", "obama.jpg"))
        driving = args.driving or str(shared_path("data", "videos", "d0.mp4"))
        token = args.token or os.environ.get("JR2NET_TOKEN")
        if args.server:
            server = contextlib.nullcontext(args.server)
        else:
            from jr2net.server.app import local_server

            server, token = local_server(max_sessions=max(8, args.streams)), None
        with server as address:
            report = run_load(
                server=address, source=source, driving=driving, streams=args.streams,
                frames=args.frames, fps=args.fps, window=args.window, token=token,
                root_certificates=args.tls_ca, crop_size=args.crop_size,
            )
        if not args.server:
            report["server"] = "in-process"
    except (FileNotFoundError, ValueError) as exc:
        print(f"jr2net bench server: {exc}", file=sys.stderr)
        return 2
    _print_report(report, report_rows(report))
    text = json.dumps(report, indent=2, default=float)
    if args.json:
        Path(args.json).write_text(text + "\n")
        print(f"\nwrote {args.json}")
    else:
        print(text)
    return 0 if not report["errors"] and not report["failed_streams"] else 1


def _print_report(report: dict, rows: list[dict]) -> None:
    def fmt(v: object) -> str:
        return f"{v:.1f}" if isinstance(v, float) else str(v)

    print(f"streams={report['streams']} frames/stream={report['frames_per_stream']} "
          f"target_fps={report['target_fps']:g} server={report['server']}")
    print(f"throughput {report['throughput_fps']:.1f} fps (min per stream "
          f"{report['per_stream_fps_min']:.1f}), answered {report['frames_answered']}/"
          f"{report['frames_sent']}, ok {report['frames_ok']} (fallback {report['fallback']}), "
          f"dropped {report['dropped']}, errors {report['errors']}, session setup max "
          f"{report['session_setup_s']['max']:.2f} s")
    for failure in report["failed_streams"]:
        print(f"failed stream: {failure}")
    cols = ["stage", "p50_ms", "p95_ms", "p99_ms"]
    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
