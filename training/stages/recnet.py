"""The ``recnet`` stage: RecNet trained on prepared real faces plus synthetic ones (DESIGN §7).

Data: the prepare cache's ``train`` split (shared videos except the held-out identities, minus
each video's last ``data.heldout_tail``, plus the photos) mixed with synthetic faces
(``data.synthetic_fraction``), as ``training.data`` builds it; ``photo_repeats`` shows each
photo that many times per epoch. Each batch is augmented by a random crop shift / scale (an
exact change of the crop camera ``K``, so every label stays valid), a colour jitter and, on the
real samples, a mirror and an in-plane turn (``augment_flip``, ``augment_rotate``: image-space
labels stay valid, coefficient labels do not).

Objective (``training.losses.RecNetLoss``): for the first ``landmark_only_steps`` steps the
68-landmark loss (nose and inner mouth weighing ``landmark_heavy``, optionally Charbonnier:
``landmark_robust``), the coefficient priors and, on synthetic samples, the supervised
coefficient + vertex terms; with ``w_pseudo`` > 0 the same terms on the real samples against
their fitter pseudo-labels (those not mirrored or turned); then the photometric term on the skin
mask and the identity term (every ``identity_every`` steps, on at most ``identity_samples``
samples of the batch: dlib's ResNet is the most expensive part of a CPU step) are added; with
``photo_geometry`` false these two train albedo and light only. The network predicts in its
canonical crop camera; ``to_image_camera`` moves the prediction to each sample's crop camera
before the loss.

Held-out evaluation: the landmark error (mean distance / inter-ocular distance, jaw on the
occluding contour, as the fitter measures its residual) of RecNet's projected face against the
detected landmarks on the ``heldout`` split of the real data, overall (``landmark_iod``, the
``eval_metric``), on the held-out identities and on the tails of the training videos
(``tail_*``), means and medians, with the fitter's pseudo-labels measured the same way beside it
(``fitter_*``). The held-out identities' keys are prefixed with their names (``d20_`` in the
shared configurations).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from jr2net.face.coeffs import FaceCoefficients

from ..config import ConfigError
from ..losses import RecNetLoss, RecNetLossWeights, landmark_error_iod
from .base import Stage, TrainContext, register_stage


def loss_weights(sec: Any) -> RecNetLossWeights:
    """``RecNetLossWeights`` from a ``RecNetStageConfig`` (the same units)."""
    return RecNetLossWeights(
        landmark=sec.w_landmark,
        landmark_heavy=sec.landmark_heavy,
        landmark_robust=sec.landmark_robust,
        photometric=sec.w_photo,
        identity=sec.w_identity,
        regularization=sec.w_reg,
        reg_identity=sec.w_reg_identity,
        reg_expression=sec.w_reg_expression,
        reg_expression_l1=sec.w_reg_expression_l1,
        reg_albedo=sec.w_reg_albedo,
        light_mono=sec.w_reg_light,
        coefficients=sec.w_coeff,
        vertices=sec.w_vertex,
        pseudo=sec.w_pseudo,
    )


# iBUG 68-point order under a left-right mirror (jaw, brows, nose, eyes, outer and inner lips).
MIRROR_68 = (
    list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30, 35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65]
)  # fmt: skip


def augment_batch(
    batch: dict[str, Any],
    *,
    shift: float,
    scale: float,
    color: float,
    flip: float = 0.0,
    rotate: float = 0.0,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """A random crop shift (± ``shift`` of the side) and zoom (± ``scale``) per sample, a
    brightness / contrast / per-channel gain jitter of ± ``color``, and with probability ``flip``
    a left-right mirror of the samples without ground truth.

    The new crop is a square box of the old one, so its camera is exactly ``A @ K`` (the affine
    map of crop pixels) and the landmarks move by ``A``: coefficients in ``K`` stay valid. A
    mirrored crop is the image of the mirrored face under ``K`` with its principal point mirrored
    (``cx -> S - 1 - cx``), landmarks mirrored and renumbered (``MIRROR_68``): every image-space
    label stays valid, the coefficients do not (a mirrored identity), so only samples whose
    coefficients are not supervised (``has_gt`` 0) are mirrored. ``rotate`` > 0 turns those samples
    by up to ± ``rotate`` degrees about the crop centre: the image of the face rolled about the
    optical axis under ``K`` with its principal point turned the same way about the centre, so
    again every image-space label stays valid and the coefficients do not. ``coeffs_valid [B]``
    (bool) is added: False for the mirrored and turned samples.
    """
    img = batch["image"]
    B, _, S, _ = img.shape
    if shift <= 0 and scale <= 0 and color <= 0 and flip <= 0 and rotate <= 0:
        return batch

    def u(*shape: int) -> torch.Tensor:
        return (torch.rand(*shape, generator=generator) * 2 - 1).to(img.device)

    real = batch["has_gt"].to(img.device) < 0.5
    valid = torch.ones(B, dtype=torch.bool, device=img.device)  # the coefficients still hold
    if flip > 0:
        pick = (u(B) + 1) / 2 < flip
        batch = _mirror(batch, pick)
        valid &= ~(pick & real)
        img = batch["image"]
    if rotate > 0:
        angle = math.radians(rotate) * u(B) * real.to(img.dtype)
        batch = _rotate(batch, angle)
        valid &= angle == 0
        img = batch["image"]

    out = dict(batch)
    out["coeffs_valid"] = valid
    image = img
    if shift > 0 or scale > 0:
        out.update(_shift_zoom(batch, scale * u(B), shift * S * u(B), shift * S * u(B)))
        image = out["image"]
    if color > 0:
        gain = 1 + color * u(B, 3, 1, 1)
        contrast = 1 + color * u(B, 1, 1, 1)
        mean = image.mean(dim=(1, 2, 3), keepdim=True)
        image = (((image - mean) * contrast + mean) * gain).clamp(0, 1)
    out["image"] = image
    return out


def _shift_zoom(
    batch: dict[str, Any], log_zoom: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor
) -> dict[str, Any]:
    """The crop moved by (dx, dy) pixels and zoomed by exp(log_zoom) per sample."""
    img = batch["image"]
    B, _, S, _ = img.shape
    zoom = torch.exp(log_zoom)  # > 1 zooms in (a smaller box)
    # New crop pixel p' samples old pixel p = c + (p' - c) / zoom + d, with c the crop centre.
    c = (S - 1) / 2.0
    # grid_sample (align_corners=False): normalised x_n = (2p + 1) / S - 1.
    theta = torch.zeros(B, 2, 3, device=img.device)
    theta[:, 0, 0] = 1.0 / zoom
    theta[:, 1, 1] = 1.0 / zoom
    theta[:, 0, 2] = 2 * dx / S
    theta[:, 1, 2] = 2 * dy / S
    grid = F.affine_grid(theta, [B, 3, S, S], align_corners=False)
    out = {
        "image": F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False),
        "mask": F.grid_sample(batch["mask"], grid, mode="nearest", padding_mode="zeros",
                              align_corners=False),
    }  # fmt: skip
    # Old pixel p -> new pixel p' = c + zoom (p - d - c).
    A = torch.zeros(B, 3, 3, device=img.device)
    A[:, 0, 0] = zoom
    A[:, 1, 1] = zoom
    A[:, 0, 2] = c - zoom * (dx + c)
    A[:, 1, 2] = c - zoom * (dy + c)
    A[:, 2, 2] = 1.0
    out["K"] = A @ batch["K"]
    lm = batch["landmarks"]
    out["landmarks"] = lm * zoom[:, None, None] + A[:, None, :2, 2]
    # Landmarks pushed out of the crop are unknown to the image: weight them 0.
    inside = ((out["landmarks"] >= -0.5) & (out["landmarks"] <= S - 0.5)).all(dim=-1)
    out["landmark_weight"] = batch["landmark_weight"] * inside.to(lm.dtype)
    return out


class MemoisedSamples(Dataset):
    """A deterministic dataset whose samples are kept after their first draw (compactly: uint8
    image, bool mask). A synthetic face costs a render (~80 ms on a CPU core), a cached real one
    two resizes, and every epoch revisits them all; both images are 8-bit already (the synthetic
    renders are quantised like a photo), so keeping them as uint8 is exact."""

    def __init__(self, base: Dataset) -> None:
        self.base = base
        self._store: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        packed = self._store.get(index)
        if packed is None:
            sample = self.base[index]
            packed = dict(sample)
            packed["image"] = (sample["image"] * 255).round().to(torch.uint8)
            packed["mask"] = sample["mask"] > 0.5
            self._store[index] = packed
            return sample
        out = dict(packed)
        out["image"] = packed["image"].float() / 255.0
        out["mask"] = packed["mask"].float()
        return out


def memoise(ds: Dataset) -> Dataset:
    """``ds`` (``training.data.prepared.recnet_dataset``'s mix) with its parts memoised."""
    from torch.utils.data import ConcatDataset

    from ..data.prepared import PreparedFaces
    from ..data.synthetic import SyntheticFaces

    if isinstance(ds, (SyntheticFaces, PreparedFaces)):
        return MemoisedSamples(ds)
    if isinstance(ds, ConcatDataset):
        return ConcatDataset([memoise(d) for d in ds.datasets])
    if isinstance(getattr(ds, "base", None), SyntheticFaces):  # the mix's cycling wrapper
        ds.base = MemoisedSamples(ds.base)  # type: ignore[attr-defined]
    return ds


def _rotate(batch: dict[str, Any], angle: torch.Tensor) -> dict[str, Any]:
    """The samples turned by ``angle [B]`` (radians, image x towards y) about the crop centre."""
    img = batch["image"]
    B, _, S, _ = img.shape
    cos, sin = torch.cos(angle), torch.sin(angle)
    R = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # [B,2,2]
    # New pixel p' samples old pixel c + R^T (p' - c); normalised coordinates (align_corners
    # False) are centred on c and scale both axes alike, so theta is R^T itself.
    theta = torch.cat([R.transpose(1, 2), torch.zeros(B, 2, 1, device=img.device)], dim=2)
    grid = F.affine_grid(theta, [B, 3, S, S], align_corners=False)
    out = dict(batch)
    out["image"] = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros",
                                 align_corners=False)  # fmt: skip
    out["mask"] = F.grid_sample(batch["mask"], grid, mode="nearest", padding_mode="zeros",
                                align_corners=False)  # fmt: skip
    c = (S - 1) / 2.0
    lm = batch["landmarks"]
    out["landmarks"] = (lm - c) @ R.transpose(1, 2).to(lm) + c
    K = batch["K"].clone()
    K[:, :2, 2] = ((K[:, :2, 2] - c)[:, None, :] @ R.transpose(1, 2).to(K))[:, 0] + c
    out["K"] = K
    inside = ((out["landmarks"] >= -0.5) & (out["landmarks"] <= S - 0.5)).all(dim=-1)
    out["landmark_weight"] = batch["landmark_weight"] * inside.to(lm.dtype)
    still = angle == 0  # samples left as they were, bit for bit
    for key in ("image", "mask", "landmarks", "K", "landmark_weight"):
        m = still.view(-1, *([1] * (out[key].dim() - 1))).to(out[key].device)
        out[key] = torch.where(m, batch[key], out[key])
    return out


