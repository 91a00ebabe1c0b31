"""Benchmark report: benchmarks/report.md with PNG plots, from the stored benchmarks/results/*.json.

Sections: kernel speed against the pure-PyTorch reference by size; pipeline stage times; the
server's end-to-end latency CDF and throughput against the number of streams; the same-identity
quality tables (benchmarks/quality.py, and ``jr2net eval reenact`` metrics when
``results/eval/metrics.json`` exists); reconstruction error histograms (the fitting benchmark's
synthetic faces, and ``jr2net eval reconstruct`` metrics when ``results/eval_reconstruct/
metrics.json`` exists). A missing or unreadable JSON gives a note in its section, not a failure.
Nothing is re-measured unless asked: ``--rerun kernels,server`` (or ``all``) runs those
benchmarks first (slow). Plots: benchmarks/results/report_*.png.

Run: ``make report`` or ``.venv/bin/python -m benchmarks.report [--results DIR] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR

BENCHMARKS = ("kernels", "fitting", "pipeline", "server", "quality")
REPORT_MD = Path(__file__).resolve().parent / "report.md"


class Report:
    """Markdown lines and the plots written beside them."""

    def __init__(self, results: Path, out: Path) -> None:
        self.results, self.out = results, out
        self.lines: list[str] = []
        self.plots: list[Path] = []
        self.notes: list[str] = []

    def load(self, name: str) -> dict | None:
        path = self.results / f"{name}.json"
        if not path.is_file():
            self.note(
                f"`{path.name}` is missing: run `python -m benchmarks.{name}` "
                f"(or `python -m benchmarks.report --rerun {name}`)."
            )
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            self.note(f"`{path.name}` is unreadable ({exc}); rerun `python -m benchmarks.{name}`.")
            return None

    def note(self, text: str) -> None:
        self.lines.append(f"> **Note.** {text}\n")
        self.notes.append(text)

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def table(self, rows: list[dict], cols: list[str]) -> None:
        self.add("| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols))
        for r in rows:
            self.add("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
        self.add("")

    def figure(self, fig, name: str, caption: str) -> None:
        import matplotlib.pyplot as plt

        path = self.results / f"report_{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        self.plots.append(path)
        rel = path.relative_to(self.out.parent) if path.is_relative_to(self.out.parent) else path
        self.add(f"![{caption}]({rel.as_posix()})", f"*{caption}*", "")


def _fmt(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def _work_mpx(config: str) -> float | None:
    """Millions of pixels per call from a config like ``"512² b8 3ch"``; None if unparsable."""
    parts = config.split()
    try:
        side = int(parts[0].rstrip("²"))
        batch = int(parts[1].lstrip("b"))
    except (IndexError, ValueError):
        return None
    return side * side * batch / 1e6


def _machine(d: dict) -> str:
    m = d.get("machine", {})
    load = m.get("load_average")
    return (
        f"{m.get('date', '?')}, {m.get('cpu_model', 'CPU ?')}, SIMD {m.get('simd_level', '?')}, "
        f"{m.get('cpus', '?')} CPUs, torch {m.get('torch', '?')}, "
        f"{m.get('torch_threads', '?')} torch threads, load {_fmt(load[0]) if load else '?'} "
        "when written"
    )


# ---------------------------------------------------------------------------------------------
# Sections


def kernels(rep: Report) -> None:
    import matplotlib.pyplot as plt

    rep.add("## Kernels: ours against the pure-PyTorch reference", "")
    d = rep.load("kernels")
    if d is None:
        return
    rows = d.get("rows", [])
    rep.add(
        f"Forward times, median ({_machine(d)}; load average {_fmt(d.get('load_average'))}).", ""
    )
    rep.table(rows, ["op", "config", "kernel_fwd_ms", "ref_fwd_ms", "fwd_speedup", "bwd/fwd"])
    ops = list(dict.fromkeys(r["op"] for r in rows))
    fig, (ax_ms, ax_x) = plt.subplots(1, 2, figsize=(12, 4.5))
    for k, op in enumerate(ops):
        mine = [r for r in rows if r["op"] == op and _work_mpx(r["config"]) is not None]
        # One line per channel variant (e.g. 3ch / 64ch) so sizes compare like with like.
        for var in dict.fromkeys(" ".join(r["config"].split()[2:]) for r in mine):
            sel = sorted(
                (r for r in mine if " ".join(r["config"].split()[2:]) == var),
                key=lambda r: _work_mpx(r["config"]),
            )
            xs = [_work_mpx(r["config"]) for r in sel]
            name = f"{op} {var}".strip()
            style = dict(color=f"C{k}", ls="-" if var in ("", "3ch") else ":")
            ax_ms.plot(xs, [r["kernel_fwd_ms"] for r in sel], marker="o", label=name, **style)
            ax_ms.plot(xs, [r["ref_fwd_ms"] for r in sel], marker="x", alpha=0.4, **style)
            ax_x.plot(xs, [r["fwd_speedup"] for r in sel], marker="o", label=name, **style)
    for ax in (ax_ms, ax_x):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("pixels per call, millions (256² b1 = 0.07 ... 512² b8 = 2.1)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    ax_ms.set_ylabel("forward ms")
    ax_ms.set_title("forward time by size (o ours, x reference)")
    ax_x.axhline(1.0, color="grey", lw=0.8)
    ax_x.set_ylabel("speed-up over the reference (x)")
    ax_x.set_title("speed-up by size")
    rep.figure(fig, "kernels", "Kernel forward time and speed-up over the PyTorch reference")
    peers = d.get("peers", [])
    if peers:
        rep.add("Peers:", "")
        rep.table(peers, ["peer", "config", "peer_ms", "ours_ms", "speedup"])
    targets = d.get("targets", [])
    if targets:
        rep.table(targets, ["target", "measured", "status", "best", "cpu"])


def pipeline(rep: Report) -> None:
    rep.add("## Pipeline: per-frame stages (one thread)", "")
    d = rep.load("pipeline")
    if d is None:
        return
    rep.add(
        f"{d.get('driving', '?')} driving {d.get('source', '?')}, crop {d.get('crop_size')}, "
        f"output {d.get('output_size')} ({_machine(d)}).",
        "",
    )
    rows = [{"stage": k, **v} for k, v in d.get("stages_ms", {}).items()]
    rep.table(rows, ["stage", "median_ms", "p90_ms", "p99_ms"])
    budget = d.get("budget")
    if budget:
        rep.add("Per-frame budget: each stage's median beside its floor (the run's minimum).", "")
        rep.table(budget, ["stage", "measured_as", "median_ms", "floor_ms", "median/floor",
                           "share_of_frame"])
        if d.get("budget_note"):
            rep.add(d["budget_note"], "")
    ov = d.get("overlap")
    if ov:
        rep.add(
            f"Stages overlapped: {ov['overlapped_fps']:.1f} fps vs {ov['serial_fps']:.1f} fps "
            "serial.",
            "",
        )


def server(rep: Report) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    rep.add("## Server: end-to-end latency and throughput", "")
    d = rep.load("server")
    if d is None:
        return
    cfg = d.get("config", {})
    rep.add(
        f"Source {cfg.get('source')}, driving {cfg.get('driving')}, output {cfg.get('output')}, "
        f"crop {cfg.get('crop')}, {cfg.get('frames_per_stream')} frames per stream "
        f"({_machine(d)}; load average {_fmt(cfg.get('load_average'))}).",
        "",
    )
    runs = d.get("runs", {})
    rows = []
    for mode, run in runs.items():
        for name, s in run.get("scenarios", {}).items():
            rows.append(
                {
                    "server": mode,
                    "scenario": name,
                    "streams": s["streams"],
                    "target_fps": s["target_fps"],
                    "fps": s["throughput_fps"],
                    "p50_ms": s["latency_ms"]["p50"],
                    "p95_ms": s["latency_ms"]["p95"],
                    "p99_ms": s["latency_ms"]["p99"],
                    "dropped": s["dropped"],
                    "errors": s["errors"],
                }
            )
    rep.table(
        rows,
        [
            "server",
            "scenario",
            "streams",
            "target_fps",
            "fps",
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "dropped",
            "errors",
        ],
    )

    fig, ax = plt.subplots(figsize=(7, 4.5))
    missing = []
    for k, (mode, run) in enumerate(runs.items()):
        for j, (name, s) in enumerate(run.get("scenarios", {}).items()):
            style = ("-", "--", ":")[k % 3]
            label = f"{name} ({mode})"
            lat = s.get("latencies_ms")
            if lat:
                xs = np.sort(np.asarray(lat, dtype=float))
                ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), style, color=f"C{j}", label=label)
            else:  # only the summary percentiles were stored
                missing.append(label)
                q = s["latency_ms"]
                ax.plot(
                    [q["p50"], q["p95"], q["p99"]],
                    [0.50, 0.95, 0.99],
                    style,
                    color=f"C{j}",
                    marker="o",
                    label=f"{label}: p50/p95/p99 only",
                )
    ax.axvline(50, color="grey", lw=0.8, ls="--")
    ax.text(49, 0.03, "50 ms target (p99, one stream at 30 fps) ", fontsize=7, color="grey", ha="right")
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency, ms (client send -> reply)")
    ax.set_ylabel("fraction of frames")
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("server latency CDF")
    if missing:
        rep.note(
            "server.json has no per-frame latencies for " + ", ".join(missing) + "; the "
            "plot shows their p50/p95/p99 points. `python -m benchmarks.server` now records "
            "them (`latencies_ms`)."
        )
    rep.figure(fig, "server_latency_cdf", "End-to-end latency CDF per scenario and server mode")

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for k, (mode, run) in enumerate(runs.items()):
        # The 512² scenarios at 30 fps (or unpaced); four_15fps and the 1080p stream are in the
        # table and the latency CDF.
        same = {n: s for n, s in run.get("scenarios", {}).items()
                if "1080p" not in n and s["target_fps"] in (0, 30)}
        paced = sorted(
            (s["streams"], s["throughput_fps"], s["target_fps"])
            for s in same.values()
            if s["target_fps"] > 0
        )
        unpaced = [
            (s["streams"], s["throughput_fps"])
            for s in same.values()
            if s["target_fps"] == 0
        ]
        if paced:
            ax.plot(
                [p[0] for p in paced],
                [p[1] for p in paced],
                "-o",
                color=f"C{k}",
                label=f"{mode}, paced",
            )
        if unpaced:
            ax.plot(
                [u[0] for u in unpaced],
                [u[1] for u in unpaced],
                "s",
                color=f"C{k}",
                mfc="none",
                label=f"{mode}, unpaced",
            )
    streams = sorted({s["streams"] for run in runs.values() for s in run["scenarios"].values()})
    fps = (
        max(
            (s["target_fps"] for run in runs.values() for s in run["scenarios"].values()),
            default=30,
        )
        or 30
    )
    if streams:
        ax.plot(
            [0, max(streams)],
            [0, fps * max(streams)],
            color="grey",
            lw=0.8,
            ls="--",
            label=f"{fps:g} fps per stream",
        )
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("total throughput, frames/s")
    ax.set_xticks(streams or [1])
    ax.set_xlim(0, max(streams or [1]) + 0.5)
    ax.set_ylim(0, None)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("throughput against the number of streams")
    rep.figure(fig, "server_throughput", "Total throughput against the number of streams")
    for mode, run in runs.items():
        t = run.get("targets", {})
        if t:
            rep.add(f"Targets ({mode}): " + ", ".join(f"{k} {_fmt(v)}" for k, v in t.items()), "")


def reenact(rep: Report) -> None:
    rep.add("## `jr2net reenact` end to end: start-up and streaming", "")
    d = rep.load("reenact")
    if d is None:
        return
    cfg = d.get("config", {})
    rep.add(
        f"Source {cfg.get('source')}, driving {cfg.get('driving')}, {cfg.get('frames')} frames, "
        f"medians of {cfg.get('runs')} interleaved rounds ({_machine(d)}).",
        "",
    )
    rep.table(d.get("summary", []), ["variant", "first_output_s", "first_output_over_torch_s",
                                     "fps", "cpu_ms_per_frame", "startup_cpu_s", "wall_s",
                                     "load_1min"])
    t = d.get("targets", {})
    if t:
        rep.add("Targets: " + ", ".join(f"{k} {_fmt(v)}" for k, v in t.items()), "")


def quality(rep: Report) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    rep.add("## Quality: same identity, ours beside the baselines", "")
    d = rep.load("quality")
    if d is not None:
        rep.add(
            f"Face hull of the ground-truth landmarks; pose {d.get('pose_mode')}, expression "
            f"{d.get('expression')}, light {d.get('light')}, face model {d.get('face_model')} "
            f"({_machine(d)}).",
            "",
        )
        methods = ("ours", "copy_source", "similarity")
        per = d.get("per_video", {})
        rows = []
        for video, s in [*per.items(), ("mean over videos", d.get("mean_over_videos"))]:
            for m in methods:
                src = s[m] if s else {}
                rows.append(
                    {
                        "video": video,
                        "method": m,
                        "PSNR": src.get("psnr", float("nan")),
                        "SSIM": src.get("ssim", float("nan")),
                        "L1": src.get("l1", float("nan")),
                        "frames": s.get("frames_evaluated", "") if s else "",
                    }
                )
        rep.table(rows, ["video", "method", "PSNR", "SSIM", "L1", "frames"])
        rep.add(
            f"Ours beats both baselines on PSNR and SSIM on every video: "
            f"{_fmt(bool(d.get('all_met')))}.",
            "",
        )
        if per:
            fig, axes = plt.subplots(1, 2, figsize=(11, 4))
            x = np.arange(len(per))
            for ax, key in zip(axes, ("psnr", "ssim"), strict=True):
                for j, m in enumerate(methods):
                    ax.bar(x + (j - 1) * 0.27, [per[v][m][key] for v in per], 0.27, label=m)
                ax.set_xticks(x, [Path(v).stem for v in per], fontsize=8)
                ax.set_ylabel(key.upper())
                ax.grid(axis="y", alpha=0.3)
            axes[0].legend(fontsize=8)
            fig.suptitle("same-identity quality over the face hull")
            rep.figure(fig, "quality", "Same-identity PSNR and SSIM per video and method")
            sheets = [
                f"[{Path(v).stem}](results/quality_{Path(v).stem}.png)"
                for v in per
                if (rep.results / f"quality_{Path(v).stem}.png").is_file()
            ]
            if sheets:
                rep.add("Side-by-sides: " + ", ".join(sheets) + ".", "")
    ev = rep.results / "eval" / "metrics.json"
    if ev.is_file():
        from jr2net.eval.reenact_suite import tables

        try:
            m = json.loads(ev.read_text())
            text = tables(m)
        except (OSError, ValueError, KeyError) as exc:
            rep.note(f"`{ev}` is unreadable ({exc}).")
        else:
            rep.add(
                "### `jr2net eval reenact` (results/eval/metrics.json)",
                "",
                f"Mode {m.get('reenactor')}, {m.get('max_frames')} scored frames per video and "
                f"pair, pose {m.get('pose_mode')}, options {m.get('options')}, sources: "
                f"{m.get('sources')}. Metrics: docs/evaluation.md.",
                "",
                "```",
                text,
                "```",
                "",
            )
            sheets = sorted(ev.parent.glob("*.png"))
            if sheets:
                links = [f"[{p.stem}]({_rel(p, rep.out)})" for p in sheets]
                rep.add("Contact sheets: " + ", ".join(links) + ".", "")


def reconstruction(rep: Report) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    rep.add("## Reconstruction error", "")
    d = rep.load("fitting")
    if d is not None:
        s = d.get("synthetic", {})
        rate = _fmt(s.get("detection_rate"))
        rep.add(
            f"Synthetic ICT faces ({s.get('n')} faces, detection rate {rate}): mesh RMSE after "
            f"similarity + ICP, 85 mm crop ({_machine(d)}).",
            "",
        )
        rep.table(
            [{"what": k, "value": v} for k, v in s.items() if not isinstance(v, dict)],
            ["what", "value"],
        )
        rows = [r for r in d.get("synthetic_rows", []) if r.get("detected")]
        series = {
            "ours": "rmse_mm",
            "baseline (mean shape)": "base_rmse_mm",
            "oracle landmarks": "oracle_rmse_mm",
            "no final landmark pass": "alt_rmse_mm",
        }
        data = {k: np.array([r[c] for r in rows if c in r], float) for k, c in series.items()}
        data = {k: v[np.isfinite(v)] for k, v in data.items() if len(v)}
        if data:
            fig, ax = plt.subplots(figsize=(7, 4.2))
            hi = max(float(np.percentile(v, 99)) for v in data.values())
            bins = np.linspace(0, hi * 1.05, 30)
            for k, v in data.items():
                ax.hist(
                    v,
                    bins=bins,
                    histtype="step",
                    lw=1.6,
                    label=f"{k} (median {np.median(v):.2f} mm)",
                )
            ax.set_xlabel("mesh RMSE, mm (point-to-plane, 85 mm crop)")
            ax.set_ylabel("faces")
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
            ax.set_title("reconstruction error on synthetic faces")
            rep.figure(fig, "reconstruction_hist", "Per-face mesh RMSE on the synthetic faces")
    ev = rep.results / "eval_reconstruct" / "metrics.json"
    if ev.is_file():
        try:
            m = json.loads(ev.read_text())
            rows = [{"protocol": p, **s} for p, s in m["summary"].items()]
        except (OSError, ValueError, KeyError) as exc:
            rep.note(f"`{ev}` is unreadable ({exc}).")
        else:
            rep.add("### `jr2net eval reconstruct` (results/eval_reconstruct/metrics.json)", "")
            rep.table(
                rows,
                [
                    "protocol",
                    "crop_mm",
                    "meshes",
                    "rmse_mean",
                    "std_mean",
                    "median_mean",
                    "p80_mean",
                    "mae_mean",
                ],
            )


SECTIONS = (kernels, pipeline, server, reenact, quality, reconstruction)


def build(results: Path = RESULTS_DIR, out: Path = REPORT_MD) -> Report:
    """Write ``out`` (markdown) and ``results/report_*.png`` from ``results/*.json``."""
    import matplotlib

    matplotlib.use("Agg")
    results.mkdir(parents=True, exist_ok=True)
    rep = Report(results, out)
    rep.add(
        "# JR2Net benchmark report",
        "",
        f"Generated by `make report` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}) "
        f"from `{_rel(results, out)}/*.json`; each section names the machine and date of its "
        "measurements. Timings on a shared CPU machine are noisy; ratios measured in the same "
        "run are the robust figures.",
        "",
    )
    for section in SECTIONS:
        section(rep)
    out.write_text("\n".join(rep.lines).rstrip() + "\n")
    return rep


def _rel(path: Path, out: Path) -> str:
    return path.relative_to(out.parent).as_posix() if path.is_relative_to(out.parent) else str(path)


def rerun(names: list[str]) -> None:
    """Run the named benchmarks (``python -m benchmarks.<name>``) before the report."""
    for name in names:
        print(f"report: running benchmarks.{name} (slow)", flush=True)
        subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of the JSON results")
    ap.add_argument("--out", type=Path, default=REPORT_MD, help="markdown file to write")
    ap.add_argument(
        "--rerun",
        default="",
        metavar="NAMES",
        help=f"comma-separated benchmarks to run first, or 'all' ({','.join(BENCHMARKS)})",
    )
    args = ap.parse_args(argv)
    names = list(BENCHMARKS) if args.rerun == "all" else [n for n in args.rerun.split(",") if n]
    bad = [n for n in names if n not in BENCHMARKS]
    if bad:
        ap.error(f"--rerun: unknown benchmark(s) {bad}; choose from {BENCHMARKS} or 'all'")
    if names:
        rerun(names)
    rep = build(args.results.resolve(), args.out.resolve())
    print(f"wrote {args.out} and {len(rep.plots)} plots in {args.results}")
    for n in rep.notes:
        print(f"note: {n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
