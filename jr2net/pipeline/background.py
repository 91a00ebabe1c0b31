"""Body motion and hole filling for the composited background (the geometric path's compositor).

- **Body motion**: the neck and shoulders do not follow the face's extrapolated rigid motion (a
  head pitch extrapolated down to the shirt stretched it into streaks). They move by a damped
  copy of the head's mean image translation, ``BODY_DAMPING`` times it, uniformly over a region
  below the face (so the body translates without stretching): full weight from the bottom of the
  face box down to the frame's bottom and within ``BODY_INNER`` face-box sides of the face centre
  horizontally, fading to zero at the face centre's height and at ``BODY_OUTER`` sides.
- **Neck**: inside the head's background box, below the face's lower outline (the render mask's
  lowest pixel per column; beyond the face's columns, the jaw angle's height) the head's field
  gives way to the body's motion over ``NECK_RAMP`` box sides (``neck_weights``): shoulders and
  collar beside the jaw move with the body, not with a nodding or laughing head. Except where
  the body's motion would sample the source's own face (``source_face_weights``: a head that
  moved away from where the source showed it): there the head's field keeps carrying the old
  head position along, so no second face shows.
- **A person moving as a whole** (``motion_agreement``): where the body's translation is close to
  the head's (within ``AGREE_FULL`` of the head's, relative; none beyond ``AGREE_NONE``), the
  head moves with its body (a person who shifts, or a camera that follows them), not over it:
  the neck weights give way by that agreement (hair hanging beside the jaw follows the head, s29),
  and the head's translation reaches past its window's fade near the face (``REACH_INNER`` to
  ``REACH_OUTER`` box sides from its centre, zero over the background box's outer
  ``REACH_BORDER``), so hair beside a face near the box's edge is not left behind. A head that
  moves over a still body (agreement 0, d0) keeps the neck weights as they were.
  ``blend_body`` combines the head's field with the body's motion.
- **Measured body motion** (``BodyTracker``, the geometric path's default): the neck and shoulders
  move as the driving frame's own body does, not as its head: the region below the driving face
  (``BODY_RECT`` face widths across, from ``BODY_GAP`` face widths under the chin down, at most
  ``BODY_RECT_HEIGHT`` face widths) is tracked frame to frame by phase correlation on a grey image
  downscaled to ``TRACK_SIDE`` px, and the shifts are summed since the session's first driving face
  frame (so a head that nods or laughs over a still body leaves the body in place, and a person who
  walks takes the body along). A frame without room below the face, or a weak correlation peak
  (response < ``MIN_RESPONSE``), adds no shift. The compositor takes the sum scaled to the output
  by the source / driving face-size ratio; without a tracker (the learned path) the damped head
  translation above is used.
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
NECK_RAMP = 0.25  # box sides below the face's lower outline over which the body takes over
SOURCE_FACE_RADIUS = 0.45  # the source face's disc / its box side (the neck weights avoid it)
SOURCE_FACE_FADE = 0.25  # fade of that disc's edge / its radius
BODY_RECT = 3.0  # width of the tracked body region / driving face width
BODY_GAP = 0.15  # its top below the lowest landmark (the chin) / face width
BODY_RECT_HEIGHT = 2.0  # its height at most / face width
MIN_BODY_HEIGHT = 0.12  # below this height / face width there is no body to track
TRACK_SIDE = 128  # long side (px) of the tracked region once downscaled
MIN_TRACK_SIDE = 32  # ... but its short side at least this (or full resolution)
MIN_RESPONSE = 0.05  # phase-correlation peak below which a frame adds no body shift
AGREE_FULL = 0.3  # |head - body| / |head| up to which the head moves with its body (agreement 1)
AGREE_NONE = 0.8  # ... and from which it moves over it (agreement 0)
REACH_INNER = 0.5  # box sides from the face centre within which an agreeing head's motion holds
REACH_OUTER = 0.9  # ... fading (smoothstep) to zero here
REACH_BORDER = 0.06  # fade to zero over this outer fraction of the background box
FILL_SIDE = 192  # long side (px) of the inpainting resolution
FILL_RADIUS = 3  # cv2.inpaint radius at that resolution


def body_weights(xs: Tensor, ys: Tensor, box: tuple[int, int, int]) -> tuple[Tensor, Tensor]:
    """Separable body weights ``(wx [len(xs)], wy [len(ys)])`` at pixel coordinates, for the face
    render box ``(x0, y0, side)`` (module doc)."""
    x0, y0, side = box
    cx, cy = x0 + side / 2, y0 + side / 2
    span = max((BODY_OUTER - BODY_INNER) * side, 1.0)
    wx = ((BODY_OUTER * side - (xs - cx).abs()) / span).clamp_(0.0, 1.0)
    wy = ((ys - cy) / max(side / 2, 1.0)).clamp_(0.0, 1.0)
    return wx, wy


def neck_weights(valid: Tensor, box: tuple[int, int, int], xs: Tensor, ys: Tensor) -> Tensor:
    """``[len(ys), len(xs)]`` weights of the body below the face's lower outline: 0 above the
    lowest face pixel of each column of the render mask ``valid`` ``[1,1,S,S]`` (over ``box``),
    1 from ``NECK_RAMP`` box sides below it; beyond the face's columns its outermost ones hold
    (the jaw angle's height). All zeros without a face pixel."""
    x0, y0, side = box
    S = valid.shape[-1]
    m = valid[0, 0] > 0
    has = m.any(0)
    if not bool(has.any()):
        return torch.zeros(len(ys), len(xs))
    rows = torch.arange(S, dtype=torch.float32)
    bottom = torch.where(m, rows[:, None], torch.full_like(rows[:, None], -1.0)).amax(0)
    col_x = x0 + (torch.arange(S, dtype=torch.float32) + 0.5) * (side / S) - 0.5
    line = y0 + (bottom[has] + 1.0) * (side / S) - 0.5  # lower edge of the lowest face pixel
    yb = torch.from_numpy(np.interp(xs.numpy(), col_x[has].numpy(), line.numpy())).float()
    return ((ys[:, None] - yb[None, :]) / max(NECK_RAMP * side, 1.0)).clamp_(0.0, 1.0)


def motion_agreement(head_shift: Tensor, body_shift: Tensor) -> float:
    """How much the head moves with its body (1) rather than over it (0), from their image
    translations ``[2]`` (px): ``|head - body| / |head|`` between ``AGREE_FULL`` and
    ``AGREE_NONE`` (module doc); 0 for a head that moved under a pixel."""
    h = float(head_shift.float().norm())
    if h < 1.0:
        return 0.0
    r = float((head_shift.float() - body_shift.float()).norm()) / h
    return min(1.0, max(0.0, (AGREE_NONE - r) / (AGREE_NONE - AGREE_FULL)))


def head_reach(box: tuple[int, int, int], xs: Tensor, ys: Tensor, agreement: float) -> Tensor:
    """``[len(ys), len(xs)]`` weights (``agreement`` at most) of the head's translation past its
    window near the face (``REACH_INNER`` to ``REACH_OUTER`` box sides from the face centre),
    zero over the outer ``REACH_BORDER`` of the grid ``xs``, ``ys`` (the background box's cells)."""
    x0, y0, side = box
    cx, cy = x0 + side / 2, y0 + side / 2
    dx, dy = (xs - cx) / side, (ys - cy) / side
    r = torch.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2)
    g = ((REACH_OUTER - r) / (REACH_OUTER - REACH_INNER)).clamp_(0.0, 1.0)
    g = g * g * (3 - 2 * g)  # smoothstep

    def edge(v: Tensor) -> Tensor:  # 0 on the grid's outer cells, 1 from REACH_BORDER in
        n = len(v)
        t = torch.minimum(torch.arange(n, dtype=torch.float32), torch.arange(n - 1, -1, -1)) / n
        return (t / REACH_BORDER).clamp_(0.0, 1.0)

    return agreement * g * edge(ys)[:, None] * edge(xs)[None, :]


