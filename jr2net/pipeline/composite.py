"""The geometric path's last stage: the face layer over the source background, warped by the head.

The source photo (at output size) is the background, itself warped over a box covering
``BACKGROUND_BOX_SCALE`` times the face crop and the source's own face: by the head's rigid
motion (far from the face the 2D similarity, scale, roll and translation, fitted to the face's
rigid motion, so hair, ears and the old head position follow a head that comes closer or tilts;
near the face its residual from that similarity, extrapolated) plus the non-rigid face motion
close to the face (the skin under a dropping jaw follows it), fading to zero at the box border
(the static scene beyond stays); the face layer goes on top with a
feathered mask. The neck and shoulders below the face move by a damped translation of the
head's mean motion, and pixels the source never showed are inpainted
(``jr2net.pipeline.background``). The background field is built from per-pixel displacements,
so a still head leaves the background exactly in place. Only the pixels whose displacement can
be nonzero are resampled, from the uint8 source straight into the output frame, and only the
face mask's bounding box is blended (``jr2net.pipeline.remap``): the cost follows the moving
region, not the frame.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from jr2net.face.camera import flip, project_planes
from jr2net.pipeline.background import (
    BODY_DAMPING,
    BODY_OUTER,
    blend_body,
    body_weights,
)
from jr2net.pipeline.remap import (
    Rect,
    ShiftRect,
    body_maps,
    body_pieces,
    field_maps,
    fill_holes,
    outside_pixels,
    remap_into,
)
from jr2net.pipeline.stages import (
    bilinear_matrix,
    border_window,
    extend_field,
    feather,
    resample,
)

BACKGROUND_BOX_SCALE = 1.6  # background-warp box side / render crop side
FIELD_GRID = 32  # cells across the background-warp box (the motion field is smooth)
SHIFT_MIN_PIXELS = 100_000  # a uniform body translation at least this large skips the maps


class Compositor:
    """Composites face crops of one session into its (warped) source background.

    ``bg`` is the source image at output size ``[1,3,Ho,Wo]`` in [0,1]; ``K_out`` the output
    camera; ``crop`` the render crop side; ``src_box`` the source face's square box in output
    pixels and ``src_pose`` its pose (R, t) (the background moves from there).
    """

    def __init__(
        self,
        bg: Tensor,
        K_out: Tensor,
        crop: int,
        feather_radius: int,
        background_warp: bool,
        src_box: tuple[int, int, int],
        src_pose: tuple[Tensor, Tensor],
    ) -> None:
        Ho, Wo = bg.shape[-2:]
        S = crop
        self.crop = crop
        self.out_hw = (Ho, Wo)
        self.feather_radius = feather_radius
        self.background_warp = background_warp
        self.src_box = src_box
        self.R_src, self.t_src = src_pose
        self.K_out = K_out
        self.bg_u8 = np.ascontiguousarray(
            (bg[0].permute(1, 2, 0) * 255).round_().to(torch.uint8).numpy()
        )
        self._bg4 = cv2.cvtColor(self.bg_u8, cv2.COLOR_RGB2RGBA)  # what remap samples (remap.py)
        # Background-warp field: face cells (the render crop in field_inner² cells, as fine as the
        # FIELD_GRID² grid over a box BACKGROUND_BOX_SCALE times the crop) resampled per frame
        # onto the grid of the actual background box.
        inner = int(round(FIELD_GRID / BACKGROUND_BOX_SCALE))
        self.field_factor = S / inner
        self.field_inner = inner
        self.window = border_window(FIELD_GRID, 0.22)
        j = (torch.arange(inner, dtype=torch.float32) + 0.5) / inner
        self._cell_unit = torch.stack(torch.meshgrid(j, j, indexing="xy"), dim=-1)  # [n,n,2] (x,y)
        self._field_upsampler: dict[int, Tensor] = {}  # box side -> [side, FIELD_GRID] matrix
        self._pool: dict[int, tuple[Tensor, Tensor]] = {}  # crop side -> cell pooling

    def composite(
        self,
        face: Tensor,
        valid: Tensor,
        points: Tensor,
        depth: Tensor,
        box: tuple[int, int, int],
        pose: tuple[Tensor, Tensor],
        body_shift: Tensor | None = None,
    ) -> np.ndarray:
        """Paste the face crop (feathered) over the source background warped by the head motion.

        ``face`` is ``[1,3,s,s]``: the render crop (s = ``crop``) or any square size (it is
        resampled to the box); ``valid``, ``points`` and ``depth`` are at the crop's size.

        The background moves with the head's rigid motion (extrapolated over the whole box, so hair,
        ears and neck follow it) plus the non-rigid face motion near the face only (so the jaw
        drags the skin just below it, not the collar). ``body_shift`` ``[2]`` (output px, target
        -> source) moves the neck and shoulders (the driving body's measured motion); None: the
        damped head translation (``BODY_DAMPING``). Only pixels whose displacement can be nonzero
        are resampled (``jr2net.pipeline.remap``); the rest stay the source's, exactly.
        """
        Ho, Wo = self.out_hw
        x0, y0, side = box
        alpha = feather(valid, self.feather_radius)

        bbox, window = self.background_box(box)
        fx0, fy0, fx1, fy1 = window
        cx = x0 + side / 2
        out = self.bg_u8.copy()  # a fresh array per frame: callers may keep returned frames
        if fx1 <= fx0 or fy1 <= fy0:
            return out
        if self.background_warp:
            field, body_shift = self.warp_field(valid, points, depth, box, pose, body_shift, bbox)
            # The warped region grows to take in the body (down to the frame's bottom).
            fx0 = max(0, min(fx0, int(math.floor(cx - BODY_OUTER * side))))
            fx1 = min(Wo, max(fx1, int(math.ceil(cx + BODY_OUTER * side))))
            self._warp_background(out, field, body_shift, box, bbox, window, (fx0, fx1))
            fy1 = Ho

        # Face layer (crop resampled to its box in the output frame), clipped to the region. A
        # face given at another size than the crop (e.g. already at box size) gets the mask's size.
        if face.shape[-2:] != alpha.shape[-2:]:
            alpha = resample(alpha, face.shape[-1], antialias=False)
        lx0, ly0 = max(x0, fx0), max(y0, fy0)
        lx1, ly1 = min(x0 + side, fx1), min(y0 + side, fy1)
        if lx1 <= lx0 or ly1 <= ly0:
            return out
        alpha = resample(alpha, side)[0, 0, ly0 - y0 : ly1 - y0, lx0 - x0 : lx1 - x0]
        # Only the mask's bounding box changes (alpha 0 keeps the background).
        rows = torch.nonzero(alpha.amax(1) > 0)
        cols = torch.nonzero(alpha.amax(0) > 0)
        if rows.numel() == 0:
            return out
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        a = alpha[r0:r1, c0:c1].clamp(0.0, 1.0)
        ry, rx = ly0 - y0 + r0, lx0 - x0 + c0  # the bounding box in the face's box
        rgb = resample(face, side)[0, :, ry : ry + r1 - r0, rx : rx + c1 - c0]
        dst = out[ly0 + r0 : ly0 + r1, lx0 + c0 : lx0 + c1]
        sub = torch.from_numpy(dst).permute(2, 0, 1).float()
        rgb = rgb.mul(255.0).clamp_(0.0, 255.0)
        sub.add_(rgb.sub_(sub).mul_(a)).add_(0.5)
        # Values lie in [0.5, 255.5]: truncation rounds to nearest.
        dst[...] = sub.permute(1, 2, 0).numpy().astype(np.uint8)
        return out

    def background_box(
        self, box: tuple[int, int, int]
    ) -> tuple[tuple[int, int, int], tuple[int, int, int, int]]:
        """The background-warp box ``(bx0, by0, bside)`` for the render ``box`` and its visible
        part of the frame ``(fx0, fy0, fx1, fy1)`` (empty when off the frame)."""
        Ho, Wo = self.out_hw
        x0, y0, side = box
        # The render box grown BACKGROUND_BOX_SCALE times, grown further to also cover the
        # source's face, so a head that moved away does not leave its old self behind.
        half = side * BACKGROUND_BOX_SCALE / 2
        cx, cy = x0 + side / 2, y0 + side / 2
        sx0, sy0, sside = self.src_box
        lo_x, hi_x = min(cx - half, sx0 - 0.3 * sside), max(cx + half, sx0 + 1.3 * sside)
        lo_y, hi_y = min(cy - half, sy0 - 0.3 * sside), max(cy + half, sy0 + 1.3 * sside)
        bside = int(math.ceil(max(hi_x - lo_x, hi_y - lo_y)))
        bx0 = int(math.floor((lo_x + hi_x - bside) / 2))
        by0 = int(math.floor((lo_y + hi_y - bside) / 2))
        window = (max(bx0, 0), max(by0, 0), min(bx0 + bside, Wo), min(by0 + bside, Ho))
        return (bx0, by0, bside), window

    def warp_field(
        self,
        valid: Tensor,
        points: Tensor,
        depth: Tensor,
        box: tuple[int, int, int],
        pose: tuple[Tensor, Tensor],
        body_shift: Tensor | None,
        bbox: tuple[int, int, int],
    ) -> tuple[Tensor, Tensor]:
        """The background box's coarse displacement ``[2,n,n]`` (px, target -> source): the
        head's field, giving way to the body's translation below the face's lower outline and
        where the head's window fades; and that body translation ``[2]``."""
        bx0, by0, bside = bbox
        field, head_shift = self._background_field(valid, points, depth, box, bbox, pose)
        if body_shift is None:
            body_shift = BODY_DAMPING * head_shift  # [2] px, target -> source
        body_shift = body_shift.float()
        # Inside the box the body term takes over where the head field fades out, and below
        # the face's lower outline (neck, shoulders beside the jaw) unless the head moves with
        # its body (background.blend_body).
        c = (torch.arange(FIELD_GRID, dtype=torch.float32) + 0.5) * (bside / FIELD_GRID) - 0.5
        field = blend_body(
            field, self.window, head_shift, body_shift, valid, box, self.src_box, c + bx0, c + by0
        )
        return field[0], body_shift

    def _warp_background(
        self,
        out: np.ndarray,
        field: Tensor,
        body_shift: Tensor,
        box: tuple[int, int, int],
        bbox: tuple[int, int, int],
        window: tuple[int, int, int, int],
        cols: tuple[int, int],
    ) -> None:
        """Write the warped background into ``out``: ``field`` (``warp_field``) upsampled over
        the visible ``window`` of the background box ``bbox``, the body's translation below the
        face down to the frame's bottom over ``cols``, inpainted where it samples outside the
        source; pixels where both are zero keep the source's values (not resampled)."""
        Ho, Wo = self.out_hw
        bx0, by0, bside = bbox
        fx0, fy0, fx1, fy1 = window
        ex0, ex1 = cols
        # Rows from yb down carry the body's translation (zero above: the body weight's rows).
        wx, wy = body_weights(
            torch.arange(ex0, ex1, dtype=torch.float32),
            torch.arange(fy0, Ho, dtype=torch.float32),
            box,
        )
        moving = torch.nonzero(wy > 0) if bool(body_shift.abs().max() > 0) else []
        yb = fy0 + int(moving[0]) if len(moving) else Ho
        A = self._field_upsampler.get(bside)
        if A is None:
            if len(self._field_upsampler) > 16:
                self._field_upsampler.clear()
            A = self._field_upsampler[bside] = bilinear_matrix(FIELD_GRID, bside)
        fmx, fmy = field_maps(
            field, A[fy0 - by0 : fy1 - by0], A[fx0 - bx0 : fx1 - bx0], (fx0, fy0)
        )
        rects: list[Rect | ShiftRect] = []
        if yb > fy0:  # the box's rows above the body: the head's field only
            k = min(yb, fy1) - fy0
            rects.append(Rect(fy0, fx0, fmx[:k], fmy[:k]))
        # Below the box the body's middle (both weights 1) moves by one translation: sampled
        # without maps (remap.ShiftRect) from row ys down, when large enough to pay for the
        # extra rects (1080p: ~0.5 ms less; at 512² it seldom is).
        full_y, full_x = torch.nonzero(wy >= 1), torch.nonzero(wx >= 1)
        ys = max(fy0 + int(full_y[0]), fy1, yb) if len(full_y) and len(full_x) else Ho
        if (Ho - ys) * len(full_x) < SHIFT_MIN_PIXELS:
            ys = Ho
        if ys > yb:  # the body's rows above ys, with the box's field where they cross it
            body = body_maps((yb, ys), (ex0, ex1), wy[yb - fy0 : ys - fy0], wx, body_shift)
            if yb < fy1:
                k = yb - fy0
                body.mx[: fy1 - yb, fx0 - ex0 : fx1 - ex0] = fmx[k:].numpy()
                body.my[: fy1 - yb, fx0 - ex0 : fx1 - ex0] = fmy[k:].numpy()
            rects.append(body)
        if ys < Ho:
            rects += body_pieces((ys, Ho), (ex0, ex1), wy[ys - fy0 :], wx, body_shift)
        for r in rects:
            remap_into(out, self._bg4, r)
        # Pixels the source never showed (sampled outside it): inpainted, not edge-repeated.
        # Bilinear upsampling is convex: the coarse field bounds the displacement.
        reach = torch.maximum(field.abs().amax((1, 2)), body_shift.abs())
        reach = torch.nan_to_num(reach, nan=0.0).clamp(0.0, float(max(Ho, Wo)))
        for ys, xs in outside_pixels(rects, (Ho, Wo), (float(reach[0]), float(reach[1]))):
            fill_holes(out, ys, xs, (fy0, Ho, ex0, ex1))

    def _rigid_homography(self, pose: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """``H [3,3]``, ``c [3]``: a target pixel (x, y) at camera depth z goes, as a rigid
        point moved from ``pose`` to the source's, to ``z·H·[x,y,1] + c`` before the division
        (``camera_to_model``, ``pose_points`` and ``project`` in one, in float64: identity poses
        give H = I, c = 0 exactly)."""
        R, t = (v.double() for v in pose)
        Rs, ts = self.R_src.double(), self.t_src.double()
        K = self.K_out.double()
        A = Rs @ R.T
        M = flip(flip(A).T).T  # R_flip A R_flip (flip scales the last axis)
        b = flip(ts - A @ t)
        return (K @ M @ torch.linalg.inv(K)).float(), (K @ b).float()

    def _cell_pool(self, S: int) -> tuple[Tensor, Tensor]:
        """``adaptive_avg_pool2d`` of ``S``² to ``inner``² cells as ``(P @ x @ P.T) / area``:
        ``P`` ``[inner,S]`` the 0/1 bins (floor(i S / n) to ceil((i+1) S / n)), ``area`` their
        pixel counts. Sums of a 0/1 mask are exact, so the cells' coverage is the pooling's to
        the bit (the ``> 0.5`` test below sits on exact halves)."""
        pool = self._pool.get(S)
        if pool is None:
            n = self.field_inner
            P = torch.zeros(n, S)
            for i in range(n):
                P[i, (i * S) // n : -((-(i + 1) * S) // n)] = 1.0
            sizes = P.sum(1)
            pool = self._pool[S] = (P, sizes[:, None] * sizes[None, :])
        return pool

    def _background_field(
        self,
        valid: Tensor,
        points: Tensor,
        depth: Tensor,
        box: tuple[int, int, int],
        bbox: tuple[int, int, int],
        pose: tuple[Tensor, Tensor],
    ) -> Tensor:
        """Background displacement ``[1,2,n,n]`` (output px, target -> source) over ``bbox``, and
        the head's mean rigid displacement ``[2]`` over the face (what the body follows, damped).

        Per face cell: the full (non-rigid) displacement from the warp's source points and the
        rigid one (the target point moved by the head pose only). A 2D similarity is fitted to the
        rigid one (``SimilarityMotion``) and holds over the whole box, faded out at its border;
        the rigid residual from it and the non-rigid remainder are resampled onto the background
        box's coarse grid and extrapolated near the face only.
        """
        x0, y0, side = box
        S = valid.shape[-1]
        # Per crop pixel (exact where the head is still: both displacements are then zero), then
        # averaged over the face cells. rasterize/interpolate give zeros off the mesh (DESIGN §4).
        u = (torch.arange(S, dtype=torch.float32) + 0.5) * (side / S) - 0.5
        ux, uy = (u + x0)[None, :], (u + y0)[:, None]  # target pixel x per column, y per row
        # Rigid: the target pixel's point at its depth, moved from the target pose to the
        # source's, projected: q = depth * H [x, y, 1] + c (H, c in float64 from the poses).
        H, c = self._rigid_homography(pose)
        d = depth.reshape(S, S)
        q = [(H[i, 0] * ux + H[i, 1] * uy).add_(H[i, 2]).mul_(d).add_(c[i]) for i in range(3)]
        qz = q[2].clamp_min_(1e-6)
        rig_x, rig_y = q[0].div_(qz), q[1].div_(qz)
        src_x, src_y = project_planes(points.reshape(-1, 3), self.K_out)
        m = valid.reshape(S, S)
        disp = torch.empty(5, S, S)  # rigid (x, y), non-rigid remainder (x, y), mask
        torch.sub(rig_x, ux, out=disp[0])
        torch.sub(rig_y, uy, out=disp[1])
        torch.sub(src_x.view(S, S), rig_x, out=disp[2])
        torch.sub(src_y.view(S, S), rig_y, out=disp[3])
        torch.nan_to_num_(disp[:4].mul_(m))
        disp[4] = m
        P, area = self._cell_pool(S)  # adaptive_avg_pool2d to inner² cells, as two products
        cells = ((P @ disp @ P.T) / area)[None]
        w_cell = cells[:, 4:5]
        cells = cells[:, :4] / w_cell.clamp_min(1e-6)
        rigid = cells[0, 0:2].permute(1, 2, 0)
        full = rigid + cells[0, 2:4].permute(1, 2, 0)
        w_cell = (w_cell > 0.5).float()  # cells mostly on the face only
        # The head's 2D similarity (scale, roll, translation) fitted to the face cells' rigid
        # motion: it carries the hair, ears and old head position far from the face; the face
        # cells keep only their residual from it (extrapolated near the face, below).
        q = self._cell_unit * side + torch.tensor([x0 - 0.5, y0 - 0.5])  # cell centres, px
        sim = SimilarityMotion.fit(q.view(-1, 2), rigid.reshape(-1, 2), w_cell.view(-1))
        resid = rigid - sim.displacement(q)
        face = torch.cat([resid.permute(2, 0, 1), (full - rigid).permute(2, 0, 1)], 0)[None]
        face = torch.cat([face * w_cell, w_cell], 1)  # [1,5,n,n], displacements premultiplied
        # Resample onto the background grid: cell centres of bbox in face-crop grid units.
        bx0, by0, bside = bbox
        c = (torch.arange(FIELD_GRID, dtype=torch.float32) + 0.5) * (bside / FIELD_GRID) - 0.5
        gx = (2 * (c + bx0 - x0) + 1) / side - 1
        gy = (2 * (c + by0 - y0) + 1) / side - 1
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None]
        big = F.grid_sample(face, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        w = big[:, 4:5]
        ext, support = extend_field(big[:, :4] / w.clamp_min(1e-6), w, 1, 2)
        Q = torch.stack(torch.meshgrid(c + bx0, c + by0, indexing="xy"), dim=-1)  # [n,n,2] px
        far = sim.displacement(Q).permute(2, 0, 1)[None]  # [1,2,n,n]
        rigid_ext = far + support * ext[:, :2]
        field = rigid_ext * self.window + ext[:, 2:4] * support.pow(4)
        return field, sim.translation


class SimilarityMotion:
    """A 2D similarity ``p -> M (p - centre) + centre + translation`` (M: scale and rotation),
    as a displacement field; fitted (weighted least squares) to displacements at points."""

    SCALE_RANGE = (0.5, 2.0)  # a fit outside it is clamped (a degenerate face support)

    def __init__(self, M: Tensor, centre: Tensor, translation: Tensor) -> None:
        self.M_minus_I = M - torch.eye(2)
        self.centre = centre
        self.translation = translation  # [2]: the displacement at the centre

    @classmethod
    def fit(cls, points: Tensor, disp: Tensor, weight: Tensor) -> SimilarityMotion:
        """Least-squares similarity taking ``points`` ``[N,2]`` to ``points + disp`` (weights
        ``[N]``); zero displacements give exactly the identity (a still head stays still)."""
        wsum = weight.sum()
        if float(wsum) < 1e-6:
            z = torch.zeros(2)
            return cls(torch.eye(2), z, z)
        centre = (points * weight[:, None]).sum(0) / wsum
        translation = (disp * weight[:, None]).sum(0) / wsum
        dq = points - centre
        dd = disp - translation  # target residual minus source residual: (M - I) dq
        den = (weight * (dq * dq).sum(1)).sum()
        if float(wsum) < 3 or float(den) < 1e-6:
            return cls(torch.eye(2), centre, translation)
        a = (weight * (dq * dd).sum(1)).sum() / den  # scale*cos - 1
        b = (weight * (dq[:, 0] * dd[:, 1] - dq[:, 1] * dd[:, 0])).sum() / den  # scale*sin
        scale = torch.hypot(1 + a, b)
        lo, hi = cls.SCALE_RANGE
        k = scale.clamp(lo, hi) / scale.clamp_min(1e-6)
        a, b = (1 + a) * k - 1, b * k
        Mm = torch.stack([torch.stack([a, -b]), torch.stack([b, a])])
        return cls(Mm + torch.eye(2), centre, translation)

    def displacement(self, points: Tensor) -> Tensor:
        """Displacement ``[...,2]`` at ``points`` ``[...,2]``."""
        return (points - self.centre) @ self.M_minus_I.T + self.translation