def _mirror(batch: dict[str, Any], pick: torch.Tensor) -> dict[str, Any]:
    """``batch`` with the picked samples (``[B]`` bool) that have no ground truth mirrored."""
    pick = pick & (batch["has_gt"].to(pick.device) < 0.5)
    if not bool(pick.any()):
        return batch
    out = dict(batch)
    S = batch["image"].shape[-1]
    m = pick.view(-1, 1, 1, 1)
    out["image"] = torch.where(m, batch["image"].flip(-1), batch["image"])
    out["mask"] = torch.where(m, batch["mask"].flip(-1), batch["mask"])
    idx = torch.as_tensor(MIRROR_68, device=pick.device)
    lm = batch["landmarks"][:, idx].clone()
    lm[..., 0] = S - 1 - lm[..., 0]
    out["landmarks"] = torch.where(pick.view(-1, 1, 1), lm, batch["landmarks"])
    w = batch["landmark_weight"]
    out["landmark_weight"] = torch.where(pick.view(-1, 1), w[:, idx], w)
    K = batch["K"].clone()
    K[:, 0, 2] = torch.where(pick, S - 1 - K[:, 0, 2], K[:, 0, 2])
    out["K"] = K
    return out


def _gt(batch: dict[str, Any]) -> FaceCoefficients:
    c = batch["coeffs"]
    return c if isinstance(c, FaceCoefficients) else FaceCoefficients(**c)


