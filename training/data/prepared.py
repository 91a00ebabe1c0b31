"""Datasets over the prepare cache (``training.data.cache``) in the ``sample`` format, and what the
synthetic set takes from the cache (fitted expressions, photo textures), and the RecNet mix.

A cached crop (``cache_size``²) is resized to the training size S; since the crop box is kept,
the crop camera is ``crop_intrinsics(K_full, crop_box, S)`` and the landmarks map the same way.
The coefficients are the full-image fit unchanged: the crop shares the full image's camera frame,
only its intrinsics differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset

from jr2net.face.camera import crop_intrinsics

from .cache import Shard, load_shards
from .config import DataConfig
from .sample import crop_points, make_sample

SPLITS = ("train", "heldout")


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    return split


def _resize(a: np.ndarray, size: int) -> np.ndarray:
    if a.shape[0] == size:
        return np.array(a)
    return np.asarray(Image.fromarray(np.asarray(a)).resize((size, size), Image.Resampling.BILINEAR))


def cached_sample(shard: Shard, row: int, size: int) -> dict[str, Any]:
    """Sample ``row`` of ``shard`` at ``size``² (the ``sample`` format)."""
    lab = shard.labels
    box = lab["crop_box"][row].astype(np.float64)
    K = crop_intrinsics(torch.as_tensor(lab["K"][row][None]), box.tolist(), size)[0]
    return make_sample(
        _resize(shard.crops[row], size),
        K,
        crop_points(lab["landmarks"][row], box, size),
        _resize(shard.masks[row], size),
        {k: torch.as_tensor(np.array(v)) for k, v in shard.coeffs(row).items()},
        has_gt=False,
        source=shard.name,
        identity=str(lab["subject"][row]),
        landmark_weight=lab["landmark_weight"][row],
    )


class PreparedFaces(Dataset):
    """The cached real faces of one split (``"train"`` or ``"heldout"``) at ``crop_size``²;
    ``kinds`` restricts to shard kinds (``("video",)``, ``("images",)``)."""

    def __init__(
        self,
        prepare_dir: str | Path,
        split: str = "train",
        crop_size: int = 128,
        kinds: tuple[str, ...] | None = None,
    ) -> None:
        self.split = _check_split(split)
        self.crop_size = int(crop_size)
        self.shards = load_shards(prepare_dir, kinds)
        self.rows = [
            (s, j)
            for s, sh in enumerate(self.shards)
            for j in np.flatnonzero(sh.labels["split"] == split).tolist()
        ]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s, j = self.rows[index]
        return cached_sample(self.shards[s], j, self.crop_size)


def expression_bank(prepare_dir: str | Path, split: str = "train") -> np.ndarray:
    """Expression coefficients ``[N,E]`` of the cached video frames of ``split`` (the synthetic
    set's "fitted video tracks")."""
    rows = [
        sh.labels["expression"][sh.labels["split"] == _check_split(split)]
        for sh in load_shards(prepare_dir, ("video",))
    ]
    rows = [r for r in rows if len(r)]
    return np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)


_textures: dict[tuple, np.ndarray] = {}


def photo_textures(
    prepare_dir: str | Path, model, max_textures: int = 32, split: str = "train"
) -> np.ndarray:
    """Per-vertex albedo ``[T,V,3]`` unwrapped (``jr2net.face.synthetic.unwrap_texture``) from
    up to ``max_textures`` cached faces of ``split`` that have a photometric source fit (photos
    and each video's source frame), spread evenly over them. Memoised per process (keyed by the
    cache index's mtime), so the training and held-out sets share one unwrapping."""
    index = Path(prepare_dir) / "index.json"
    key = (str(index.resolve()), index.stat().st_mtime_ns, model.sha256, max_textures, split)
    if key not in _textures:
        _textures[key] = _unwrap_textures(prepare_dir, model, max_textures, split)
    return _textures[key]


def _unwrap_textures(prepare_dir: str | Path, model, max_textures: int, split: str) -> np.ndarray:
    from jr2net.face.coeffs import FaceCoefficients
    from jr2net.face.synthetic import mirror_index, unwrap_texture

    cands = [
        (sh, j)
        for sh in load_shards(prepare_dir)
        for j in np.flatnonzero(
            sh.labels["source_fit"] & (sh.labels["split"] == _check_split(split))
        ).tolist()
    ]
    if not cands or max_textures <= 0:
        return np.zeros((0, model.n_vertices, 3), np.float32)
    pick = np.unique(np.linspace(0, len(cands) - 1, min(max_textures, len(cands))).round())
    mirror = mirror_index(model.vertices.cpu().numpy())
    out = []
    for k in pick.astype(int):
        sh, j = cands[k]
        C = sh.crops.shape[1]
        box = sh.labels["crop_box"][j].astype(np.float64)
        K = crop_intrinsics(torch.as_tensor(sh.labels["K"][j][None]), box.tolist(), C)
        c = FaceCoefficients(**{n: torch.as_tensor(np.array(v))[None] for n, v in sh.coeffs(j).items()})
        lm = crop_points(sh.labels["landmarks"][j], box, C)
        tex, _ = unwrap_texture(model, np.array(sh.crops[j]), c, K, lm, mirror=mirror)
        out.append(tex)
    return np.stack(out)


class _Cycled(Dataset):
    """``n`` samples cycling through ``base`` (index ``i`` -> ``base[i % len(base)]``)."""

    def __init__(self, base: Dataset, n: int) -> None:
        self.base, self.n = base, int(n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.base[index % len(self.base)]


def recnet_dataset(
    cfg: DataConfig, prepare_dir: str | Path, model, split: str = "train"
) -> Dataset:
    """RecNet's data for ``split``: the cached real faces plus synthetic faces (textures and
    fitted expressions from the training split of the cache). Training: synthetic samples make
    ``synthetic_fraction`` of the epoch (cycling through ``synthetic.size`` faces); held-out:
    all cached held-out faces plus ``synthetic.heldout_size`` synthetic ones."""
    from .synthetic import SyntheticFaces

    real = PreparedFaces(prepare_dir, split, cfg.crop_size)
    syn_cfg = cfg.synthetic
    textures = bank = None
    if syn_cfg.p_texture > 0:
        textures = photo_textures(prepare_dir, model, syn_cfg.max_textures)
    if syn_cfg.p_track > 0:
        bank = expression_bank(prepare_dir)
    syn = SyntheticFaces(syn_cfg, model, cfg.crop_size, split, textures, bank)
    f = cfg.synthetic_fraction
    if f >= 1.0:
        parts: list[Dataset] = [syn]
    else:
        parts = [real] if len(real) else []
        n_syn = len(syn) if split == "heldout" or not len(real) else round(len(real) * f / (1 - f))
        if f > 0 and len(syn) and n_syn:
            parts.append(_Cycled(syn, n_syn))
    if not parts or sum(len(p) for p in parts) == 0:
        raise ValueError(f"no {split} samples in {prepare_dir} and no synthetic ones configured")
    return ConcatDataset(parts)
