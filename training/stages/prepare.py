"""The ``prepare`` stage: face boxes, dlib landmarks, crops, masks and fitter pseudo-labels, cached.

Sources (``DataConfig``): the shared videos and photos (``jr2net.paths.shared_path``), video
folders (plain trees, VoxCeleb2) and image folders (300W-LP, CelebA, LS3D-W, plain). Each video is
one shard; an image folder is cut into shards of ``prepare.shard_size`` images; the shared photos
are one shard. Layout of the cache: ``training.data.cache``.

Per video: frames are read in order (the first ``max_frames``) and every ``video_stride``-th is
kept; until a face appears, each kept frame runs dlib's detector; on the first face the
``SourceFitter`` (photometric) fits it once, and from then on a ``DrivingFitter`` with that
identity tracks and fits (pose + expression, ~8 ms, warm-started from the previous fitted frame)
the kept frames, or every frame with ``track_every_frame``. A kept frame carries the source
fit's albedo and light. Per image: the annotation's 68
landmarks when the layout has all of them, else dlib's largest face, then ``SourceFitter``.

Kept samples get the crop box ``face_crop_box(landmarks)`` and a crop at ``cache_size``; the mask
is the pseudo-label's rendered face-region mask intersected with the landmark skin outline
(``mask: render``), or the outline alone (``mask: polygon``). Counted and skipped, never raised:
frames/images without a face (``no_face``), undecodable images (``corrupt``), fits with a landmark
residual above ``max_residual_iod`` or an inter-ocular distance under ``min_face_px``
(``rejected``). The split (``training.data.video.split_of``) is stored per sample.

Resumable: a shard whose ``meta.json`` carries the same hash (cache version, prepare config,
split settings, face model, the source's files with sizes and mtimes) is reused as is.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import cache
from ..data.config import DataConfig, PrepareConfig
from ..data.images import ImageFolder, ImageItem, rescaled
from ..data.sample import coeff_tensors, crop_image, crop_points, face_crop_box
from ..data.video import VideoItem, list_videos, sampled, split_of
from .base import Stage, register_stage

log = logging.getLogger("jr2net.training")

COUNT_KEYS = ("seen", "faces", "no_face", "corrupt", "rejected")
SPARSE_DRIVING_ITERATIONS = 8


@dataclass
class Source:
    """One shard's worth of input: a video, or a list of images of one folder."""

    name: str
    kind: str  # "video" | "images"
    video: VideoItem | None = None
    folder: ImageFolder | None = None
    indices: list[int] = field(default_factory=list)  # images of ``folder`` in this shard

    def files(self) -> list[Path]:
        if self.video is not None:
            p = self.video.path
            return sorted(p.iterdir()) if self.video.kind == "frames" else [p]
        assert self.folder is not None
        items = [self.folder.items[i] for i in self.indices]
        labels = [it.path.with_suffix(s) for it in items for s in (".mat", ".t7")]
        return [it.path for it in items] + [p for p in labels if p.exists()]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80] or "x"


def _tag(root: Path) -> str:
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:6]
    return f"{_slug(root.name)}-{digest}"


def _matches(stem: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(stem, p) for p in patterns)


def list_sources(cfg: DataConfig, prep: PrepareConfig) -> list[Source]:
    """Every shard-sized source the config names, in a fixed order. Missing or empty folders
    raise FileNotFoundError / ValueError naming the path."""
    from jr2net.paths import shared_path

    sources: list[Source] = []
    if cfg.shared_videos:
        for item in list_videos(shared_path("data", "videos"), "plain"):
            if _matches(item.name, cfg.shared_videos):
                sources.append(Source(f"shared-video-{_slug(item.name)}", "video", video=item))
    if cfg.shared_photos:
        folder = ImageFolder(shared_path("data", "images"), "plain", max_side=prep.image_max_side)
        keep = [i for i, it in enumerate(folder.items) if _matches(it.name, cfg.shared_photos)]
        if keep:
            sources.append(Source("shared-photos", "images", folder=folder, indices=keep))
    for root in map(Path, cfg.video_dirs):
        tag = _tag(root)
        for item in list_videos(root):
            sources.append(Source(f"video-{tag}-{_slug(item.name)}", "video", video=item))
    for root in map(Path, cfg.image_dirs):
        folder = ImageFolder(root, max_images=prep.max_images, max_side=prep.image_max_side)
        tag = _tag(root)
        n = len(folder)
        for k, start in enumerate(range(0, n, prep.shard_size)):
            idx = list(range(start, min(n, start + prep.shard_size)))
            sources.append(Source(f"images-{tag}-{k:05d}", "images", folder=folder, indices=idx))
    return sources


