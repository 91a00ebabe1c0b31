"""Reenactment baselines every report shows beside ours (DESIGN §8).

- ``copy_source``: the source image itself, resized to the driving frame (lower bound: no motion).
- ``similarity_warp``: the source warped by the 2D similarity (scale, rotation, translation) that
  best maps its landmarks onto the driving landmarks (least squares), bilinear sampling.

Images are float ``[B, 3, H, W]`` in [0, 1]; landmarks ``[B, N, 2]`` (x, y) pixels with the
DESIGN §3 convention (pixel (i, j) centred at x=j, y=i). For scripts working at the I/O edge,
both functions also take a uint8 ``[H, W, 3]`` numpy image and then return one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from jr2net.eval.geometry import similarity_align

__all__ = ["copy_source", "similarity_warp", "similarity_matrices"]


def _check_image(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor, got {x.dtype}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"{name} must be [B, C, H, W] or [C, H, W], got {list(x.shape)}")
    return x


def _from_uint8(img: np.ndarray, name: str) -> Tensor:
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(
            f"{name} as numpy must be uint8 [H, W, 3], got {img.dtype} {list(img.shape)}"
        )
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255.0


def _to_uint8(t: Tensor) -> np.ndarray:
    return (t[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def copy_source(source: Tensor | np.ndarray, driving_shape: Sequence[int]) -> Tensor | np.ndarray:
    """The source as the prediction for every driving frame: ``[B, C, H, W]`` of
    ``driving_shape`` (resized bilinearly, with antialiasing, when sizes differ; a single source
    is repeated over the driving batch). For a numpy uint8 source, ``driving_shape`` is
    ``(H, W)`` or ``(H, W, 3)`` and a uint8 ``[H, W, 3]`` image is returned."""
    if isinstance(source, np.ndarray):
        hw = tuple(int(v) for v in driving_shape)[:2]
        if len(hw) != 2:
            raise ValueError(f"driving_shape must be (H, W) or (H, W, 3), got {driving_shape}")
        return _to_uint8(copy_source(_from_uint8(source, "source"), (1, 3, *hw)))
    src = _check_image(source, "source")
    shape = tuple(int(v) for v in driving_shape)
    if len(shape) != 4:
        raise ValueError(f"driving_shape must be (B, C, H, W), got {shape}")
    b, c, h, w = shape
    if src.shape[1] != c:
        raise ValueError(f"source has {src.shape[1]} channels, driving_shape has {c}")
    if src.shape[0] not in (1, b):
        raise ValueError(f"source batch {src.shape[0]} must be 1 or the driving batch {b}")
    if src.shape[2:] != (h, w):
        src = F.interpolate(src, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return src.expand(b, c, h, w).clone()


def similarity_matrices(source_lmk: object, driving_lmk: object) -> Tensor:
    """Per-batch 2x3 matrices ``A`` with ``driving ~ A [source; 1]`` (least-squares similarity)."""
    s_l = np.asarray(source_lmk.detach().cpu() if isinstance(source_lmk, Tensor) else source_lmk)
    d_l = np.asarray(driving_lmk.detach().cpu() if isinstance(driving_lmk, Tensor) else driving_lmk)
    s_l = s_l[None] if s_l.ndim == 2 else s_l
    d_l = d_l[None] if d_l.ndim == 2 else d_l
    if s_l.ndim != 3 or s_l.shape[-1] != 2 or s_l.shape != d_l.shape:
        raise ValueError(
            f"source_lmk {list(s_l.shape)} and driving_lmk {list(d_l.shape)} must both be "
            "[B, N, 2] (or [N, 2])"
        )
    mats = []
    for a, b in zip(s_l, d_l, strict=True):
        s, rot, t = similarity_align(a, b)
        mats.append(np.concatenate([s * rot, t[:, None]], axis=1))
    return torch.as_tensor(np.stack(mats), dtype=torch.float64)


def similarity_warp(
    source_img: Tensor | np.ndarray,
    source_lmk: object,
    driving_lmk: object,
    out_size: tuple[int, int],
) -> Tensor | np.ndarray:
    """Warp ``source_img`` into the driving frame by the landmark similarity, ``[B, C, H, W]``
    with ``(H, W) = out_size``; pixels that map outside the source are 0 (black)."""
    if isinstance(source_img, np.ndarray):
        out = similarity_warp(
            _from_uint8(source_img, "source_img"), source_lmk, driving_lmk, out_size
        )
        return _to_uint8(out)
    src = _check_image(source_img, "source_img")
    h, w = (int(v) for v in out_size)
    if h < 1 or w < 1:
        raise ValueError(f"out_size must be positive (H, W), got {out_size}")
    mats = similarity_matrices(source_lmk, driving_lmk)
    b = mats.shape[0]
    if src.shape[0] not in (1, b):
        raise ValueError(f"source_img batch {src.shape[0]} must be 1 or the landmark batch {b}")
    src = src.expand(b, *src.shape[1:])
    hs, ws = src.shape[2], src.shape[3]
    # Inverse map: output pixel p (driving) -> source point A^-1 p.
    lin, t = mats[:, :, :2], mats[:, :, 2]
    inv = torch.linalg.inv(lin)
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    p = torch.stack([xs, ys], -1).reshape(1, -1, 2) - t[:, None, :]
    q = torch.einsum("bij,bnj->bni", inv, p)  # source pixel coordinates (x, y)
    # align_corners=True: -1 and 1 are the centres of the first and last pixels (x=0, x=W-1).
    gx = 2.0 * q[..., 0] / max(ws - 1, 1) - 1.0
    gy = 2.0 * q[..., 1] / max(hs - 1, 1) - 1.0
    grid = torch.stack([gx, gy], -1).reshape(b, h, w, 2).to(src.dtype).to(src.device)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
