"""``jr2net eval reenact``: every video of a folder, same identity and cross identity, baselines
beside ours, an optional FID, contact sheets and ``metrics.json`` (docs/evaluation.md).

Inputs are found, and refused with a clear error, here: a missing folder raises
FileNotFoundError, one with no video (or image) ValueError; a video that cannot be decoded or has
no face, and a source image that cannot be read or has no face, are skipped and listed in
``skipped`` with the reason.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from jr2net.eval.reenact_eval import (
    CROSS_METRICS,
    IMAGE_METRICS,
    METHODS,
    REGIONS,
    contact_sheet,
    evaluate_cross_identity,
    evaluate_same_identity,
    format_table,
)

__all__ = ["VIDEO_SUFFIXES", "IMAGE_SUFFIXES", "find_files", "run_reenact_eval", "tables"]

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
LABELS = {"ours": "ours", "copy_source": "copy-source", "similarity_warp": "similarity warp"}


def find_files(folder: str | Path, suffixes: tuple[str, ...], what: str) -> list[Path]:
    """The files of ``folder`` with one of ``suffixes`` (sorted); FileNotFoundError for a missing
    folder, ValueError for one without any."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise ValueError(f"{what} folder {folder} has no {what} ({', '.join(suffixes)})")
    return files


def _mean_over(items: list[dict], *keys: str) -> float:
    vals = []
    for it in items:
        for k in keys:
            it = it[k]
        if isinstance(it, float) and not math.isnan(it):
            vals.append(it)
    return float(np.mean(vals)) if vals else float("nan")


def _load_sources(folder: Path, skipped: list[dict]) -> list[tuple[str, np.ndarray, object]]:
    from jr2net.errors import InvalidImageError
    from jr2net.face.landmarks import detect_faces
    from jr2net.io.images import load_image

    sources = []
    for path in find_files(folder, IMAGE_SUFFIXES, "source images"):
        try:
            img = load_image(path)
        except (InvalidImageError, OSError) as exc:
            skipped.append({"file": path.name, "part": "source", "reason": str(exc)})
            continue
        dets = detect_faces(img)
        if not dets:
            skipped.append({"file": path.name, "part": "source", "reason": "no face"})
            continue
        sources.append((path.name, img, dets[0]))
    return sources


