"""Synthetic faces with exact ground truth as a torch Dataset of the ``sample`` format.

Sample ``i`` of a split is a pure function of ``(seed, split, i)`` (its own numpy generator), so
any worker order gives the same data. Per sample (``jr2net.face.synthetic``): random coefficients
(identity over all modes, pose, light, albedo), an expression from the sparse prior, a fitted
video track row (``p_track``, when an expression bank is given) or the large-expression prior
(``p_large``), a photo texture (``p_texture``, when textures are given), a background patch of the
shared photos. The notional full image is ``render_size``² under the default camera; its true
landmarks give the crop box (``face_crop_box``), and the face is rendered DIRECTLY at the crop
size with the crop intrinsics (the same projection as rendering at ``render_size`` and resampling
the box, without the resampling) over the background cut with the same box.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from jr2net.face import synthetic as syn
from jr2net.face.camera import crop_intrinsics, default_intrinsics
from jr2net.face.model import FaceModel

from .config import SyntheticConfig
from .sample import coeff_tensors, crop_image, crop_points, face_crop_box, make_sample

_SPLITS = {"train": 0, "heldout": 1}
_pool_lock = threading.Lock()
_pools: dict[tuple, list[np.ndarray]] = {}


def _background_pool(size: int, blur: float, seed: int) -> list[np.ndarray]:
    key = (size, blur, seed)
    with _pool_lock:
        if key not in _pools:
            _pools[key] = syn.background_pool(np.random.default_rng(seed), size, blur)
        return _pools[key]


class SyntheticFaces(Dataset):
    """``len`` = ``cfg.size`` (train) or ``cfg.heldout_size`` (heldout) samples of ``crop_size``².

    ``textures [T,V,3]``: per-vertex albedo from fitted photos (``prepared.photo_textures``);
    ``expression_bank [N,E]``: expressions of fitted video frames (``prepared.expression_bank``).
    Without them the corresponding draws fall back to the model albedo / the sparse prior.
    """

    def __init__(
        self,
        cfg: SyntheticConfig,
        model: FaceModel,
        crop_size: int,
        split: str = "train",
        textures: np.ndarray | None = None,
        expression_bank: np.ndarray | None = None,
    ) -> None:
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {list(_SPLITS)}, got {split!r}")
        if not isinstance(model, FaceModel):
            raise TypeError(f"model must be a FaceModel, got {type(model).__name__}")
        self.cfg = cfg
        self.model = model
        self.crop_size = int(crop_size)
        self.split = split
        self.textures = None if textures is None or len(textures) == 0 else np.asarray(textures)
        self.bank = None
        if expression_bank is not None and len(expression_bank):
            self.bank = np.asarray(expression_bank, dtype=np.float32)
            if self.bank.ndim != 2 or self.bank.shape[1] != model.n_expression:
                raise ValueError(
                    f"expression_bank must be [N,{model.n_expression}], got {self.bank.shape}"
                )
        self._state: dict[str, Any] | None = None

    def __len__(self) -> int:
        return self.cfg.size if self.split == "train" else self.cfg.heldout_size

    def __getstate__(self) -> dict[str, Any]:  # workers build their own renderer and solver
        state = dict(self.__dict__)
        state["_state"] = None
        return state

    def _setup(self) -> dict[str, Any]:
        # Built lazily, once per process (DataLoader workers each build their own).
        if self._state is None:
            from jr2net.face.fitting import LandmarkSolver
            from jr2net.face.renderer import FaceRenderer

            n_tex = 0 if self.textures is None else len(self.textures)
            proj = [syn.project_albedo(self.model, t) for t in (self.textures if n_tex else [])]
            self._state = {
                "renderer": FaceRenderer(syn.render_model(self.model, self.textures)),
                "solver": LandmarkSolver.from_model(self.model, n_identity=self.model.n_identity),
                "pool": _background_pool(
                    self.cfg.render_size, self.cfg.background_blur, self.cfg.seed
                ),
                "n_tex": n_tex,
                "tex_albedo": proj,
            }
        return self._state

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} synthetic samples")
        st = self._setup()
        cfg, model, S = self.cfg, self.model, self.crop_size
        rng = np.random.default_rng([cfg.seed, _SPLITS[self.split], int(index)])
        c = syn.random_coeffs(model, rng, cfg.yaw_max_deg)
        u = rng.random()
        if u < cfg.p_track and self.bank is not None:
            beta = syn.track_expression(self.bank, rng)
        elif cfg.p_track <= u < cfg.p_track + cfg.p_large:
            beta = syn.large_expression(model.expression_names, rng)
        else:
            beta = None
        if beta is not None:
            c.expression = torch.as_tensor(beta[None], dtype=torch.float32)
        texture = None
        if st["n_tex"] and rng.random() < cfg.p_texture:
            texture = int(rng.integers(st["n_tex"]))
        background = st["pool"][int(rng.integers(len(st["pool"])))]

        R = cfg.render_size
        K_full = default_intrinsics((R, R))
        lm_full = syn.true_landmarks(st["solver"], model, c, K_full)
        box = face_crop_box(lm_full)
        K = crop_intrinsics(K_full, box, S)
        render_c = c.replace(albedo=syn.render_albedo(c.albedo, st["n_tex"], texture))
        with torch.inference_mode():
            out = st["renderer"].render(render_c, K, (S, S))
        bg = torch.from_numpy(crop_image(background, box, S).copy()).permute(2, 0, 1).float() / 255.0
        m = out.mask[0]
        image = out.image[0].clamp(0, 1) * m + bg * (1 - m)
        image = (image * 255 + 0.5).floor() / 255.0  # the 8-bit quantisation of a real photo
        if texture is not None:
            c.albedo = torch.as_tensor(st["tex_albedo"][texture][None])
        return make_sample(
            image,
            K[0],
            crop_points(lm_full, box, S),
            out.face_mask[0],
            coeff_tensors(c, model.n_identity, model.n_albedo),
            has_gt=True,
            source="synthetic",
            identity=f"synthetic:{self.split}:{index}",
        )
