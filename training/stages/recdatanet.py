"""Ablation ``recdatanet``: RecNet with the expression pairs added to its training data."""

from __future__ import annotations

from torch.utils.data import Dataset

from .base import register_stage
from .baseline import BaselineStage


@register_stage
class RecDataNetStage(BaselineStage):
    """RecNet (from RUN/recnet/best.pt) fine-tuned on RecNet's data plus the expression pairs at
    ``augmented_fraction`` of the epoch: RecAugNet's data without ETNet."""

    name = "recdatanet"

    def train_dataset(self) -> Dataset:
        return self.with_pairs(self.recnet_data("train"))
