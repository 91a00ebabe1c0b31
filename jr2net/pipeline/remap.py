"""Sparse background resampling for the compositor (``jr2net.pipeline.composite``).

The warped background is resampled only where its displacement field can be nonzero, with
``cv2.remap`` (bilinear, edge-replicated: ``grid_sample(padding_mode="border")``'s values to
OpenCV's 1/32 px interpolation step) from the uint8 source straight into the output frame; a zero
displacement gives the source pixel exactly; where the body moves by one uniform translation
(both body weights 1) ``cv2.warpAffine`` samples it without maps (``ShiftRect``). Pixels that
sample outside the source are looked for in bands along the frame's edges only (a displacement
of at most ``d`` px cannot leave the source further inside) and inpainted
(``background.fill_outside``) on a crop around them only.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from torch import Tensor

from jr2net.pipeline.background import FILL_RADIUS, FILL_SIDE, fill_outside

OUTSIDE_TOL = 1e-4  # a sample this far (in grid units, half the frame = 1) past the edge is outside
FILL_CONTEXT = FILL_RADIUS + 3  # valid pixels kept around the holes, at the fill's resolution


class Rect:
    """A frame rectangle ``[y0,y1) x [x0,x1)`` with its sampling maps (source pixel per pixel)."""

    def __init__(self, y0: int, x0: int, mx: Tensor, my: Tensor) -> None:
        self.y0, self.x0 = y0, x0
        self.y1, self.x1 = y0 + mx.shape[0], x0 + mx.shape[1]
        self.mx, self.my = mx.numpy(), my.numpy()  # float32 [h,w], contiguous

    def maps(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """The maps over the frame rows ``[y0,y1)`` and columns ``[x0,x1)`` (inside the rect)."""
        return (self.mx[y0 - self.y0 : y1 - self.y0, x0 - self.x0 : x1 - self.x0],
                self.my[y0 - self.y0 : y1 - self.y0, x0 - self.x0 : x1 - self.x0])

    def sample(self, src4: np.ndarray) -> np.ndarray:
        """``src4`` sampled at the maps (bilinear, edge-replicated)."""
        return cv2.remap(src4, self.mx, self.my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class ShiftRect:
    """A frame rectangle ``[y0,y1) x [x0,x1)`` moved by one translation ``shift`` (px, target ->
    source; the body's full-weight middle): sampled by ``cv2.warpAffine`` without maps (about
    twice as fast as building the maps and remapping; the same 1/32 px step, a tie may round to
    the other neighbour: within one level)."""

    def __init__(self, rows: tuple[int, int], cols: tuple[int, int], shift: Tensor) -> None:
        (self.y0, self.y1), (self.x0, self.x1) = rows, cols
        # float32 like the maps ``body_maps`` would give (x + 1 * 1 * shift)
        self.sx, self.sy = (float(np.float32(v)) for v in shift.tolist())

    def maps(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """The maps over the frame rows ``[y0,y1)`` and columns ``[x0,x1)``, computed (float32)."""
        shape = (y1 - y0, x1 - x0)
        mx = np.arange(x0, x1, dtype=np.float32)[None, :] + np.float32(self.sx)
        my = np.arange(y0, y1, dtype=np.float32)[:, None] + np.float32(self.sy)
        return np.broadcast_to(mx, shape), np.broadcast_to(my, shape)

    def sample(self, src4: np.ndarray) -> np.ndarray:
        """``src4`` translated (bilinear, edge-replicated)."""
        M = np.array([[1.0, 0.0, self.x0 + self.sx], [0.0, 1.0, self.y0 + self.sy]])
        size = (self.x1 - self.x0, self.y1 - self.y0)
        return cv2.warpAffine(src4, M, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE)


def body_maps(
    rows: tuple[int, int], cols: tuple[int, int], wy: Tensor, wx: Tensor, shift: Tensor
) -> Rect:
    """Maps of a pure body translation ``wy ⊗ wx · shift`` (px, target -> source) over ``rows`` x
    ``cols``, ``wy`` / ``wx`` the separable body weights there (one outer product per map)."""
    (y0, y1), (x0, x1) = rows, cols
    xs = torch.arange(x0, x1, dtype=torch.float32)
    ys = torch.arange(y0, y1, dtype=torch.float32)
    mx = torch.addr(xs[None, :], wy, wx * float(shift[0]))
    my = torch.addr(ys[:, None], wy, wx * float(shift[1]))
    return Rect(y0, x0, mx, my)


def body_pieces(
    rows: tuple[int, int], cols: tuple[int, int], wy: Tensor, wx: Tensor, shift: Tensor
) -> list[Rect | ShiftRect]:
    """The body translation ``wy ⊗ wx · shift`` over ``rows`` x ``cols`` as rects: maps where a
    weight ramps (``body_maps``), one ``ShiftRect`` where both are 1 (no maps)."""
    (y0, y1), (x0, x1) = rows, cols
    full_y, full_x = torch.nonzero(wy >= 1), torch.nonzero(wx >= 1)
    if len(full_y) == 0 or len(full_x) == 0:
        return [body_maps(rows, cols, wy, wx, shift)]
    yw = y0 + int(full_y[0])
    xa, xb = x0 + int(full_x[0]), x0 + int(full_x[-1]) + 1
    pieces: list[Rect | ShiftRect] = []
    if yw > y0:  # rows where wy ramps up
        pieces.append(body_maps((y0, yw), cols, wy[: yw - y0], wx, shift))
    low = wy[yw - y0 :]
    if xa > x0:
        pieces.append(body_maps((yw, y1), (x0, xa), low, wx[: xa - x0], shift))
    pieces.append(ShiftRect((yw, y1), (xa, xb), shift))
    if xb < x1:
        pieces.append(body_maps((yw, y1), (xb, x1), low, wx[xb - x0 :], shift))
    return pieces


def field_maps(
    field: Tensor, A_y: Tensor, A_x: Tensor, origin: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Maps ``[h,w]`` x and y: the pixel at ``origin`` (x, y) onwards plus the coarse ``field``
    ``[2,n,n]`` (px) upsampled by the bilinear matrices ``A_y`` ``[h,n]`` and ``A_x`` ``[w,n]``."""
    x0, y0 = origin
    h, w = A_y.shape[0], A_x.shape[0]
    xs = torch.arange(x0, x0 + w, dtype=torch.float32)[None, :]
    ys = torch.arange(y0, y0 + h, dtype=torch.float32)[:, None]
    mx = torch.addmm(xs, A_y, field[0] @ A_x.T)
    my = torch.addmm(ys, A_y, field[1] @ A_x.T)
    return mx, my


