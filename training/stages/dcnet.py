"""The ``dcnet`` stage: DCNet trained on same-identity video frame pairs (DESIGN §1, §7).

Data: ``training.data.pairs.FramePairs`` over the prepare cache, the same split as RecNet (the
held-out identities whole, the last ``data.heldout_tail`` of every other video). Each pair is a
source frame and a driving frame of one identity; the driving frame is the target image.

Conditions (``jr2net.pipeline.conditions``): the recombined face (source identity and albedo,
driving expression and pose, the driving's or the source's light) rendered in the driving crop
camera, and the source crop with its own normal and light maps. Coefficients come from the
cached fitter labels (``dcnet.conditions: fitter``) or from a trained RecNet (``recnet``:
``dcnet.recnet_checkpoint``, by default ``RUN/recnet/best.pt``) run on both crops.

Objective (pix2pixHD / SPADE): ``w_l1``·L1 + ``w_l1_face``·L1 over the target face mask (the
region the acceptance measures) + ``w_l1_hidden``·L1 over the face pixels the source does not see
+ ``w_l1_generated``·L1 over the face mask of the generated image
before the blend (blend generators: through the blend alone it is trained with weight 1 − a ≈ 0.05
where the source sees the pixel, becomes a residual rather than a face, and shows raw where C is
0: the purple mouths and magenta specks of the first tiny runs) + ``w_vgg``·perceptual (L1 between the features of
the face-identity ResNet on face chips aligned with the driving landmarks, or of VGG-19 when
``vgg_weights`` names torchvision-format weights) + ``w_adv``·hinge GAN + ``w_feature_match``·
discriminator feature matching. The multi-scale PatchGAN sees the image with the driving normal
map. Generator and discriminator have their own optimisers (``lr`` and ``lr_d``).

Held-out evaluation: L1, PSNR and SSIM against the driving frame for DCNet's output, its own
input (the warped source image), copy-source and (blend generators) the generated image before
the blend (``generated``), over the target face mask (``face``), the whole
crop (``crop``), the mouth region (``mouth``) and the face pixels the source does not see
(``hidden``: not co-visible). Keys are ``{method}_{region}_{metric}``; ``l1`` (the
``eval_metric``), ``psnr`` and ``ssim`` are DCNet's on the face.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from jr2net.eval.metrics import l1 as l1_metric
from jr2net.eval.metrics import psnr, ssim
from jr2net.face.camera import crop_intrinsics
from jr2net.face.coeffs import FaceCoefficients

from ..losses import (
    VGG_LAYER_WEIGHTS,
    feature_matching_loss,
    hinge_d_loss,
    hinge_g_loss,
    perceptual_loss,
)
from .base import Stage, TrainContext, make_optimizer, register_stage

METHODS = ("dcnet", "warped", "copy", "generated")
REGIONS = ("face", "crop", "mouth", "hidden")
D_EXTRA_CHANNELS = 3  # the discriminator sees the image and the driving normal map


def crop_size(cfg: Any) -> int:
    """The side S of DCNet's crops: ``dcnet.crop_size``, else ``data.crop_size``."""
    return int(cfg.dcnet.crop_size or cfg.data.crop_size)


def dcnet_config(cfg: Any):  # -> jr2net.models.dcnet.DCNetConfig
    """The generator's ``DCNetConfig`` of a run config (preset at ``crop_size``)."""
    from jr2net.models.dcnet import DCNetConfig

    sec = cfg.dcnet
    over: dict[str, Any] = {"crop_size": crop_size(cfg), "ablation": sec.ablation}
    if sec.channels:
        over["channels"] = tuple(sec.channels)
    if sec.spade_hidden:
        over["spade_hidden"] = int(sec.spade_hidden)
    preset = DCNetConfig.tiny if sec.generator == "tiny" else DCNetConfig.full
    return preset(**over)


