"""depth_warp / correspondence_warp: kernel vs reference, gradients, edge cases, ICT integration."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from jr2net import _C
from jr2net.ops import correspondence_warp, depth_warp, interpolate, rasterize
from jr2net.ops.reference import correspondence_warp_ref, depth_warp_ref


def _K(f: float, cx: float, cy: float, batch: int = 1, dtype=torch.float32) -> torch.Tensor:
    K = torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]], dtype=dtype)
    return K.expand(batch, 3, 3).contiguous()


def _rot(yaw: float, pitch: float = 0.0, dtype=torch.float32) -> torch.Tensor:
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=dtype)
    rx = torch.tensor([[1, 0, 0], [0, cp, -sp], [0, sp, cp]], dtype=dtype)
    return ry @ rx


def _pixel_grid(H: int, W: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    ii, jj = torch.meshgrid(
        torch.arange(H, dtype=dtype), torch.arange(W, dtype=dtype), indexing="ij"
    )
    return ii, jj


def _random_points(B, Ht, Wt, K, Hs, Ws, gen, dtype=torch.float32, margin=3.0):
    """Source-frame points projecting to [-margin, W-1+margin] (some outside), z in [2, 4]."""
    x = torch.rand(B, Ht, Wt, generator=gen, dtype=dtype) * (Ws - 1 + 2 * margin) - margin
    y = torch.rand(B, Ht, Wt, generator=gen, dtype=dtype) * (Hs - 1 + 2 * margin) - margin
    z = 2 + 2 * torch.rand(B, Ht, Wt, generator=gen, dtype=dtype)
    fx, fy = K[:, 0, 0, None, None], K[:, 1, 1, None, None]
    cx, cy = K[:, 0, 2, None, None], K[:, 1, 2, None, None]
    return torch.stack([(x - cx) / fx * z, (y - cy) / fy * z, z], dim=-1).contiguous()


def _random_depth_case(B, C, Hs, Ws, Ht, Wt, gen, dtype=torch.float32, with_src_depth=True):
    src = torch.rand(B, C, Hs, Ws, generator=gen, dtype=dtype)
    K_src = _K(0.9 * Ws, (Ws - 1) / 2, (Hs - 1) / 2, B, dtype)
    K_dst = _K(1.1 * Wt, (Wt - 1) / 2 + 0.3, (Ht - 1) / 2 - 0.2, B, dtype)
    T = torch.eye(4, dtype=dtype).repeat(B, 1, 1)
    for b in range(B):
        T[b, :3, :3] = _rot(0.05 * (b + 1), -0.03, dtype)
        T[b, :3, 3] = torch.tensor([0.05 * b - 0.1, 0.03, 0.1], dtype=dtype)
    dst_depth = 2 + torch.rand(B, 1, Ht, Wt, generator=gen, dtype=dtype)
    dst_depth[torch.rand(B, 1, Ht, Wt, generator=gen) < 0.15] = 0  # background holes
    src_depth = None
    if with_src_depth:
        # A smooth surface near the true depth so most pixels pass the occlusion test, some fail.
        src_depth = 2.3 + 0.6 * torch.rand(B, 1, Hs, Ws, generator=gen, dtype=dtype)
        src_depth[torch.rand(B, 1, Hs, Ws, generator=gen) < 0.05] = 0
    return src, dst_depth, K_src, K_dst, T, src_depth


# ---- kernel vs reference ----------------------------------------------------------------------


@pytest.mark.parametrize("with_src_depth", [False, True])
@pytest.mark.parametrize(
    "shape", [(2, 3, 20, 28, 17, 23), (1, 5, 9, 9, 9, 9), (3, 1, 12, 7, 6, 15)]
)
def test_correspondence_warp_matches_reference_forward_and_backward(shape, with_src_depth):
    B, C, Hs, Ws, Ht, Wt = shape
    gen = torch.Generator().manual_seed(1)
    src = torch.rand(B, C, Hs, Ws, generator=gen).requires_grad_()
    K = _K(0.8 * Ws, (Ws - 1) / 2, (Hs - 1) / 2, B)
    pts = _random_points(B, Ht, Wt, K, Hs, Ws, gen).requires_grad_()
    valid = (torch.rand(B, 1, Ht, Wt, generator=gen) > 0.2).float()
    src_depth = None
    rel_eps = 0.02
    if with_src_depth:
        # The source depth equals the points' depth at some pixels and is nearer elsewhere.
        src_depth = 2 + 2 * torch.rand(B, 1, Hs, Ws, generator=gen)
        rel_eps = 0.4
    out, cov = correspondence_warp(src, pts, valid, K, src_depth, rel_eps)
    ref, ref_cov = correspondence_warp_ref(src, pts, valid, K, src_depth, rel_eps)
    assert torch.equal(cov, ref_cov)
    assert 0.1 < cov.mean().item() < 0.95  # the case exercises both outcomes
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn(out.shape, generator=gen)
    g = torch.autograd.grad(out, [src, pts], grad)
    g_ref = torch.autograd.grad(ref, [src, pts], grad)
    torch.testing.assert_close(g[0], g_ref[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g[1], g_ref[1], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    "shape, margin",
    [
        ((1, 9, 140, 150, 130, 140), 3.0),  # several pixel blocks per plane, many planes
        ((2, 3, 1, 12, 5, 7), 0.0),  # 1-pixel-high source: the lower tap is the upper one
        ((2, 3, 10, 1, 6, 5), 0.0),  # 1-pixel-wide source
    ],
)
def test_many_channels_and_degenerate_sources_match_reference(shape, margin):
    B, C, Hs, Ws, Ht, Wt = shape
    gen = torch.Generator().manual_seed(4)
    src = torch.rand(B, C, Hs, Ws, generator=gen).requires_grad_()
    K = _K(0.8 * max(Ws, Hs), (Ws - 1) / 2, (Hs - 1) / 2, B)
    pts = _random_points(B, Ht, Wt, K, Hs, Ws, gen, margin=margin).requires_grad_()
    valid = (torch.rand(B, 1, Ht, Wt, generator=gen) > 0.2).float()
    out, cov = correspondence_warp(src, pts, valid, K)
    ref, ref_cov = correspondence_warp_ref(src, pts, valid, K)
    assert torch.equal(cov, ref_cov)
    assert cov.mean().item() > 0.3
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn(out.shape, generator=gen)
    g = torch.autograd.grad(out, [src, pts], grad)
    g_ref = torch.autograd.grad(ref, [src, pts], grad)
    torch.testing.assert_close(g[0], g_ref[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g[1], g_ref[1], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("with_src_depth", [False, True])
@pytest.mark.parametrize(
    "shape", [(2, 3, 24, 32, 20, 26), (1, 4, 16, 16, 16, 16), (2, 2, 10, 18, 14, 9)]
)
def test_depth_warp_matches_reference_forward_and_backward(shape, with_src_depth):
    B, C, Hs, Ws, Ht, Wt = shape
    gen = torch.Generator().manual_seed(2)
    src, dst_depth, K_src, K_dst, T, src_depth = _random_depth_case(
        B, C, Hs, Ws, Ht, Wt, gen, with_src_depth=with_src_depth
    )
    src.requires_grad_()
    dst_depth.requires_grad_()
    out, cov = depth_warp(src, dst_depth, K_src, K_dst, T, src_depth, 0.1)
    ref, ref_cov = depth_warp_ref(src, dst_depth, K_src, K_dst, T, src_depth, 0.1)
    assert torch.equal(cov, ref_cov)
    assert 0.1 < cov.mean().item() < 0.95
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn(out.shape, generator=gen)
    g = torch.autograd.grad(out, [src, dst_depth], grad)
    g_ref = torch.autograd.grad(ref, [src, dst_depth], grad)
    torch.testing.assert_close(g[0], g_ref[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g[1], g_ref[1], rtol=1e-3, atol=1e-3)


def test_backward_of_src_only_matches_reference():
    gen = torch.Generator().manual_seed(3)
    src, dst_depth, K_src, K_dst, T, src_depth = _random_depth_case(2, 6, 16, 20, 12, 14, gen)
    src.requires_grad_()
    out, _ = depth_warp(src, dst_depth, K_src, K_dst, T, src_depth, 0.1)
    ref, _ = depth_warp_ref(src, dst_depth, K_src, K_dst, T, src_depth, 0.1)
    grad = torch.randn(out.shape, generator=gen)
    (g,) = torch.autograd.grad(out, [src], grad)
    (g_ref,) = torch.autograd.grad(ref, [src], grad)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 3])
def test_large_inputs_match_reference_at_any_thread_count(threads):
    """Big enough to split tiles and channel ranges over threads (uneven with 3)."""
    gen = torch.Generator().manual_seed(11)
    src, dst_depth, K_src, K_dst, T, src_depth = _random_depth_case(2, 17, 48, 64, 40, 56, gen)
    src.requires_grad_()
    dst_depth.requires_grad_()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out, cov = depth_warp(src, dst_depth, K_src, K_dst, T, src_depth, 0.1)
        grad = torch.randn(out.shape, generator=gen)
        g = torch.autograd.grad(out, [src, dst_depth], grad)
    finally:
        torch.set_num_threads(previous)
    ref, ref_cov = depth_warp_ref(src, dst_depth, K_src, K_dst, T, src_depth, 0.1)
    g_ref = torch.autograd.grad(ref, [src, dst_depth], grad)
    assert torch.equal(cov, ref_cov)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g[0], g_ref[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g[1], g_ref[1], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("threads", [1, 2])
def test_outputs_of_two_mib_and_more_match_reference(threads):
    """1x32x128x128 float32 is 2 MiB: the forward writes its rows with non-temporal stores."""
    gen = torch.Generator().manual_seed(12)
    src, dst_depth, K_src, K_dst, T, src_depth = _random_depth_case(1, 32, 96, 112, 128, 128, gen)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out, cov = depth_warp(src, dst_depth, K_src, K_dst, T, src_depth, 0.1)
    finally:
        torch.set_num_threads(previous)
    ref, ref_cov = depth_warp_ref(src, dst_depth, K_src, K_dst, T, src_depth, 0.1)
    assert out.numel() * out.element_size() >= 2 << 20
    assert torch.equal(cov, ref_cov)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)  # float32 sums, 2^19 values


# ---- gradcheck (float64) ----------------------------------------------------------------------


def test_correspondence_warp_gradcheck_src_and_points():
    gen = torch.Generator().manual_seed(4)
    B, C, Hs, Ws, Ht, Wt = 2, 2, 6, 7, 3, 4
    src = torch.rand(B, C, Hs, Ws, generator=gen, dtype=torch.float64, requires_grad=True)
    K = _K(4.0, 3.0, 2.5, B, torch.float64)
    # Points well inside the source, away from pixel-grid lines (bilinear kinks).
    x = (
        0.3
        + 0.4 * torch.rand(B, Ht, Wt, generator=gen, dtype=torch.float64)
        + torch.randint(0, Ws - 1, (B, Ht, Wt), generator=gen).double()
    )
    y = (
        0.3
        + 0.4 * torch.rand(B, Ht, Wt, generator=gen, dtype=torch.float64)
        + torch.randint(0, Hs - 1, (B, Ht, Wt), generator=gen).double()
    )
    z = 2 + torch.rand(B, Ht, Wt, generator=gen, dtype=torch.float64)
    pts = torch.stack([(x - 3.0) / 4 * z, (y - 2.5) / 4 * z, z], -1).requires_grad_()
    valid = torch.ones(B, 1, Ht, Wt, dtype=torch.float64)
    valid[0, 0, 0, 0] = 0
    src_depth = torch.full((B, 1, Hs, Ws), 2.5, dtype=torch.float64)

    def fn(s, p):
        return correspondence_warp(s, p, valid, K, src_depth, 0.5)[0]

    assert torch.autograd.gradcheck(fn, (src, pts), eps=1e-6, atol=1e-6)


def test_depth_warp_gradcheck_src_and_dst_depth():
    gen = torch.Generator().manual_seed(5)
    B, C, Hs, Ws, Ht, Wt = 1, 2, 8, 9, 4, 5
    src = torch.rand(B, C, Hs, Ws, generator=gen, dtype=torch.float64, requires_grad=True)
    K_src = _K(5.0, 4.0, 3.5, B, torch.float64)
    K_dst = _K(3.0, 2.0, 1.5, B, torch.float64)
    T = torch.eye(4, dtype=torch.float64)[None].clone()
    T[0, :3, :3] = _rot(0.04, 0.02, torch.float64)
    T[0, :3, 3] = torch.tensor([0.011, -0.007, 0.02], dtype=torch.float64)
    dst_depth = 2 + 0.5 * torch.rand(B, 1, Ht, Wt, generator=gen, dtype=torch.float64)
    dst_depth[0, 0, 1, 1] = -1  # invalid, and stays so under finite differences
    dst_depth.requires_grad_()

    def fn(s, d):
        return depth_warp(s, d, K_src, K_dst, T)[0]

    out, cov = depth_warp(src, dst_depth, K_src, K_dst, T)
    assert cov.sum() >= Ht * Wt - 3  # the check covers real samples
    assert torch.autograd.gradcheck(fn, (src, dst_depth), eps=1e-6, atol=1e-6)


# ---- semantics and edge cases -----------------------------------------------------------------


def test_identity_depth_warp_reproduces_source():
    gen = torch.Generator().manual_seed(6)
    src = torch.rand(2, 3, 11, 13, generator=gen)
    K = _K(10.0, 6.0, 5.0, 2)
    depth = 1 + torch.rand(2, 1, 11, 13, generator=gen)
    T = torch.eye(4).repeat(2, 1, 1)
    out, cov = depth_warp(src, depth, K, K, T, depth)
    assert torch.equal(cov, torch.ones_like(cov))  # includes the last row/column (x = Ws-1)
    torch.testing.assert_close(out, src, rtol=1e-5, atol=1e-5)


def test_one_pixel_shift_samples_neighbour_and_drops_the_last_column():
    """Target pixel (i, j) looks at source (i, j+1): inside up to x = Ws-1, outside beyond."""
    Hs = Ws = 6
    src = torch.arange(Hs * Ws, dtype=torch.float32).reshape(1, 1, Hs, Ws)
    K = _K(4.0, 2.5, 2.5)
    ii, jj = _pixel_grid(Hs, Ws)
    z = torch.full_like(ii, 3.0)
    pts = torch.stack([(jj + 1 - 2.5) / 4 * z, (ii - 2.5) / 4 * z, z], -1)[None].contiguous()
    out, cov = correspondence_warp(src, pts, torch.ones(1, 1, Hs, Ws), K)
    assert torch.equal(cov[0, 0, :, :-1], torch.ones(Hs, Ws - 1))
    assert torch.equal(cov[0, 0, :, -1], torch.zeros(Hs))
    torch.testing.assert_close(out[0, 0, :, :-1], src[0, 0, :, 1:], rtol=1e-5, atol=1e-4)
    assert torch.equal(out[0, 0, :, -1], torch.zeros(Hs))


def test_points_outside_behind_or_invalid_are_not_covisible():
    src = torch.rand(1, 2, 5, 5) + 1
    K = _K(4.0, 2.0, 2.0)
    centre = [0.0, 0.0, 2.0]
    pts = torch.tensor(
        [
            [centre, [-1.2, 0.0, 2.0], [0.0, 1.2, 2.0], [0.0, 0.0, -2.0]],
            [[0.0, 0.0, 0.0], [float("nan"), 0.0, 2.0], centre, [1.0, 1.0, 2.0]],  # x = y = 4
        ]
    )[None]
    valid = torch.ones(1, 1, 2, 4)
    valid[0, 0, 1, 2] = 0  # a valid point on an invalid target pixel
    out, cov = correspondence_warp(src, pts, valid, K)
    expected = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1]])
    assert torch.equal(cov[0, 0], expected)
    assert torch.equal(out[0, :, 0, 1:], torch.zeros(2, 3))
    assert torch.equal(out[0, :, 1, :3], torch.zeros(2, 3))
    torch.testing.assert_close(out[0, :, 0, 0], src[0, :, 2, 2])
    torch.testing.assert_close(out[0, :, 1, 3], src[0, :, 4, 4])


def test_occluded_point_is_not_covisible():
    """A point hidden behind a nearer source surface, or over a depth hole, is dropped."""
    src = torch.rand(1, 1, 5, 5)
    K = _K(4.0, 2.0, 2.0)
    z = 2.0
    pts = torch.tensor([[[0.0, 0.0, z], [0.5, 0.0, z], [-0.5, 0.0, z], [0.0, -0.5, z]]])[None]
    src_depth = torch.full((1, 1, 5, 5), z)
    src_depth[0, 0, 2, 3] = 1.0  # an occluder in front of the 2nd point (x=3, y=2)
    src_depth[0, 0, 2, 1] = 0.0  # a hole under the 3rd point (x=1, y=2)
    src_depth[0, 0, 1, 2] = z * 1.015  # within rel_eps of the 4th point (x=2, y=1)
    out, cov = correspondence_warp(src, pts, torch.ones(1, 1, 1, 4), K, src_depth, 0.02)
    assert torch.equal(cov[0, 0, 0], torch.tensor([1.0, 0.0, 0.0, 1.0]))
    _, cov_tight = correspondence_warp(src, pts, torch.ones(1, 1, 1, 4), K, src_depth, 0.01)
    assert torch.equal(cov_tight[0, 0, 0], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    _, cov_free = correspondence_warp(src, pts, torch.ones(1, 1, 1, 4), K)
    assert torch.equal(cov_free, torch.ones_like(cov_free))


def test_wrapper_accepts_bool_valid_single_K_and_noncontiguous_inputs():
    gen = torch.Generator().manual_seed(7)
    src = torch.rand(1, 9, 9, 3, generator=gen).permute(0, 3, 1, 2)  # non-contiguous [1,3,9,9]
    K = _K(6.0, 4.0, 4.0)
    pts = _random_points(1, 5, 6, K, 9, 9, gen)
    valid = torch.rand(1, 1, 5, 6, generator=gen) > 0.3
    out, cov = correspondence_warp(src, pts, valid, K[0])
    ref, ref_cov = correspondence_warp_ref(src.contiguous(), pts, valid.float(), K)
    assert torch.equal(cov, ref_cov)
    torch.testing.assert_close(out, ref)


def test_covisible_is_not_differentiable_and_output_is_zero_outside():
    gen = torch.Generator().manual_seed(8)
    src, dst_depth, K_src, K_dst, T, src_depth = _random_depth_case(1, 3, 12, 12, 12, 12, gen)
    src.requires_grad_()
    out, cov = depth_warp(src, dst_depth, K_src, K_dst, T, src_depth)
    assert not cov.requires_grad and out.requires_grad
    assert torch.equal(out.detach() * (1 - cov), torch.zeros_like(out))
    assert torch.all(cov[dst_depth <= 0] == 0)


# ---- validation -------------------------------------------------------------------------------


def _valid_depth_args():
    gen = torch.Generator().manual_seed(9)
    return list(_random_depth_case(2, 3, 8, 8, 6, 6, gen))


@pytest.mark.parametrize(
    "index, bad, exc, name",
    [
        (0, torch.rand(2, 3, 8), ValueError, "src"),
        (0, torch.randint(0, 5, (2, 3, 8, 8)), TypeError, "src"),
        (1, torch.rand(2, 6, 6), ValueError, "dst_depth"),
        (1, torch.rand(2, 2, 6, 6), ValueError, "dst_depth"),
        (1, torch.rand(2, 1, 6, 6, dtype=torch.float64), TypeError, "dst_depth"),
        (2, torch.rand(2, 3, 4), ValueError, "K_src"),
        (3, torch.rand(3, 3, 3), ValueError, "K_dst"),
        (4, torch.rand(2, 3, 4), ValueError, "src_T_dst"),
        (5, torch.rand(2, 1, 7, 8), ValueError, "src_depth"),
        (1, [[1.0]], TypeError, "dst_depth"),
    ],
)
def test_depth_warp_rejects_bad_arguments_naming_them(index, bad, exc, name):
    args = _valid_depth_args()
    args[index] = bad
    with pytest.raises(exc, match=name):
        depth_warp(*args)


def test_correspondence_warp_rejects_bad_arguments_naming_them():
    src = torch.rand(1, 2, 5, 5)
    K = _K(4.0, 2.0, 2.0)
    pts = torch.rand(1, 3, 4, 3)
    valid = torch.ones(1, 1, 3, 4)
    with pytest.raises(ValueError, match="points_src"):
        correspondence_warp(src, torch.rand(1, 3, 4, 2), valid, K)
    with pytest.raises(ValueError, match="valid"):
        correspondence_warp(src, pts, torch.ones(1, 1, 4, 3), K)
    with pytest.raises(TypeError, match="points_src"):
        correspondence_warp(src, pts.double(), valid, K)
    with pytest.raises(ValueError, match="rel_eps"):
        correspondence_warp(src, pts, valid, K, None, -0.1)
    with pytest.raises(TypeError, match="rel_eps"):
        correspondence_warp(src, pts, valid, K, None, "0.1")
    with pytest.raises(ValueError, match="src"):
        correspondence_warp(torch.rand(1, 2, 0, 5), pts, valid, K)


def test_extension_rejects_noncontiguous_tensors_naming_them():
    src = torch.rand(1, 5, 5, 2).permute(0, 3, 1, 2)
    K = _K(4.0, 2.0, 2.0)
    pts = torch.rand(1, 3, 4, 3)
    valid = torch.ones(1, 1, 3, 4)
    with pytest.raises(ValueError, match="src must be contiguous"):
        _C.correspondence_warp_fwd(src, pts, valid, K, None, 0.02)
    with pytest.raises(ValueError, match="points_src must be contiguous"):
        _C.correspondence_warp_fwd(src.contiguous(), pts.transpose(1, 2), valid, K, None, 0.02)


# ---- CUDA (runs where a GPU and a CUDA build exist) --------------------------------------------


@pytest.mark.skipif(
    not (torch.cuda.is_available() and _C.with_cuda), reason="needs a CUDA build and a GPU"
)
@pytest.mark.parametrize("with_src_depth", [False, True])
def test_cuda_matches_cpu(with_src_depth):
    gen = torch.Generator().manual_seed(10)
    src, dst_depth, K_src, K_dst, T, src_depth = _random_depth_case(
        2, 5, 24, 30, 20, 22, gen, with_src_depth=with_src_depth
    )
    args = [src, dst_depth, K_src, K_dst, T, src_depth]
    cpu = [a.clone().requires_grad_(i < 2) if a is not None else None for i, a in enumerate(args)]
    gpu = [a.cuda().requires_grad_(i < 2) if a is not None else None for i, a in enumerate(args)]
    out_c, cov_c = depth_warp(*cpu, 0.1)
    out_g, cov_g = depth_warp(*gpu, 0.1)
    agree = cov_c == cov_g.cpu()
    assert agree.float().mean() > 0.995  # fused multiply-adds may flip boundary pixels
    m = agree & (cov_c > 0)
    torch.testing.assert_close(out_g.cpu() * m, out_c * m, rtol=1e-4, atol=1e-4)
    grad = torch.randn(out_c.shape, generator=gen) * m
    g_c = torch.autograd.grad(out_c, cpu[:2], grad)
    g_g = torch.autograd.grad(out_g, gpu[:2], grad.cuda())
    torch.testing.assert_close(g_g[0].cpu(), g_c[0], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(g_g[1].cpu() * m[:, :1], g_c[1] * m[:, :1], rtol=1e-2, atol=1e-2)


# ---- integration: the ICT face rendered in two poses ------------------------------------------


def _ict_scene(ict_model_path, size=160, f=330.0, expression=None):
    data = np.load(ict_model_path)
    verts = torch.from_numpy(data["vertices"].astype(np.float32))
    faces = torch.from_numpy(data["faces"].astype(np.int32))
    names = [str(n) for n in data["expression_names"]]
    posed_model = verts
    if expression is not None:
        name, weight = expression
        delta = torch.from_numpy(data["expression_basis"][names.index(name)].astype(np.float32))
        posed_model = verts + weight * delta
    # Smooth per-vertex colour of the *neutral* model position: it moves with the surface.
    colour = torch.stack(
        [
            0.5 + 0.4 * torch.sin(verts[:, 0] / 23.0),
            0.5 + 0.4 * torch.cos(verts[:, 1] / 19.0),
            0.5 + 0.4 * torch.sin((verts[:, 0] + verts[:, 2]) / 29.0),
        ],
        dim=-1,
    )
    K = _K(f, (size - 1) / 2, (size - 1) / 2)
    return verts, posed_model, faces, colour, K


def _to_cam(X: torch.Tensor, R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
    return ((X @ R.T + t) @ flip.T)[None].contiguous()


def _render(verts_cam, faces, K, size, attr):
    rast = rasterize(verts_cam, faces, K, (size, size), cull_backfaces=True)
    image = interpolate(attr, rast, faces).permute(0, 3, 1, 2).contiguous()
    mask = (rast[..., 3] > 0)[:, None].float()
    depth = (rast[..., 2][:, None] * mask).contiguous()
    return image * mask, depth, rast


@pytest.mark.slow
def test_depth_warp_of_ict_render_reproduces_the_other_view(ict_model_path):
    size = 160
    verts, _, faces, colour, K = _ict_scene(ict_model_path, size)
    R_a, t_a = _rot(0.0, 0.05), torch.tensor([0.0, -20.0, -600.0])
    R_b, t_b = _rot(0.22, -0.04), torch.tensor([12.0, -15.0, -590.0])
    src_img, src_depth, _ = _render(_to_cam(verts, R_a, t_a), faces, K, size, colour)
    dst_img, dst_depth, _ = _render(_to_cam(verts, R_b, t_b), faces, K, size, colour)
    # X_a = F (R_a R_bᵀ (F X_b - t_b) + t_a), F = diag(1,-1,-1)
    F = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
    R_ab = R_a @ R_b.T
    T = torch.eye(4)[None].clone()
    T[0, :3, :3] = F @ R_ab @ F
    T[0, :3, 3] = F @ (t_a - R_ab @ t_b)
    warped, cov = depth_warp(src_img, dst_depth, K, K, T, src_depth, rel_eps=0.01)
    target = (dst_depth > 0).float()
    assert cov.sum() > 0.75 * target.sum()  # most of the face is seen in both views
    assert torch.all(cov <= target)
    err = (warped - dst_img).abs().amax(dim=1, keepdim=True)[cov > 0]
    assert err.mean() < 0.01 and torch.quantile(err, 0.99) < 0.05
    # Self-occluded pixels (the far cheek behind the nose) exist and are excluded.
    _, cov_no_occlusion = depth_warp(src_img, dst_depth, K, K, T, None)
    assert cov_no_occlusion.sum() > cov.sum()


@pytest.mark.slow
def test_correspondence_warp_follows_a_non_rigid_expression(ict_model_path):
    """Source neutral, target with jawOpen: each target pixel's source point comes from
    interpolating the source-posed mesh with the target rasterisation."""
    size = 160
    verts, driven, faces, colour, K = _ict_scene(ict_model_path, size, expression=("jawOpen", 0.8))
    R, t = _rot(0.1, 0.0), torch.tensor([0.0, -20.0, -600.0])
    src_cam = _to_cam(verts, R, t)
    src_img, src_depth, _ = _render(src_cam, faces, K, size, colour)
    dst_img, _, dst_rast = _render(_to_cam(driven, R, t), faces, K, size, colour)
    points = interpolate(src_cam[0], dst_rast, faces).contiguous()
    valid = (dst_rast[..., 3] > 0)[:, None].float()
    warped, cov = correspondence_warp(src_img, points, valid, K, src_depth, 0.01)
    assert cov.sum() > 0.85 * valid.sum()
    err = (warped - dst_img).abs().amax(dim=1, keepdim=True)[cov > 0]
    assert err.mean() < 0.01 and torch.quantile(err, 0.99) < 0.05
    # A rigid-only warp (ignoring the expression) is visibly worse around the mouth.
    _, dst_depth_expr, _ = _render(_to_cam(driven, R, t), faces, K, size, colour)
    rigid, cov_r = depth_warp(src_img, dst_depth_expr, K, K, torch.eye(4)[None], src_depth, 0.05)
    both = (cov_r > 0) & (cov > 0)
    rigid_err = (rigid - dst_img).abs().amax(dim=1, keepdim=True)[both]
    ours_err = (warped - dst_img).abs().amax(dim=1, keepdim=True)[both]
    assert ours_err.mean() < 0.5 * rigid_err.mean()
