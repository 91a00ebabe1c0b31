"""Ablation ``reccopynet``: RecAugNet's training with an empty (untrained, zero-head) ETNet."""

from __future__ import annotations

from .base import register_stage
from .recaugnet import RecAugNetStage


@register_stage
class RecCopyNetStage(RecAugNetStage):
    """RecAugNet's recipe (RUN/recnet/best.pt, RecNet's data + the expression pairs) whose ETNet
    starts untrained: what the trained ETNet adds over the architecture and data alone."""

    name = "reccopynet"
    requires = ("prepare", "recnet")
    empty_etnet = True
