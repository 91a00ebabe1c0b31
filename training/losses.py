"""Losses of the learned cascade (DESIGN §7): one home for every stage's terms.

RecNet (self-supervised, after Deep3DFaceRecon, Deng et al. 2019):

* ``landmark_loss``: weighted squared 68-landmark distance in units of the crop side; the nose
  (27-35) and the inner mouth (60-67) weigh ``HEAVY_LANDMARK_WEIGHT`` (20x), as in Deep3DFaceRecon.
* ``photometric_loss``: per-pixel Euclidean colour distance (L2 over channels, L1 over pixels:
  robust to the outliers hair and occluders leave) averaged over the face-skin mask.
* ``identity_loss``: cosine distance of face-identity descriptors (the dlib ResNet port, DESIGN §9)
  of the render composited over the input and of the input itself, both chips aligned with the
  same (detected) landmarks.
* ``coefficient_regularization``: priors α, β ~ 0 (N(0,1) and sparse), γ ~ 0, and a monochrome
  light term (Deep3DFaceRecon's "gamma" loss).
* ``coefficient_loss`` and ``vertex_loss``: the supervised terms of samples with ground truth
  (synthetic faces).

``RecNetLoss`` combines them for one batch of the ``training.data.sample`` format. The reference
weights (``RecNetLossWeights``) follow Deep3DFaceRecon's, rescaled to our units: its landmark
weight 1.6e-3 is on squared 224-pixel distances, i.e. ~80 on squared crop-side fractions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from jr2net.face.coeffs import FaceCoefficients

from .model_landmarks import ModelLandmarks

if TYPE_CHECKING:
    from jr2net.face.model import FaceModel
    from jr2net.face.renderer import FaceRenderer, RenderOutput

NOSE = slice(27, 36)
INNER_MOUTH = slice(60, 68)
HEAVY_LANDMARK_WEIGHT = 20.0
GEOMETRY_FIELDS = ("identity", "expression", "angles", "translation")


def _check_points(t: Tensor, arg: str, n: int = 68) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 3 or tuple(t.shape[1:]) != (n, 2):
        raise ValueError(f"{arg} must be [B,{n},2], got {tuple(t.shape)}")


def _check_image(t: Tensor, arg: str, channels: int = 3) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4 or t.shape[1] != channels:
        raise ValueError(f"{arg} must be [B,{channels},H,W], got {tuple(t.shape)}")


def landmark_weights(
    heavy: float = HEAVY_LANDMARK_WEIGHT, device: torch.device | str | None = None
) -> Tensor:
    """Per-landmark weights ``[68]``: 1, and ``heavy`` for the nose (27-35) and inner mouth (60-67)."""
    w = torch.ones(68, device=device)
    w[NOSE] = heavy
    w[INNER_MOUTH] = heavy
    return w


def landmark_loss(
    pred: Tensor,
    target: Tensor,
    size: float | Tensor,
    weight: Tensor | None = None,
    *,
    heavy: float = HEAVY_LANDMARK_WEIGHT,
    robust: float = 0.0,
) -> Tensor:
    """Weighted mean squared landmark distance in units of ``size`` (the crop side), batch mean.

    ``pred``/``target`` are ``[B,68,2]`` pixels; ``weight [B,68]`` (e.g. the samples'
    ``landmark_weight``: 0 for an unknown point) multiplies the static per-point weights. The sum is
    normalised by the static weights' total, so a sample with every point known and off by ``d``
    (in crop sides) scores ``d^2``. ``robust`` > 0 (crop sides) replaces ``d^2`` by the
    Charbonnier cost ``2 r^2 (sqrt(1 + d^2 / r^2) - 1)``: ``d^2`` for ``d << r``, ``2 r d`` (a
    distance, as the mean-distance metric counts it) for ``d >> r``.
    """
    _check_points(pred, "pred")
    _check_points(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    w = landmark_weights(heavy, pred.device).to(pred.dtype)
    norm = w.sum()
    if weight is not None:
        if tuple(weight.shape) != tuple(pred.shape[:2]):
            raise ValueError(f"weight must be [B,68], got {tuple(weight.shape)}")
        w = w[None] * weight.to(pred)
    if robust < 0:
        raise ValueError(f"robust must be >= 0, got {robust}")
    d2 = (((pred - target) / size) ** 2).sum(dim=-1)  # [B,68]
    if robust > 0:
        d2 = 2 * robust**2 * (torch.sqrt(1 + d2 / robust**2) - 1)
    return ((d2 * w).sum(dim=1) / norm).mean()


def landmark_error_iod(pred: Tensor, target: Tensor) -> Tensor:
    """Mean landmark distance over the inter-ocular distance (outer eye corners 36, 45 of the
    target), per sample ``[B]``: the fitter's ``residual_iod`` measure."""
    _check_points(pred, "pred")
    _check_points(target, "target")
    iod = (target[:, 45] - target[:, 36]).norm(dim=-1).clamp(min=1e-6)
    return (pred - target).norm(dim=-1).mean(dim=1) / iod


