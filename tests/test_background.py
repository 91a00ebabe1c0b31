"""Head / body motion blending of the compositor's background (jr2net.pipeline.background)."""

from __future__ import annotations

import pytest
import torch

from jr2net.pipeline.background import blend_body, head_reach, motion_agreement
from jr2net.pipeline.stages import border_window

N = 32  # background grid cells across (as the compositor's FIELD_GRID)
BOX = (100, 100, 100)  # target face render box (x0, y0, side), output px
BBOX = (70, 70, 160)  # background box around it (x0, y0, side)


def _scene():
    """A disc face mask over BOX, the background box's cell centres and its window."""
    S = 64
    u = torch.arange(S, dtype=torch.float32) + 0.5
    r = torch.sqrt((u[:, None] - S / 2) ** 2 + (u[None, :] - S / 2) ** 2)
    valid = (r < 0.35 * S).float()[None, None]
    bx0, by0, bside = BBOX
    c = (torch.arange(N, dtype=torch.float32) + 0.5) * (bside / N) - 0.5
    return valid, c + bx0, c + by0, border_window(N, 0.22)


def test_motion_agreement():
    h = torch.tensor([100.0, 0.0])
    assert motion_agreement(h, h) == 1.0
    assert motion_agreement(h, torch.tensor([80.0, 10.0])) == 1.0  # within AGREE_FULL
    assert motion_agreement(h, torch.zeros(2)) == 0.0  # a head over a still body
    assert motion_agreement(h, torch.tensor([50.0, 0.0])) == pytest.approx(0.6)
    assert motion_agreement(torch.tensor([0.5, 0.0]), torch.zeros(2)) == 0.0  # a still head


def test_head_reach_is_local_and_zero_at_the_box_border():
    _, xs, ys, _ = _scene()
    w = head_reach(BOX, xs, ys, 0.7)
    assert float(w.max()) == pytest.approx(0.7)
    assert float(w[0].abs().max()) == 0.0 and float(w[:, -1].abs().max()) == 0.0
    assert float(w[N // 2, N // 2]) == pytest.approx(0.7)  # the face centre
    assert float(head_reach(BOX, xs, ys, 0.0).abs().max()) == 0.0


def test_neck_follows_the_body_under_a_head_that_moves_over_it_and_the_head_with_it():
    """Below the face's lower outline the background takes the body's motion when the head
    moved over a still body (d0's laugh), the head's when the two moved together (s29's hair
    beside the jaw); at the box's border the field is the body term's either way (no seam)."""
    valid, xs, ys, window = _scene()
    head = torch.tensor([0.0, 20.0])
    field = window * head.view(1, 2, 1, 1)  # the head's field, faded by its window
    src_box = (400, 400, 100)  # far away: the source-face guard plays no part
    j = int(torch.argmin((xs - 150).abs()))  # under the chin's column
    i = int(torch.argmin((ys - 215).abs()))  # below the lower outline (185) + NECK_RAMP
    over = blend_body(field, window, head, torch.zeros(2), valid, BOX, src_box, xs, ys)
    assert float(over[0, :, i, j].abs().max()) < 1.0  # the still body stays
    along = blend_body(field, window, head, 0.9 * head, valid, BOX, src_box, xs, ys)
    assert float(along[0, 1, i, j]) == pytest.approx(20.0, abs=1.0)  # moves with the head
    for f, body in ((over, 0.0), (along, 18.0)):
        assert float(f[0, 1, -1, N // 2]) == pytest.approx(body, abs=0.5)  # bottom edge: body
        assert torch.allclose(f[0, :, 0], field[0, :, 0])  # top edge: the head's faded field


def test_a_still_head_and_body_leave_the_field_at_zero():
    valid, xs, ys, window = _scene()
    z = torch.zeros(2)
    out = blend_body(torch.zeros(1, 2, N, N), window, z, z, valid, BOX, (100, 100, 100), xs, ys)
    assert float(out.abs().max()) == 0.0
