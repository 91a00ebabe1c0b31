"""The geometric path's compositor (jr2net.pipeline.composite): the background field, and the
measured body motion (jr2net.pipeline.background)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jr2net.face.camera import camera_to_model, intrinsics, pose_points
from jr2net.face.camera import project as project_points
from jr2net.pipeline.background import BodyTracker, body_rect, source_face_weights
from jr2net.pipeline.composite import FIELD_GRID, Compositor, SimilarityMotion

H = W = 320
F_PX, Z_SRC = 400.0, 500.0  # focal (px) and the source head's distance (mm)
S = 64  # render crop side


def _plane_head(
    z: float, roll: float = 0.0, shift=(0.0, 0.0), radius: float = 0.45, src_dy: int = 0
):
    """A flat head facing the camera at depth ``z`` mm (rolled by ``roll`` rad): the inputs of
    ``Compositor._background_field`` for it, with the source head at ``Z_SRC``, centred."""
    K = intrinsics(F_PX, (W - 1) / 2, (H - 1) / 2)[0]
    c, s = math.cos(roll), math.sin(roll)
    R = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    t = torch.tensor([shift[0], shift[1], -z])  # model axes (the camera flip makes z positive)
    R_src, t_src = torch.eye(3), torch.tensor([0.0, 0.0, -Z_SRC])
    side = round(F_PX * 160.0 / z)  # a 160 mm wide face box
    x0 = y0 = (W - side) // 2
    u = (torch.arange(S, dtype=torch.float32) + 0.5) * (side / S) - 0.5
    pix = torch.stack(torch.meshgrid(u + x0, u + y0, indexing="xy"), -1).view(-1, 2)
    rays = torch.cat([pix, torch.ones(S * S, 1)], -1) @ torch.linalg.inv(K).T
    depth = torch.full((S * S, 1), z)
    X_m = camera_to_model(rays * depth, R, t)
    points = pose_points(X_m, R_src, t_src).view(1, S, S, 3)
    r = torch.linalg.norm(pix - pix.mean(0), dim=1).view(1, 1, S, S)
    valid = (r < radius * side).float()  # a round face in its box
    src_side = round(F_PX * 160.0 / Z_SRC)
    src_box = ((W - src_side) // 2, (H - src_side) // 2 + src_dy, src_side)
    g = torch.Generator().manual_seed(0)
    bg = F.avg_pool2d(torch.rand(1, 3, H + 4, W + 4, generator=g), 5, 1)  # a fine texture
    comp = Compositor(bg, K, S, 1, True, src_box, (R_src, t_src))
    box = (x0, y0, side)
    bside = math.ceil(1.6 * side)
    bbox = (W // 2 - bside // 2, H // 2 - bside // 2, bside)
    return comp, (valid, points, depth.view(1, S, S), box, bbox, (R, t)), K, (R, t)


def _true_displacement(K, pose, q):
    """Target -> source pixel displacement of the head plane's points at pixels ``q`` [N,2]."""
    R, t = pose
    z = -float(t[2])
    rays = torch.cat([q, torch.ones(len(q), 1)], -1) @ torch.linalg.inv(K).T
    X_m = camera_to_model(rays * z, R, t)
    p = project_points(pose_points(X_m, torch.eye(3), torch.tensor([0.0, 0.0, -Z_SRC])), K[None])
    return p[0] - q


@pytest.mark.parametrize("z, roll", [(400.0, 0.0), (500.0, 0.15), (450.0, -0.1)])
def test_hair_beside_the_face_follows_the_head_scale_and_roll(z, roll):
    """Beside the face (a box corner cell inside the field's flat window) the background moves
    as the head plane does when the head comes closer and rolls (the old field moved it by the
    face's mean translation only: no scale, no roll)."""
    comp, args, K, pose = _plane_head(z, roll)
    field, shift = comp._background_field(*args)
    bx0, by0, bside = args[4]
    c = (torch.arange(FIELD_GRID, dtype=torch.float32) + 0.5) * (bside / FIELD_GRID) - 0.5
    i = j = round(0.25 * FIELD_GRID)  # off the face, where the window is still 1
    assert float(comp.window[0, 0, i, j]) > 0.99
    q = torch.tensor([[float(c[j]) + bx0, float(c[i]) + by0]])
    want = _true_displacement(K, pose, q)[0]
    got = field[0, :, i, j]
    assert float(want.norm()) > 8.0  # a real motion there
    assert float((got - want).norm()) < 0.1 * float(want.norm()), (got, want)
    assert float(shift.norm()) < 1.0  # a centred head: the body does not move


def test_a_still_head_leaves_the_background_exactly_in_place():
    comp, args, _, _ = _plane_head(Z_SRC)
    field, shift = comp._background_field(*args)
    assert float(field.abs().max()) < 1e-4 and float(shift.abs().max()) < 1e-4


def test_similarity_motion_recovers_scale_rotation_translation_and_ignores_zero_weights():
    g = torch.Generator().manual_seed(0)
    q = torch.rand(50, 2, generator=g) * 100
    a = 1.1 * torch.tensor([[math.cos(0.2), -math.sin(0.2)], [math.sin(0.2), math.cos(0.2)]])
    disp = q @ a.T + torch.tensor([3.0, -4.0]) - q
    w = torch.ones(50)
    w[:10] = 0.0
    disp[:10] = 1e3  # ignored
    sim = SimilarityMotion.fit(q, disp, w)
    probe = torch.tensor([[200.0, -50.0]])
    want = probe @ a.T + torch.tensor([3.0, -4.0]) - probe
    assert torch.allclose(sim.displacement(probe), want, atol=1e-2)
    still = SimilarityMotion.fit(q, torch.zeros_like(q), w)
    assert float(still.displacement(probe).abs().max()) == 0.0


