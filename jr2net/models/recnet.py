"""RecNet (DESIGN §1): a ResNet regresses FaceCoefficients from a canonical face crop.

The canonical crop is defined once here: ``face_crop_box`` puts a square around the 68 landmarks
(centre of their box, shifted up by CROP_SHIFT·height for the forehead, side CROP_SCALE·max(w, h)),
and the crop resized to ``S``² is seen by the canonical camera
``K_canon = default_intrinsics(S)``. RecNet predicts coefficients in K_canon; its last layers are
zero-initialised so an untrained RecNet predicts the mean face, neutral, frontal, neutral light,
at ``default_translation``: the translation whose projected 68 landmarks fill the canonical crop
exactly as ``face_crop_box`` frames a face. ``to_image_camera`` moves predictions to the camera
of the actual crop (and so to the full image, which shares that camera).

Expression β ∈ [0,1] uses ``unit_interval``: a clamp whose gradient passes straight through
inside [0,1] and, outside, only when it points back inside, so β = 0 at initialisation still
receives gradients and the raw value cannot drift away unboundedly.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from jr2net.face.camera import (
    default_intrinsics,
    euler_rotation,
    flip,
    model_to_camera,
    project,
)
from jr2net.face.coeffs import FaceCoefficients, neutral_light
from jr2net.face.model import FaceModel
from jr2net.models.resnet import ResNet

CROP_SCALE = 1.5  # crop side / max(width, height) of the 68-landmark box
CROP_SHIFT = 0.1  # crop centre moves up by this fraction of the landmark-box height
TRANSLATION_SCALE_MM = 10.0  # mm per unit of the raw translation output
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEADS = ("identity", "expression", "albedo", "angles", "translation", "light")


class _UnitInterval(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        # Descent moves x by −grad: keep the gradient inside [0,1] or when it leads back inside.
        keep = ((x >= 0) & (x <= 1)) | ((x < 0) & (grad < 0)) | ((x > 1) & (grad > 0))
        return grad * keep.to(grad.dtype)


def unit_interval(x: Tensor) -> Tensor:
    """Clamp to [0,1] with an inward straight-through gradient (the β parametrisation)."""
    return _UnitInterval.apply(x)


def face_crop_box(landmarks68: np.ndarray | Tensor) -> tuple[float, float, float, float] | Tensor:
    """Canonical square crop ``(x0, y0, x1, y1)`` (pixels, float, may leave the image).

    ``landmarks68`` is ``[68,2]`` (x, y) pixels (numpy or tensor) -> a tuple of floats; a batched
    ``[B,68,2]`` tensor gives a ``[B,4]`` tensor. The box is in the convention of
    ``jr2net.face.camera.crop_intrinsics``: ``(0, 0, W, H)`` is the whole image.
    """
    batched = isinstance(landmarks68, Tensor) and landmarks68.dim() == 3
    pts = (
        landmarks68 if isinstance(landmarks68, Tensor) else torch.as_tensor(np.asarray(landmarks68))
    )
    if pts.dim() == 2:
        pts = pts.unsqueeze(0)
    if pts.dim() != 3 or pts.shape[1:] != (68, 2):
        raise ValueError(f"landmarks68 must be [68,2] or [B,68,2], got {tuple(pts.shape)}")
    pts = pts.to(torch.float64) if not pts.is_floating_point() else pts
    if not torch.isfinite(pts).all():
        raise ValueError("landmarks68 contain non-finite values")
    lo, hi = pts.amin(dim=1), pts.amax(dim=1)
    size = hi - lo
    cx = (lo[:, 0] + hi[:, 0]) / 2
    cy = (lo[:, 1] + hi[:, 1]) / 2 - CROP_SHIFT * size[:, 1]
    half = CROP_SCALE * size.amax(dim=1) / 2
    # Boxes are in crop_intrinsics' convention: (0, 0, W, H) spans pixel edges −½ … W−½.
    box = torch.stack([cx - half + 0.5, cy - half + 0.5, cx + half + 0.5, cy + half + 0.5], -1)
    if batched:
        return box
    return tuple(float(v) for v in box[0])


def _landmark_box_residual(t: Tensor, lm_model: Tensor, K: Tensor, crop_size: int) -> Tensor:
    verts = model_to_camera(lm_model[None], torch.zeros_like(t)[None], t[None])
    box = face_crop_box(project(verts, K))[0]
    return box - box.new_tensor([0.0, 0.0, crop_size, crop_size])


def solve_default_translation(model: FaceModel, crop_size: int = 224) -> Tensor:
    """Translation ``[3]`` (mm) putting the frontal mean face where ``face_crop_box`` frames it.

    Gauss-Newton on (x0, y0, x1, y1) of the canonical crop of the projected mean 68 landmarks;
    the result does not depend on ``crop_size`` (K_canon scales with it).
    """
    lm = model.vertices[model.landmarks68].detach().to("cpu", torch.float64)
    K = default_intrinsics(crop_size).to(torch.float64)
    t = torch.tensor([0.0, 0.0, -500.0], dtype=torch.float64)
    t[:2] = -lm[:, :2].mean(0)
    for _ in range(30):
        r = _landmark_box_residual(t, lm, K, crop_size)
        if r.abs().max() < 1e-6:
            break
        J = torch.autograd.functional.jacobian(
            lambda tt: _landmark_box_residual(tt, lm, K, crop_size), t
        )
        t = t - torch.linalg.lstsq(J, r[:, None]).solution[:, 0]
    if not torch.isfinite(t).all() or -t[2] <= lm[:, 2].max():
        raise ValueError(f"cannot frame face model {model.name!r} in the canonical crop")
    return t.to(torch.float32)


def _move_to_camera(
    coeffs: FaceCoefficients, K_from: Tensor, K_to: Tensor, anchor: Tensor, names: tuple[str, str]
) -> FaceCoefficients:
    if not isinstance(coeffs, FaceCoefficients):
        raise TypeError(f"coeffs must be FaceCoefficients, got {type(coeffs).__name__}")
    B = coeffs.batch_size
    dev, dt = coeffs.device, coeffs.translation.dtype
    Ks = []
    for name, K in zip(names, (K_from, K_to), strict=True):
        if not isinstance(K, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(K).__name__}")
        K = K.unsqueeze(0) if K.dim() == 2 else K
        if K.dim() != 3 or K.shape[1:] != (3, 3) or K.shape[0] not in (1, B):
            raise ValueError(f"{name} must be [{B},3,3] or [3,3], got {tuple(K.shape)}")
        Ks.append(K.to(dev, dt).expand(B, 3, 3))
    K_from, K_to = Ks
    rot = euler_rotation(coeffs.angles)
    anchor = anchor.to(dev, dt).view(1, 3, 1)
    p = flip((rot @ anchor)[..., 0] + coeffs.translation)  # anchor in the camera frame
    f_from = torch.stack([K_from[:, 0, 0], K_from[:, 1, 1]], -1)
    f_to = torch.stack([K_to[:, 0, 0], K_to[:, 1, 1]], -1)
    pix = f_from * p[:, :2] / p[:, 2:3] + K_from[:, :2, 2]
    z_new = p[:, 2:3] * f_to[:, :1] / f_from[:, :1]
    p_new = torch.cat([(pix - K_to[:, :2, 2]) * z_new / f_to, z_new], dim=-1)
    return coeffs.replace(translation=coeffs.translation + flip(p_new - p))


def to_image_camera(
    coeffs: FaceCoefficients, K_actual: Tensor, K_canon: Tensor, anchor: Tensor
) -> FaceCoefficients:
    """Coefficients predicted in ``K_canon`` re-expressed for the actual crop camera ``K_actual``.

    ``K_actual`` is ``crop_intrinsics(K_image, box, S)``; the result also renders correctly with
    ``K_image`` over the full image (same camera). The model-space ``anchor`` (mm; the mean-face
    landmark centroid) keeps its projected pixel, and the depth scales by f_actual/f_canon so the
    face keeps its projected size; rotation is unchanged. Approximation: exact for a face of no
    depth extent (weak perspective); otherwise the perspective foreshortening of the face differs
    between the two focal lengths, and the slight rotation between an off-centre crop's viewing
    ray and the optical axis is ignored.
    """
    return _move_to_camera(coeffs, K_canon, K_actual, anchor, ("K_canon", "K_actual"))


def to_canonical_camera(
    coeffs: FaceCoefficients, K_actual: Tensor, K_canon: Tensor, anchor: Tensor
) -> FaceCoefficients:
    """Inverse of ``to_image_camera``: coefficients in ``K_actual`` -> the canonical camera."""
    return _move_to_camera(coeffs, K_actual, K_canon, anchor, ("K_actual", "K_canon"))


class RecNet(nn.Module):
    """Backbone + one zero-initialised linear head per coefficient group (DESIGN §1)."""

    def __init__(
        self,
        backbone: str = "resnet50",
        crop_size: int = 224,
        n_identity: int = 80,
        n_expression: int = 53,
        n_albedo: int = 80,
        width: float = 1.0,
        default_translation: Tensor | tuple[float, float, float] = (0.0, 0.0, -500.0),
        anchor: Tensor | tuple[float, float, float] = (0.0, 0.0, 0.0),
    ) -> None:
        super().__init__()
        if isinstance(crop_size, bool) or not isinstance(crop_size, int) or crop_size < 32:
            raise ValueError(f"crop_size must be an int >= 32, got {crop_size!r}")
        for name, n in (("n_identity", n_identity), ("n_expression", n_expression),
                        ("n_albedo", n_albedo)):  # fmt: skip
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"{name} must be a non-negative int, got {n!r}")
        self.crop_size = crop_size
        self.backbone = ResNet(backbone, width=width, num_classes=None)
        sizes = {"identity": n_identity, "expression": n_expression, "albedo": n_albedo,
                 "angles": 3, "translation": 3, "light": 27}  # fmt: skip
        self.heads = nn.ModuleDict(
            {k: nn.Linear(self.backbone.out_channels, sizes[k]) for k in HEADS}
        )
        for head in self.heads.values():
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.register_buffer(
            "default_translation", _vec3(default_translation, "default_translation")
        )
        self.register_buffer("anchor", _vec3(anchor, "anchor"))
        self.register_buffer("K_canon", default_intrinsics(crop_size)[0])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_face_model(
        cls,
        model: FaceModel,
        backbone: str = "resnet50",
        crop_size: int = 224,
        n_identity: int | None = None,
        n_albedo: int | None = None,
        width: float = 1.0,
    ) -> RecNet:
        """Sizes from ``model`` (all identity / albedo modes unless fewer are asked for)."""
        if not isinstance(model, FaceModel):
            raise TypeError(f"model must be a FaceModel, got {type(model).__name__}")
        n_id = model.n_identity if n_identity is None else n_identity
        n_alb = model.n_albedo if n_albedo is None else n_albedo
        if not 0 <= n_id <= model.n_identity:
            raise ValueError(f"n_identity must be in [0, {model.n_identity}], got {n_id}")
        if not 0 <= n_alb <= model.n_albedo:
            raise ValueError(f"n_albedo must be in [0, {model.n_albedo}], got {n_alb}")
        anchor = model.vertices[model.landmarks68].detach().cpu().float().mean(0)
        return cls(
            backbone=backbone,
            crop_size=crop_size,
            n_identity=n_id,
            n_expression=model.n_expression,
            n_albedo=n_alb,
            width=width,
            default_translation=solve_default_translation(model, crop_size),
            anchor=anchor,
        )

    @property
    def n_identity(self) -> int:
        return self.heads["identity"].out_features

    @property
    def n_expression(self) -> int:
        return self.heads["expression"].out_features

    @property
    def n_albedo(self) -> int:
        return self.heads["albedo"].out_features

    def features(self, images: Tensor) -> Tensor:
        """Backbone features ``[B, C]`` of ``images [B,3,S,S]`` in [0,1]."""
        S = self.crop_size
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1:] != (3, S, S):
            raise ValueError(f"images must be [B,3,{S},{S}], got {tuple(images.shape)}")
        return self.backbone((images - self.mean) / self.std)

    def forward(self, images: Tensor, expression: Tensor | None = None) -> FaceCoefficients:
        """Coefficients in ``K_canon``; a given ``expression [B,E]`` replaces the expression head."""
        f = self.features(images)
        B = f.shape[0]
        if expression is None:
            expression = unit_interval(self.heads["expression"](f))
        elif not isinstance(expression, Tensor) or expression.shape != (B, self.n_expression):
            got = tuple(expression.shape) if isinstance(expression, Tensor) else type(expression)
            raise ValueError(f"expression must be [{B},{self.n_expression}], got {got}")
        return FaceCoefficients(
            identity=self.heads["identity"](f),
            expression=expression,
            albedo=self.heads["albedo"](f),
            angles=self.heads["angles"](f),
            translation=self.default_translation
            + TRANSLATION_SCALE_MM * self.heads["translation"](f),
            light=neutral_light(B, f.device).to(f.dtype) + self.heads["light"](f).view(B, 9, 3),
        )

    def to_image_camera(self, coeffs: FaceCoefficients, K_actual: Tensor) -> FaceCoefficients:
        """``to_image_camera`` with this network's K_canon and anchor."""
        return to_image_camera(coeffs, K_actual, self.K_canon, self.anchor)

    def to_canonical_camera(self, coeffs: FaceCoefficients, K_actual: Tensor) -> FaceCoefficients:
        """``to_canonical_camera`` with this network's K_canon and anchor."""
        return to_canonical_camera(coeffs, K_actual, self.K_canon, self.anchor)


def _vec3(value: Tensor | tuple[float, float, float], arg: str) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float32).detach().cpu().clone()
    if t.shape != (3,):
        raise ValueError(f"{arg} must have 3 values, got shape {tuple(t.shape)}")
    return t