def photometric_loss(rendered: Tensor, image: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """Masked mean of the per-pixel colour distance ``||rendered - image||_2`` (batch mean).

    ``mask [B,1,H,W]`` in [0,1] (skin ∩ rendered face); a sample with an empty mask adds 0.
    """
    _check_image(rendered, "rendered")
    _check_image(image, "image")
    _check_image(mask, "mask", channels=1)
    if rendered.shape != image.shape or mask.shape[2:] != image.shape[2:]:
        raise ValueError(
            f"rendered {tuple(rendered.shape)}, image {tuple(image.shape)} and mask "
            f"{tuple(mask.shape)} must share B, H, W"
        )
    diff = torch.sqrt(((rendered - image) ** 2).sum(dim=1, keepdim=True) + eps)
    per = (diff * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3)).clamp(min=1.0)
    return per.mean()


def composite(rendered: Tensor, image: Tensor, mask: Tensor) -> Tensor:
    """The render pasted over the image where ``mask`` is 1 (``[B,3,H,W]``)."""
    return rendered * mask + image * (1.0 - mask)


def identity_loss(
    face_id: torch.nn.Module,
    rendered_over: Tensor,
    image: Tensor,
    landmarks: Tensor,
    *,
    chip_size: int = 150,
    image_descriptors: Tensor | None = None,
) -> Tensor:
    """``1 - cos`` of the identity descriptors of ``rendered_over`` and ``image`` (batch mean).

    Both are aligned to face chips with the same ``landmarks [B,68,2]`` (crop pixels) through the
    differentiable ``jr2net.models.face_id.align_face_chips``; the input's descriptors carry no
    gradient (pass ``image_descriptors`` to reuse them).
    """
    from jr2net.models.face_id import align_face_chips

    _check_image(rendered_over, "rendered_over")
    _check_image(image, "image")
    _check_points(landmarks, "landmarks")
    feat = face_id(align_face_chips(rendered_over, landmarks, size=chip_size))
    if image_descriptors is None:
        with torch.no_grad():
            image_descriptors = face_id(align_face_chips(image, landmarks, size=chip_size))
    return (1.0 - F.cosine_similarity(feat, image_descriptors.detach(), dim=-1)).mean()


def coefficient_regularization(
    coeffs: FaceCoefficients,
    *,
    identity: float = 1.0,
    expression: float = 0.8,
    expression_l1: float = 0.0,
    albedo: float = 1.7e-2,
    light_mono: float = 10.0,
) -> Tensor:
    """Priors, batch mean: ``identity·|α|² + expression·|β|² + expression_l1·Σ|β| + albedo·|γ|²
    + light_mono·var_channels(θ)``; 0 at the prior mean with grey light (Deep3DFaceRecon weights)."""
    if not isinstance(coeffs, FaceCoefficients):
        raise TypeError(f"coeffs must be FaceCoefficients, got {type(coeffs).__name__}")
    reg = (
        identity * (coeffs.identity**2).sum(dim=1)
        + expression * (coeffs.expression**2).sum(dim=1)
        + expression_l1 * coeffs.expression.abs().sum(dim=1)
        + albedo * (coeffs.albedo**2).sum(dim=1)
    )
    light = coeffs.light  # [B,9,3]
    mono = ((light - light.mean(dim=2, keepdim=True)) ** 2).mean(dim=(1, 2))
    return (reg + light_mono * mono).mean()


