"""Mocap benchmark: a 10-second Live Link Face take (60 fps, 600 rows, written by
``jr2net.io.arkit_csv``) reenacted end to end through a real in-process gRPC server as
``MocapFrame``s (``jr2net.clients.reenact.reenact_take``, what ``jr2net reenact --driving-csv``
runs), at the server benchmark's settings: source s42.jpg, 512x512 output, 256x256 face crop,
JPEG replies, the geometric path.

Scenarios: unpaced (rows sent as fast as the server answers, window = the server's grant) and
realtime (each row sent at its timecode, as a live capture). Each records rows, the output
frames counted in the mp4 with PyAV (target: one per row), wall time, fps and the end-to-end
latency p50/p95/p99.

Run: ``.venv/bin/python -m benchmarks.mocap [--seconds 10] [--fps 60] [--face-model FILE]``;
prints a table and writes benchmarks/results/mocap.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import av

from benchmarks.common import print_table, write_results
from jr2net.clients.reenact import reenact_take
from jr2net.face.model import load_face_model
from jr2net.io.arkit_csv import read_live_link_csv, sample_take, write_live_link_csv
from jr2net.paths import shared_path
from jr2net.server.app import local_server

CROP = 256
OUTPUT = (512, 512)


def count_frames(path: Path) -> int:
    """Video frames in ``path``, decoded (not the container's claim)."""
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="take length")
    parser.add_argument("--fps", type=float, default=60.0, help="take frame rate (Live Link Face: 60)")
    parser.add_argument("--face-model", default=None, help="face model (default: the project's)")
    args = parser.parse_args()

    model = load_face_model(args.face_model)
    source = shared_path("data", "images", "s42.jpg")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        beta, head = sample_take(model.expression_names, seconds=args.seconds, fps=args.fps, seed=0)
        csv = write_live_link_csv(Path(tmp) / "take.csv", beta, model.expression_names,
                                  fps=args.fps, head=head)
        take = read_live_link_csv(csv, args.fps)
        with local_server(max_sessions=1, face_model=args.face_model) as address:
            for scenario, realtime in (("unpaced", False), ("realtime", True)):
                out = Path(tmp) / f"{scenario}.mp4"
                s = reenact_take(source, take, out, server=address, crop_size=CROP,
                                 output_size=OUTPUT, realtime=realtime, progress=False)
                frames = count_frames(out)
                rows.append({
                    "scenario": scenario, "rows": len(take), "output_frames": frames,
                    "one_per_row": frames == len(take), "errors": sum(s.errors.values()),
                    "take_s": take.duration, "wall_s": s.wall_s, "fps": s.fps,
                    "setup_s": s.setup_s, "p50_ms": s.latency_ms_p50, "p95_ms": s.latency_ms_p95,
                    "p99_ms": s.latency_ms_p99,
                })  # fmt: skip
    print_table(rows, list(rows[0]), f"{args.seconds:g} s take at {args.fps:g} fps, "
                f"{OUTPUT[0]}x{OUTPUT[1]} output, crop {CROP}, through a loopback server")
    write_results("mocap", {
        "settings": {"seconds": args.seconds, "fps": args.fps, "crop": CROP, "output": OUTPUT,
                     "source": source.name, "mode": "geometric"},
        "target": "one output frame per CSV row",
        "met": all(r["one_per_row"] and r["errors"] == 0 for r in rows),
        "scenarios": rows,
    })  # fmt: skip


if __name__ == "__main__":
    main()
