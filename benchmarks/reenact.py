"""``jr2net reenact`` end to end, as a user runs it (issue 14): d11.mp4's first frame as the source,
driven by d11.mp4 (225 frames, 512²), against a bare ``python -c "import torch"`` in the same run.

Variants (each a fresh ``jr2net reenact`` process, interleaved round by round):

- ``thread_jpeg``: the old path, a server thread in the command's process (one GIL), JPEG frames
  both ways (``--local-server thread --wire jpeg``);
- ``process_jpeg``: a child ``jr2net serve`` process, JPEG frames (``--wire jpeg``);
- ``process_raw``: the default, a child ``jr2net serve`` process, raw RGB frames.

Per run: time from process launch to the first output frame (the summary's ``first_output_unix``
against the launch time taken here), total wall time, streaming fps (the summary's: frames over
the time after the session opened) and the CPU seconds of the process tree (rusage of the waited
children). Each variant also runs with ``--max-frames 1`` in the same round: its CPU seconds are
the start-up's, and (full - one frame) / (frames - 1) is the CPU per streamed frame, figures that
depend on the machine's load much less than wall times do. Medians over ``--runs`` rounds; the load average is recorded with every run, because on
a shared machine the figures are upper bounds and the ratios against the same round's
``import torch`` are what count. Targets: streaming >= 40 fps; first output within 1.5 s of the
bare ``import torch``.

Run: ``.venv/bin/python -m benchmarks.reenact [--runs 3] [--frames N] [--variants a,b]``; prints a
table and writes benchmarks/results/reenact.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import print_table, write_results

VARIANTS = {
    "thread_jpeg": ["--local-server", "thread", "--wire", "jpeg"],
    "process_jpeg": ["--local-server", "process", "--wire", "jpeg"],
    "process_raw": ["--local-server", "process"],
}
TARGET_FPS = 40.0
TARGET_STARTUP_OVER_TORCH_S = 1.5


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float, float, float]:
    """Run ``cmd``; (result, launch time.time(), wall s, CPU s of it and its waited children)."""
    cpu0 = _children_cpu()
    launched = time.time()
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    wall = time.perf_counter() - t0
    return res, launched, wall, _children_cpu() - cpu0


def _source_frame(video: Path, out: Path) -> Path:
    from jr2net.io.images import save_image
    from jr2net.io.video import VideoReader

    with VideoReader(video) as reader:
        save_image(out, next(iter(reader)))
    return out


def run_round(i: int, variants: list[str], source: Path, driving: Path, out_dir: Path,
              frames: int | None, env: dict[str, str]) -> list[dict]:
    """One bare torch import, then each variant once; one row per measurement."""
    rows = []
    res, _, wall, cpu = _timed([sys.executable, "-c", "import torch"], env)
    assert res.returncode == 0, res.stderr
    rows.append({"round": i, "variant": "import_torch", "wall_s": wall, "cpu_s": cpu,
                 "load_1min": os.getloadavg()[0]})
    for name in variants:
        cmd = [sys.executable, "-m", "jr2net.cli", "reenact", "--source", str(source),
               "--driving", str(driving), "--out", str(out_dir / f"{name}.mp4"), "--no-progress",
               *VARIANTS[name]]
        one, _, _, startup_cpu = _timed(cmd + ["--max-frames", "1"], env)
        if one.returncode != 0:
            raise RuntimeError(f"{name} (1 frame): exit {one.returncode}: {one.stderr[-2000:]}")
        if frames:
            cmd += ["--max-frames", str(frames)]
        res, launched, wall, cpu = _timed(cmd, env)
        if res.returncode != 0:
            raise RuntimeError(f"{name}: exit {res.returncode}: {res.stderr[-2000:]}")
        summary = json.loads(res.stdout)
        rows.append({
            "round": i, "variant": name, "wall_s": wall, "cpu_s": cpu,
            "startup_cpu_s": startup_cpu,
            "cpu_ms_per_frame": 1000 * (cpu - startup_cpu) / max(1, summary["frames"] - 1),
            "first_output_s": summary["first_output_unix"] - launched,
            "fps": summary["fps"], "frames": summary["frames"], "outputs": summary["outputs"],
            "setup_s": summary["setup_s"], "latency_ms_p50": summary["latency_ms_p50"],
            "load_1min": os.getloadavg()[0],
        })
        print(f"round {i} {name}: first output {rows[-1]['first_output_s']:.2f} s, "
              f"wall {wall:.1f} s, {summary['fps']:.1f} fps, cpu {cpu:.1f} s, "
              f"load {rows[-1]['load_1min']:.1f}", flush=True)
    return rows


def summarize(rows: list[dict], variants: list[str]) -> list[dict]:
    """Medians per variant, with the start-up over the bare torch import of the same rounds."""
    torch_rows = [r for r in rows if r["variant"] == "import_torch"]
    torch_wall = statistics.median(r["wall_s"] for r in torch_rows)
    table = [{"variant": "import_torch", "runs": len(torch_rows), "wall_s": torch_wall,
              "cpu_s": statistics.median(r["cpu_s"] for r in torch_rows),
              "load_1min": statistics.median(r["load_1min"] for r in torch_rows)}]
    for name in variants:
        mine = [r for r in rows if r["variant"] == name]
        by_round = {r["round"]: r["wall_s"] for r in torch_rows}
        over = [r["first_output_s"] - by_round[r["round"]] for r in mine]
        table.append({
            "variant": name, "runs": len(mine),
            "first_output_s": statistics.median(r["first_output_s"] for r in mine),
            "first_output_over_torch_s": statistics.median(over),
            "wall_s": statistics.median(r["wall_s"] for r in mine),
            "fps": statistics.median(r["fps"] for r in mine),
            "cpu_s": statistics.median(r["cpu_s"] for r in mine),
            "startup_cpu_s": statistics.median(r["startup_cpu_s"] for r in mine),
            "cpu_ms_per_frame": statistics.median(r["cpu_ms_per_frame"] for r in mine),
            "load_1min": statistics.median(r["load_1min"] for r in mine),
        })
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds (medians over them)")
    parser.add_argument("--frames", type=int, default=0, help="driving frames (0: all 225)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of {', '.join(VARIANTS)}")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}")
    from jr2net.paths import shared_path

    driving = shared_path("data", "videos", "d11.mp4")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    with tempfile.TemporaryDirectory(prefix="jr2net-bench-reenact-") as tmp:
        source = _source_frame(driving, Path(tmp) / "d11_frame0.png")
        rows = []
        for i in range(args.runs):
            rows += run_round(i, variants, source, driving, Path(tmp), args.frames or None, env)
    table = summarize(rows, variants)
    print_table(table, ["variant", "runs", "first_output_s", "first_output_over_torch_s", "wall_s",
                        "fps", "cpu_s", "startup_cpu_s", "cpu_ms_per_frame", "load_1min"],
                title="jr2net reenact on d11 (medians; upper bounds on a loaded machine)")
    default = next((t for t in table if t["variant"] == "process_raw"), None)
    targets = {}
    if default is not None:
        targets = {
            f"streaming_fps>={TARGET_FPS:g}": default["fps"] >= TARGET_FPS,
            f"first_output_within_{TARGET_STARTUP_OVER_TORCH_S:g}s_of_import_torch":
                default["first_output_over_torch_s"] <= TARGET_STARTUP_OVER_TORCH_S,
        }
        print("\nTargets (process_raw, the default): "
              + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in targets.items()))
    write_results("reenact", {
        "config": {"source": "d11.mp4 frame 0", "driving": "d11.mp4", "frames": args.frames or 225,
                   "runs": args.runs, "omp_num_threads": env["OMP_NUM_THREADS"],
                   "variants": {v: VARIANTS[v] for v in variants}},
        "summary": table, "targets": targets, "runs": rows,
    })


if __name__ == "__main__":
    main()
