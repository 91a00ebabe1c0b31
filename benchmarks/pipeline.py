"""Per-stage timing of the geometric reenactment pipeline (the server's per-frame work, no JPEG).

Source photo -> session (setup time), then every frame of a 512² driving video (d0.mp4) through
``session.process``; prints median / p90 / p99 per stage and writes benchmarks/results/pipeline.json.
Run: ``.venv/bin/python -m benchmarks.pipeline [--face-model ict|generic|PATH] [--crop 256]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from benchmarks.common import percentile, print_table, write_results

# Per-stage budget (ms) for the speed target: ~20 ms per frame in total on the 2-core CPU.
TARGET_TOTAL_MS = 20.0
TARGET_RENDER_MS = 6.0  # everything after landmarks + fit


def run(
    face_model: str, crop: int, source_name: str, video_name: str, passes: int, out_size: int
) -> dict:
    from jr2net.io.images import load_image
    from jr2net.io.video import VideoReader
    from jr2net.paths import shared_path
    from jr2net.pipeline.base import SessionOptions
    from jr2net.pipeline.geometric import STAGES, GeometricReenactor

    source = load_image(shared_path("data", "images", source_name))
    frames = VideoReader(shared_path("data", "videos", video_name)).read_all()
    t0 = time.perf_counter()
    reenactor = GeometricReenactor(face_model)
    init_s = time.perf_counter() - t0
    opts = SessionOptions(crop_size=crop, output_width=out_size, output_height=out_size)
    setups = []
    for _ in range(3):
        t0 = time.perf_counter()
        session = reenactor.start_session(source, opts)
        setups.append(time.perf_counter() - t0)
    per_stage: dict[str, list[float]] = {s: [] for s in STAGES}
    wall: list[float] = []
    found = 0
    for p in range(passes):
        session = reenactor.start_session(source, opts)
        for i, frame in enumerate(frames):
            t0 = time.perf_counter()
            res = session.process(frame)
            dt = time.perf_counter() - t0
            if p == 0 and i < 3:
                continue  # warm-up
            wall.append(dt)
            found += int(res.face_found)
            for s in STAGES:
                per_stage[s].append(res.timings.get(s, 0.0))
        session.close()
    rows = []
    for s in STAGES:
        v = per_stage[s]
        rows.append(
            {
                "stage": s,
                "median_ms": 1e3 * statistics.median(v),
                "p90_ms": 1e3 * percentile(v, 90),
                "p99_ms": 1e3 * percentile(v, 99),
            }
        )
    render = [sum(per_stage[s][i] for s in STAGES[2:-1]) for i in range(len(wall))]
    rows.append(
        {
            "stage": "render+warp+relight+fill+composite",
            "median_ms": 1e3 * statistics.median(render),
            "p90_ms": 1e3 * percentile(render, 90),
            "p99_ms": 1e3 * percentile(render, 99),
        }
    )
    rows.append(
        {
            "stage": "process() wall",
            "median_ms": 1e3 * statistics.median(wall),
            "p90_ms": 1e3 * percentile(wall, 90),
            "p99_ms": 1e3 * percentile(wall, 99),
        }
    )
    title = (
        f"geometric pipeline: source {source_name}, driving {video_name} ({frames[0].shape[1]}x"
        f"{frames[0].shape[0]}), crop {crop}, output {out_size}², model {reenactor.model.name}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print_table(rows, ["stage", "median_ms", "p90_ms", "p99_ms"], title=title)
    setup_med = statistics.median(setups)
    total_med = 1e3 * statistics.median(wall)
    render_med = 1e3 * statistics.median(render)
    print(
        f"\nsession setup: median {setup_med:.3f} s (target < 2 s); reenactor init {init_s:.2f} s"
    )
    print(
        f"per frame: {total_med:.1f} ms median (target ~{TARGET_TOTAL_MS:.0f} ms: "
        f"{'met' if total_med <= TARGET_TOTAL_MS else 'missed'}); after fitting {render_med:.1f} ms "
        f"(target a few ms, <= {TARGET_RENDER_MS:.0f}: {'met' if render_med <= TARGET_RENDER_MS else 'missed'})"
    )
    return {
        "face_model": reenactor.model.name,
        "source": source_name,
        "driving": video_name,
        "crop_size": crop,
        "output_size": out_size,
        "frames_timed": len(wall),
        "frames_with_face": found,
        "stages_ms": {
            r["stage"]: {k: r[k] for k in ("median_ms", "p90_ms", "p99_ms")} for r in rows
        },
        "session_setup_s": {"median": setup_med, "all": setups},
        "reenactor_init_s": init_s,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min_at_end": os.getloadavg()[
            0
        ],  # the machine is shared: context for figures
        "targets": {
            "per_frame_ms": TARGET_TOTAL_MS,
            "per_frame_met": total_med <= TARGET_TOTAL_MS,
            "render_ms": TARGET_RENDER_MS,
            "render_met": render_med <= TARGET_RENDER_MS,
            "setup_s": 2.0,
            "setup_met": setup_med < 2.0,
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--face-model", default="ict", help="ict (shared), generic, or a .npz path")
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--source", default="obama.jpg")
    ap.add_argument("--driving", default="d0.mp4")
    ap.add_argument(
        "--output-size", type=int, default=512, help="square output side (512 = the video's)"
    )
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)"
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(
        args.face_model, args.crop, args.source, args.driving, args.passes, args.output_size
    )
    write_results("pipeline", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
