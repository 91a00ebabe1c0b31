"""The ``recaugnet`` stage: RecNet with its expression head replaced by ETNet (DESIGN §1), and
what the ablations share with it.

RecAugNet starts from RUN/recnet/best.pt and RUN/etnet/best.pt (``jr2net.models.etnet.RecAugNet``:
RecNet's own expression head is frozen and skipped) and is fine-tuned, both networks together,
with RecNet's objective (``training.losses.RecNetLoss``, the recnet stage's schedule: landmarks
first, then photometric + identity) on RecNet's data (``training.data.prepared.recnet_dataset``)
plus the expression pairs of the etnet stage (``etnet.expression_pairs``) making
``augmented_fraction`` of the epoch; the pairs carry ground truth (``has_gt``), so their
coefficient and vertex terms supervise them.

Held-out evaluation: the recnet stage's landmark metrics on the held-out real faces and synthetic
faces, plus (``large_heldout``) the expression MAE on the etnet stage's held-out large-expression
set (``large_expression_mae`` beside ``large_zero_expression_mae``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from jr2net.models.etnet import RecAugNet

from .base import StageOutputMissing, TrainContext, register_stage
from .etnet import (
    _Cycled,
    build_etnet,
    etnet_spec,
    expression_metrics,
    expression_pairs,
    load_etnet,
    renderer_pairs,
)
from .recnet import RecNetStage

LARGE_SOURCE = "large_expression"


class CameraRecAugNet(RecAugNet):
    """RecAugNet with RecNet's camera moves, so RecNet's training and evaluation code runs on it
    unchanged (same weights as ``RecAugNet``)."""

    def to_image_camera(self, coeffs, K_actual):  # noqa: ANN001, ANN201
        return self.recnet.to_image_camera(coeffs, K_actual)

    @property
    def n_identity(self) -> int:
        return self.recnet.n_identity


def load_cascade_net(path, face_model):  # noqa: ANN001, ANN201
    """The network of a recnet / recaugnet / ablation checkpoint for inference (eval mode):
    a RecNet, or a ``CameraRecAugNet`` (both fit photos through ``RecNetFitter``)."""
    from jr2net.models.checkpoint import build_recnet

    from ..checkpoints import check_face_model, load_checkpoint

    ckpt = load_checkpoint(path)
    check_face_model(ckpt, face_model.sha256, path)
    spec, models = ckpt["model_spec"], ckpt["models"]
    if spec.get("kind") == "recaugnet":
        net = CameraRecAugNet(build_recnet(face_model, spec["recnet"]), build_etnet(spec["etnet"]))
        net.load_state_dict(models["recaugnet"])
    else:
        net = build_recnet(face_model, spec)
        net.load_state_dict(models["recnet"])
    return net.eval()


class _Tagged(Dataset):
    """``base`` with every sample's ``source`` set to ``tag`` (to tell sets apart in a batch)."""

    def __init__(self, base: Dataset, tag: str) -> None:
        self.base, self.tag = base, tag

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.base[index], "source": self.tag}


class _Interleaved(Dataset):
    """Two datasets interleaved evenly (so the first batches of an evaluation hold both)."""

    def __init__(self, a: Dataset, b: Dataset) -> None:
        na, nb = len(a), len(b)  # type: ignore[arg-type]
        order = sorted([(i / na, 0, i) for i in range(na)] + [(j / nb, 1, j) for j in range(nb)])
        self.parts, self.order = (a, b), [(k, i) for _, k, i in order]

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> dict[str, Any]:
        k, i = self.order[index]
        return self.parts[k][i]


def take(batch: Any, idx: list[int]) -> Any:
    """The samples ``idx`` of a collated batch (tensors, nested dicts, lists)."""
    if isinstance(batch, torch.Tensor):
        return batch[torch.as_tensor(idx, dtype=torch.long, device=batch.device)]
    if isinstance(batch, dict):
        return {k: take(v, idx) for k, v in batch.items()}
    if isinstance(batch, list):
        return [batch[i] for i in idx]
    return batch


