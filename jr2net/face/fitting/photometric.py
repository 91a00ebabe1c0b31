"""The source fitter's image side: the face crop and skin mask, and the closed-form appearance.

The face submesh is rendered in a square crop (``crop_size``) around the landmarks; on the skin
pixels (landmark outline minus brows, eyes and mouth) the image is ``(mean + B gamma) * (H theta)``,
linear in the SH light theta for fixed albedo and in gamma for fixed light, so a few alternating
ridge solves with Huber reweighting give albedo and light (:func:`solve_appearance`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from jr2net.face.camera import crop_intrinsics
from jr2net.face.fitting.results import safe_iod
from jr2net.face.sh import NEUTRAL_LIGHT_DC, sh_basis

if TYPE_CHECKING:
    from jr2net.face.model import FaceModel


@dataclass
class PhotoCrop:
    """The square crop of the photo the photometric stage works in."""

    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) in photo pixels
    K: torch.Tensor  # [1,3,3] intrinsics of the crop
    image: torch.Tensor  # [1,3,S,S] in [0,1], zeros outside the photo
    skin: torch.Tensor  # [1,1,S,S] skin mask (0/1)
    landmarks: np.ndarray  # [68,2] target landmarks in crop pixels


def skin_polygon(lm: np.ndarray) -> np.ndarray:
    """Face-skin outline from 68 landmarks: the jaw plus the brows lifted onto the forehead."""
    jaw = lm[0:17]
    brows = lm[17:27][::-1].copy()
    up = lm[27] - lm[8]  # chin -> nose bridge, the face's up direction
    brows += 0.18 * up
    return np.concatenate([jaw, brows], axis=0)


def photo_crop(image: np.ndarray, K: torch.Tensor, target: np.ndarray, S: int) -> PhotoCrop:
    """Square crop of side ``S`` around the landmarks ``target [68,2]`` (widened for the forehead),
    sampled from the uint8 photo, and its skin mask."""
    # Square crop around the landmarks, widened for the forehead.
    lo, hi = target.min(axis=0), target.max(axis=0)
    side = 1.5 * float(max(hi - lo))
    cx, cy = (lo + hi) / 2.0
    cy -= 0.08 * side
    box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    Kc = crop_intrinsics(K, box, S)
    img = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255.0
    Hh, Ww = image.shape[:2]
    # Sample the crop (half-pixel convention of crop_intrinsics), zeros outside the photo.
    js = (torch.arange(S, dtype=torch.float32) + 0.5) * (side / S) + box[0] - 0.5
    is_ = (torch.arange(S, dtype=torch.float32) + 0.5) * (side / S) + box[1] - 0.5
    gx = (js + 0.5) / Ww * 2 - 1
    gy = (is_ + 0.5) / Hh * 2 - 1
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None]
    if side / S > 1.5:  # pre-blur big downscales a little (cheap anti-aliasing)
        k = int(min(side / S, 4))
        img = F.avg_pool2d(img, k, stride=1, padding=k // 2)[..., :Hh, :Ww]
    crop = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    inside = ((grid.abs() <= 1).all(dim=-1)).float()[:, None]
    # Skin region from the landmarks (in crop pixels).
    lm_c = (target - np.array(box[:2])) * (S / side) + (S / side - 1) / 2.0
    pil = Image.new("L", (S, S), 0)
    draw = ImageDraw.Draw(pil)
    draw.polygon([tuple(q) for q in skin_polygon(lm_c).tolist()], fill=255)
    # Not skin (or not modelled by a smooth albedo): brows, eyes with lashes, the mouth opening.
    band = max(1, int(round(0.22 * safe_iod(lm_c))))
    for part in (lm_c[17:22], lm_c[22:27]):
        draw.line([tuple(q) for q in part.tolist()], fill=0, width=band, joint="curve")
    for part in (lm_c[36:42], lm_c[42:48], lm_c[60:68]):
        draw.polygon([tuple(q) for q in part.tolist()], fill=0)
        pts = [tuple(q) for q in part.tolist()]
        draw.line(pts + pts[:1], fill=0, width=max(1, band // 3))
    skin = torch.from_numpy(np.asarray(pil) > 0).float()[None, None] * inside
    return PhotoCrop(box, Kc, crop, skin, lm_c)


def solve_appearance(
    out,
    crop: torch.Tensor,
    skin: torch.Tensor,
    sub: FaceModel,
    n_albedo: int,
    max_pixels: int,
    rounds: int = 3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Albedo coefficients ``[1,G]`` and SH light ``[1,9,3]`` in closed form for fixed geometry.

    The image is ``(mean + B gamma) * (H theta)`` per channel: linear in theta for fixed gamma and
    in gamma for fixed theta, so a few alternating ridge solves (with Huber reweighting) on the
    covered skin pixels replace an iterative optimiser. Priors: gamma ~ N(0, 1) (the albedo
    basis is scaled for it), a tiny ridge on theta. ``out`` is the ``FaceRenderer`` output of
    the current geometry in the crop; at most ``max_pixels`` skin pixels (an even subsample) go
    into the solves.
    """
    G = n_albedo
    m = ((out.mask * skin)[0, 0] > 0).flatten()
    idx = torch.nonzero(m).squeeze(1)
    light = torch.zeros(1, 9, 3)
    light[0, 0] = NEUTRAL_LIGHT_DC
    gamma = torch.zeros(1, G)
    if idx.numel() < 50:
        return gamma, light
    if idx.numel() > max_pixels:  # even subsample: the solve needs a few thousand pixels
        idx = idx[torch.linspace(0, idx.numel() - 1, max_pixels).long()]
    rast = out.rast[0].reshape(-1, 4)[idx]
    fid = rast[:, 3].long() - 1
    tri = sub.faces.long()[fid]  # [N,3]
    w = torch.stack([rast[:, 0], rast[:, 1], 1 - rast[:, 0] - rast[:, 1]], dim=1)  # [N,3]
    alb = sub.albedo
    mean = (alb.mean[tri] * w[..., None]).sum(1)  # [N,3]
    basis = alb.basis[:G].permute(1, 0, 2)  # [V,G,3]
    Bp = (basis[tri] * w[:, :, None, None]).sum(1)  # [N,G,3]
    Hb = sh_basis(out.normals)[0].reshape(9, -1)[:, idx].T  # [N,9]
    obs = crop[0].reshape(3, -1)[:, idx].T  # [N,3]
    N = obs.shape[0]
    weights = torch.ones(N, 1)
    eye9, eyeG = torch.eye(9), torch.eye(G)
    lam = 2.5e-3 * N / 1000.0  # prior weight relative to the per-pixel noise (~0.05)
    for r in range(rounds):
        albedo = mean + torch.einsum("ngc,g->nc", Bp, gamma[0])
        for ch in range(3):
            A = Hb * albedo[:, ch : ch + 1]
            Aw = A * weights
            light[0, :, ch] = torch.linalg.solve(Aw.T @ A + 1e-4 * eye9, Aw.T @ obs[:, ch])
        irr = Hb @ light[0]  # [N,3]
        D = (Bp * irr[:, None, :]).permute(0, 2, 1).reshape(3 * N, G)
        rhs = (obs - irr * mean).reshape(3 * N)
        wr = weights.expand(N, 3).reshape(3 * N, 1)
        gamma = torch.linalg.solve((D * wr).T @ D + lam * eyeG, (D * wr).T @ rhs)[None]
        if r < rounds - 1:  # Huber weights against hair, shadows, specularities
            albedo = mean + torch.einsum("ngc,g->nc", Bp, gamma[0])
            res = (albedo * irr - obs).norm(dim=1, keepdim=True)
            weights = (0.05 / res.clamp(min=0.05)).clamp(max=1.0)
    return gamma, light
