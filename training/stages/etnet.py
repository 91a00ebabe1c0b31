"""The ``etnet`` stage: ETNet regresses expression β from the face crop (DESIGN §1).

Data, "the expression pairs" (image, β) that the recaugnet stage and the ablations reuse:

* renderer-synthetic faces (``training.data.synthetic.SyntheticFaces``; ``etnet.synthetic_size``
  distinct ones, rendered once per run into RUN/expression_pairs/ by ``StoredRenders``) whose
  expressions come from the large-expression prior (``etnet.p_large``), the fitted video tracks
  of the prepare cache (``etnet.p_track``, when the cache exists) or the sparse prior; photo
  textures from the cache as RecNet's synthetic set;
* when RUN/synthesize is done, its DCNet-synthesized pairs (``SynthesizedPairs``), making
  ``etnet.synthesized_fraction`` of the epoch.

Loss: ``etnet.w_activation`` × the seed's activation loss ``|max(β, β_gt)·(β − β_gt)|`` per
dimension (``training.losses.activation_loss``) + ``etnet.w_l1`` × L1 (the median: with the
clamped, zero-initialised head it keeps the many inactive shapes at exactly 0). The backbone can
start from RecNet's (``etnet.init_backbone: recnet``). Each batch gets a
crop shift / zoom and colour jitter (labels unchanged: β does not depend on the crop).

Held-out evaluation: a large-expression synthetic set (every expression from the prior) on its own
seed ``etnet.heldout_seed`` (never the fitting benchmark's seed 0, never a training index):
``expression_mae`` (the ``eval_metric``) beside ``zero_expression_mae`` (predicting neutral), the
activation loss, and the MAE over the shapes active in the ground truth.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from ..losses import activation_loss
from .base import Stage, StageOutputMissing, TrainContext, read_status, register_stage

SHARD_GLOB = "pairs_*.pt"
PAIRS_CACHE = "expression_pairs"  # RUN/expression_pairs/: the rendered pairs, shared by stages


class SynthesizedPairs(Dataset):
    """The synthesize stage's shards (``RUN/synthesize/pairs_*.pt``) in the ``sample`` format,
    ``has_gt`` 1: the labels are the coefficients DCNet was conditioned on (the source's shape,
    pose and light with the driving expression)."""

    def __init__(self, folder: str | Path, crop_size: int | None = None) -> None:
        files = sorted(Path(folder).glob(SHARD_GLOB))
        if not files:
            raise FileNotFoundError(f"no synthesized pairs ({SHARD_GLOB}) in {folder}")
        self.shards = [torch.load(f, weights_only=True) for f in files]
        self.rows = [(s, j) for s, sh in enumerate(self.shards) for j in range(len(sh["image"]))]
        S = int(self.shards[0]["image"].shape[-1])
        if crop_size is not None and S != crop_size:
            raise ValueError(f"synthesized pairs in {folder} are {S}px; this run crops {crop_size}")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s, j = self.rows[index]
        sh = self.shards[s]
        return {
            "image": sh["image"][j].float() / 255.0,
            "K": sh["K"][j],
            "landmarks": sh["landmarks"][j],
            "landmark_weight": torch.ones(68),
            "mask": sh["mask"][j].float(),
            "coeffs": {k: v[j] for k, v in sh["coeffs"].items()},
            "has_gt": torch.tensor(1.0),
            "source": "synthesize",
            "identity": str(sh["identity"][j]),
        }


class _Cycled(Dataset):
    def __init__(self, base: Dataset, n: int) -> None:
        self.base, self.n = base, int(n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.base[index % len(self.base)]  # type: ignore[arg-type]


class StoredRenders(Dataset):
    """A deterministic ``SyntheticFaces`` rendered once per run and kept on disk
    (``RUN/expression_pairs/{split}_{key}.pt``, uint8 images and bool masks as
    ``MemoisedSamples`` packs them): the etnet stage, RecAugNet and the three ablations train on
    the same renders, so each face costs one render per run, not one per stage. ``key`` hashes
    everything a render depends on (config, crop, split, face model, textures, expression bank)."""

    def __init__(self, base: Any, folder: str | Path) -> None:
        import hashlib
        import os

        h = hashlib.sha256(repr((dataclasses.asdict(base.cfg), base.crop_size, base.split,
                                 base.model.sha256)).encode())  # fmt: skip
        for arr in (base.textures, base.bank):
            h.update(b"-" if arr is None else arr.tobytes())
        self.base = base
        self.path = Path(folder) / f"{base.split}_{h.hexdigest()[:16]}.pt"
        n = len(base)
        items = None
        if self.path.is_file():
            items = torch.load(self.path, weights_only=True)
            if len(items) != n:
                items = None
        if items is None:
            items = []
            for i in range(n):
                sample = base[i]
                items.append({**sample, "image": (sample["image"] * 255).round().to(torch.uint8),
                              "mask": sample["mask"] > 0.5})  # fmt: skip
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            torch.save(items, tmp)
            os.replace(tmp, self.path)
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        packed = self.items[index]
        return {**packed, "image": packed["image"].float() / 255.0, "mask": packed["mask"].float()}


def _prepare_dir(stage: Stage) -> Path | None:
    d = stage.stage_dir("prepare")
    status = read_status(d)
    return d if status and status.get("status") == "done" else None


def renderer_pairs(stage: Stage, split: str = "train") -> Dataset:
    """Renderer-synthetic expression pairs of ``split``: ``etnet.synthetic_size`` faces for
    training; the held-out large-expression set (every expression from the prior, its own seed)."""
    from ..data.prepared import expression_bank, photo_textures
    from ..data.synthetic import SyntheticFaces

    et = stage.cfg.etnet
    base = stage.cfg.data.synthetic
    prep = _prepare_dir(stage)
    model = stage.ctx.face_model.to("cpu")
    textures = bank = None
    if prep is not None and base.p_texture > 0:
        textures = photo_textures(prep, model, base.max_textures)
    if split == "train":
        p_track = et.p_track if prep is not None else 0.0
        if p_track > 0:
            bank = expression_bank(prep)
        cfg = dataclasses.replace(base, size=et.synthetic_size, p_large=et.p_large, p_track=p_track)
    else:
        cfg = dataclasses.replace(
            base, heldout_size=et.heldout_size, seed=et.heldout_seed, p_large=1.0, p_track=0.0
        )
    ds = SyntheticFaces(cfg, model, stage.cfg.data.crop_size, split, textures, bank)
    return StoredRenders(ds, stage.run_dir / PAIRS_CACHE)


def expression_pairs(stage: Stage, synthesized_fraction: float | None = None) -> Dataset:
    """The expression pairs (see the module docstring): renderer-synthetic faces plus, when
    RUN/synthesize is done, the synthesized pairs at ``synthesized_fraction`` of the epoch."""
    f = stage.cfg.etnet.synthesized_fraction if synthesized_fraction is None else synthesized_fraction
    rendered = renderer_pairs(stage, "train")
    status = read_status(stage.stage_dir("synthesize"))
    if f <= 0 or not (status and status.get("status") == "done"):
        return rendered
    synth = SynthesizedPairs(stage.stage_dir("synthesize"), stage.cfg.data.crop_size)
    if f >= 1:
        return synth
    return ConcatDataset([rendered, _Cycled(synth, round(len(rendered) * f / (1 - f)))])


def expression_metrics(pred: torch.Tensor, gt: torch.Tensor) -> dict[str, list[float]]:
    """Per-sample expression errors ``[B]`` lists: MAE, zero-prediction MAE, activation loss,
    MAE over the shapes active (> 0.05) in the ground truth."""
    gt = gt.to(pred)
    err = (pred - gt).abs()
    active = (gt > 0.05).to(pred)
    return {
        "expression_mae": err.mean(1).tolist(),
        "zero_expression_mae": gt.abs().mean(1).tolist(),
        "activation_loss": (torch.maximum(pred, gt) * (pred - gt)).abs().mean(1).tolist(),
        "active_expression_mae": ((err * active).sum(1) / active.sum(1).clamp(min=1)).tolist(),
    }


def etnet_spec(net: Any) -> dict[str, Any]:
    """What rebuilds an ETNet (the checkpoint's ``model_spec``)."""
    return {
        "kind": "etnet",
        "backbone": net.backbone.name,
        "width": float(net.backbone.width),
        "crop_size": int(net.crop_size),
        "n_expression": int(net.n_expression),
    }


def build_etnet(spec: dict[str, Any]) -> nn.Module:
    """An untrained ETNet of the architecture ``spec`` describes."""
    from jr2net.models.etnet import ETNet

    missing = [k for k in ("backbone", "width", "crop_size", "n_expression") if k not in spec]
    if missing:
        raise ValueError(f"ETNet model_spec lacks {missing}")
    return ETNet(
        backbone=str(spec["backbone"]),
        crop_size=int(spec["crop_size"]),
        n_expression=int(spec["n_expression"]),
        width=float(spec["width"]),
    )


def load_etnet(path: str | Path, face_model: Any) -> nn.Module:
    """The ETNet of an ``etnet`` checkpoint (CheckpointError for another stage or face model)."""
    from ..checkpoints import CheckpointError, check_face_model, load_checkpoint

    ckpt = load_checkpoint(path)
    if ckpt["stage"] != "etnet":
        raise CheckpointError(f"{path} is a {ckpt['stage']!r} checkpoint, not an ETNet one")
    check_face_model(ckpt, face_model.sha256, path)
    net = build_etnet(ckpt["model_spec"])
    net.load_state_dict(ckpt["models"]["etnet"])
    return net


def init_backbone_from_recnet(net: nn.Module, path: str | Path, face_model: Any) -> None:
    """Copy a RecNet checkpoint's backbone into ``net`` (an ETNet of the same backbone and
    width): its features already locate the eyes, brows and mouth (the landmark loss)."""
    from ..checkpoints import CheckpointError, check_face_model, load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise StageOutputMissing(f"etnet.init_backbone: recnet needs {path}")
    ckpt = load_checkpoint(path)
    check_face_model(ckpt, face_model.sha256, path)
    spec = ckpt["model_spec"]
    mine = (net.backbone.name, float(net.backbone.width), int(net.crop_size))
    theirs = (spec.get("backbone"), float(spec.get("width", 1.0)), int(spec.get("crop_size", 0)))
    if mine != theirs:
        raise CheckpointError(
            f"{path}: RecNet (backbone, width, crop) {theirs} differ from ETNet's {mine}"
        )
    prefix = "backbone."
    state = {k[len(prefix):]: v for k, v in ckpt["models"]["recnet"].items() if k.startswith(prefix)}
    net.backbone.load_state_dict(state)


@register_stage
class ETNetStage(Stage):
    """ETNet (see the module docstring)."""

    name = "etnet"

    def __init__(self, cfg, run_dir, ctx: TrainContext) -> None:
        super().__init__(cfg, run_dir, ctx)
        self._gen = torch.Generator().manual_seed(cfg.run.seed * 37 + ctx.rank + 11)

    def _spec(self) -> dict[str, Any]:
        sec = self.section
        return {
            "kind": "etnet",
            "backbone": sec.backbone,
            "width": float(sec.width),
            "crop_size": int(self.cfg.data.crop_size),
            "n_expression": int(self.ctx.face_model.n_expression),
        }

    def build_models(self) -> dict[str, nn.Module]:
        net = build_etnet(self._spec())
        if self.section.init_backbone == "recnet":
            init_backbone_from_recnet(net, self.require_output("recnet") / "best.pt",
                                      self.ctx.face_model)  # fmt: skip
        return {"etnet": net}

    def model_spec(self) -> dict[str, Any]:
        return self._spec()

    def collate(self, items: list[Any]) -> Any:
        from ..data.sample import collate

        return collate(items)

    def train_dataset(self) -> Dataset:
        return expression_pairs(self)

    def eval_dataset(self) -> Dataset | None:
        return renderer_pairs(self, "heldout")

    def train_step(self, batch: Any, step: int) -> dict[str, float]:
        from .recnet import augment_batch

        sec = self.section
        batch = augment_batch(
            batch, shift=sec.augment_shift, scale=sec.augment_scale, color=sec.augment_color,
            generator=self._gen,
        )  # fmt: skip
        pred = self.models["etnet"](batch["image"])
        gt = batch["coeffs"]["expression"].to(pred)
        act = activation_loss(pred, gt)
        loss = sec.w_activation * act
        out = {"activation": float(act.detach())}
        if sec.w_l1 > 0:
            l1 = sec.w_l1 * (pred - gt).abs().mean()
            loss = loss + l1
            out["l1"] = float(l1.detach())
        self.ctx.backward_step(loss, "main")
        out["expression_mae"] = float((pred.detach() - gt).abs().mean())
        return {"loss": float(loss.detach()), **out}

    def evaluate(self, models: dict[str, nn.Module], loader: Any) -> dict[str, float]:
        net = TrainContext.unwrap(models["etnet"])
        acc: dict[str, list[float]] = {}
        for batch in loader:
            m = expression_metrics(net(batch["image"]).float(), batch["coeffs"]["expression"])
            for k, v in m.items():
                acc.setdefault(k, []).extend(v)
        return {k: float(sum(v) / max(1, len(v))) for k, v in acc.items()}
