"""Reenactment quality, same identity (acceptance): ours vs copy-source vs a 2D similarity warp.

For every video in the shared videos folder the source is the first frame with a face and the
ground truth is every later frame (``--max-frames N`` evaluates N of them, spread evenly; every
frame is still streamed through the session so the tracker sees the video). Metrics
(PSNR, SSIM, L1 from ``jr2net.eval.metrics``) are computed over the face region: the convex hull of
the ground-truth frame's dlib landmarks, the same mask for every method. Pose and expression are
``relative`` by default (the product's default: the source is the first frame, so the driving's
motion since that frame is applied to it; ``--pose-mode absolute --expression absolute`` uses the
driving fits as they are). Writes benchmarks/results/quality.json and a
side-by-side PNG per video (source | driving GT | ours | similarity baseline, a few frames).
The per-video work is ``jr2net.eval.reenact_eval.evaluate_same_identity`` (as in ``jr2net eval
reenact``, which adds the face box, mouth box and full frame).
Run: ``.venv/bin/python -m benchmarks.quality [--max-frames N] [--face-model ict]``;
``--option mouth=synthetic`` (repeatable) passes session options; ``--name NAME`` writes
NAME.json and NAME_<video>.png (partial runs leave quality.json alone); disjoint ``--videos``
runs in parallel are combined by ``--merge NAME...`` (same other flags).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from benchmarks.common import RESULTS_DIR, print_table, write_results

METHODS = ("ours", "copy_source", "similarity")
# Acceptance (region, metric) pairs: ours must beat both baselines on each, per video.
ACCEPTANCE = (
    ("face_box", "psnr"), ("face_box", "ssim"), ("mouth_box", "psnr"), ("full", "psnr"),
    ("full", "ssim"),
)  # fmt: skip
REGIONS = ("face_hull", "face_box", "mouth_box", "full")
JITTER_FRAMES = 90  # streamed frames whose landmarks are tracked for the jitter figure
STILL_CHANGE = 0.012  # driving landmark change per frame (/ IOD) below which a frame is "still"


def landmark_jitter(pairs) -> dict:
    """Frame-to-frame change of the output's 68 landmarks minus the driving's (mean absolute
    per-point displacement / inter-ocular distance), over the still frames of ``pairs`` (the
    driving's own change below ``STILL_CHANGE``) and over all of them."""
    import numpy as np

    from jr2net.face.landmarks import detect_faces, interocular_distance

    prev = None
    still, every = [], []
    for drv, out in pairs:
        d, o = detect_faces(drv), detect_faces(out)
        if not d or not o:
            prev = None
            continue
        cur = (np.asarray(d[0].landmarks, float), np.asarray(o[0].landmarks, float))
        if prev is not None:
            iod = max(interocular_distance(cur[0]), 1e-6)
            cd = float(np.linalg.norm(cur[0] - prev[0], axis=1).mean()) / iod
            co = float(np.linalg.norm(cur[1] - prev[1], axis=1).mean()) / iod
            every.append((cd, co))
            if cd < STILL_CHANGE:
                still.append((cd, co))
        prev = cur

    def stats(v):
        if not v:
            return {"frames": 0, "driving": float("nan"), "ours": float("nan"),
                    "excess": float("nan")}  # fmt: skip
        a = np.asarray(v)
        return {"frames": len(v), "driving": float(a[:, 0].mean()), "ours": float(a[:, 1].mean()),
                "excess": float((a[:, 1] - a[:, 0]).mean())}  # fmt: skip

    return {"still": stats(still), "all": stats(every)}
LIBRARY_NAMES = {"ours": "ours", "copy_source": "copy_source", "similarity": "similarity_warp"}


def evaluate_video(
    reenactor, path, max_frames: int, light: str, max_stream: int, expression: str, pose_mode: str,
    name: str = "quality", extra: dict | None = None,
) -> tuple[dict, list]:
    """One video through ``jr2net.eval.reenact_eval.evaluate_same_identity`` (face hull only)."""
    from jr2net.eval.reenact_eval import contact_sheet, evaluate_same_identity
    from jr2net.io.images import save_image
    from jr2net.pipeline.base import SessionOptions

    options = SessionOptions(
        pose_mode=pose_mode, extra={"light": light, "expression": expression, **(extra or {})}
    )
    res = evaluate_same_identity(
        reenactor, path, options, max_frames=max_frames, regions=REGIONS,
        max_stream=max_stream, keep_stream=JITTER_FRAMES,
    )  # fmt: skip
    s = res.summary
    summary = {m: s["methods"][LIBRARY_NAMES[m]]["face_hull"] for m in METHODS}
    summary["regions"] = {m: s["methods"][LIBRARY_NAMES[m]] for m in METHODS}
    summary["jitter"] = landmark_jitter(res.stream)
    summary["frames_evaluated"] = s["frames_evaluated"]
    summary["frames_skipped_no_face"] = s["frames_skipped_no_face"] + s["frames_skipped_fallback"]
    summary["source_frame"] = s["source_frame"]
    summary["process_ms_median"] = s["process_ms_median"]
    if res.rows:  # source | driving GT | ours | similarity baseline, a few frames
        rows = [[res.source, gt, outs["ours"], outs["similarity_warp"]] for gt, outs in res.rows]
        sheet = contact_sheet(rows, ("source", "driving (GT)", "ours", "similarity warp"))
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        save_image(RESULTS_DIR / f"{name}_{path.stem}.png", sheet)
    return summary, res.rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--face-model", default="ict", help="ict (shared), generic, or a .npz path")
    ap.add_argument("--max-frames", type=int, default=0,
                    help="evaluated frames per video, evenly spread (default 0: every later frame)")
    ap.add_argument("--light", default="source", choices=("source", "none"))
    ap.add_argument(
        "--max-stream",
        type=int,
        default=0,
        help="frames streamed per video after the source (default 0: the whole video)",
    )
    ap.add_argument("--expression", default="relative", choices=("relative", "absolute"))
    ap.add_argument("--pose-mode", default="relative", choices=("relative", "absolute"))
    ap.add_argument("--videos", nargs="*", default=None, help="video file names (default: all)")
    ap.add_argument("--name", default="quality",
                    help="results name: <name>.json and <name>_<video>.png (default quality; "
                         "use another for partial runs so the full run's files stay)")
    ap.add_argument("--merge", nargs="*", default=None, metavar="NAME",
                    help="evaluate nothing: combine the per-video results of earlier runs "
                         "(<NAME>.json, e.g. runs over disjoint --videos in parallel) into <--name>.json")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="extra session option (options.extra), repeatable, e.g. mouth=synthetic")
    args = ap.parse_args(argv)

    from jr2net.paths import shared_path
    from jr2net.pipeline.geometric import GeometricReenactor

    extra = {}
    for kv in args.option:
        key, sep, value = kv.partition("=")
        if not sep or not key:
            ap.error(f"--option expects KEY=VALUE, got {kv!r}")
        extra[key] = value
    reenactor = GeometricReenactor(args.face_model)
    vdir = shared_path("data", "videos")
    videos = sorted(vdir.glob("*.mp4")) if not args.videos else [vdir / v for v in args.videos]
    per_video = {}
    t0 = time.perf_counter()
    if args.merge:  # per-video results of earlier (e.g. parallel) runs, in the given order
        for name in args.merge:
            per_video.update(json.loads((RESULTS_DIR / f"{name}.json").read_text())["per_video"])
    for path in [] if args.merge else videos:
        summary, _ = evaluate_video(
            reenactor, path, args.max_frames, args.light, args.max_stream, args.expression,
            args.pose_mode, args.name, extra,
        )  # fmt: skip
        per_video[path.name] = summary
    rows = [
        {"video": name, "method": m, "PSNR": s[m]["psnr"], "SSIM": s[m]["ssim"],
         "L1": s[m]["l1"], "frames": s["frames_evaluated"]}
        for name, s in per_video.items() for m in METHODS
    ]  # fmt: skip
    wins = {
        name: {
            "psnr": all(s["ours"]["psnr"] > s[b]["psnr"] for b in METHODS[1:]),
            "ssim": all(s["ours"]["ssim"] > s[b]["ssim"] for b in METHODS[1:]),
        }
        for name, s in per_video.items()
    }
    overall = {
        m: {
            k: statistics.mean(per_video[v][m][k] for v in per_video)
            for k in ("psnr", "ssim", "l1")
        }
        for m in METHODS
    }
    for m in METHODS:
        rows.append(
            {
                "video": "mean over videos",
                "method": m,
                "PSNR": overall[m]["psnr"],
                "SSIM": overall[m]["ssim"],
                "L1": overall[m]["l1"],
                "frames": "",
            }
        )
    print_table(
        rows,
        ["video", "method", "PSNR", "SSIM", "L1", "frames"],
        title=(
            "same-identity reenactment quality over the face hull "
            f"(pose {args.pose_mode}, expression {args.expression}, light {args.light})"
        ),
    )
    beat = all(w["psnr"] and w["ssim"] for w in wins.values())
    print(f"\nours beats both baselines on PSNR and SSIM on every video: {beat} {wins}")
    acc_rows, acceptance = [], {}
    for name, s in per_video.items():
        r = s["regions"]
        row = {"video": name}
        for region, k in ACCEPTANCE:
            ok = all(r["ours"][region][k] > r[b][region][k] for b in METHODS[1:])
            acceptance.setdefault(name, {})[f"{region}_{k}"] = ok
            row[f"{region} {k}"] = (
                f"{r['ours'][region][k]:.3f}/{r['copy_source'][region][k]:.3f}/"
                f"{r['similarity'][region][k]:.3f}{'' if ok else ' X'}"
            )
        j = s["jitter"]["still"]
        row["jitter still (ours-drv)"] = f"{j['excess']:.4f} ({j['frames']} fr)"
        acc_rows.append(row)
    print_table(
        acc_rows,
        ["video", *(f"{r} {k}" for r, k in ACCEPTANCE), "jitter still (ours-drv)"],
        title="acceptance: ours/copy-source/similarity (X: ours does not beat both)",
    )
    acc_met = all(all(v.values()) for v in acceptance.values())
    print(f"acceptance met on every video and metric: {acc_met}")
    print(
        f"runtime {time.perf_counter() - t0:.0f} s; side-by-sides in {RESULTS_DIR}/{args.name}_<video>.png"
    )
    write_results(
        args.name,
        {
            "options": extra,
            "pose_mode": args.pose_mode,
            "light": args.light,
            "expression": args.expression,
            "face_model": reenactor.model.name,
            "max_stream": args.max_stream,
            "mask": "convex hull of the ground-truth frame's dlib landmarks",
            "max_frames_per_video": args.max_frames,
            "per_video": per_video,
            "mean_over_videos": overall,
            "ours_beats_baselines": wins,
            "acceptance": acceptance,
            "acceptance_met": acc_met,
            "jitter_definition": (
                "mean |Δ landmark| / IOD per frame, output minus driving, on frames whose "
                f"driving change < {STILL_CHANGE} (first {JITTER_FRAMES} streamed frames)"
            ),
            "all_met": beat,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