def reconstruction_terms(
    sec: Any,
    fake: Tensor,
    generated: Tensor | None,
    real: Tensor,
    mask: Tensor,
    covisible: Tensor | None = None,
) -> dict[str, Tensor]:
    """The generator's weighted L1 terms: the output over the crop (``l1``) and the face mask
    (``l1_face``), the generated image before the blend over the face mask (``l1_generated``;
    ``generated`` None: a generator that does not blend, no such term) and the output over the
    face pixels the source does not see (``l1_hidden``: ``mask``·(1 − ``covisible``))."""

    def masked(image: Tensor, m: Tensor) -> Tensor:  # per-image mean, 0 (and no NaN) where empty
        m = m.to(torch.float32).expand_as(real)
        err = ((image.float() - real).abs() * m).flatten(1).sum(1)
        return (err / m.flatten(1).sum(1).clamp(min=1.0)).mean()

    face_l1 = torch.nan_to_num(l1_metric(fake.float(), real, mask)).mean()
    terms = {"l1": sec.w_l1 * F.l1_loss(fake, real), "l1_face": sec.w_l1_face * face_l1}
    if generated is not None and sec.w_l1_generated > 0:
        terms["l1_generated"] = sec.w_l1_generated * masked(generated, mask)
    if covisible is not None and sec.w_l1_hidden > 0:
        terms["l1_hidden"] = sec.w_l1_hidden * masked(fake, mask * (1 - covisible))
    return terms


def image_metrics(pred: Tensor, target: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Per-image L1, PSNR and SSIM ``[B]`` over ``mask`` (NaN where the mask is empty)."""
    return {
        "l1": l1_metric(pred, target, mask),
        "psnr": psnr(pred.clamp(0, 1), target, mask),
        "ssim": ssim(pred.clamp(0, 1), target, mask),
    }


class _Accumulator:
    """Sums of per-image metric values, skipping NaN (empty regions) and inf (exact matches)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, key: str, values: Tensor) -> None:
        v = values.detach().double().cpu()
        ok = torch.isfinite(v)
        self.sums[key] = self.sums.get(key, 0.0) + float(v[ok].sum())
        self.counts[key] = self.counts.get(key, 0) + int(ok.sum())

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] if self.counts[k] else math.nan for k in self.sums}


class _ResampledPairs(Dataset):
    """``FramePairs`` seen ``repeats`` times, each time with another source: item ``k`` is driving
    frame ``k mod N`` with a same-identity source drawn by a generator seeded with (seed, k)."""

    def __init__(self, pairs: Any, repeats: int) -> None:
        self.pairs, self.repeats = pairs, max(1, int(repeats))

    def __len__(self) -> int:
        return len(self.pairs) * self.repeats

    def __getitem__(self, k: int) -> dict[str, Any]:
        from ..data.prepared import cached_sample

        p = self.pairs
        n = len(p)
        if k < n:
            return p[k]
        identity, pos = p.items[k % n]
        members = p.groups[identity]
        other = int(np.random.default_rng([p.seed, int(k)]).integers(len(members) - 1))
        (ss, sj), (ds, dj) = members[other + (other >= pos)], members[pos]
        return {
            "source": cached_sample(p.shards[ss], sj, p.crop_size),
            "driving": cached_sample(p.shards[ds], dj, p.crop_size),
            "identity": identity,
        }