def _body_scene(dx: float, dy: float, head_dy: float = 0.0):
    """A 240x320 frame: a textured body (shifted by dx, dy) under a face whose 68 landmarks sit
    at the top (moved by head_dy), over a flat backdrop."""
    import cv2

    rng = np.random.default_rng(0)
    tex = cv2.GaussianBlur(rng.uniform(0, 255, (400, 500)).astype(np.float32), (0, 0), 2.0)
    frame = np.full((240, 320, 3), 90, np.uint8)
    M = np.float32([[1, 0, dx - 90], [0, 1, dy - 80]])
    body = cv2.warpAffine(tex, M, (320, 240), flags=cv2.INTER_LINEAR)
    mask = np.zeros((240, 320), bool)
    mask[round(110 + dy) :, round(60 + dx) : round(260 + dx)] = True  # the body's outline moves too
    frame[mask] = body[mask, None].clip(0, 255).astype(np.uint8)
    lm = np.zeros((68, 2))
    lm[:17, 0] = np.linspace(130, 190, 17)  # jaw: a 60 px wide face
    lm[:17, 1] = 40 + head_dy + 30 * np.sin(np.linspace(0, np.pi, 17))
    lm[17:, 0], lm[17:, 1] = 160, 50 + head_dy
    lm[36], lm[45] = (140, 45 + head_dy), (180, 45 + head_dy)
    return frame, lm


def test_body_tracker_follows_the_driving_body_not_the_head():
    """The body below the face moves 3 px right and 2 px up per frame while the head bobs: the
    summed shift is the body's (the compositor used to move the body by the damped head motion,
    so a laughing head over a still body dragged the shoulders)."""
    tracker = BodyTracker()
    assert not tracker.active
    for k in range(6):
        frame, lm = _body_scene(3.0 * k, -2.0 * k, head_dy=4.0 * (k % 2))
        shift = tracker(frame, lm)
    assert tracker.active and tracker.ref_iod == pytest.approx(40.0)
    assert shift == pytest.approx([15.0, -10.0], abs=1.0)
    still = BodyTracker()
    for k in range(4):
        frame, lm = _body_scene(0.0, 0.0, head_dy=5.0 * (k % 2))
        shift = still(frame, lm)
    assert np.abs(shift).max() < 0.3


def test_body_rect_lies_below_the_face_and_needs_room():
    _, lm = _body_scene(0, 0)
    x0, y0, x1, y1 = body_rect(lm, (240, 320))
    assert y0 > lm[:, 1].max() and y1 <= 240 and x0 >= 0 and x1 <= 320
    assert body_rect(lm + [0, 190], (240, 320)) is None  # the face at the bottom: no body


def test_shoulders_beside_the_jaw_move_with_the_body_not_the_head():
    """A head that drops 16 px over a still body (body shift 0): below the face's lower outline
    the background stays the source's, while beside the eyes it moves with the head (the box's
    field used to drag the shoulders and collar by up to the head's whole motion)."""
    comp, args, K, pose = _plane_head(Z_SRC, shift=(0.0, -16.0), radius=0.35)
    valid, points, depth, box, _, _ = args
    face = torch.zeros(1, 3, S, S)
    out = comp.composite(face, valid, points, depth, box, pose, torch.zeros(2))
    src = comp.bg_u8.astype(float)
    x0, y0, side = box
    lowest = y0 + side * (0.5 + 0.35)
    ys = slice(round(lowest + 0.27 * side), round(lowest + 0.32 * side))
    xs = slice(round(x0 + 0.7 * side), round(x0 + 0.8 * side))
    assert np.abs(out[ys, xs] - src[ys, xs]).max() <= 1.0  # the shoulder stays
    head_ys = slice(round(y0 + 0.35 * side), round(y0 + 0.45 * side))
    head_xs = slice(round(x0 + 0.95 * side), round(x0 + 1.05 * side))  # beside the face
    assert np.abs(out[head_ys, head_xs] - src[head_ys, head_xs]).mean() > 10.0  # hair moved


def test_the_old_head_position_below_a_raised_head_keeps_following_the_head():
    """A head raised 40 px over a still body: where the source showed its face (now below the
    target's jaw) the background still moves with the head, so the source's own chin and cheeks
    do not show beside the new one (the neck weights alone let the body's motion show them)."""
    comp, args, K, pose = _plane_head(Z_SRC, shift=(0.0, 50.0), radius=0.35, src_dy=40)
    valid, points, depth, box, _, _ = args
    out = comp.composite(torch.zeros(1, 3, S, S), valid, points, depth, box, pose, torch.zeros(2))
    sx0, sy0, sside = comp.src_box
    q = torch.tensor([[sx0 + 0.5 * sside + 0.3 * sside, sy0 + 0.75 * sside]])  # source's jaw
    want = _true_displacement(K, pose, q)[0]
    assert float(want[1]) == pytest.approx(40.0, abs=1.0)  # the head moved 40 px up
    xi, yi = round(float(q[0, 0])), round(float(q[0, 1]))
    src = comp.bg_u8.astype(float)
    moved = src[yi + 40, xi]
    assert np.abs(out[yi, xi] - moved).max() <= 2.0
    assert np.abs(out[yi, xi] - src[yi, xi]).max() > 10.0
    w = source_face_weights(comp.src_box, q[:, 0], q[:, 1], torch.zeros(2))
    assert float(w) == 1.0
    far = source_face_weights(comp.src_box, q[:, 0] + sside, q[:, 1], torch.zeros(2))
    assert float(far) == 0.0
