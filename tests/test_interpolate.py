"""interpolate: C++ kernel vs the pure-PyTorch reference, gradients, and edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jr2net.ops import interpolate, rasterize
from jr2net.ops.reference import interpolate_ref


@pytest.fixture(scope="module")
def ict_rast(ict_model_path):
    """ICT mesh rasterised at 64x80 for two poses: (verts_cam, faces, rast)."""
    data = np.load(ict_model_path)
    verts = torch.tensor(data["vertices"], dtype=torch.float64)
    faces = torch.tensor(data["faces"], dtype=torch.int32)
    X = verts * torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)
    X = torch.stack([X + torch.tensor([0.0, 0.0, 550.0]), X + torch.tensor([20.0, -10.0, 600.0])])
    K = torch.tensor([[120.0, 0.0, 39.5], [0.0, 120.0, 31.5], [0.0, 0.0, 1.0]], dtype=torch.float64)
    rast = rasterize(X, faces, K.expand(2, 3, 3), (64, 80))
    assert (rast[..., 3] > 0).sum() > 1000
    return X, faces, rast


def random_rast(B, H, W, F, seed, dtype=torch.float64, coverage=0.7):
    """A synthetic rast: random barycentrics and valid face ids on a random subset of pixels."""
    g = torch.Generator().manual_seed(seed)
    uv = torch.rand(B, H, W, 2, generator=g, dtype=dtype) * 0.6
    z = torch.rand(B, H, W, 1, generator=g, dtype=dtype) + 1.0
    ids = torch.randint(1, F + 1, (B, H, W, 1), generator=g).to(dtype)
    mask = (torch.rand(B, H, W, 1, generator=g) < coverage).to(dtype)
    return (torch.cat([uv, z, ids], -1) * mask).contiguous()


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_matches_reference_forward_and_backward(ict_rast, shared, dtype):
    X, faces, rast = ict_rast
    rast = rast.to(dtype)
    V = X.shape[1]
    g = torch.Generator().manual_seed(0)
    attr = torch.rand((V, 5) if shared else (2, V, 5), generator=g, dtype=dtype)
    grad = torch.randn(2, 64, 80, 5, generator=g, dtype=dtype)
    results = []
    for fn in (interpolate, interpolate_ref):
        a = attr.clone().requires_grad_()
        r = rast.clone().requires_grad_()
        out = fn(a, r, faces)
        (out * grad).sum().backward()
        results.append((out.detach(), a.grad, r.grad))
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for got, want in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    assert torch.all(results[0][2][..., 2:] == 0)  # no gradient to z or face id
    assert torch.all(results[0][0][rast[..., 3] == 0] == 0)  # zeros off-mesh


def test_gradcheck_float64_wrt_attr_and_barycentrics():
    faces = torch.tensor([[0, 1, 2], [2, 1, 3], [3, 4, 0]], dtype=torch.int32)
    attr = torch.rand(2, 5, 3, dtype=torch.float64, requires_grad=True)
    rast = random_rast(2, 4, 5, 3, seed=1)
    uv = rast[..., :2].clone().requires_grad_()
    rest = rast[..., 2:]  # z and face id are not differentiable inputs

    def f(a, uv_):
        return interpolate(a, torch.cat([uv_, rest], -1), faces)

    assert torch.autograd.gradcheck(f, (attr, uv), eps=1e-6, atol=1e-8)
    shared = torch.rand(5, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (shared, uv), eps=1e-6, atol=1e-8)


def test_interpolating_vertex_positions_recovers_pixel_rays(ict_rast):
    # Perspective-correct barycentrics put the interpolated 3D point on the pixel's ray, and
    # its z equals the rasteriser's depth channel.
    X, faces, rast = ict_rast
    pts = interpolate(X, rast, faces)
    mask = rast[..., 3] > 0
    torch.testing.assert_close(pts[..., 2][mask], rast[..., 2][mask])
    x = 120.0 * pts[..., 0] / pts[..., 2] + 39.5
    y = 120.0 * pts[..., 1] / pts[..., 2] + 31.5
    ii, jj = torch.meshgrid(torch.arange(64.0), torch.arange(80.0), indexing="ij")
    torch.testing.assert_close(x[mask], jj.expand(2, -1, -1)[mask].double())
    torch.testing.assert_close(y[mask], ii.expand(2, -1, -1)[mask].double())


def test_gradient_flows_to_vertices_through_rasterize():
    # d(interpolated attribute)/d(vertex) is nonzero through the barycentrics.
    X = torch.tensor([[[-0.5, -0.5, 2.0], [0.6, -0.4, 2.5], [0.0, 0.7, 3.0]]], requires_grad=True)
    faces = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    K = torch.tensor([[[12.0, 0.0, 7.5], [0.0, 12.0, 7.5], [0.0, 0.0, 1.0]]])
    rast = rasterize(X, faces, K, (16, 16))
    color = torch.tensor([[1.0], [0.0], [0.0]])
    interpolate(color, rast, faces).sum().backward()
    assert X.grad.abs().sum() > 0


def test_empty_rast_gives_zeros():
    faces = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    attr = torch.rand(3, 4, requires_grad=True)
    rast = torch.zeros(1, 6, 7, 4, requires_grad=True)
    out = interpolate(attr, rast, faces)
    assert out.shape == (1, 6, 7, 4) and torch.all(out == 0)
    out.sum().backward()
    assert torch.all(attr.grad == 0) and torch.all(rast.grad == 0)


def test_invalid_inputs_raise_clear_errors():
    faces = torch.tensor([[0, 1, 2], [1, 2, 3]], dtype=torch.int32)
    attr = torch.rand(4, 3)
    rast = random_rast(1, 3, 3, 2, seed=2, dtype=torch.float32)
    for bad_id in (3.0, -1.0, 1.5):
        bad = rast.clone()
        bad[0, 0, 0, 3] = bad_id
        with pytest.raises(ValueError, match="rast"):
            interpolate(attr, bad, faces)
    with pytest.raises(ValueError, match="faces"):
        interpolate(attr[:3], rast, faces)  # faces index vertex 3 of a 3-vertex attr
    with pytest.raises(TypeError, match="dtype"):
        interpolate(attr.double(), rast, faces)
    with pytest.raises(TypeError, match="attr"):
        interpolate(attr.int(), rast.int(), faces)
    with pytest.raises(ValueError, match="rast"):
        interpolate(attr, rast[..., :3], faces)
    with pytest.raises(ValueError, match="attr"):
        interpolate(attr[None].expand(3, -1, -1), rast.expand(2, -1, -1, -1), faces)
    with pytest.raises(TypeError, match="faces"):
        interpolate(attr, rast, faces.float())
    with pytest.raises(TypeError, match="rast"):
        interpolate(attr, rast.numpy(), faces)


def test_noncontiguous_inputs_are_accepted():
    faces = torch.tensor([[0, 1, 2], [1, 2, 3]], dtype=torch.int32)
    attr = torch.rand(3, 4).t()  # [V=4, C=3] view, not contiguous
    rast = random_rast(1, 5, 6, 2, seed=3, dtype=torch.float32).transpose(1, 2)
    assert not attr.is_contiguous() and not rast.is_contiguous()
    torch.testing.assert_close(
        interpolate(attr, rast, faces), interpolate_ref(attr, rast.contiguous(), faces)
    )
