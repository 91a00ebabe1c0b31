"""Gaze transfer for the geometric path: the driving eyes' iris position moves the output's irises.

The warp moves the source's eyes with the eyelids, so without this the output keeps the source's
gaze. Per eye (68-point landmarks 36-41 and 42-47):

- **iris**: the centroid of the dark pixels inside the eye polygon (``iris_position``: weights
  ``(q - I)²`` for grey levels ``I`` below the polygon's ``DARK_QUANTILE`` quantile ``q``), in eye
  coordinates: along the corner-to-corner axis and across it, in eye widths, from the eye's
  centre. Eyes narrower than ``MIN_OPEN`` (height / width: a blink) keep the last value.
- **transfer**: the driving eye's coordinates minus the source's (absolute gaze: the output looks
  where the driver looks, in the head's frame), One-Euro filtered (``FILTER``), clamped to
  ``MAX_SHIFT`` eye widths; the vertical part is scaled by ``VERTICAL_GAIN`` (0: the lids bias a
  dark-blob centroid vertically, so only horizontal gaze is transferred);
- **warp**: in the output face layer each eye's content moves along the eye axis by a monotone
  piecewise-linear map (so it never folds): the iris (``IRIS_RADIUS`` eye widths around the
  source's iris) and the white ahead of it move rigidly by the shift, passing under the leading
  corner; the white behind is stretched; the corners stay. Only pixels inside the lids move (the
  eye polygon shrunk by ``LID_MARGIN`` across the axis, softened over a pixel): the lids stay and
  occlude the sliding iris (``cv2.remap`` over the eye's box only). Only the horizontal gaze is
  transferred.

``options.extra["gaze"]``: ``1`` (default) or ``0``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from jr2net.face.camera import project as project_points
from jr2net.pipeline.filters import OneEuroFilter

EYES = (slice(36, 42), slice(42, 48))  # the subject's right and left eye, 68-point scheme
DARK_QUANTILE = 0.35
MIN_OPEN = 0.18  # eye height / width below which the eye counts as closed
VERTICAL_GAIN = 0.0  # vertical gaze is not transferred: the lids bias a dark-blob centroid
IRIS_RADIUS = 0.25  # eye widths: the iris (and its dark rim) moved rigidly
CORNER = 0.04  # eye widths at the leading corner into which the white ahead is squeezed
LID_MARGIN = 0.15  # the eye polygon shrunk by this fraction across its axis: the moving part
MAX_SHIFT = 0.25  # eye widths
FILTER = (1.5, 2.0, 1.0)  # One-Euro (min_cutoff Hz, beta per eye width/s, d_cutoff Hz)


def _smooth(x: np.ndarray) -> np.ndarray:
    """Smoothstep of ``x`` clamped to [0, 1]."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _eye_frame(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Centre, unit axis (corner to corner), unit normal and width of a 6-point eye."""
    a, b = pts[0], pts[3]
    width = float(np.linalg.norm(b - a))
    axis = (b - a) / max(width, 1e-6)
    return (a + b) / 2, axis, np.array([-axis[1], axis[0]]), width


def eye_openness(pts: np.ndarray) -> float:
    """Eye height / width of a 6-point eye (lids 1,2 above and 4,5 below)."""
    _, _, _, width = _eye_frame(pts)
    height = (np.linalg.norm(pts[1] - pts[5]) + np.linalg.norm(pts[2] - pts[4])) / 2
    return float(height / max(width, 1e-6))


def iris_position(image: np.ndarray, pts: np.ndarray) -> np.ndarray | None:
    """The iris centroid of one eye in eye coordinates ``[along, across]`` (eye widths from the
    eye centre), from the uint8 RGB ``image`` and the eye's 6 landmarks; None when the eye is
    closed or too small to measure."""
    import cv2

    pts = np.asarray(pts, np.float64)
    centre, axis, normal, width = _eye_frame(pts)
    if width < 6 or eye_openness(pts) < MIN_OPEN:
        return None
    x0, y0 = np.floor(pts.min(0)).astype(int)
    x1, y1 = np.ceil(pts.max(0)).astype(int) + 1
    H, W = image.shape[:2]
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    if x1 - x0 < 3 or y1 - y0 < 2:
        return None
    patch = image[y0:y1, x0:x1]
    grey = cv2.cvtColor(np.ascontiguousarray(patch), cv2.COLOR_RGB2GRAY).astype(np.float64)
    mask = np.zeros(grey.shape, np.uint8)
    cv2.fillPoly(mask, [np.round(pts - [x0, y0]).astype(np.int32)], 1)
    inside = mask > 0
    if int(inside.sum()) < 6:
        return None
    q = _quantile(grey[inside], DARK_QUANTILE)
    w = np.clip(q - grey, 0, None)
    w *= w
    w *= inside
    total = w.sum()
    if total <= 0:
        return None
    # The weighted centroid from the weights' row and column sums (no coordinate grids).
    cx = w.sum(0) @ np.arange(x0, x1, dtype=np.float64)
    cy = w.sum(1) @ np.arange(y0, y1, dtype=np.float64)
    c = np.array([cx, cy]) / total - centre
    return np.array([c @ axis, c @ normal]) / width