def blend_body(
    field: Tensor,
    window: Tensor,
    head_shift: Tensor,
    body_shift: Tensor,
    valid: Tensor,
    box: tuple[int, int, int],
    src_box: tuple[int, int, int],
    xs: Tensor,
    ys: Tensor,
) -> Tensor:
    """The head's background field ``[1,2,n,n]`` (px, target -> source, over the cells ``xs``,
    ``ys``; ``window`` ``[1,1,n,n]`` its fade) combined with the body's translation
    ``body_shift`` ``[2]``: the body takes over below the face's lower outline (``neck_weights``,
    less where the head moves with its body and where it would show the source's own face) and
    where the head's window fades (``body_weights``); a head moving with its body carries its
    translation ``head_shift`` past its window near the face (``head_reach``). Module doc."""
    agree = motion_agreement(head_shift, body_shift)
    wx, wy = body_weights(xs, ys, box)
    neck = neck_weights(valid, box, xs, ys) * (1 - agree)
    neck = neck * (1 - source_face_weights(src_box, xs, ys, body_shift))
    neck = neck[None, None]
    reach = (1 - window) * head_reach(box, xs, ys, agree)[None, None]
    head = (1 - neck) * (window + reach)
    w_body = (wy[:, None] * wx[None, :])[None, None] * (1 - head)
    field = field + reach * head_shift.float().view(1, 2, 1, 1)
    return (1 - neck) * field + w_body * body_shift.float().view(1, 2, 1, 1)


