"""Reenactment evaluation (DESIGN §8): ours beside copy-source and the 2D similarity warp.

- **Same identity** (``evaluate_same_identity``): the first frame of a video with a face is the
  source; later frames (``max_frames`` of them, spread evenly) are driving frame and ground
  truth at once. Every frame is streamed through the session (the tracker sees the whole
  video); only the picked ones are scored. L1, PSNR and SSIM (``jr2net.eval.metrics``) over
  ``REGIONS``: the face box (the ground truth's 68 landmarks, 10 % margin), the mouth box
  (points 48-67, 25 % margin, >= 16 px), the full frame, and the landmarks' convex hull.
- **Cross identity** (``evaluate_cross_identity``): a source image driven by a whole video.
  EFL: RMSE of the generated frame's 68 landmarks against the driving frame's, each set centred
  on its mean and divided by its own inter-ocular distance (so the source's placement and size
  in its frame do not count, expression and head rotation do); ``efl_aligned`` is the same after
  the least-squares 2D similarity of the generated set onto the driving set (in-plane rotation
  removed: expression and face shape). Identity: Euclidean distance
  (dlib: < 0.6 is the same person) and cosine similarity of dlib's 128-D embeddings of the
  generated face and the source face. A generated frame with no detectable face counts in
  ``output_no_face`` and in neither average.

Frames whose driving frame has no detected face, or where ours fell back (no face tracked), are
skipped and counted. Images cross this module as uint8 ``[H, W, 3]`` (the pipeline contract).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from jr2net.eval import baselines, metrics

__all__ = [
    "METHODS",
    "REGIONS",
    "IMAGE_METRICS",
    "spread",
    "hull_mask",
    "region_boxes",
    "image_scores",
    "normalised_landmarks",
    "aligned",
    "SameIdentityResult",
    "evaluate_same_identity",
    "evaluate_cross_identity",
    "contact_sheet",
    "format_table",
]

METHODS = ("ours", "copy_source", "similarity_warp")
REGIONS = ("face_box", "mouth_box", "full", "face_hull")
IMAGE_METRICS = ("l1", "psnr", "ssim")
CROSS_METRICS = ("efl", "efl_aligned", "id_distance", "id_cosine")
MOUTH = slice(48, 68)


def spread(ids: Sequence[int], k: int) -> list[int]:
    """``k`` items of ``ids`` evenly spread, first and last included (all when ``k`` <= 0)."""
    ids = list(ids)
    if k <= 0 or k >= len(ids):
        return ids
    return sorted({ids[int(j)] for j in np.linspace(0, len(ids) - 1, k).round()})


def hull_mask(landmarks: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Binary mask ``[H, W]`` of the convex hull of 2D landmarks."""
    from PIL import Image, ImageDraw
    from scipy.spatial import ConvexHull

    hull = landmarks[ConvexHull(landmarks).vertices]
    pil = Image.new("L", (hw[1], hw[0]), 0)
    ImageDraw.Draw(pil).polygon([tuple(p) for p in hull.tolist()], fill=255)
    return np.asarray(pil) > 0