@register_stage
class DCNetStage(Stage):
    """DCNet and its discriminator (see the module docstring)."""

    name = "dcnet"
    requires = ("prepare",)

    def __init__(self, cfg, run_dir, ctx: TrainContext) -> None:
        super().__init__(cfg, run_dir, ctx)
        self._mesh = None
        self._perceptual: nn.Module | None = None
        self._recnet: nn.Module | None = None
        self._gen = torch.Generator().manual_seed(cfg.run.seed * 31 + ctx.rank + 11)
        if self.section.vgg_weights and not Path(self.section.vgg_weights).is_file():
            raise FileNotFoundError(f"dcnet.vgg_weights: no such file: {self.section.vgg_weights}")

    # -- networks ------------------------------------------------------------------------------

    def build_models(self) -> dict[str, nn.Module]:
        from jr2net.models.dcnet import DCNet
        from jr2net.models.discriminator import MultiScaleDiscriminator

        sec = self.section
        return {
            "generator": DCNet(dcnet_config(self.cfg)),
            "discriminator": MultiScaleDiscriminator(
                3 + D_EXTRA_CHANNELS, sec.d_scales, sec.d_channels, sec.d_layers
            ),
        }

    def build_optimizers(self, models: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        sec = self.section
        return {
            "generator": make_optimizer(sec, models["generator"].parameters()),
            "discriminator": make_optimizer(sec, models["discriminator"].parameters(), sec.lr_d),
        }

    def model_spec(self) -> dict[str, Any]:
        from jr2net.pipeline.learned import dcnet_spec

        return dcnet_spec(dcnet_config(self.cfg), self.section.conditions, self.section.light)

    @property
    def mesh(self):  # -> jr2net.pipeline.conditions.ConditionMesh
        if self._mesh is None:
            from jr2net.pipeline.conditions import ConditionMesh

            self._mesh = ConditionMesh(self.ctx.face_model)
        return self._mesh

    def _perceptual_net(self) -> nn.Module:
        if self._perceptual is None:
            if self.section.vgg_weights:
                from jr2net.models.resnet import load_torchvision_weights
                from jr2net.models.vgg import VGG19

                net = load_torchvision_weights(VGG19(classifier=False), self.section.vgg_weights)
            else:
                from jr2net.models.face_id import load_face_id_net

                net = load_face_id_net()
            self._perceptual = net.to(self.ctx.device).eval().requires_grad_(False)
        return self._perceptual

    def perceptual(self, fake: Tensor, real: Tensor, landmarks: Tensor) -> Tensor:
        """The perceptual term: VGG-19 features of the crops, or face-id features of face chips
        aligned with the driving landmarks (the same chip box for both images)."""
        net = self._perceptual_net()
        if self.section.vgg_weights:
            feats = net.features_at(torch.cat([fake, real]))
            return perceptual_loss(
                [f[: len(fake)] for f in feats], [f[len(fake) :] for f in feats], VGG_LAYER_WEIGHTS
            )
        from jr2net.models.face_id import align_face_chips

        lm = torch.cat([landmarks, landmarks]).to(fake.dtype)
        feats = net.features(align_face_chips(torch.cat([fake, real]), lm))
        return perceptual_loss([f[: len(fake)] for f in feats], [f[len(fake) :] for f in feats])

    def _recnet_net(self) -> nn.Module:
        if self._recnet is None:
            from jr2net.models.checkpoint import load_recnet

            path = self.section.recnet_checkpoint or str(self.stage_dir("recnet") / "best.pt")
            if not self.section.recnet_checkpoint:
                self.require_output("recnet")
            fitter = load_recnet(path, self.ctx.face_model.to("cpu"))
            self._recnet = fitter.net.to(self.ctx.device).eval().requires_grad_(False)
        return self._recnet

    # -- data ----------------------------------------------------------------------------------

    def collate(self, items: list[Any]) -> Any:
        from ..data.sample import collate

        return collate(items)

    def _pairs(self, split: str) -> Dataset:
        from ..data.pairs import FramePairs

        prepare_dir = self.require_output("prepare")
        return FramePairs(prepare_dir, split, crop_size(self.cfg), self.cfg.run.seed)

    def train_dataset(self) -> Dataset:
        return _ResampledPairs(self._pairs("train"), self.section.source_repeats)

    def eval_dataset(self) -> Dataset | None:
        ds = self._pairs("heldout")
        if len(ds) == 0:
            return None
        # A fixed shuffle, so the first eval_batches cover every held-out video, not only one.
        perm = np.random.default_rng(self.cfg.run.seed).permutation(len(ds)).tolist()
        return Subset(ds, perm)

    # -- conditions ----------------------------------------------------------------------------

    def coefficients(self, sample: dict[str, Any]) -> FaceCoefficients:
        """The sample's coefficients in its crop camera: fitter labels or RecNet's prediction."""
        if self.section.conditions == "fitter":
            return FaceCoefficients(**sample["coeffs"])
        net = self._recnet_net()
        image, K = sample["image"], sample["K"]
        S, Sr = image.shape[-1], net.crop_size
        if Sr != S:
            image = F.interpolate(
                image, size=(Sr, Sr), mode="bilinear", align_corners=False, antialias=Sr < S
            )
        K_r = crop_intrinsics(K, (0.0, 0.0, float(S), float(S)), Sr)
        with torch.no_grad():
            return net.to_image_camera(net(image), K_r).detach()

    def conditions(self, batch: dict[str, Any]):  # -> Conditions
        """DCNet's conditions for a batch of pairs (no gradient: they are inputs)."""
        from jr2net.pipeline.conditions import conditions_from_coefficients

        src, drv = batch["source"], batch["driving"]
        with torch.no_grad():
            return conditions_from_coefficients(
                self.mesh, src["image"], src["K"], self.coefficients(src),
                self.coefficients(drv), drv["K"], int(drv["image"].shape[-1]),
                light=self.section.light,
            )  # fmt: skip

    def _augment(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The same brightness / contrast / channel-gain jitter on both images of each pair."""
        c = self.section.augment_color
        if c <= 0:
            return batch
        B = batch["source"]["image"].shape[0]
        dev = batch["source"]["image"].device

        def u(*shape: int) -> Tensor:
            return (torch.rand(*shape, generator=self._gen) * 2 - 1).to(dev)

        gain, contrast = 1 + c * u(B, 3, 1, 1), 1 + c * u(B, 1, 1, 1)
        out = {k: dict(v) if isinstance(v, dict) else v for k, v in batch.items()}
        for key in ("source", "driving"):
            img = batch[key]["image"]
            mean = img.mean(dim=(1, 2, 3), keepdim=True)
            out[key]["image"] = (((img - mean) * contrast + mean) * gain).clamp(0, 1)
        return out

    # -- training ------------------------------------------------------------------------------

    def train_step(self, batch: Any, step: int) -> dict[str, float]:
        sec, ctx = self.section, self.ctx
        batch = self._augment(batch)
        cond = self.conditions(batch)
        real, lm = batch["driving"]["image"], batch["driving"]["landmarks"]
        G, D = self.models["generator"], self.models["discriminator"]
        B = real.shape[0]
        blends = TrainContext.unwrap(G).config.blends
        with ctx.autocast():
            fake, generated = G(cond.dcnet_inputs(), with_generated=True)
            pair = torch.cat([real, fake.detach()])
            both = D(torch.cat([pair, cond.normals.repeat(2, 1, 1, 1)], 1))
            d_real = [[f[:B] for f in scale] for scale in both]
            d_fake = [[f[B:] for f in scale] for scale in both]
            loss_d = hinge_d_loss(d_real, d_fake)
        ctx.backward_step(loss_d, "discriminator")
        with ctx.autocast():
            d_gen = D(torch.cat([fake, cond.normals], 1))
            terms = reconstruction_terms(
                sec, fake, generated if blends else None, real, cond.mask, cond.covisible
            )
            terms.update({
                "perceptual": sec.w_vgg * self.perceptual(fake, real, lm),
                "adv": sec.w_adv * hinge_g_loss(d_gen),
                "feature_match": sec.w_feature_match * feature_matching_loss(d_real, d_gen),
            })  # fmt: skip
            loss_g = torch.stack([t.float() for t in terms.values()]).sum()
        ctx.backward_step(loss_g, "generator")
        out = {"loss": float(loss_g.detach()), "loss_d": float(loss_d.detach())}
        out.update({k: float(v.detach()) for k, v in terms.items()})
        return out

    # -- evaluation ----------------------------------------------------------------------------

    def evaluate(self, models: dict[str, nn.Module], loader: Any) -> dict[str, float]:
        G = TrainContext.unwrap(models["generator"])
        acc = _Accumulator()
        for batch in loader:
            cond = self.conditions(batch)
            inputs = cond.dcnet_inputs()
            fake, generated = G(inputs, with_generated=True)
            outputs = {"dcnet": fake.float()}
            if G.config.blends:
                outputs["generated"] = generated.float()
            warped, covisible = G.view_synthesis(inputs)
            outputs["warped"] = warped.float()
            outputs["copy"] = batch["source"]["image"]
            real = batch["driving"]["image"]
            masks = {
                "face": cond.mask,
                "crop": torch.ones_like(cond.mask),
                "mouth": cond.mouth,
                "hidden": cond.mask * (1 - covisible),
            }
            for method, image in outputs.items():
                for region, mask in masks.items():
                    for metric, v in image_metrics(image, real, mask).items():
                        acc.add(f"{method}_{region}_{metric}", v)
            acc.add("covisible_fraction", covisible.flatten(1).sum(1) / cond.mask.flatten(1).sum(1))
        out = acc.means()
        for metric in ("l1", "psnr", "ssim"):
            out[metric] = out[f"dcnet_face_{metric}"]
        return out


def summary_rows(metrics: dict[str, float]) -> list[dict[str, Any]]:
    """Evaluation metrics as table rows: one per (method, region) with l1 / psnr / ssim."""
    return [
        {"method": m, "region": r, **{k: metrics.get(f"{m}_{r}_{k}", math.nan)
                                      for k in ("l1", "psnr", "ssim")}}
        for m in METHODS for r in REGIONS
    ]  # fmt: skip