def remap_into(out: np.ndarray, src4: np.ndarray, rect: Rect | ShiftRect) -> None:
    """``out[rect]`` (RGB) = ``src4`` (the source as RGBA: OpenCV's vectorised 4-channel path is
    ~3x faster than its 3-channel one) sampled at the rect's maps (bilinear, edge-replicated)."""
    sampled = rect.sample(src4)
    dst = out[rect.y0 : rect.y1, rect.x0 : rect.x1]
    res = cv2.cvtColor(sampled, cv2.COLOR_RGBA2RGB, dst=dst)
    if res is not dst:  # OpenCV did not write into the view
        dst[...] = res


def outside_pixels(
    rects: list[Rect | ShiftRect], hw: tuple[int, int], reach: tuple[float, float]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Frame pixels ``(ys, xs)`` of ``rects`` whose samples fall outside the ``hw`` source
    (``grid_sample``'s ``|grid| > 1 + OUTSIDE_TOL``), grouped by the source edge they sample past
    (top, bottom, left, right: the first that holds); ``reach`` (x, y): the largest displacement
    in px (the bands along the frame's edges that are looked at)."""
    H, W = hw
    tx, ty = OUTSIDE_TOL * W / 2, OUTSIDE_TOL * H / 2
    bx, by = int(math.ceil(reach[0] + tx)) + 1, int(math.ceil(reach[1] + ty)) + 1
    found, codes = [], []
    for r in rects:
        # Bands along the frame's edges that a displacement of ``reach`` can carry outside.
        bands = [
            (r.y0, min(r.y1, by), r.x0, r.x1),
            (max(r.y0, H - by), r.y1, r.x0, r.x1),
            (r.y0, r.y1, r.x0, min(r.x1, bx)),
            (r.y0, r.y1, max(r.x0, W - bx), r.x1),
        ]
        for y0, y1, x0, x1 in bands:
            if y1 <= y0 or x1 <= x0:
                continue
            mx, my = r.maps(y0, y1, x0, x1)
            tests = (my < -0.5 - ty, my > H - 0.5 + ty, mx < -0.5 - tx, mx > W - 0.5 + tx)
            hit = [t for t in tests if t.any()]
            if not hit:  # the common case: the whole band samples inside
                continue
            edge = np.stack(tests)
            yy, xx = np.nonzero(np.logical_or.reduce(hit) if len(hit) > 1 else hit[0])
            found.append((yy + y0) * W + (xx + x0))
            codes.append(edge[:, yy, xx].argmax(0))  # the first edge crossed, in that order
    if not found:
        return []
    idx, first = np.unique(np.concatenate(found), return_index=True)
    code = np.concatenate(codes)[first]
    ys, xs = idx // W, idx % W
    return [(ys[code == k], xs[code == k]) for k in range(4) if (code == k).any()]


def fill_holes(
    out: np.ndarray, ys: np.ndarray, xs: np.ndarray, bounds: tuple[int, int, int, int]
) -> None:
    """Inpaint ``out``'s pixels ``(ys, xs)`` in place (``fill_outside``) from a crop of ``bounds``
    ``(y0, y1, x0, x1)`` (the warped region) around them, ``FILL_CONTEXT`` fill pixels wide at
    the fill resolution the whole region would get, so the fill sees the same neighbourhood."""
    if ys.size == 0:
        return
    y0, y1, x0, x1 = bounds
    margin = int(math.ceil(FILL_CONTEXT * max(1.0, max(y1 - y0, x1 - x0) / FILL_SIDE)))
    cy0, cy1 = max(y0, int(ys.min()) - margin), min(y1, int(ys.max()) + 1 + margin)
    cx0, cx1 = max(x0, int(xs.min()) - margin), min(x1, int(xs.max()) + 1 + margin)
    crop = out[cy0:cy1, cx0:cx1]
    holes = np.zeros(crop.shape[:2], bool)
    holes[ys - cy0, xs - cx0] = True
    region = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float().add_(0.5)
    mask = torch.from_numpy(holes)
    filled = fill_outside(region, mask)[0].permute(1, 2, 0).numpy()
    crop[holes] = filled[holes].astype(np.uint8)  # uint8 units + 0.5: truncation rounds