def _box(pts: np.ndarray, margin: float, min_side: int, hw: tuple[int, int]) -> tuple[int, ...]:
    h, w = hw
    (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    bw = max((x1 - x0) * (1 + 2 * margin), min_side)
    bh = max((y1 - y0) * (1 + 2 * margin), min_side)
    bx0 = int(np.clip(round(cx - bw / 2), 0, max(w - min_side, 0)))
    by0 = int(np.clip(round(cy - bh / 2), 0, max(h - min_side, 0)))
    return (
        bx0,
        by0,
        int(min(w, max(bx0 + min_side, round(cx + bw / 2)))),
        int(min(h, max(by0 + min_side, round(cy + bh / 2)))),
    )


def region_boxes(landmarks: np.ndarray, hw: tuple[int, int]) -> dict[str, tuple[int, ...]]:
    """``(x0, y0, x1, y1)`` pixel boxes (end-exclusive) of the rectangular regions."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"landmarks must be [68, 2], got {list(lm.shape)}")
    return {
        "face_box": _box(lm, 0.10, 32, hw),
        "mouth_box": _box(lm[MOUTH], 0.25, 16, hw),
        "full": (0, 0, int(hw[1]), int(hw[0])),
    }


def image_scores(
    pred: np.ndarray, target: np.ndarray, landmarks: np.ndarray, regions: Sequence[str] = REGIONS
) -> dict[str, dict[str, float]]:
    """``{region: {l1, psnr, ssim}}`` of ``pred`` against ``target`` (same-size uint8 images)
    over the regions of the target's ``landmarks``."""
    from jr2net.io.images import to_tensor

    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} differ in size")
    p, t = to_tensor(pred), to_tensor(target)
    boxes = region_boxes(landmarks, target.shape[:2])
    out = {}
    for region in regions:
        if region == "face_hull":
            mask = torch.from_numpy(hull_mask(landmarks, target.shape[:2]))[None, None].float()
            pc, tc, m = p, t, mask
        elif region in boxes:
            x0, y0, x1, y1 = boxes[region]
            pc, tc, m = p[..., y0:y1, x0:x1], t[..., y0:y1, x0:x1], None
        else:
            raise ValueError(f"unknown region {region!r}; one of {REGIONS}")
        out[region] = {
            "l1": float(metrics.l1(pc, tc, mask=m)[0]),
            "psnr": float(metrics.psnr(pc, tc, mask=m)[0]),
            "ssim": float(metrics.ssim(pc, tc, mask=m)[0]),
        }
    return out


def normalised_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """68 landmarks centred on their mean and divided by their inter-ocular distance."""
    from jr2net.face.landmarks import interocular_distance

    lm = np.asarray(landmarks, dtype=np.float64)
    return (lm - lm.mean(0)) / max(interocular_distance(lm), 1e-9)