def _median(x: list[float]) -> float:
    return float(np.median(x)) if x else math.nan


def _mean(x: list[float]) -> float:
    return float(np.mean(x)) if x else math.nan


@register_stage
class RecNetStage(Stage):
    """RecNet (see the module docstring)."""

    name = "recnet"
    requires = ("prepare",)

    def __init__(self, cfg, run_dir, ctx: TrainContext) -> None:
        super().__init__(cfg, run_dir, ctx)
        sec = self.section
        if sec.identity_every < 1:
            raise ConfigError(f"recnet.identity_every must be >= 1, got {sec.identity_every}")
        self._loss: RecNetLoss | None = None
        self._gen = torch.Generator().manual_seed(cfg.run.seed * 31 + ctx.rank + 7)

    def extra_state(self) -> dict[str, Any]:
        """The augmentation generator, so a resumed run draws the same crops as a straight one."""
        return {"gen": self._gen.get_state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "gen" in state:
            self._gen.set_state(state["gen"])

    # -- networks ------------------------------------------------------------------------------

    def build_models(self) -> dict[str, nn.Module]:
        from jr2net.models.checkpoint import build_recnet

        model = self.ctx.face_model
        return {"recnet": build_recnet(model, self._spec(model))}

    def _spec(self, model) -> dict[str, Any]:
        sec = self.section
        return {
            "kind": "recnet",
            "backbone": sec.backbone,
            "width": float(sec.width),
            "crop_size": int(self.cfg.data.crop_size),
            "n_identity": int(min(sec.n_identity, model.n_identity)),
            "n_albedo": int(min(sec.n_albedo, model.n_albedo)),
            "n_expression": int(model.n_expression),
        }

    def model_spec(self) -> dict[str, Any]:
        from jr2net.models.checkpoint import recnet_spec

        if "recnet" in self.models:
            return recnet_spec(TrainContext.unwrap(self.models["recnet"]))
        return self._spec(self.ctx.face_model)

    @property
    def loss(self) -> RecNetLoss:
        """The objective, built on first use (the face-id network only when its weight is > 0)."""
        if self._loss is None:
            face_id = None
            if self.section.w_identity > 0:
                from jr2net.models.face_id import load_face_id_net

                face_id = load_face_id_net(self.ctx.device)
            model = self.ctx.face_model
            self._loss = RecNetLoss(
                model,
                loss_weights(self.section),
                face_id,
                n_identity=self._spec(model)["n_identity"],
                contour=self.section.landmark_contour,
            )
        return self._loss

    # -- data ----------------------------------------------------------------------------------

    def collate(self, items: list[Any]) -> Any:
        from ..data.sample import collate

        return collate(items)

    def _dataset(self, split: str) -> Dataset:
        from ..data.prepared import recnet_dataset

        prepare_dir = self.require_output("prepare")
        ds = recnet_dataset(self.cfg.data, prepare_dir, self.ctx.face_model.to("cpu"), split)
        return memoise(ds)

    def train_dataset(self) -> Dataset:
        ds = self._dataset("train")
        extra = self.section.photo_repeats - 1
        if extra > 0:  # the photos are most of the identities: seen more often
            from torch.utils.data import ConcatDataset

            from ..data.prepared import PreparedFaces, _Cycled

            photos = PreparedFaces(
                self.require_output("prepare"), "train", self.cfg.data.crop_size, ("images",)
            )
            if len(photos):
                ds = ConcatDataset([ds, _Cycled(MemoisedSamples(photos), extra * len(photos))])
        return ds

    def eval_dataset(self) -> Dataset | None:
        return self._dataset("heldout")

    # -- training ------------------------------------------------------------------------------

    def train_step(self, batch: Any, step: int) -> dict[str, float]:
        sec = self.section
        batch = augment_batch(
            batch,
            shift=sec.augment_shift,
            scale=sec.augment_scale,
            color=sec.augment_color,
            flip=sec.augment_flip,
            rotate=sec.augment_rotate,
            generator=self._gen,
        )
        net = self.models["recnet"]
        coeffs = TrainContext.unwrap(net).to_image_camera(net(batch["image"]), batch["K"])
        full = step >= sec.landmark_only_steps
        identity = full and sec.w_identity > 0 and step % sec.identity_every == 0
        loss, terms, _ = self.loss(
            coeffs,
            batch,
            photometric=full,
            identity=identity,
            identity_samples=sec.identity_samples or None,
            image_geometry=sec.photo_geometry,
        )
        self.ctx.backward_step(loss, "main")
        return {"loss": float(loss.detach()), **terms}

    # -- evaluation ----------------------------------------------------------------------------

    def evaluate(self, models: dict[str, nn.Module], loader: Any) -> dict[str, float]:
        net = TrainContext.unwrap(models["recnet"])
        heldout = set(self.cfg.data.heldout_identities)
        lm = self.loss.landmarks
        ours: dict[str, list[float]] = {"all": [], "held": [], "tail": []}
        fitter: dict[str, list[float]] = {"all": [], "held": [], "tail": []}
        synthetic: list[float] = []
        for batch in loader:
            coeffs = net.to_image_camera(net(batch["image"]), batch["K"])
            target = batch["landmarks"].to(coeffs.angles)
            err = landmark_error_iod(lm.project(coeffs, batch["K"]), target).tolist()
            gt = _gt(batch)
            gt = gt.replace(identity=gt.identity[:, : lm.n_identity])
            ferr = landmark_error_iod(lm.project(gt, batch["K"]), target).tolist()
            has_gt = batch["has_gt"].tolist()
            for i, who in enumerate(batch["identity"]):
                if has_gt[i] > 0.5:
                    synthetic.append(err[i])
                    continue
                group = "held" if who in heldout else "tail"
                for key in ("all", group):
                    ours[key].append(err[i])
                    fitter[key].append(ferr[i])
        out: dict[str, float] = {}
        held_name = "_".join(sorted(heldout)) or "heldout"
        for key, prefix in (("all", ""), ("held", f"{held_name}_"), ("tail", "tail_")):
            out[f"{prefix}landmark_iod"] = _mean(ours[key])
            out[f"{prefix}landmark_iod_median"] = _median(ours[key])
            out[f"fitter_{prefix}landmark_iod"] = _mean(fitter[key])
            out[f"fitter_{prefix}landmark_iod_median"] = _median(fitter[key])
            out[f"n_{prefix}frames"] = float(len(ours[key]))
        if synthetic:
            out["synthetic_landmark_iod"] = _mean(synthetic)
        return out