def run_reenact_eval(
    reenactor,
    videos: str | Path,
    out: str | Path,
    options,
    sources: str | Path | None = None,
    max_frames: int = 30,
    cross: bool = True,
    extractor=None,
    extractor_name: str = "",
    progress: bool = True,
) -> dict:
    """Evaluate every video of ``videos``; writes ``out/metrics.json`` and the contact sheets
    ``out/sheet_<video>.png`` (same identity) and ``out/cross_<video>.png``; returns the metrics.
    """
    from tqdm import tqdm

    from jr2net.errors import NoFaceError, VideoError
    from jr2net.face.landmarks import FaceDetection, face_embedding
    from jr2net.io.images import save_image

    video_files = find_files(videos, VIDEO_SUFFIXES, "videos")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    skipped: list[dict] = []
    source_images = None
    if sources is not None and cross:
        source_images = _load_sources(Path(sources), skipped)
    if source_images is not None and not source_images and cross:
        raise ValueError(f"no usable source image (with a face) in {sources}")

    same: dict[str, dict] = {}
    firsts: dict[str, tuple[np.ndarray, FaceDetection]] = {}
    features: dict[str, list[np.ndarray]] = {m: [] for m in ("real", *METHODS)}
    for path in tqdm(video_files, desc="same identity", unit="video", disable=not progress):
        try:
            res = evaluate_same_identity(
                reenactor, path, options, max_frames=max_frames, extractor=extractor,
                progress=progress,
            )  # fmt: skip
        except (NoFaceError, VideoError, FileNotFoundError) as exc:
            reason = "no face" if isinstance(exc, NoFaceError) else str(exc)
            skipped.append({"file": path.name, "part": "video", "reason": reason})
            continue
        same[path.name] = res.summary
        firsts[path.name] = (res.source, res.source_detection)
        for m, f in res.features.items():
            features[m] += f
        if res.rows:
            rows = [[res.source, gt, *(outs[m] for m in METHODS)] for gt, outs in res.rows]
            labels = ["source", "driving (GT)", *(LABELS[m] for m in METHODS)]
            save_image(out / f"sheet_{path.stem}.png", contact_sheet(rows, labels))
    if not same:
        raise ValueError(
            f"no video in {videos} could be evaluated: "
            + "; ".join(f"{s['file']}: {s['reason']}" for s in skipped)
        )

    pairs: list[dict] = []
    if cross:
        if source_images is None:  # the first face frame of every other video
            cands = [(name, img, det) for name, (img, det) in firsts.items()]
        else:
            cands = source_images
        embedded = {name: (img, det, face_embedding(img, det)) for name, img, det in cands}
        sheets: dict[str, list] = {}
        jobs = [(s, v) for v in same for s in embedded if s != v]
        for src_name, vname in tqdm(jobs, desc="cross identity", unit="pair", disable=not progress):
            img, det, emb = embedded[src_name]
            try:
                summary, sample = evaluate_cross_identity(
                    reenactor, img, det, Path(videos) / vname, options, max_frames=max_frames,
                    source_embedding=emb,
                )  # fmt: skip
            except (NoFaceError, VideoError) as exc:  # a source the pipeline refuses, a bad file
                skipped.append(
                    {"file": f"{src_name} x {vname}", "part": "pair", "reason": str(exc)}
                )
                continue
            pairs.append({"source": src_name, "video": vname, **summary})
            if sample is not None:
                drv, outs = sample
                sheets.setdefault(vname, []).append([img, drv, *(outs[m] for m in METHODS)])
        for vname, rows in sheets.items():
            labels = ["source", "driving", *(LABELS[m] for m in METHODS)]
            save_image(out / f"cross_{Path(vname).stem}.png", contact_sheet(rows, labels))

    metrics = {
        "reenactor": getattr(reenactor, "name", type(reenactor).__name__),
        "videos_dir": str(videos),
        "sources": str(sources) if sources is not None else "first face frame of the other videos",
        "max_frames": max_frames,
        "pose_mode": options.pose_mode,
        "options": dict(options.extra),
        "regions": list(REGIONS),
        "same_identity": {
            "per_video": same,
            "mean_over_videos": {
                m: {
                    r: {
                        k: _mean_over(list(same.values()), "methods", m, r, k)
                        for k in IMAGE_METRICS
                    }
                    for r in REGIONS
                }
                for m in METHODS
            },
        },
        "cross_identity": {
            "pairs": pairs,
            "mean_over_pairs": {
                m: {k: _mean_over(pairs, "methods", m, k) for k in CROSS_METRICS}
                | {"output_no_face": int(sum(p["methods"][m]["output_no_face"] for p in pairs))}
                for m in METHODS
            },
        }
        if cross
        else None,
        "fid": _fid(features, extractor_name) if extractor is not None else None,
        "skipped": skipped,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    return metrics


def _fid(features: dict[str, list[np.ndarray]], name: str) -> dict:
    from jr2net.eval.fid import fid_from_features

    real = np.stack(features["real"]) if len(features["real"]) >= 2 else None
    out: dict = {
        "extractor": name,
        "real_frames": len(features["real"]),
        "note": "Frechet distance on this extractor's features, not Inception FID",
    }
    for m in METHODS:
        if real is None or len(features[m]) < 2:
            out[m] = float("nan")
        else:
            out[m] = fid_from_features(real, np.stack(features[m]))
    return out


def tables(metrics: dict) -> str:
    """The printed summary: same identity per video and region, cross identity, FID."""
    rows = []
    same = metrics["same_identity"]
    for video, s in [*same["per_video"].items(), ("mean over videos", None)]:
        for m in METHODS:
            src = s["methods"][m] if s is not None else same["mean_over_videos"][m]
            row = {"video": video, "method": m, "frames": s["frames_evaluated"] if s else ""}
            for r, short in (("face_box", "face"), ("mouth_box", "mouth"), ("full", "full")):
                row[f"{short} PSNR"] = src[r]["psnr"]
                row[f"{short} SSIM"] = src[r]["ssim"]
                row[f"{short} L1"] = src[r]["l1"]
            rows.append(row)
    cols = ["video", "method", "frames"] + [
        f"{r} {k}" for r in ("face", "mouth", "full") for k in ("PSNR", "SSIM", "L1")
    ]
    text = [format_table(rows, cols, "same identity (regions of the ground-truth landmarks)")]
    cross = metrics.get("cross_identity")
    if cross is not None:
        crow = [
            {"method": m, "pairs": len(cross["pairs"]), **cross["mean_over_pairs"][m]}
            for m in METHODS
        ]
        text.append(format_table(
            crow,
            ["method", "pairs", *CROSS_METRICS, "output_no_face"],
            "\ncross identity (mean over source x video pairs; EFL: normalised 68-landmark RMSE)",
        ))  # fmt: skip
    fid = metrics.get("fid")
    if fid is not None:
        text.append(format_table(
            [{"method": m, "fid": fid[m]} for m in METHODS], ["method", "fid"],
            f"\nFrechet distance to the ground-truth frames ({fid['extractor']}; not Inception FID,"
            f" {fid['real_frames']} frames)",
        ))  # fmt: skip
    if metrics["skipped"]:
        text.append(
            "\nskipped: " + "; ".join(f"{s['file']} ({s['reason']})" for s in metrics["skipped"])
        )
    return "\n".join(text)
