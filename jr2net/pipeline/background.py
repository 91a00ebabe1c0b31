"""Body motion and hole filling for the composited background (the geometric path's compositor).

- **Body motion**: the neck and shoulders do not follow the face's extrapolated rigid motion (a
  head pitch extrapolated down to the shirt stretched it into streaks). They move by a damped
  copy of the head's mean image translation, ``BODY_DAMPING`` times it, uniformly over a region
  below the face (so the body translates without stretching): full weight from the bottom of the
  face box down to the frame's bottom and within ``BODY_INNER`` face-box sides of the face centre
  horizontally, fading to zero at the face centre's height and at ``BODY_OUTER`` sides.
- **Fill**: background pixels that sample outside the source photo (regions the source never
  showed, e.g. below its bottom edge once the body moved up) are inpainted with OpenCV's Telea
  method (``cv2.inpaint``) at reduced resolution (long side ``FILL_SIDE`` px, so its cost stays
  small per frame) and pasted back upsampled into those pixels only; edge replication is not used.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

BODY_DAMPING = 0.6  # body translation / head mean translation
BODY_INNER = 1.2  # full body weight within this many face-box sides of the face centre (x)
BODY_OUTER = 2.0  # zero body weight beyond this many sides
FILL_SIDE = 192  # long side (px) of the inpainting resolution
FILL_RADIUS = 3  # cv2.inpaint radius at that resolution


def body_weights(
    xs: Tensor, ys: Tensor, box: tuple[int, int, int]
) -> tuple[Tensor, Tensor]:
    """Separable body weights ``(wx [len(xs)], wy [len(ys)])`` at pixel coordinates, for the face
    render box ``(x0, y0, side)`` (module doc)."""
    x0, y0, side = box
    cx, cy = x0 + side / 2, y0 + side / 2
    span = max((BODY_OUTER - BODY_INNER) * side, 1.0)
    wx = ((BODY_OUTER * side - (xs - cx).abs()) / span).clamp_(0.0, 1.0)
    wy = ((ys - cy) / max(side / 2, 1.0)).clamp_(0.0, 1.0)
    return wx, wy


def fill_outside(region: Tensor, invalid: Tensor) -> Tensor:
    """``region`` ``[1,3,h,w]`` (uint8 units + 0.5, as the compositor's) with its ``invalid``
    pixels ``[h,w]`` (bool) replaced by an OpenCV inpainting of the valid ones (module doc)."""
    import cv2

    h, w = region.shape[-2:]
    scale = min(1.0, FILL_SIDE / max(h, w))
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    small = F.interpolate(region, size=(sh, sw), mode="area") if scale < 1 else region
    m = invalid[None, None].float()
    m_small = F.interpolate(m, size=(sh, sw), mode="area") if scale < 1 else m
    img = small[0].permute(1, 2, 0).clamp(0, 255).numpy().astype(np.uint8)
    mask = (m_small[0, 0] > 0.01).numpy().astype(np.uint8)
    filled = cv2.inpaint(np.ascontiguousarray(img), mask, FILL_RADIUS, cv2.INPAINT_TELEA)
    fill = torch.from_numpy(filled).permute(2, 0, 1)[None].float().add_(0.5)
    if scale < 1:
        fill = F.interpolate(fill, size=(h, w), mode="bilinear", align_corners=False)
    return torch.where(invalid[None, None], fill, region)
