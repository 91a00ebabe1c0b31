"""``jr2net serve``: run the gRPC streaming reenactment server."""

from __future__ import annotations

import argparse

NAME = "serve"
HELP = "run the gRPC streaming reenactment server (health, reflection, Prometheus metrics)"

EPILOG = """\
Settings come from, highest precedence first: these flags, environment variables JR2NET_<NAME>
(e.g. JR2NET_MAX_SESSIONS=4, JR2NET_TOKEN=secret), a YAML file given with --config (or
$JR2NET_CONFIG) whose keys are the setting names (max_sessions: 4), then the defaults shown.

Protocol: proto/jr2net.proto (service jr2net.v1.Reenactment; grpc.health.v1.Health and server
reflection, v1 and v1alpha, are also served; with a token, reflection needs it too). Per stream at most --max-in-flight frames are unanswered; when a
frame arrives and the window is full, the OLDEST QUEUED frame is answered FrameError "DROPPED", so
every frame still gets exactly one reply. Metrics: http://HOST:METRICS_PORT/metrics
(jr2net_frame_latency_seconds{stage}, jr2net_frames_total{result}, jr2net_sessions_active,
jr2net_rejected_total{reason}). SIGTERM/SIGINT drains: health NOT_SERVING, new sessions get
UNAVAILABLE, in-flight frames finish, then the server stops (at most --drain-timeout seconds;
a second signal stops at once).

Expression tracker: --etnet CKPT (an etnet or recaugnet checkpoint) is loaded at start by every
mode and tracks each driving frame's expression (the fitter keeps the pose; reply timing "etnet");
a session opts out with option expression=fitter (or fitter+relative); without --etnet,
expression=etnet is refused with INVALID_ARGUMENT.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from jr2net.server.config import add_arguments as add_settings

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    add_settings(parser)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import os
    import sys

    from jr2net.server.config import load_config

    try:
        config = load_config(args)
    except ValueError as exc:
        print(f"jr2net serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from jr2net.server.app import serve

    if not config.preload and os.environ.get("JR2NET_PRELOAD_LANDMARKS", "1") != "0":
        # A child of `jr2net reenact` (no reenactor preload, so it listens soon): dlib's landmark
        # model parse overlaps server start-up and the wait for the first session.
        from jr2net.face.landmarks import preload_in_background

        preload_in_background()

    asyncio.run(serve(config))
    return 0
