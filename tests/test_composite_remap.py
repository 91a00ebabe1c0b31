"""The compositor's sparse cv2.remap resampling (jr2net.pipeline.remap) against the dense
``grid_sample`` compositing it replaced, re-implemented here as the reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jr2net.face.camera import camera_to_model, intrinsics, pose_points
from jr2net.pipeline import composite
from jr2net.pipeline.background import BODY_OUTER, body_weights, fill_outside
from jr2net.pipeline.composite import Compositor
from jr2net.pipeline.remap import Rect, outside_pixels
from jr2net.pipeline.stages import feather, resample

H, W = 240, 320
F_PX, Z_SRC = 400.0, 500.0
S = 64


def _scene(z: float, roll: float, shift=(0.0, 0.0)):
    """A flat round head at depth ``z`` (rolled, shifted) over a textured uint8 background: the
    compositor and its ``composite`` inputs (the source head centred at ``Z_SRC``)."""
    K = intrinsics(F_PX, (W - 1) / 2, (H - 1) / 2)[0]
    c, s = math.cos(roll), math.sin(roll)
    R = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    t = torch.tensor([shift[0], shift[1], -z])
    R_src, t_src = torch.eye(3), torch.tensor([0.0, 0.0, -Z_SRC])
    side = round(F_PX * 160.0 / z)
    x0, y0 = (W - side) // 2, (H - side) // 2 - 20
    u = (torch.arange(S, dtype=torch.float32) + 0.5) * (side / S) - 0.5
    pix = torch.stack(torch.meshgrid(u + x0, u + y0, indexing="xy"), -1).view(-1, 2)
    rays = torch.cat([pix, torch.ones(S * S, 1)], -1) @ torch.linalg.inv(K).T
    depth = torch.full((S * S, 1), z)
    points = pose_points(camera_to_model(rays * depth, R, t), R_src, t_src).view(1, S, S, 3)
    r = torch.linalg.norm(pix - pix.mean(0), dim=1).view(1, 1, S, S)
    valid = (r < 0.4 * side).float()
    src_side = round(F_PX * 160.0 / Z_SRC)
    src_box = ((W - src_side) // 2, (H - src_side) // 2 - 20, src_side)
    g = torch.Generator().manual_seed(1)
    bg = F.avg_pool2d(torch.rand(1, 3, H + 4, W + 4, generator=g), 5, 1)
    bg = (bg * 255).round() / 255  # an 8-bit photo, as sessions get
    comp = Compositor(bg, K, S, 2, True, src_box, (R_src, t_src))
    face = torch.rand(1, 3, S, S, generator=g)
    return comp, (face, valid, points, depth.view(1, S, S), (x0, y0, side), (R, t))


def _dense_reference(comp, face, valid, points, depth, box, pose, body_shift):
    """The old compositing: the displacement of every pixel of the warped region (the field's
    box window and the body's rows and columns) sampled by ``grid_sample`` in float, the
    outside samples inpainted over the whole region, the face blended in float, one cast."""
    Ho, Wo = comp.out_hw
    x0, y0, side = box
    bbox, (fx0, fy0, fx1, fy1) = comp.background_box(box)
    bx0, by0, bside = bbox
    field, shift = comp.warp_field(valid, points, depth, box, pose, body_shift, bbox)
    cx = x0 + side / 2
    ex0 = max(0, min(fx0, int(math.floor(cx - BODY_OUTER * side))))
    ex1 = min(Wo, max(fx1, int(math.ceil(cx + BODY_OUTER * side))))
    xs = torch.arange(ex0, ex1, dtype=torch.float32)
    ys = torch.arange(fy0, Ho, dtype=torch.float32)
    wx, wy = body_weights(xs, ys, box)
    disp = (wy[:, None] * wx[None, :])[None] * shift.view(2, 1, 1)
    up = F.interpolate(field[None], size=(bside, bside), mode="bilinear", align_corners=False)[0]
    disp[:, : fy1 - fy0, fx0 - ex0 : fx1 - ex0] = up[:, fy0 - by0 : fy1 - by0, fx0 - bx0 : fx1 - bx0]
    gx = (2 * (xs[None, :] + disp[0]) + 1) / Wo - 1
    gy = (2 * (ys[:, None] + disp[1]) + 1) / Ho - 1
    grid = torch.stack([gx, gy], -1)
    bg255 = torch.from_numpy(comp.bg_u8).permute(2, 0, 1)[None].float().add_(0.5)
    region = F.grid_sample(bg255, grid[None], padding_mode="border", align_corners=False)
    outside = (grid.abs() > 1.0 + 1e-4).any(-1)
    if bool(outside.any()):
        region = fill_outside(region, outside)
    layer = torch.cat([face, feather(valid, comp.feather_radius)], 1)
    layer = F.interpolate(layer, size=(side, side), mode="bilinear", align_corners=False)
    lx0, ly0, lx1, ly1 = max(x0, ex0), max(y0, fy0), min(x0 + side, ex1), min(y0 + side, Ho)
    part = layer[0, :, ly0 - y0 : ly1 - y0, lx0 - x0 : lx1 - x0]
    sub = region[0, :, ly0 - fy0 : ly1 - fy0, lx0 - ex0 : lx1 - ex0]
    sub.add_((part[:3] * 255 + 0.5).clamp(0.5, 255.5).sub_(sub).mul_(part[3:4].clamp(0, 1)))
    out = comp.bg_u8.copy()
    out[fy0:, ex0:ex1] = region[0].permute(1, 2, 0).numpy().astype(np.uint8)
    return out, outside, (fy0, ex0)


def _jump(img: np.ndarray, holes: np.ndarray) -> float:
    """Mean colour step from each hole pixel to its nearest valid pixel (how well a fill
    continues the picture)."""
    import cv2

    _, label = cv2.distanceTransformWithLabels(
        holes.astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
    )
    valid = np.argwhere(~holes)
    nearest = np.zeros(label.max() + 1, np.int64)
    nearest[label[~holes]] = np.arange(len(valid))
    near = valid[nearest[label[holes]]]
    return float(np.abs(img[holes] - img[near[:, 0], near[:, 1]]).mean())


@pytest.mark.parametrize(
    "z, roll, shift, body",
    [
        (450.0, 0.12, (6.0, -5.0), (2.6, 3.4)),  # closer, rolled; the body shows the bottom edge
        (560.0, -0.08, (-8.0, 4.0), (-3.1, -1.7)),  # farther; samples past the left edge
        (500.0, 0.0, (0.0, 0.0), (0.0, 0.0)),  # still
    ],
)
@pytest.mark.parametrize("shift_min", [None, 0])
def test_sparse_remap_matches_the_dense_grid_sample_compositing(z, roll, shift, body, shift_min,
                                                                monkeypatch):
    """Pixels sampled inside the source: within one uint8 level of the dense path (OpenCV's
    1/32 px interpolation step), 0.05 level on average. Inpainted ones (the fill sees a crop
    around them, at a finer resolution when the crop is smaller than the region) differ by
    some levels, but continue their valid neighbours at least as well. ``shift_min`` 0: the
    body's uniform middle through ``ShiftRect`` (warpAffine) however small."""
    if shift_min is not None:
        monkeypatch.setattr(composite, "SHIFT_MIN_PIXELS", shift_min)
    comp, args = _scene(z, roll, shift)
    body_shift = torch.tensor(body)
    new = comp.composite(*args, body_shift).astype(int)
    ref, outside, (fy0, ex0) = _dense_reference(comp, *args, body_shift)
    holes = np.zeros((H, W), bool)
    oy, ox = np.nonzero(outside.numpy())
    holes[oy + fy0, ox + ex0] = True
    d = np.abs(new - ref.astype(int)).max(-1)
    assert d[~holes].max() <= 1 and d[~holes].mean() < 0.05, (d[~holes].max(), d[~holes].mean())
    if body != (0.0, 0.0):
        assert holes.sum() > 100  # the case reaches past the frame's edges
        assert d[holes].mean() < 12.0, d[holes].mean()
        jump_new, jump_ref = _jump(new, holes), _jump(ref.astype(int), holes)
        assert jump_new <= jump_ref + 0.5, (jump_new, jump_ref)
    else:
        assert not holes.any()


def test_a_still_head_and_body_leave_the_background_exactly_in_place():
    comp, args = _scene(Z_SRC, 0.0)
    out = comp.composite(*args, torch.zeros(2))
    x0, y0, side = args[4]
    keep = np.ones((H, W), bool)
    keep[y0 : y0 + side, x0 : x0 + side] = False  # the face layer's box
    np.testing.assert_array_equal(out[keep], comp.bg_u8[keep])


def test_outside_pixels_groups_by_edge_and_looks_in_the_bands_only():
    ys, xs = np.mgrid[0:20, 0:30].astype(np.float32)
    mx, my = xs + 0.0, ys + 0.0
    mx[:, :2] -= 3.0  # the two left columns sample past the left edge
    my[-1] += 2.0  # the bottom row past the bottom
    mx[10, 15] = -5.0  # far from any edge: beyond the stated reach, never looked for
    rect = Rect(0, 0, torch.from_numpy(mx), torch.from_numpy(my))
    groups = outside_pixels([rect], (20, 30), (3.0, 2.0))
    assert len(groups) == 2  # bottom, left
    (by, bx), (ly, lx) = groups
    assert set(by.tolist()) == {19} and sorted(bx.tolist()) == list(range(30))
    assert set(lx.tolist()) == {0, 1} and sorted(set(ly.tolist())) == list(range(19))


@pytest.mark.parametrize(
    "h, size, antialias", [(256, 682, True), (128, 349, True), (256, 182, True), (256, 100, False)]
)
def test_resample_matches_f_interpolate(h, size, antialias):
    """The face layer's and its planes' cv2 resampling gives F.interpolate's bilinear values."""
    x = torch.rand(1, 5, h, h, generator=torch.Generator().manual_seed(0))
    want = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    got = resample(x, size, antialias=antialias)
    assert got.shape == want.shape and float((got - want).abs().max()) < 1e-4