def aligned(landmarks: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``landmarks`` moved by the least-squares 2D similarity onto ``target`` (pose removed)."""
    from jr2net.eval.geometry import apply_similarity, similarity_align

    return apply_similarity(landmarks, similarity_align(landmarks, target))


def _mean(values: list[float]) -> float:
    return statistics.mean(values) if values else float("nan")


def _frames(path: Path) -> tuple[Iterable[np.ndarray], int]:
    from jr2net.io.video import VideoReader

    reader = VideoReader(path)  # FileNotFoundError / VideoError (corrupt) here
    return iter(reader), int(reader.frame_count or 0)


@dataclass
class SameIdentityResult:
    """One video's same-identity evaluation."""

    summary: dict
    source: np.ndarray  # the source frame
    source_detection: object  # its FaceDetection
    rows: list[tuple[np.ndarray, dict[str, np.ndarray]]] = field(default_factory=list)  # sheet
    features: dict[str, list[np.ndarray]] = field(default_factory=dict)  # FID: method -> [D]s
    stream: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (driving, ours)


def evaluate_same_identity(
    reenactor,
    video: str | Path,
    options,
    max_frames: int = 30,
    regions: Sequence[str] = REGIONS,
    max_stream: int = 0,
    sheet_rows: int = 4,
    extractor: Callable | None = None,
    progress: bool = False,
    keep_stream: int = 0,
) -> SameIdentityResult:
    """Same-identity scores of one video (module docstring). ``max_stream`` > 0 streams only
    that many frames after the source; the first ``keep_stream`` (driving, ours) pairs are kept
    in ``result.stream`` (for temporal metrics). Raises NoFaceError when no frame has a face, VideoError
    for a file that cannot be decoded."""
    from tqdm import tqdm

    from jr2net.errors import NoFaceError
    from jr2net.face.landmarks import detect_faces

    video = Path(video)
    frames, total = _frames(video)
    start = source = src_det = None
    for i, frame in enumerate(frames):
        dets = detect_faces(frame)
        if dets:
            start, source, src_det = i, frame, dets[0]
            break
    if start is None:
        raise NoFaceError(f"{video.name}: no frame with a face")
    end = total if max_stream <= 0 else min(total, start + 1 + max_stream)
    eval_ids = set(spread(range(start + 1, end), max_frames))
    sheet_ids = set(spread(sorted(eval_ids), sheet_rows))
    scores = {m: {r: {k: [] for k in IMAGE_METRICS} for r in regions} for m in METHODS}
    result = SameIdentityResult({}, source, src_det)
    if extractor is not None:
        result.features = {m: [] for m in ("real", *METHODS)}
    skipped_gt = skipped_fallback = 0
    times = []
    session = reenactor.start_session(source, options)
    bar = tqdm(total=max(end - start, 0), desc=video.name, unit="frame", disable=not progress)
    try:
        times.append(_timed(session, source)[1])
        bar.update(1)
        for i, frame in enumerate(frames, start + 1):
            if i >= end:
                break
            res, dt = _timed(session, frame)
            times.append(dt)
            bar.update(1)
            if len(result.stream) < keep_stream:
                result.stream.append((frame, res.image))
            if i not in eval_ids:
                continue
            dets = detect_faces(frame)
            if not dets:
                skipped_gt += 1
                continue
            if not res.face_found:
                skipped_fallback += 1
                continue
            gt_lmk = dets[0].landmarks
            outs = {
                "ours": res.image,
                "copy_source": baselines.copy_source(source, frame.shape),
                "similarity_warp": baselines.similarity_warp(
                    source, src_det.landmarks, gt_lmk, frame.shape[:2]
                ),
            }
            for m, img in outs.items():
                for r, vals in image_scores(img, frame, gt_lmk, regions).items():
                    for k, v in vals.items():
                        scores[m][r][k].append(v)
            if extractor is not None:
                feats = extractor([frame, *outs.values()], [gt_lmk] * (1 + len(outs)))
                for m, f in zip(("real", *METHODS), feats, strict=True):
                    result.features[m].append(np.asarray(f))
            if i in sheet_ids:
                result.rows.append((frame, outs))
    finally:
        bar.close()
        session.close()
    result.summary = {
        "source_frame": start,
        "frames_streamed": len(times),
        "frames_evaluated": len(scores["ours"][regions[0]]["l1"]) if regions else 0,
        "frames_skipped_no_face": skipped_gt,
        "frames_skipped_fallback": skipped_fallback,
        "process_ms_median": 1e3 * statistics.median(times),
        "methods": {
            m: {r: {k: _mean(v) for k, v in per.items()} for r, per in s.items()}
            for m, s in scores.items()
        },
    }
    return result


def _timed(session, frame: np.ndarray):
    t0 = time.perf_counter()
    res = session.process(frame)
    return res, time.perf_counter() - t0


def evaluate_cross_identity(
    reenactor,
    source: np.ndarray,
    source_detection,
    video: str | Path,
    options,
    max_frames: int = 30,
    progress: bool = False,
    source_embedding: np.ndarray | None = None,
) -> tuple[dict, tuple[np.ndarray, dict[str, np.ndarray]] | None]:
    """Cross-identity scores of ``source`` driven by ``video`` (module docstring); also one
    (driving frame, outputs) sample from the middle of the evaluated frames, for a sheet."""
    from tqdm import tqdm

    from jr2net.face.landmarks import detect_faces, face_embedding

    video = Path(video)
    frames, total = _frames(video)
    eval_ids = spread(range(total), max_frames)
    sample_id = eval_ids[len(eval_ids) // 2] if eval_ids else -1
    eval_set = set(eval_ids)
    src_emb = source_embedding
    if src_emb is None:
        src_emb = face_embedding(source, source_detection)
    vals = {m: {k: [] for k in CROSS_METRICS} for m in METHODS}
    no_face = dict.fromkeys(METHODS, 0)
    skipped_gt = skipped_fallback = streamed = evaluated = 0
    sample = None
    session = reenactor.start_session(source, options)
    bar = tqdm(total=total or None, desc=video.name, unit="frame", disable=not progress)
    try:
        for i, frame in enumerate(frames):
            res = session.process(frame)
            streamed += 1
            bar.update(1)
            if i not in eval_set:
                continue
            dets = detect_faces(frame)
            if not dets:
                skipped_gt += 1
                continue
            if not res.face_found:
                skipped_fallback += 1
                continue
            evaluated += 1
            drv = normalised_landmarks(dets[0].landmarks)
            outs = {
                "ours": res.image,
                "copy_source": baselines.copy_source(source, source.shape),
                "similarity_warp": baselines.similarity_warp(
                    source, source_detection.landmarks, dets[0].landmarks, frame.shape[:2]
                ),
            }
            for m, img in outs.items():
                found = detect_faces(img)
                if not found:
                    no_face[m] += 1
                    continue
                gen = normalised_landmarks(found[0].landmarks)
                vals[m]["efl"].append(float(metrics.landmark_rmse(gen, drv)[0]))
                vals[m]["efl_aligned"].append(
                    float(metrics.landmark_rmse(aligned(gen, drv), drv)[0])
                )
                emb = face_embedding(img, found[0])
                vals[m]["id_distance"].append(float(np.linalg.norm(emb - src_emb)))
                vals[m]["id_cosine"].append(float(metrics.identity_cosine(emb, src_emb)[0]))
            if sample is None or i == sample_id:
                sample = (frame, outs)
    finally:
        bar.close()
        session.close()
    summary = {
        "frames_streamed": streamed,
        "frames_evaluated": evaluated,
        "frames_skipped_no_face": skipped_gt,
        "frames_skipped_fallback": skipped_fallback,
        "methods": {
            m: {**{k: _mean(v) for k, v in vals[m].items()}, "output_no_face": no_face[m]}
            for m in METHODS
        },
    }
    return summary, sample


# ---------------------------------------------------------------------------------------------
# Presentation


def contact_sheet(
    rows: Sequence[Sequence[np.ndarray]], labels: Sequence[str], tile_height: int = 192
) -> np.ndarray:
    """A grid image: one row per sequence of images (each resized to ``tile_height``, width by
    aspect, centred in its column), the column ``labels`` in a header strip."""
    from PIL import Image, ImageDraw

    if not rows:
        raise ValueError("contact_sheet: no rows")
    ncol = max(len(r) for r in rows)

    def fit(img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        size = (max(1, round(w * tile_height / h)), tile_height)
        return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BILINEAR))

    cells = [[fit(img) for img in r] for r in rows]
    widths = [max((r[c].shape[1] for r in cells if c < len(r)), default=1) for c in range(ncol)]
    header = 18
    sheet = np.full((header + tile_height * len(rows), sum(widths), 3), 24, np.uint8)
    for y, r in enumerate(cells):
        x = 0
        for c, img in enumerate(r):
            off = x + (widths[c] - img.shape[1]) // 2
            top = header + y * tile_height
            sheet[top : top + tile_height, off : off + img.shape[1]] = img
            x += widths[c]
    pil = Image.fromarray(sheet)
    draw = ImageDraw.Draw(pil)
    x = 0
    for c, label in enumerate(labels[:ncol]):
        draw.text((x + 4, 3), label, fill=(255, 255, 0))
        x += widths[c]
    return np.asarray(pil)


def format_table(rows: Sequence[dict], columns: Sequence[str], title: str = "") -> str:
    """Rows as an aligned text table (floats to 3 decimals)."""

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 1e4 else f"{v:.3g}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = [title] if title else []
    lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)
