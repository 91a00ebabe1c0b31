"""Reenactment metrics (DESIGN §8): L1, PSNR, SSIM, landmark RMSE (EFL), identity cosine.

Image metrics take float ``[B, 3, H, W]`` in [0, 1] and return one value per image (``[B]``).
An optional ``mask`` (``[B, 1, H, W]``, ``[B, H, W]`` or ``[B, C, H, W]``, values in [0, 1])
restricts the average to the masked pixels (a weighted mean; an all-zero mask gives NaN).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["l1", "psnr", "ssim", "landmark_rmse", "identity_cosine"]


def _check_pair(pred: Tensor, target: Tensor) -> None:
    for name, t in (("pred", pred), ("target", target)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a float tensor in [0, 1], got {t.dtype}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be [B, C, H, W], got {list(t.shape)}")
    if pred.shape != target.shape:
        raise ValueError(f"pred {list(pred.shape)} and target {list(target.shape)} differ in shape")


def _prep_mask(mask: Tensor | None, ref: Tensor) -> Tensor | None:
    """Mask as float ``[B, 1 or C, H, W]`` broadcastable to ``ref``."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    m = mask.to(dtype=ref.dtype, device=ref.device)
    if m.dim() == 3:
        m = m.unsqueeze(1)
    b, c, h, w = ref.shape
    if m.dim() != 4 or m.shape[0] != b or m.shape[2:] != (h, w) or m.shape[1] not in (1, c):
        raise ValueError(
            f"mask must be [B, 1, H, W], [B, H, W] or [B, C, H, W] matching {list(ref.shape)}, "
            f"got {list(mask.shape)}"
        )
    return m


def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Per-batch mean of ``values [B, C, H, W]`` over C, H, W, weighted by ``mask``."""
    if mask is None:
        return values.flatten(1).mean(1)
    m = mask.expand_as(values)
    return (values * m).flatten(1).sum(1) / m.flatten(1).sum(1)


def l1(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean absolute error per image, ``[B]``."""
    _check_pair(pred, target)
    return _masked_mean((pred - target).abs(), _prep_mask(mask, pred))


def psnr(
    pred: Tensor, target: Tensor, mask: Tensor | None = None, data_range: float = 1.0
) -> Tensor:
    """Peak signal-to-noise ratio in dB per image, ``[B]`` (inf where the images are equal)."""
    _check_pair(pred, target)
    mse = _masked_mean((pred - target) ** 2, _prep_mask(mask, pred))
    return 10.0 * torch.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g.to(dtype=dtype, device=device)


def ssim(
    pred: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Structural similarity per image, ``[B]`` (Wang et al. 2004).

    Gaussian window 11x11, sigma 1.5, C1 = (0.01 L)^2, C2 = (0.03 L)^2, computed per channel and
    averaged. The SSIM map covers the "valid" window positions only (no padding, as in the
    reference MATLAB code), i.e. it is ``window_size - 1`` pixels smaller than the image; a mask
    is cropped the same way and weights the map. Computed in float64 (the variances are
    differences of nearly equal moments), returned in the input's dtype.
    """
    _check_pair(pred, target)
    b, c, h, w = pred.shape
    if h < window_size or w < window_size:
        raise ValueError(
            f"images must be at least {window_size}x{window_size} for SSIM, got {h}x{w}"
        )
    out_dtype = pred.dtype
    pred, target = pred.double(), target.double()
    m = _prep_mask(mask, pred)
    g = _gaussian_window(window_size, sigma, pred.dtype, pred.device)
    kx = g.view(1, 1, 1, -1).expand(c, 1, 1, window_size)
    ky = g.view(1, 1, -1, 1).expand(c, 1, window_size, 1)

    def blur(x: Tensor) -> Tensor:  # separable Gaussian, valid region
        return F.conv2d(F.conv2d(x, kx, groups=c), ky, groups=c)

    x, y = pred, target
    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    smap = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    if m is not None:
        r = window_size // 2
        m = m[:, :, r : h - (window_size - 1 - r), r : w - (window_size - 1 - r)]
    return _masked_mean(smap, m).to(out_dtype)


def _as_points(x: object, name: str) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).to(torch.float64)
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3 or t.shape[-1] != 2:
        raise ValueError(f"{name} must be [N, 2] or [B, N, 2], got {list(t.shape)}")
    return t


def landmark_rmse(pred: object, target: object, normalize: str | None = None) -> Tensor:
    """Landmark RMSE per image, ``[B]`` (the EFL metric: generated vs driving landmarks).

    ``sqrt(mean_i |p_i - q_i|^2)`` in pixels; ``normalize="interocular"`` divides by the
    target's outer-eye-corner distance (points 36 and 45; needs 68 points). Inputs ``[N, 2]``
    or ``[B, N, 2]``, numpy or torch.
    """
    p, q = _as_points(pred, "pred"), _as_points(target, "target")
    if p.shape != q.shape:
        raise ValueError(f"pred {list(p.shape)} and target {list(q.shape)} differ in shape")
    rmse = ((p - q) ** 2).sum(-1).mean(-1).sqrt()
    if normalize is None:
        return rmse
    if normalize != "interocular":
        raise ValueError(f"normalize must be None or 'interocular', got {normalize!r}")
    if q.shape[1] != 68:
        raise ValueError(f"interocular normalisation needs 68 landmarks, got {q.shape[1]}")
    iod = (q[:, 45] - q[:, 36]).norm(dim=-1)
    return rmse / iod


def identity_cosine(emb_a: object, emb_b: object) -> Tensor:
    """Cosine similarity of identity embeddings (``[D]`` or ``[B, D]``), ``[B]``."""
    a = torch.as_tensor(np.asarray(emb_a) if not isinstance(emb_a, Tensor) else emb_a)
    b = torch.as_tensor(np.asarray(emb_b) if not isinstance(emb_b, Tensor) else emb_b)
    a, b = a.to(torch.float64), b.to(torch.float64)
    a = a.unsqueeze(0) if a.dim() == 1 else a
    b = b.unsqueeze(0) if b.dim() == 1 else b
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(
            f"emb_a {list(a.shape)} and emb_b {list(b.shape)} must both be [D] or [B, D]"
        )
    return F.cosine_similarity(a, b, dim=1, eps=1e-12)