class RecNetInitMixin:
    """Start from RUN/recnet/best.pt: its spec (crop, sizes) and weights."""

    def _recnet_checkpoint(self) -> dict[str, Any] | None:
        if not self.section.init_from_recnet:  # type: ignore[attr-defined]
            return None
        if getattr(self, "_rn_ckpt", None) is None:
            from ..checkpoints import check_face_model, load_checkpoint

            path = self.require_output("recnet") / "best.pt"  # type: ignore[attr-defined]
            if not path.is_file():
                raise StageOutputMissing(f"{self.name} needs {path}")  # type: ignore[attr-defined]
            ckpt = load_checkpoint(path)
            check_face_model(ckpt, self.ctx.face_model.sha256, path)  # type: ignore[attr-defined]
            self._rn_ckpt = ckpt
        return self._rn_ckpt

    def _spec(self, model) -> dict[str, Any]:  # noqa: ANN001
        ckpt = self._recnet_checkpoint()
        if ckpt is None:
            return super()._spec(model)  # type: ignore[misc]
        spec = dict(ckpt["model_spec"])
        if int(spec["crop_size"]) != int(self.cfg.data.crop_size):  # type: ignore[attr-defined]
            raise ValueError(
                f"RUN/recnet/best.pt crops {spec['crop_size']}px, data.crop_size is "
                f"{self.cfg.data.crop_size}"  # type: ignore[attr-defined]
            )
        return spec

    def initial_recnet(self) -> nn.Module:
        from jr2net.models.checkpoint import build_recnet

        model = self.ctx.face_model  # type: ignore[attr-defined]
        net = build_recnet(model, self._spec(model))
        ckpt = self._recnet_checkpoint()
        if ckpt is not None:
            net.load_state_dict(ckpt["models"]["recnet"])
        return net

    def recnet_data(self, split: str) -> Dataset:
        """RecNet's own data of ``split`` (the recnet stage's mix, memoised)."""
        return RecNetStage._dataset(self, split)  # type: ignore[arg-type]

    def with_pairs(self, base: Dataset) -> Dataset:
        """``base`` plus the expression pairs at ``augmented_fraction`` of the epoch."""
        f = self.section.augmented_fraction  # type: ignore[attr-defined]
        if f <= 0:
            return base
        pairs = expression_pairs(self)  # type: ignore[arg-type]
        return ConcatDataset([base, _Cycled(pairs, max(1, round(len(base) * f / (1 - f))))])  # type: ignore[arg-type]


@register_stage
class RecAugNetStage(RecNetInitMixin, RecNetStage):
    """RecAugNet (see the module docstring)."""

    name = "recaugnet"
    requires = ("prepare", "recnet", "etnet")
    empty_etnet = False  # reccopynet: an untrained ETNet instead of RUN/etnet/best.pt

    def build_models(self) -> dict[str, nn.Module]:
        recnet = self.initial_recnet()
        if self.empty_etnet:
            et = self.cfg.etnet
            etnet = build_etnet({"backbone": et.backbone, "width": et.width,
                                 "crop_size": recnet.crop_size,
                                 "n_expression": recnet.n_expression})  # fmt: skip
        else:
            path = self.require_output("etnet") / "best.pt"
            etnet = load_etnet(path, self.ctx.face_model)
        net = CameraRecAugNet(recnet, etnet)
        if self.section.freeze_etnet and not self.empty_etnet:
            net.freeze_etnet()
        return {"recaugnet": net}

    def model_spec(self) -> dict[str, Any]:
        from jr2net.models.checkpoint import recnet_spec

        net = TrainContext.unwrap(self.models["recaugnet"]) if self.models else None
        if net is None:
            return {"kind": "recaugnet"}
        return {"kind": "recaugnet", "recnet": recnet_spec(net.recnet), "etnet": etnet_spec(net.etnet)}

    def train_dataset(self) -> Dataset:
        return self.with_pairs(self.recnet_data("train"))

    def eval_dataset(self) -> Dataset | None:
        base = self.recnet_data("heldout")
        if not self.section.large_heldout:
            return base
        return _Interleaved(base, _Tagged(renderer_pairs(self, "heldout"), LARGE_SOURCE))

    def train_step(self, batch: Any, step: int) -> dict[str, float]:
        # RecNet's step reads models["recnet"]: the same (wrapped) RecAugNet under that name.
        self.models = {**self.models, "recnet": self.models["recaugnet"]}
        return super().train_step(batch, step)

    def evaluate(self, models: dict[str, nn.Module], loader: Any) -> dict[str, float]:
        return evaluate_with_large(self, models["recaugnet"], loader)


def evaluate_with_large(stage: RecNetStage, net: nn.Module, loader: Any) -> dict[str, float]:
    """RecNet's held-out metrics on the non-large samples, expression metrics on the large set."""
    rest, large = [], {}
    for batch in loader:
        src = batch["source"]
        lg = [i for i, s in enumerate(src) if s == LARGE_SOURCE]
        other = [i for i, s in enumerate(src) if s != LARGE_SOURCE]
        if lg:
            b = take(batch, lg)
            m = expression_metrics(TrainContext.unwrap(net)(b["image"]).expression.float(),
                                   b["coeffs"]["expression"])  # fmt: skip
            for k, v in m.items():
                large.setdefault(k, []).extend(v)
        if other:
            rest.append(take(batch, other))
    out = RecNetStage.evaluate(stage, {"recnet": net}, rest)
    out.update({f"large_{k}": float(sum(v) / len(v)) for k, v in large.items()})
    return out