def _pad_to(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Zero-pad the shorter of two ``[B,n]`` tensors (missing identity/albedo modes are 0)."""
    n = max(a.shape[1], b.shape[1])
    return F.pad(a, (0, n - a.shape[1])), F.pad(b, (0, n - b.shape[1]))


@dataclass
class CoefficientLossWeights:
    """Weights of the supervised coefficient groups (each a mean squared error)."""

    identity: float = 1.0
    expression: float = 10.0  # β ∈ [0,1]: errors are ~10x smaller than α's
    angles: float = 10.0  # radians
    translation: float = 0.04  # per 10 mm: (error / 50 mm)^2; depth trades off with face size
    albedo: float = 0.1
    light: float = 0.1


def coefficient_loss(
    pred: FaceCoefficients,
    target: FaceCoefficients,
    mask: Tensor | None = None,
    weights: CoefficientLossWeights | None = None,
) -> Tensor:
    """Weighted MSE per coefficient group, averaged over the samples with ``mask`` (``[B]``) set.

    Identity and albedo counts may differ between prediction and target: missing modes are 0.
    """
    w = weights or CoefficientLossWeights()
    if pred.batch_size != target.batch_size:
        raise ValueError(f"batch sizes differ: {pred.batch_size} vs {target.batch_size}")
    terms = []
    for name, scale, wt in (
        ("identity", 1.0, w.identity),
        ("expression", 1.0, w.expression),
        ("angles", 1.0, w.angles),
        ("translation", 0.1, w.translation),
        ("albedo", 1.0, w.albedo),
        ("light", 1.0, w.light),
    ):
        if wt == 0:
            continue
        a = getattr(pred, name).flatten(1)
        b = getattr(target, name).flatten(1).to(a)
        if a.shape[1] != b.shape[1]:
            a, b = _pad_to(a, b)
        terms.append(wt * ((scale * (a - b)) ** 2).mean(dim=1))
    per = torch.stack(terms).sum(dim=0)
    return _masked_batch_mean(per, mask)


def vertex_loss(pred_verts: Tensor, target_verts: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean per-vertex distance (mm, divided by 10) of model-space shapes ``[B,V,3]``, averaged
    over the samples with ``mask`` set: the shape error the mesh RMSE measures, pose aside."""
    if pred_verts.shape != target_verts.shape or pred_verts.dim() != 3:
        raise ValueError(
            f"vertex tensors must both be [B,V,3], got {tuple(pred_verts.shape)} and "
            f"{tuple(target_verts.shape)}"
        )
    d = torch.sqrt(((pred_verts - target_verts) ** 2).sum(dim=-1) + 1e-8).mean(dim=1) / 10.0
    return _masked_batch_mean(d, mask)


def _masked_batch_mean(per: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return per.mean()
    m = mask.to(per).reshape(-1)
    if m.shape[0] != per.shape[0]:
        raise ValueError(f"mask must be [B] = [{per.shape[0]}], got {tuple(mask.shape)}")
    return (per * m).sum() / m.sum().clamp(min=1.0)


# ---- RecNet: all terms for one batch ------------------------------------------------------------


@dataclass
class RecNetLossWeights:
    """Weights of ``RecNetLoss`` (Deep3DFaceRecon's, in our units; see the module docstring).

    ``regularization`` scales the α/β/γ priors (``reg_*``); ``light_mono`` stands alone, as
    Deep3DFaceRecon's gamma loss does.
    """

    landmark: float = 80.0
    landmark_heavy: float = HEAVY_LANDMARK_WEIGHT  # nose and inner-mouth weight (the rest: 1)
    landmark_robust: float = 0.0  # Charbonnier scale (crop sides) of ``landmark_loss``; 0 = d^2
    photometric: float = 1.92
    identity: float = 0.2
    regularization: float = 3e-4
    reg_identity: float = 1.0
    reg_expression: float = 0.8
    reg_expression_l1: float = 0.0
    reg_albedo: float = 1.7e-2
    light_mono: float = 10.0
    coefficients: float = 1.0
    vertices: float = 1.0
    # Real samples (``has_gt`` 0, ``coeffs_valid`` where given): coefficient + vertex losses
    # against their fitter pseudo-labels (the prepare cache's); 0 = self-supervised only.
    pseudo: float = 0.0


class RecNetLoss:
    """RecNet's training objective on a batch (``training.data.sample.collate`` format).

    ``model`` is the face model the network regresses (its face region is rendered); the
    coefficients must be in the camera of the batch's ``K`` (the crop's). With ``photometric`` and
    ``identity`` off nothing is rasterised: the cheap landmarks-only phase. ``face_id`` is needed
    for the identity term; ``n_identity`` is the most identity modes the coefficients carry.
    """

    def __init__(
        self,
        model: FaceModel,
        weights: RecNetLossWeights | None = None,
        face_id: torch.nn.Module | None = None,
        *,
        n_identity: int | None = None,
        contour: bool = True,
    ) -> None:
        from jr2net.face.renderer import FaceRenderer

        self.model = model
        self.weights = weights or RecNetLossWeights()
        self.face_id = face_id
        sub = model
        if model.region is not None and "face" in model.region_names:
            sub = model.subset(["face"])
        _autograd_albedo(sub)
        self.render_model = sub
        self.renderer: FaceRenderer = FaceRenderer(sub)
        n_id = model.n_identity if n_identity is None else n_identity
        self.landmarks = ModelLandmarks(model, n_id, contour=contour)

    def __call__(
        self,
        coeffs: FaceCoefficients,
        batch: dict[str, Any],
        *,
        photometric: bool = True,
        identity: bool = True,
        identity_samples: int | None = None,
        image_geometry: bool = True,
    ) -> tuple[Tensor, dict[str, float], RenderOutput | None]:
        """Total loss, the weighted terms (floats, for logging; terms weighted 0 are left out) and
        the render (None when neither image term is on). ``identity_samples`` caps the samples
        the identity term sees (the first ones of the batch). ``image_geometry`` False renders
        the image terms with the geometry (identity, expression, pose) detached: they then train
        albedo and light only, and the landmarks alone place the face."""
        w = self.weights
        image: Tensor = batch["image"]
        K: Tensor = batch["K"].to(image)
        size = float(image.shape[-1])
        terms: dict[str, Tensor] = {}
        if w.landmark > 0:
            lm2d = self.landmarks.project(coeffs, K)
            terms["landmark"] = w.landmark * landmark_loss(
                lm2d,
                batch["landmarks"].to(lm2d),
                size,
                batch.get("landmark_weight"),
                heavy=w.landmark_heavy,
                robust=w.landmark_robust,
            )
        photometric = photometric and w.photometric > 0
        identity = identity and w.identity > 0
        render = None
        if photometric or identity:
            rc = coeffs
            if not image_geometry:
                rc = coeffs.replace(**{n: getattr(coeffs, n).detach() for n in GEOMETRY_FIELDS})
            render = self.renderer.render(rc, K, (image.shape[-2], image.shape[-1]))
            if photometric:
                mask = render.face_mask * batch["mask"].to(image)
                terms["photometric"] = w.photometric * photometric_loss(render.image, image, mask)
            if identity:
                if self.face_id is None:
                    raise ValueError("the identity term needs a face_id network")
                n = (
                    image.shape[0]
                    if identity_samples is None
                    else min(identity_samples, len(image))
                )
                comp = composite(render.image[:n], image[:n], render.face_mask[:n])
                terms["identity"] = w.identity * identity_loss(
                    self.face_id, comp, image[:n], batch["landmarks"][:n].to(image)
                )
        if w.regularization > 0 or w.light_mono > 0:
            r = w.regularization
            terms["regularization"] = coefficient_regularization(
                coeffs,
                identity=r * w.reg_identity,
                expression=r * w.reg_expression,
                expression_l1=r * w.reg_expression_l1,
                albedo=r * w.reg_albedo,
                light_mono=w.light_mono,
            )
        if _any_gt(batch) and (w.coefficients > 0 or w.vertices > 0):
            has = torch.as_tensor(batch["has_gt"]).to(torch.bool)
            c, v = self._supervised(coeffs, batch, has, w.coefficients > 0, w.vertices > 0)
            if c is not None:
                terms["coefficients"] = w.coefficients * c
            if v is not None:
                terms["vertices"] = w.vertices * v
        if w.pseudo > 0 and batch.get("coeffs") is not None and "has_gt" in batch:
            real = ~torch.as_tensor(batch["has_gt"]).to(torch.bool)
            if "coeffs_valid" in batch:
                real &= torch.as_tensor(batch["coeffs_valid"]).to(torch.bool).cpu()
            if bool(real.any()):
                c, v = self._supervised(coeffs, batch, real, True, True)
                terms["pseudo"] = w.pseudo * (c + v)  # type: ignore[operator]
        if not terms:
            raise ValueError("every RecNet loss term is switched off")
        total = torch.stack(list(terms.values())).sum()
        return total, {k: float(v.detach()) for k, v in terms.items()}, render

    def _supervised(
        self,
        coeffs: FaceCoefficients,
        batch: dict[str, Any],
        pick: Tensor,
        with_coeffs: bool,
        with_vertices: bool,
    ) -> tuple[Tensor | None, Tensor | None]:
        """Coefficient and vertex losses against ``batch["coeffs"]`` on the ``pick [B]``ed
        samples, each scaled by their share of the batch (a batch mean like the other terms)."""
        device = batch["image"].device
        idx = torch.nonzero(pick.cpu()).squeeze(1)
        pred = coeffs.select(idx.to(coeffs.device))
        gt = _gt_coeffs(batch["coeffs"], device).select(idx.to(device))
        share = idx.numel() / coeffs.batch_size
        c = v = None
        if with_coeffs:
            c = share * coefficient_loss(pred, gt)
        if with_vertices:
            m = self.render_model.to(device)
            pv = m.shape(pred.identity, pred.expression)
            gv = m.shape(gt.identity[:, : m.n_identity], gt.expression)
            v = share * vertex_loss(pv, gv)
        return c, v


def _autograd_albedo(model: FaceModel) -> None:
    """Make sure ``model``'s albedo tensors can enter autograd graphs.

    The albedo is built lazily on first use; when that first use ran under
    ``torch.inference_mode`` (a dataset rendering synthetic faces, the prepare stage in the same
    process) its tensors are inference tensors, which a training graph cannot save. A clone made
    here, outside inference mode, is a normal tensor with the same values.
    """
    from jr2net.face.albedo import AlbedoModel

    with torch.inference_mode(False):
        alb = model.albedo
        if alb.mean.is_inference() or alb.basis.is_inference():
            model._albedo = AlbedoModel(alb.mean.clone(), alb.basis.clone())


def _any_gt(batch: dict[str, Any]) -> bool:
    has = batch.get("has_gt")
    return has is not None and bool(torch.as_tensor(has).any()) and batch.get("coeffs") is not None


def _gt_coeffs(
    coeffs: FaceCoefficients | dict[str, Tensor], device: torch.device
) -> FaceCoefficients:
    """The batch's ground truth as FaceCoefficients (the collate gives either form)."""
    if isinstance(coeffs, FaceCoefficients):
        return coeffs.to(device)
    return FaceCoefficients(**{k: torch.as_tensor(v).to(device) for k, v in coeffs.items()})


# ---- DCNet: pix2pixHD / SPADE terms (L1 and the weights are the stage's) -----------------------
VGG_LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)  # pix2pixHD, relu1_1..relu5_1


def perceptual_loss(fake: list[Tensor], real: list[Tensor], weights: Any = None) -> Tensor:
    """Weighted sum over layers of the mean L1 between feature maps of a frozen network."""
    w = weights if weights is not None else (1.0,) * len(fake)
    if not fake or not len(fake) == len(real) == len(w):
        raise ValueError(f"{len(fake)} fake, {len(real)} real feature maps, {len(w)} weights")
    return sum(wi * F.l1_loss(f, r.detach()) for wi, f, r in zip(w, fake, real, strict=True))


def _logits(outputs: list[list[Tensor]]) -> list[Tensor]:
    if not outputs:
        raise ValueError("no discriminator outputs")
    return [o[-1] for o in outputs]  # per scale: features..., logits


def hinge_d_loss(real: list[list[Tensor]], fake: list[list[Tensor]]) -> Tensor:
    """Discriminator hinge loss over the scales: mean of E[relu(1-D(x))] + E[relu(1+D(G))]."""
    r, f = _logits(real), _logits(fake)
    terms = [F.relu(1 - a).mean() + F.relu(1 + b).mean() for a, b in zip(r, f, strict=True)]
    return torch.stack(terms).mean()


def hinge_g_loss(fake: list[list[Tensor]]) -> Tensor:
    """Generator hinge loss over the scales: -E[D(G)]."""
    return torch.stack([-b.mean() for b in _logits(fake)]).mean()


def feature_matching_loss(real: list[list[Tensor]], fake: list[list[Tensor]]) -> Tensor:
    """Mean L1 between the discriminator's intermediate features (not the logits) of real
    (detached) and generated images, over layers and scales (pix2pixHD)."""
    if len(real) != len(fake) or any(
        len(a) != len(b) or len(a) < 2 for a, b in zip(real, fake, strict=True)
    ):
        raise ValueError("feature matching needs matching per-scale feature lists")
    pairs = [
        p for fr, ff in zip(real, fake, strict=True) for p in zip(fr[:-1], ff[:-1], strict=True)
    ]
    return torch.stack([F.l1_loss(b, a.detach()) for a, b in pairs]).mean()


# ---- ETNet ---------------------------------------------------------------------------------------


def activation_loss(pred: Tensor, target: Tensor) -> Tensor:
    """The seed's activation loss of expressions ``[B,E]``: mean over samples and dimensions of
    ``|max(β, β_gt)·(β − β_gt)|``: errors weigh by how active the shape is (in either), so the
    many inactive shapes of a sparse expression cost little and extreme ones most."""
    if pred.shape != target.shape or pred.dim() != 2:
        raise ValueError(
            f"pred and target must be the same [B,E], got {pred.shape}, {target.shape}"
        )
    target = target.to(pred)
    return (torch.maximum(pred, target) * (pred - target)).abs().mean()