def source_hash(src: Source, cfg: DataConfig, prep: PrepareConfig, model_sha: str) -> str:
    """What a shard depends on: a change of any of it re-prepares the shard."""
    files = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in src.files()]
    key = {
        "version": cache.CACHE_VERSION,
        "prepare": asdict(prep),
        "heldout": sorted(cfg.heldout_identities),
        "tail": cfg.heldout_tail,
        "model": model_sha,
        "name": src.name,
        "files": files,
        "layout": None if src.folder is None else src.folder.layout,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


class _Builder:
    """Accumulates one shard's samples (crop, mask, labels) from fits."""

    def __init__(self, model, prep: PrepareConfig, heldout: list[str], tail: float) -> None:
        from jr2net.face.renderer import FaceRenderer

        self.model, self.prep, self.heldout, self.tail = model, prep, heldout, tail
        self.face = model.subset(["face"]) if "face" in model.region_names else model
        self.renderer = FaceRenderer(self.face)
        self.crops: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.rows: dict[str, list[Any]] = {k: [] for k in cache.LABEL_KEYS}
        self.counts = dict.fromkeys(COUNT_KEYS, 0)

    def add(
        self,
        image: np.ndarray,
        res,
        *,
        landmarks: np.ndarray,
        weight: np.ndarray,
        identity: str,
        name: str,
        frame_index: int,
        n_frames: int,
        split: str,
        source_fit: bool,
        appearance=None,
    ) -> bool:
        """Add one fitted face; False (counted as rejected) when the fit is unusable."""
        from jr2net.face.camera import crop_intrinsics
        from jr2net.face.landmarks import interocular_distance
        from jr2net.face.synthetic import polygon_mask, skin_outline

        lm = np.asarray(landmarks, dtype=np.float32)
        if (
            not np.isfinite(res.residual_iod)
            or res.residual_iod > self.prep.max_residual_iod
            or interocular_distance(lm) < self.prep.min_face_px
        ):
            self.counts["rejected"] += 1
            return False
        C = self.prep.cache_size
        box = face_crop_box(lm)
        coeffs = res.coeffs
        if appearance is not None:  # a driving frame: its video's source albedo and light
            coeffs = coeffs.replace(albedo=appearance.albedo, light=appearance.light)
        Kc = crop_intrinsics(res.K, box, C)
        mask = polygon_mask(skin_outline(crop_points(lm, box, C)), (C, C))
        if self.prep.mask == "render":
            with torch.inference_mode():
                out = self.renderer.render(coeffs, Kc, (C, C))
            mask &= out.face_mask[0, 0].numpy() > 0.5
        self.crops.append(crop_image(image, box, C))
        self.masks.append(mask.astype(np.uint8) * 255)
        c = coeff_tensors(coeffs, self.model.n_identity, self.model.n_albedo)
        row = {
            "face_box": np.asarray(res.detection.box, dtype=np.float32),
            "crop_box": np.asarray(box, dtype=np.float32),
            "landmarks": lm,
            "landmark_weight": np.asarray(weight, dtype=np.float32),
            "K": res.K[0].numpy().astype(np.float32),
            "image_size": np.asarray(image.shape[:2], dtype=np.int32),
            **{k: v.numpy() for k, v in c.items()},
            "residual_iod": np.float32(res.residual_iod),
            "source_fit": bool(source_fit),
            "frame_index": np.int32(frame_index),
            "n_frames": np.int32(n_frames),
            "split": split,
            "subject": identity,
            "name": name,
        }
        for k in cache.LABEL_KEYS:
            self.rows[k].append(row[k])
        self.counts["faces"] += 1
        return True

    def arrays(self) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        C = self.prep.cache_size
        crops = np.stack(self.crops) if self.crops else np.zeros((0, C, C, 3), np.uint8)
        masks = np.stack(self.masks) if self.masks else np.zeros((0, C, C), np.uint8)
        labels = {}
        for k, v in self.rows.items():
            if k in ("split", "subject", "name"):
                labels[k] = np.array(v, dtype=str)
            elif v:
                labels[k] = np.stack([np.asarray(x) for x in v])
            else:
                labels[k] = np.zeros((0,), np.float32)
        return crops, masks, labels


def _prepare_video(src: Source, b: _Builder, fitters: dict, progress: bool) -> None:
    from jr2net.errors import VideoError

    item = src.video
    assert item is not None
    try:
        n_frames = item.frame_count()
        if b.prep.max_frames:
            n_frames = min(n_frames, b.prep.max_frames)
        bar = _bar(n_frames, src.name, progress)
        try:
            _track_video(item, n_frames, b, fitters, bar)
        finally:
            bar.close()
    except VideoError as exc:  # unreadable or broken mid-way: keep what was read, count it
        log.warning("skipping the rest of a corrupt video: %s", exc)
        b.counts["corrupt"] += 1


def _track_video(item: VideoItem, n_frames: int, b: _Builder, fitters: dict, bar) -> None:
    from jr2net.errors import NoFaceError
    from jr2net.face.fitting import DrivingFitter
    from jr2net.face.landmarks import detect_faces

    prep = b.prep
    drv = None
    source_res = None
    for i, frame in item.frames(prep.max_frames):
        bar.update(1)
        if i >= n_frames:  # the container under-reported its frame count
            break
        keep = sampled(i, prep.video_stride)
        if not keep and not (prep.track_every_frame and drv is not None):
            continue
        b.counts["seen"] += int(keep)
        if frame is None:  # an extracted frame that does not decode
            b.counts["corrupt"] += int(keep)
            continue
        is_source = False
        if drv is None:
            dets = detect_faces(frame)
            if not dets:
                b.counts["no_face"] += int(keep)
                continue
            try:
                res = source_res = fitters["source"].fit(frame, dets[0])
            except (NoFaceError, ValueError) as exc:
                log.warning("%s frame %d: source fit failed (%s)", item.name, i, exc)
                b.counts["rejected"] += int(keep)
                continue
            # Warm starts from a frame `stride` frames back need more iterations to converge.
            iterations = 3 if prep.track_every_frame else SPARSE_DRIVING_ITERATIONS
            drv = DrivingFitter(
                b.model, identity=source_res.coeffs.identity, iterations=iterations
            )
            drv.fit(frame)  # starts the tracker on this frame
            is_source = True
        else:
            res = drv.fit(frame)
        if not keep:
            continue
        if res is None:
            b.counts["no_face"] += 1
            continue
        b.add(
            frame,
            res,
            landmarks=res.detection.landmarks,
            weight=np.ones(68, np.float32),
            identity=item.identity,
            name=item.name,
            frame_index=i,
            n_frames=n_frames,
            split=split_of(item.identity, i, n_frames, b.heldout, b.tail),
            source_fit=is_source,
            appearance=None if is_source else source_res.coeffs,
        )


def _detection_for(item: ImageItem, image: np.ndarray):
    """The face to fit: the annotation when it has all 68 points, else dlib's largest face (the
    one nearest the annotated points when there are some); None when there is no face."""
    from jr2net.face.landmarks import FaceDetection, box_from_landmarks, detect_faces

    if item.landmarks is not None and item.weight is not None and (item.weight > 0).all():
        return FaceDetection(box_from_landmarks(item.landmarks), item.landmarks, 1.0), "annotation"
    dets = detect_faces(image)
    if not dets:
        return None, None
    if item.landmarks is not None and item.weight is not None and (item.weight > 0).any():
        on = item.weight > 0
        dets.sort(key=lambda d: float(np.abs(d.landmarks[on] - item.landmarks[on]).mean()))
    return dets[0], "dlib"


def _prepare_images(src: Source, b: _Builder, fitters: dict, progress: bool) -> None:
    from jr2net.errors import NoFaceError

    folder = src.folder
    assert folder is not None
    bar = _bar(len(src.indices), src.name, progress)
    for i in src.indices:
        bar.update(1)
        b.counts["seen"] += 1
        image = folder.load(i)
        if image is None:
            b.counts["corrupt"] += 1
            continue
        item = rescaled(folder.items[i], image)
        det, _ = _detection_for(item, image)
        if det is None:
            b.counts["no_face"] += 1
            continue
        try:
            res = fitters["source"].fit(image, det)
        except (NoFaceError, ValueError) as exc:
            log.warning("%s: fit failed (%s)", item.path, exc)
            b.counts["rejected"] += 1
            continue
        b.add(
            image,
            res,
            landmarks=det.landmarks,
            weight=np.ones(68, np.float32),
            identity=item.identity,
            name=item.name,
            frame_index=0,
            n_frames=1,
            split=split_of(item.identity, 0, 1, b.heldout, 0.0),
            source_fit=True,
        )
    bar.close()


def _bar(total: int, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False, disable=not progress)


def run_prepare(
    cfg_data: DataConfig,
    out_dir: str | Path,
    progress: bool = True,
    *,
    prepare: PrepareConfig | None = None,
    model=None,
    rank: int = 0,
    world_size: int = 1,
    write_index: bool = True,
) -> dict[str, Any]:
    """Prepare every configured source into ``out_dir`` (the stage folder, ``RUN/prepare``) and
    return the summary (also written to ``out_dir/summary.json``). Under ``world_size``
    processes, rank ``r`` prepares sources ``r, r+W, ...``; only the caller that passes
    ``write_index`` (after every rank finished) writes the index and summary."""
    from jr2net.face.fitting import SourceFitter
    from jr2net.face.model import load_face_model

    t0 = time.perf_counter()
    prep = prepare or PrepareConfig()
    model = load_face_model(None) if model is None else model
    out_dir = Path(out_dir)
    sources = list_sources(cfg_data, prep)
    fitters: dict[str, Any] = {}
    reused = 0
    from tqdm import tqdm

    mine = [src for k, src in enumerate(sources) if k % world_size == rank]
    for src in tqdm(mine, desc="prepare", unit="source", disable=not progress):
        h = source_hash(src, cfg_data, prep, model.sha256)
        folder = cache.shard_dir(out_dir, src.name)
        meta = cache.read_meta(folder)
        if meta is not None and meta.get("hash") == h:
            reused += 1
            continue
        if "source" not in fitters:
            fitters["source"] = SourceFitter(model, photometric=prep.photometric)
        t_src = time.perf_counter()
        b = _Builder(model, prep, list(cfg_data.heldout_identities), cfg_data.heldout_tail)
        (_prepare_video if src.kind == "video" else _prepare_images)(src, b, fitters, progress)
        crops, masks, labels = b.arrays()
        seconds = time.perf_counter() - t_src
        meta = {"hash": h, "name": src.name, "kind": src.kind, "counts": b.counts, "seconds": seconds}
        cache.write_shard(folder, crops, masks, labels, meta)
        log.info("prepared %s: %s in %.1f s", src.name, b.counts, seconds)
    if not write_index:
        return {"reused": reused}
    return _write_index(out_dir, sources, prep, model.sha256, reused, time.perf_counter() - t0)


def _write_index(
    out_dir: Path, sources: list[Source], prep: PrepareConfig, sha: str, reused: int, seconds: float
) -> dict[str, Any]:
    shards, totals, per_source = [], dict.fromkeys(COUNT_KEYS, 0), {}
    splits = {"train": 0, "heldout": 0}
    shard_seconds = 0.0
    for src in sources:
        folder = cache.shard_dir(out_dir, src.name)
        meta = cache.read_meta(folder)
        if meta is None:
            raise FileNotFoundError(f"prepare shard {folder} was not written")
        for k in COUNT_KEYS:
            totals[k] += int(meta["counts"][k])
        per_source[src.name] = meta["counts"]
        shard_seconds += float(meta.get("seconds", 0.0))
        if meta["n"]:
            with np.load(folder / "labels.npz") as z:
                for s in z["split"]:
                    splits[str(s)] += 1
        shards.append(
            {
                "name": src.name,
                "kind": src.kind,
                "dir": str(folder.relative_to(out_dir)),
                "n": meta["n"],
                "hash": meta["hash"],
            }
        )
    index = {"version": cache.CACHE_VERSION, "cache_size": prep.cache_size, "model_sha256": sha}
    cache.write_json(out_dir / "index.json", {**index, "shards": shards})
    summary = {
        **totals,
        "splits": splits,
        "sources": len(sources),
        "reused_shards": reused,
        "seconds": round(seconds, 2),  # this run (reused shards cost ~nothing)
        "shard_seconds": round(shard_seconds, 2),  # what preparing every shard took
        "per_source": per_source,
    }
    cache.write_json(out_dir / "summary.json", summary)
    return summary


@register_stage
class PrepareStage(Stage):
    """``jr2net train prepare``: the preprocessing pass over the configured data."""

    name = "prepare"
    non_training = True

    def run(self) -> None:
        ctx = self.ctx
        kwargs: dict[str, Any] = {"prepare": self.cfg.prepare, "model": ctx.face_model.to("cpu")}
        if ctx.world_size > 1:  # each rank prepares its share of the sources, rank 0 indexes
            run_prepare(
                self.cfg.data,
                self.out_dir,
                ctx.is_main,
                rank=ctx.rank,
                world_size=ctx.world_size,
                write_index=False,
                **kwargs,
            )
            ctx.barrier()
        if ctx.is_main:
            summary = run_prepare(self.cfg.data, self.out_dir, True, **kwargs)
            shown = {k: summary[k] for k in (*COUNT_KEYS, "splits", "reused_shards", "seconds")}
            print(f"prepare: {json.dumps(shown)}", flush=True)
