"""Same-identity frame pairs (source, driving) from the prepared video shards, for DCNet.

Item ``i`` of a split is driving frame ``i`` (every cached video frame of the split in turn)
with a source frame of the same identity (``subject``: the video, or the VoxCeleb2 person, so a
source may come from another clip of that person) drawn from the same split by a generator
seeded with ``(seed, i)``: deterministic, and never the driving frame itself. Pairs never cross
the split: held-out identities pair only with themselves, and a training video's held-out tail
only with its own tail. Identities with a single frame in a split give no pairs.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from .cache import load_shards
from .prepared import _check_split, cached_sample


class FramePairs(Dataset):
    """``{"source": sample, "driving": sample, "identity": str}`` (samples in the ``sample``
    format: crop, K, landmarks, mask, coefficients each), at ``crop_size``²."""

    def __init__(
        self,
        prepare_dir: str | Path,
        split: str = "train",
        crop_size: int = 128,
        seed: int = 0,
    ) -> None:
        self.split = _check_split(split)
        self.crop_size = int(crop_size)
        self.seed = int(seed)
        self.shards = load_shards(prepare_dir, ("video",))
        groups: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for s, sh in enumerate(self.shards):
            for j in np.flatnonzero(sh.labels["split"] == split).tolist():
                groups[str(sh.labels["subject"][j])].append((s, j))
        self.groups = {k: v for k, v in groups.items() if len(v) >= 2}
        self.items = [(k, pos) for k, v in sorted(self.groups.items()) for pos in range(len(v))]

    def __len__(self) -> int:
        return len(self.items)

    def pair_rows(self, index: int) -> tuple[str, tuple[int, int], tuple[int, int]]:
        """(identity, source (shard, row), driving (shard, row)) of item ``index``."""
        identity, pos = self.items[index]
        members = self.groups[identity]
        rng = np.random.default_rng([self.seed, int(index)])
        other = int(rng.integers(len(members) - 1))
        other += other >= pos  # any member but the driving frame
        return identity, members[other], members[pos]

    def __getitem__(self, index: int) -> dict[str, Any]:
        identity, (ss, sj), (ds, dj) = self.pair_rows(index)
        return {
            "source": cached_sample(self.shards[ss], sj, self.crop_size),
            "driving": cached_sample(self.shards[ds], dj, self.crop_size),
            "identity": identity,
        }