def _quantile(v: np.ndarray, q: float) -> float:
    """``np.quantile(v, q)`` (linear interpolation) by partial sorts: a few times faster on the
    small per-eye samples, where np.quantile's overhead dominates."""
    pos = q * (v.size - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, v.size - 1)
    part = np.partition(v, (lo, hi))
    a, b = float(part[lo]), float(part[hi])
    t = pos - lo
    # numpy's lerp: from the nearer end, so t = 0 or 1 give the sample exactly
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t


class GazeTransfer:
    """Per-session gaze transfer (module doc): the source's iris positions, the filter, and the
    warp of a face layer's eyes."""

    def __init__(self, mesh, model, source: np.ndarray, source_landmarks: np.ndarray) -> None:
        lm = model.landmarks68.long()
        idx = torch.searchsorted(mesh.index, lm).clamp_max(mesh.n_vertices - 1)
        self.enabled = bool((mesh.index[idx] == lm).all())
        self.eye_vertices = idx[36:48]
        src = np.asarray(source_landmarks, np.float64)
        self.source = [iris_position(source, src[e]) for e in EYES]
        self.filter = OneEuroFilter(*FILTER)
        self.reset()

    def reset(self) -> None:
        """Forget the driving gaze (a lost face)."""
        self.filter.reset()
        self._last = [np.zeros(2), np.zeros(2)]

    def shifts(self, driving: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """Filtered per-eye shifts ``[2,2]`` (along, across; eye widths) for one driving frame."""
        lm = np.asarray(landmarks, np.float64)
        for k, e in enumerate(EYES):
            d, s = iris_position(driving, lm[e]), self.source[k]
            if d is not None and s is not None:
                self._last[k] = d - s
        raw = torch.from_numpy(np.stack(self._last))
        out = self.filter(raw).numpy()
        out[:, 1] *= VERTICAL_GAIN
        return np.clip(out, -MAX_SHIFT, MAX_SHIFT)

    def apply(
        self,
        face: Tensor,
        verts_cam: Tensor,
        K_crop: Tensor,
        crop: int,
        driving: np.ndarray,
        landmarks: np.ndarray,
    ) -> Tensor:
        """``face`` ``[1,3,L,L]`` (over the render crop of side ``crop`` and camera ``K_crop``)
        with its eyes' irises moved by the driving frame's gaze (module doc); in place."""
        import cv2

        if not self.enabled or all(s is None for s in self.source):
            return face
        shifts = self.shifts(driving, landmarks)
        L = face.shape[-1]
        f = L / crop
        pts = project_points(verts_cam[:, self.eye_vertices], K_crop)[0].numpy()
        pts = (pts.astype(np.float64) + 0.5) * f - 0.5
        img = None
        for k in range(2):
            eye = pts[6 * k : 6 * k + 6]
            _, axis, normal, width = _eye_frame(eye)
            if abs(shifts[k, 0]) * width < 0.05 or width < 4 or self.source[k] is None:
                continue
            pad = np.array([2.0, 2.0])
            x0, y0 = (int(v) for v in np.clip(np.floor(eye.min(0) - pad), 0, L))
            x1, y1 = (int(v) for v in np.clip(np.ceil(eye.max(0) + pad) + 1, 0, L))
            if x1 - x0 < 3 or y1 - y0 < 3:
                continue
            mid = (eye[0] + eye[3]) / 2
            rx, ry = np.arange(x0, x1) - mid[0], np.arange(y0, y1) - mid[1]
            u = (rx[None, :] * axis[0] + ry[:, None] * axis[1]) / width
            # Along the axis: a monotone piecewise-linear map. The iris (``IRIS_RADIUS`` around
            # the source's) and the white ahead of it move rigidly by the shift, the far end
            # passing under the leading corner (squeezed into its last ``CORNER`` widths); the
            # white behind is stretched; beyond the corners the map is the identity.
            c_s = float(np.clip(self.source[k][0], -0.2, 0.2))
            d = float(shifts[k, 0])
            e = 0.5 - CORNER
            if d > 0:
                tgt = [-2.0, -0.5, c_s + d - IRIS_RADIUS, e, 0.5, 2.0]
                src = [-2.0, -0.5, c_s - IRIS_RADIUS, e - d, 0.5, 2.0]
            else:
                tgt = [-2.0, -0.5, -e, c_s + d + IRIS_RADIUS, 0.5, 2.0]
                src = [-2.0, -0.5, -e - d, c_s + IRIS_RADIUS, 0.5, 2.0]
            u_src = np.interp(u, tgt, src)
            # Across: only inside the lids (the eye polygon, shrunk towards the eye's axis by
            # ``LID_MARGIN`` and softened over a pixel): the lids occlude the sliding iris.
            lids = eye + LID_MARGIN * (mid - eye) * np.abs(normal)
            mask = np.zeros(u.shape, np.float32)
            cv2.fillPoly(mask, [np.round(lids - [x0, y0]).astype(np.int32)], 1.0)
            band = cv2.GaussianBlur(mask, (0, 0), 0.8)
            step = ((u_src - u) * band * width).astype(np.float32)
            map_x = np.arange(x1 - x0, dtype=np.float32)[None, :] + step * np.float32(axis[0])
            map_y = np.arange(y1 - y0, dtype=np.float32)[:, None] + step * np.float32(axis[1])
            if img is None:
                img = face[0].permute(1, 2, 0).numpy()  # a view: writes go into face
            patch = np.ascontiguousarray(img[y0:y1, x0:x1])
            moved = cv2.remap(patch, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            img[y0:y1, x0:x1] = moved
        return face
