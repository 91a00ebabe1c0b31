"""3DMM coefficients of a batch of faces: identity α, expression β, albedo γ, pose, SH light θ."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from jr2net.face.camera import DEFAULT_DISTANCE_MM
from jr2net.face.sh import NEUTRAL_LIGHT_DC

if TYPE_CHECKING:
    from jr2net.face.model import FaceModel

FIELDS = ("identity", "expression", "albedo", "angles", "translation", "light")
_TAILS = {"angles": (3,), "translation": (3,), "light": (9, 3)}


def neutral_light(batch: int = 1, device: torch.device | str | None = None) -> Tensor:
    """White ambient SH light ``[B,9,3]`` with irradiance exactly 1 (image = albedo)."""
    light = torch.zeros(batch, 9, 3, device=device)
    light[:, 0, :] = NEUTRAL_LIGHT_DC
    return light


def default_translation(batch: int = 1, device: torch.device | str | None = None) -> Tensor:
    """Translation ``[B,3]`` placing the model origin DEFAULT_DISTANCE_MM in front of the camera."""
    t = torch.zeros(batch, 3, device=device)
    t[:, 2] = -DEFAULT_DISTANCE_MM
    return t


@dataclass
class FaceCoefficients:
    """Batched coefficients (all ``[B,…]`` tensors); see DESIGN §3 for pose and light.

    identity [B,K] (α ~ N(0,1); K may be fewer than the model's), expression [B,E] (β ∈ [0,1],
    model order), albedo [B,G], angles [B,3] (pitch, yaw, roll, radians), translation [B,3] (mm,
    model axes), light [B,9,3].
    """

    identity: Tensor
    expression: Tensor
    albedo: Tensor
    angles: Tensor
    translation: Tensor
    light: Tensor

    def __post_init__(self) -> None:
        batch = None
        for name in FIELDS:
            t = getattr(self, name)
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            tail = _TAILS.get(name)
            if tail is None and t.dim() != 2:
                raise ValueError(f"{name} must be [B, n], got {tuple(t.shape)}")
            if tail is not None and tuple(t.shape[1:]) != tail:
                raise ValueError(f"{name} must be [B,{','.join(map(str, tail))}], got {tuple(t.shape)}")
            if batch is None:
                batch = t.shape[0]
            elif t.shape[0] != batch:
                raise ValueError(f"{name} has batch {t.shape[0]}, expected {batch}")

    # ---- construction ---------------------------------------------------------------------------

    @classmethod
    def zeros(
        cls,
        model: FaceModel,
        batch: int = 1,
        n_identity: int | None = None,
        n_albedo: int | None = None,
        device: torch.device | str | None = None,
    ) -> FaceCoefficients:
        """Mean face, neutral expression, frontal, DEFAULT_DISTANCE_MM away, white ambient light."""
        device = model.device if device is None else device
        n_id = model.n_identity if n_identity is None else n_identity
        n_alb = model.n_albedo if n_albedo is None else n_albedo
        if not 0 <= n_id <= model.n_identity:
            raise ValueError(f"n_identity must be in [0, {model.n_identity}], got {n_id}")
        if not 0 <= n_alb <= model.n_albedo:
            raise ValueError(f"n_albedo must be in [0, {model.n_albedo}], got {n_alb}")
        return cls(
            identity=torch.zeros(batch, n_id, device=device),
            expression=torch.zeros(batch, model.n_expression, device=device),
            albedo=torch.zeros(batch, n_alb, device=device),
            angles=torch.zeros(batch, 3, device=device),
            translation=default_translation(batch, device),
            light=neutral_light(batch, device),
        )

    # ---- tensor plumbing --------------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        return int(self.angles.shape[0])

    @property
    def device(self) -> torch.device:
        return self.angles.device

    def tensors(self) -> dict[str, Tensor]:
        """The fields as an ordered name -> tensor dict."""
        return {name: getattr(self, name) for name in FIELDS}

    def _map(self, fn) -> FaceCoefficients:
        return FaceCoefficients(**{k: fn(v) for k, v in self.tensors().items()})

    def detach(self) -> FaceCoefficients:
        return self._map(lambda t: t.detach())

    def clone(self) -> FaceCoefficients:
        return self._map(lambda t: t.clone())

    def to(self, device: torch.device | str) -> FaceCoefficients:
        return self._map(lambda t: t.to(device))

    def replace(self, **fields: Tensor) -> FaceCoefficients:
        """A copy with some fields replaced (e.g. source identity + driving expression)."""
        return dataclasses.replace(self, **fields)

    def requires_grad_(self, names: Sequence[str] = FIELDS) -> FaceCoefficients:
        """Turn on gradients for the named fields (in place, leaf tensors); returns self."""
        for name in names:
            getattr(self, name).requires_grad_(True)
        return self

    def select(self, index: int | slice | Sequence[int] | Tensor) -> FaceCoefficients:
        """Rows of the batch, keeping the batch dimension (an int gives a batch of one)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return self._map(lambda t: t[index])

    def expand(self, batch: int) -> FaceCoefficients:
        """Repeat a batch of one ``batch`` times."""
        if self.batch_size != 1:
            raise ValueError(f"expand needs a batch of one, got {self.batch_size}")
        return self._map(lambda t: t.expand(batch, *t.shape[1:]).contiguous())

    @staticmethod
    def cat(items: Sequence[FaceCoefficients]) -> FaceCoefficients:
        """Concatenate along the batch dimension."""
        if not items:
            raise ValueError("cat needs at least one FaceCoefficients")
        return FaceCoefficients(
            **{name: torch.cat([getattr(c, name) for c in items], dim=0) for name in FIELDS}
        )

    # ---- serialisation ------------------------------------------------------------------------

    def to_dict(self, expression_names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-friendly dict of nested float lists; adds ``expression_names`` when given."""
        out: dict[str, Any] = {k: v.detach().cpu().tolist() for k, v in self.tensors().items()}
        if expression_names is not None:
            if len(expression_names) != self.expression.shape[1]:
                raise ValueError(
                    f"{len(expression_names)} expression names for {self.expression.shape[1]} "
                    "coefficients"
                )
            out["expression_names"] = list(expression_names)
        return out

    @classmethod
    def from_dict(
        cls,
        d: Mapping[str, Any],
        model: FaceModel | None = None,
        device: torch.device | str | None = None,
    ) -> FaceCoefficients:
        """Inverse of ``to_dict``. With a model and ``expression_names``, expressions are mapped
        by name into the model's order (names the model lacks raise, missing ones are 0)."""
        missing = [k for k in FIELDS if k not in d]
        if missing:
            raise ValueError(f"coefficient dict is missing {missing}")
        t = {}
        for k in FIELDS:
            try:
                t[k] = torch.as_tensor(d[k], dtype=torch.float32, device=device)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"coefficient {k!r} is not a numeric array: {exc}") from exc
            if k in ("identity", "expression", "albedo") and t[k].dim() == 1:
                t[k] = t[k].unsqueeze(0)
            elif k in _TAILS and t[k].dim() == len(_TAILS[k]):
                t[k] = t[k].unsqueeze(0)
        names = d.get("expression_names")
        if model is not None and names is not None:
            names = [str(n) for n in names]
            if len(names) != t["expression"].shape[1]:
                raise ValueError("expression_names does not match the expression coefficients")
            unknown = [n for n in names if n not in model.expression_names]
            if unknown:
                raise ValueError(f"expressions {unknown} are not in face model {model.name!r}")
            expr = t["expression"].new_zeros(t["expression"].shape[0], model.n_expression)
            idx = torch.tensor([model.expression_names.index(n) for n in names], dtype=torch.long)
            expr[:, idx.to(expr.device)] = t["expression"]
            t["expression"] = expr
        return cls(**t)
