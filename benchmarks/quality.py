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
Run: ``.venv/bin/python -m benchmarks.quality [--max-frames N] [--face-model ict]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image, ImageDraw

from benchmarks.common import RESULTS_DIR, print_table, write_results

METHODS = ("ours", "copy_source", "similarity")


def hull_mask(landmarks: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Binary mask ``[H, W]`` of the convex hull of 2D landmarks."""
    from scipy.spatial import ConvexHull

    hull = landmarks[ConvexHull(landmarks).vertices]
    pil = Image.new("L", (hw[1], hw[0]), 0)
    ImageDraw.Draw(pil).polygon([tuple(p) for p in hull.tolist()], fill=255)
    return np.asarray(pil) > 0


def _to_t(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255.0


def evaluate_video(
    reenactor, path, max_frames: int, light: str, max_stream: int, expression: str, pose_mode: str
) -> tuple[dict, list]:
    from jr2net.eval import baselines, metrics
    from jr2net.face.landmarks import detect_faces
    from jr2net.io.video import VideoReader
    from jr2net.pipeline.base import SessionOptions

    frames = VideoReader(path).read_all()
    start = next((i for i, f in enumerate(frames) if detect_faces(f)), None)
    if start is None:
        raise RuntimeError(f"{path.name}: no frame with a face")
    source = frames[start]
    src_det = detect_faces(source)[0]
    if max_stream > 0:
        frames = frames[: start + 1 + max_stream]
    later = list(range(start + 1, len(frames)))
    if 0 < max_frames < len(later):  # evenly spread over the streamed frames
        eval_ids = {later[int(k)] for k in np.linspace(0, len(later) - 1, max_frames).round()}
    else:
        eval_ids = set(later)
    session = reenactor.start_session(
        source,
        SessionOptions(pose_mode=pose_mode, extra={"light": light, "expression": expression}),
    )
    scores: dict[str, dict[str, list[float]]] = {
        m: {"psnr": [], "ssim": [], "l1": []} for m in METHODS
    }
    samples = []
    skipped = 0
    t_frames = []
    for i in range(start, len(frames)):
        t0 = time.perf_counter()
        res = session.process(frames[i])
        t_frames.append(time.perf_counter() - t0)
        if i not in eval_ids:
            continue
        gt = frames[i]
        dets = detect_faces(gt)
        if not dets or not res.face_found:
            skipped += 1
            continue
        gt_lmk = dets[0].landmarks
        mask = torch.from_numpy(hull_mask(gt_lmk, gt.shape[:2]))[None, None].float()
        outs = {
            "ours": res.image,
            "copy_source": baselines.copy_source(source, gt.shape),
            "similarity": baselines.similarity_warp(
                source, src_det.landmarks, gt_lmk, gt.shape[:2]
            ),
        }
        gt_t = _to_t(gt)
        for m, img in outs.items():
            img_t = _to_t(img) if isinstance(img, np.ndarray) else img
            scores[m]["psnr"].append(float(metrics.psnr(img_t, gt_t, mask=mask)[0]))
            scores[m]["ssim"].append(float(metrics.ssim(img_t, gt_t, mask=mask)[0]))
            scores[m]["l1"].append(float(metrics.l1(img_t, gt_t, mask=mask)[0]))
        samples.append((i, gt, outs))
    session.close()
    summary = {
        m: {k: statistics.mean(v) if v else float("nan") for k, v in s.items()}
        for m, s in scores.items()
    }
    summary["frames_evaluated"] = len(scores["ours"]["psnr"])
    summary["frames_skipped_no_face"] = skipped
    summary["source_frame"] = start
    summary["process_ms_median"] = 1e3 * statistics.median(t_frames)
    _side_by_side(path.stem, source, samples)
    return summary, samples


def _as_uint8(img) -> np.ndarray:
    if isinstance(img, np.ndarray):
        return img
    return (img[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _side_by_side(name: str, source: np.ndarray, samples: list, n: int = 4) -> None:
    """source | driving GT | ours | similarity baseline, one row per sampled frame."""
    if not samples:
        return
    pick = [samples[int(k)] for k in np.linspace(0, len(samples) - 1, min(n, len(samples)))]
    h, w = source.shape[:2]
    tile = 256
    th = int(round(h * tile / w))
    rows = []
    for _, gt, outs in pick:
        cells = [source, gt, _as_uint8(outs["ours"]), _as_uint8(outs["similarity"])]
        rows.append(
            np.concatenate([np.asarray(Image.fromarray(c).resize((tile, th))) for c in cells], 1)
        )
    sheet = Image.fromarray(np.concatenate(rows, 0))
    draw = ImageDraw.Draw(sheet)
    for k, label in enumerate(("source", "driving (GT)", "ours", "similarity warp")):
        draw.text((k * tile + 4, 4), label, fill=(255, 255, 0))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    sheet.save(RESULTS_DIR / f"quality_{name}.png")


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
    args = ap.parse_args(argv)

    from jr2net.paths import shared_path
    from jr2net.pipeline.geometric import GeometricReenactor

    reenactor = GeometricReenactor(args.face_model)
    vdir = shared_path("data", "videos")
    videos = sorted(vdir.glob("*.mp4")) if not args.videos else [vdir / v for v in args.videos]
    per_video = {}
    rows = []
    t0 = time.perf_counter()
    for path in videos:
        summary, _ = evaluate_video(
            reenactor,
            path,
            args.max_frames,
            args.light,
            args.max_stream,
            args.expression,
            args.pose_mode,
        )
        per_video[path.name] = summary
        for m in METHODS:
            rows.append(
                {
                    "video": path.name,
                    "method": m,
                    "PSNR": summary[m]["psnr"],
                    "SSIM": summary[m]["ssim"],
                    "L1": summary[m]["l1"],
                    "frames": summary["frames_evaluated"],
                }
            )
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
    print(
        f"runtime {time.perf_counter() - t0:.0f} s; side-by-sides in {RESULTS_DIR}/quality_<video>.png"
    )
    write_results(
        "quality",
        {
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
            "all_met": beat,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
