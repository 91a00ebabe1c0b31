"""Ablation ``baseline``: RecNet trained semi-supervised on the expression pairs only."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.utils.data import Dataset

from .base import register_stage
from .etnet import expression_pairs
from .recaugnet import RecAugNetStage as _Eval
from .recaugnet import RecNetInitMixin, evaluate_with_large
from .recnet import RecNetStage


@register_stage
class BaselineStage(RecNetInitMixin, RecNetStage):
    """RecNet (from RUN/recnet/best.pt) fine-tuned on the expression pairs alone: supervised by
    their coefficients and vertices, self-supervised by the landmark / photometric / identity
    terms (RecNet's objective). No ETNet, no real faces."""

    name = "baseline"
    requires = ("prepare", "recnet")

    def build_models(self) -> dict[str, nn.Module]:
        return {"recnet": self.initial_recnet()}

    def train_dataset(self) -> Dataset:
        return expression_pairs(self)

    def eval_dataset(self) -> Dataset | None:
        return _Eval.eval_dataset(self)  # type: ignore[arg-type]

    def evaluate(self, models: dict[str, nn.Module], loader: Any) -> dict[str, float]:
        return evaluate_with_large(self, models["recnet"], loader)
