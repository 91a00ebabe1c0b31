"""The prepare cache on disk: one shard folder per source, an index and a summary.

Layout (``RUN/prepare/``)::

    index.json                  {"version", "cache_size", "model_sha256", "shards": [{name, kind,
                                 dir, n, hash, counts}, ...]} -- the shards of the last run
    summary.json                counts (frames/images seen, faces kept, no face, corrupt, rejected),
                                per-source counts, seconds, how many shards were reused
    shards/<name>/crops.npy     uint8 [N, C, C, 3] face crops at the cache size C
    shards/<name>/masks.npy     uint8 [N, C, C] face-skin mask (0/255)
    shards/<name>/labels.npz    per sample: face_box [N,4], crop_box [N,4] (full-image pixels,
                                crop_intrinsics convention), landmarks [N,68,2] and
                                landmark_weight [N,68] (full-image pixels), K [N,3,3] and
                                image_size [N,2] (H, W) of the full image, the fitter's
                                coefficients in that camera (identity, expression, albedo, angles,
                                translation, light; identity/albedo padded to the model's
                                counts), residual_iod [N], source_fit [N] (bool: a photometric
                                SourceFitter fit, not a driving-frame fit), frame_index [N],
                                n_frames [N], split [N] ("train"/"heldout"), subject [N]
                                (the sample's "identity": person, video or photo name),
                                name [N] (video or image name)
    shards/<name>/meta.json     {"hash", "name", "kind", "n", "counts", "seconds"}: written last,
                                so a shard with a meta.json whose hash matches is complete
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from jr2net.face.coeffs import FIELDS

CACHE_VERSION = 1
LABEL_KEYS = (
    "face_box",
    "crop_box",
    "landmarks",
    "landmark_weight",
    "K",
    "image_size",
    *FIELDS,
    "residual_iod",
    "source_fit",
    "frame_index",
    "n_frames",
    "split",
    "subject",
    "name",
)


def shard_dir(prepare_dir: Path, name: str) -> Path:
    return Path(prepare_dir) / "shards" / name


def read_meta(folder: Path) -> dict[str, Any] | None:
    """A shard's meta.json, or None when the shard is missing or unfinished."""
    try:
        return json.loads((Path(folder) / "meta.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic JSON write (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def write_shard(
    folder: Path,
    crops: np.ndarray,
    masks: np.ndarray,
    labels: dict[str, np.ndarray],
    meta: dict[str, Any],
) -> None:
    """Write a shard into a temp folder, then move it into place (never a half shard)."""
    folder = Path(folder)
    missing = [k for k in LABEL_KEYS if k not in labels]
    if missing:
        raise ValueError(f"shard labels are missing {missing}")
    n = len(crops)
    if len(masks) != n or any(len(labels[k]) != n for k in LABEL_KEYS):
        lens = {k: len(labels[k]) for k in LABEL_KEYS}
        raise ValueError(f"shard arrays differ in length: {n} crops, {len(masks)} masks, {lens}")
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    np.save(tmp / "crops.npy", np.ascontiguousarray(crops, dtype=np.uint8))
    np.save(tmp / "masks.npy", np.ascontiguousarray(masks, dtype=np.uint8))
    np.savez(tmp / "labels.npz", **{k: labels[k] for k in LABEL_KEYS})
    write_json(tmp / "meta.json", {**meta, "n": n})
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


class Shard:
    """A finished shard, read lazily: crops and masks memory-mapped, labels in memory."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.meta = read_meta(self.folder)
        if self.meta is None:
            raise FileNotFoundError(f"prepare shard {self.folder} is missing or unfinished")
        with np.load(self.folder / "labels.npz", allow_pickle=False) as z:
            self.labels = {k: z[k] for k in z.files}
        self._crops: np.ndarray | None = None
        self._masks: np.ndarray | None = None

    @property
    def name(self) -> str:
        return str(self.meta["name"])

    def __len__(self) -> int:
        return int(self.meta["n"])

    @property
    def crops(self) -> np.ndarray:
        if self._crops is None:
            self._crops = np.load(self.folder / "crops.npy", mmap_mode="r")
        return self._crops

    @property
    def masks(self) -> np.ndarray:
        if self._masks is None:
            self._masks = np.load(self.folder / "masks.npy", mmap_mode="r")
        return self._masks

    def coeffs(self, i: int) -> dict[str, np.ndarray]:
        return {k: self.labels[k][i] for k in FIELDS}

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers re-open the memory maps
        state = dict(self.__dict__)
        state["_crops"] = state["_masks"] = None
        return state


def load_index(prepare_dir: str | Path) -> dict[str, Any]:
    """The prepare index; a clear error when prepare has not run there."""
    path = Path(prepare_dir) / "index.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no prepare cache at {prepare_dir} ({path.name} missing): run `jr2net train prepare` first"
        )
    return json.loads(path.read_text())


def load_shards(prepare_dir: str | Path, kinds: tuple[str, ...] | None = None) -> list[Shard]:
    """Every shard of the index (optionally only these kinds: "video", "images")."""
    index = load_index(prepare_dir)
    return [
        Shard(Path(prepare_dir) / s["dir"])
        for s in index["shards"]
        if s["n"] > 0 and (kinds is None or s["kind"] in kinds)
    ]