def source_face_weights(
    src_box: tuple[int, int, int], xs: Tensor, ys: Tensor, body_shift: Tensor
) -> Tensor:
    """``[len(ys), len(xs)]``: 1 where the point moved by ``body_shift`` (target -> source) lies
    on the source's face (a disc of ``SOURCE_FACE_RADIUS`` box sides about its box's centre),
    falling to 0 over ``SOURCE_FACE_FADE`` of that radius beyond it."""
    sx0, sy0, sside = src_box
    r0 = max(SOURCE_FACE_RADIUS * sside, 1.0)
    dx = (xs + float(body_shift[0]) - (sx0 + sside / 2)) / r0
    dy = (ys + float(body_shift[1]) - (sy0 + sside / 2)) / r0
    r = torch.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2)
    return ((1 + SOURCE_FACE_FADE - r) / SOURCE_FACE_FADE).clamp_(0.0, 1.0)


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


def body_rect(
    landmarks: np.ndarray, hw: tuple[int, int]
) -> tuple[float, float, float, float] | None:
    """``(x0, y0, x1, y1)`` of the body region below a face's 68 ``landmarks`` in a frame of size
    ``hw``, clipped to it; None when there is not ``MIN_BODY_HEIGHT`` face widths of room."""
    lm = np.asarray(landmarks, np.float64)
    jaw = lm[:17]
    fw = float(jaw[:, 0].max() - jaw[:, 0].min())
    if not fw > 1.0:
        return None
    cx = float(jaw[:, 0].mean())
    y0 = float(lm[:, 1].max()) + BODY_GAP * fw
    y1 = min(float(hw[0]), y0 + BODY_RECT_HEIGHT * fw)
    x0, x1 = max(0.0, cx - BODY_RECT * fw / 2), min(float(hw[1]), cx + BODY_RECT * fw / 2)
    if y1 - y0 < max(MIN_BODY_HEIGHT * fw, 12.0) or x1 - x0 < fw:
        return None
    return x0, y0, x1, y1


class BodyTracker:
    """The driving body's image translation (px, x/y) since the first frame it was given (module
    doc): ``tracker(frame, landmarks)`` per driving face frame; ``reset`` forgets it."""

    def __init__(self) -> None:
        self.reset()

    @property
    def active(self) -> bool:
        """Whether a body region is tracked (the first frame had room below its face)."""
        return self._rect is not None

    def reset(self) -> None:
        self.shift = np.zeros(2)
        self.ref_iod = 0.0  # the first frame's inter-ocular distance (px): the size reference
        self._prev: np.ndarray | None = None  # previous frame's downscaled grey patch
        self._rect: tuple[float, float, float, float] | None = None  # tracked region (px)
        self._scale = 1.0

    def _patch(self, frame: np.ndarray, rect, scale: float) -> np.ndarray:
        """The grey region ``rect`` of ``frame`` (sub-pixel origin), area-downscaled."""
        import cv2

        x0, y0, x1, y1 = rect
        w, h = round(x1 - x0), round(y1 - y0)
        crop = cv2.getRectSubPix(
            np.ascontiguousarray(frame), (w, h), (x0 + w / 2 - 0.5, y0 + h / 2 - 0.5)
        )
        size = (max(8, round(w * scale)), max(8, round(h * scale)))
        small = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)

    def __call__(self, frame: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """The summed shift ``[2]`` after this frame (x right, y down, driving pixels)."""
        import cv2

        if self._rect is None:  # the first frame sets the region, below its face
            rect = body_rect(landmarks, frame.shape[:2])
            if rect is None:
                return self.shift.copy()
            self._rect = rect
            lm = np.asarray(landmarks, np.float64)
            self.ref_iod = float(np.linalg.norm(lm[45] - lm[36]))
            w, h = rect[2] - rect[0], rect[3] - rect[1]
            self._scale = min(1.0, max(TRACK_SIDE / max(w, h), MIN_TRACK_SIDE / min(w, h)))
            self._prev = self._patch(frame, rect, self._scale)
            return self.shift.copy()
        cur = self._patch(frame, self._rect, self._scale)
        if cur.shape != self._prev.shape:
            return self.shift.copy()
        win = cv2.createHanningWindow(cur.shape[::-1], cv2.CV_32F)
        (dx, dy), response = cv2.phaseCorrelate(self._prev, cur, win)
        if response >= MIN_RESPONSE and np.isfinite(dx) and np.isfinite(dy):
            d = np.array([dx, dy]) / self._scale
            self.shift += d
            # The region follows the body, kept inside the frame (replicated borders bias it).
            x0, y0, x1, y1 = self._rect
            H, W = frame.shape[:2]
            mx = float(np.clip(d[0], -x0, W - x1))
            my = float(np.clip(d[1], -y0, H - y1))
            if mx != 0.0 or my != 0.0:
                self._rect = (x0 + mx, y0 + my, x1 + mx, y1 + my)
                cur = self._patch(frame, self._rect, self._scale)
        self._prev = cur
        return self.shift.copy()
