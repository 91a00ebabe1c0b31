"""rasterize: C++ kernel vs the pure-PyTorch reference, gradients, and edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jr2net import _C
from jr2net.ops import interpolate, rasterize
from jr2net.ops.rasterize import NEAR_Z
from jr2net.ops.reference import rasterize_ref

R_FLIP = torch.tensor([1.0, -1.0, -1.0])


@pytest.fixture(scope="module")
def ict_mesh(ict_model_path):
    data = np.load(ict_model_path)
    verts = torch.tensor(data["vertices"], dtype=torch.float32)
    faces = torch.tensor(data["faces"], dtype=torch.int32)
    return verts, faces


def intrinsics(H: int, W: int, f: float, B: int = 1, skew: float = 0.0, dtype=torch.float32):
    K = torch.tensor([[f, skew, (W - 1) / 2], [0.0, f, (H - 1) / 2], [0.0, 0.0, 1.0]], dtype=dtype)
    return K.expand(B, 3, 3).contiguous()


def ict_scene(verts, H, W, B=1, depth=550.0, seed=0):
    """ICT mesh (mm, y up, z out) posed in front of the camera, X_cam = diag(1,-1,-1) X + t."""
    g = torch.Generator().manual_seed(seed)
    base = verts * R_FLIP + torch.tensor([0.0, 0.0, depth])
    shift = torch.randn(B, 1, 3, generator=g) * torch.tensor([8.0, 8.0, 30.0])
    shift[0] = 0
    return (base[None] + shift).contiguous(), intrinsics(H, W, 1.9 * min(H, W), B)


def random_mesh(B, n_tris, H, W, seed, dtype=torch.float32):
    """Independent random triangles in front of the camera (overlapping, both windings)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(B, n_tris, 1, 3, generator=g, dtype=torch.float64)
    centres = centres * torch.tensor([2.0, 2.0, 3.0], dtype=torch.float64) + torch.tensor(
        [-1.0, -1.0, 2.0], dtype=torch.float64
    )
    offsets = torch.randn(B, n_tris, 3, 3, generator=g, dtype=torch.float64) * 0.3
    verts = (centres + offsets).reshape(B, n_tris * 3, 3).to(dtype).contiguous()
    faces = torch.arange(n_tris * 3, dtype=torch.int32).reshape(n_tris, 3)
    return verts, faces, intrinsics(H, W, 0.8 * min(H, W), B, skew=1.5, dtype=dtype)


def assert_matches_reference(rast, ref, min_agree=0.999):
    ids, ref_ids = rast[..., 3], ref[..., 3]
    covered = (ids > 0) | (ref_ids > 0)
    assert covered.sum() > 0
    agree = (ids == ref_ids) & covered
    frac = agree.sum().item() / covered.sum().item()
    assert frac >= min_agree, f"face ids agree on only {frac:.5f} of covered pixels"
    tol = 1e-5 if rast.dtype == torch.float32 else 1e-10
    torch.testing.assert_close(rast[..., :3][agree], ref[..., :3][agree], rtol=tol, atol=tol)
    assert torch.all(rast[ids == 0] == 0)


@pytest.mark.parametrize("size", [(64, 64), (256, 256)])
def test_kernel_matches_reference_on_ict_mesh(ict_mesh, size):
    verts, faces = ict_mesh
    X, K = ict_scene(verts, *size)
    rast = rasterize(X, faces, K, size)
    ref = rasterize_ref(X, faces, K, size)
    assert rast.shape == (1, *size, 4)
    assert (rast[..., 3] > 0).float().mean() > 0.3  # the face fills a good part of the image
    assert_matches_reference(rast, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_matches_reference_on_random_meshes(dtype):
    H, W = 40, 56
    X, faces, K = random_mesh(B=3, n_tris=60, H=H, W=W, seed=1, dtype=dtype)
    rast = rasterize(X, faces, K, (H, W))
    ref = rasterize_ref(X, faces, K, (H, W))
    assert rast.dtype == dtype
    assert_matches_reference(rast, ref)


def test_backward_matches_reference_on_ict_mesh(ict_mesh):
    verts, faces = ict_mesh
    H, W = 64, 80
    X, K = ict_scene(verts, H, W, B=2)
    grad = torch.randn(2, H, W, 4, generator=torch.Generator().manual_seed(3))
    grads = []
    for fn in (rasterize, rasterize_ref):
        Xg = X.double().requires_grad_()
        (fn(Xg, faces, K.double(), (H, W)) * grad.double()).sum().backward()
        grads.append(Xg.grad)
    assert grads[1].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-7, atol=1e-9)


def test_backward_matches_reference_on_random_meshes():
    H, W = 24, 32
    X, faces, K = random_mesh(B=2, n_tris=20, H=H, W=W, seed=5)
    grad = torch.randn(2, H, W, 4, generator=torch.Generator().manual_seed(6))
    grads = []
    for fn in (rasterize, rasterize_ref):
        Xg = X.clone().requires_grad_()
        (fn(Xg, faces, K, (H, W)) * grad).sum().backward()
        grads.append(Xg.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-5)


def test_gradcheck_float64_wrt_vertices():
    # Two triangles well inside an 8x10 image; no pixel centre lies near an edge, so small
    # perturbations do not change coverage.
    X = torch.tensor(
        [[[-0.61, -0.52, 2.1], [0.57, -0.43, 2.6], [-0.18, 0.66, 1.9], [0.63, 0.58, 3.05]]],
        dtype=torch.float64,
        requires_grad=True,
    )
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]], dtype=torch.int32)
    K = intrinsics(8, 10, 11.0, skew=0.3, dtype=torch.float64)
    rast = rasterize(X, faces, K, (8, 10))
    assert (rast[..., 3] == 1).sum() > 3 and (rast[..., 3] == 2).sum() > 3

    def f(x):
        return rasterize(x, faces, K, (8, 10))[..., :3]

    assert torch.autograd.gradcheck(f, (X,), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_depth_channel_is_perspective_correct_camera_z():
    # Interpolating the camera-space vertices with (u, v) must give a 3D point on the pixel's ray
    # whose z equals channel 2.
    X, faces, K = random_mesh(B=1, n_tris=10, H=32, W=32, seed=7, dtype=torch.float64)
    rast = rasterize(X, faces, K, (32, 32))
    pts = interpolate(X, rast, faces)
    mask = rast[..., 3] > 0
    torch.testing.assert_close(pts[..., 2][mask], rast[..., 2][mask])
    proj = torch.einsum("ij,bhwj->bhwi", K[0], pts)
    ii, jj = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    xy = proj[..., :2] / proj[..., 2:]
    torch.testing.assert_close(xy[..., 0][mask], jj.double()[mask[0]])
    torch.testing.assert_close(xy[..., 1][mask], ii.double()[mask[0]])


def test_pixel_centre_convention_and_full_intrinsics():
    # A triangle whose vertices project exactly onto pixel centres (x=j, y=i) with skew.
    H, W, f, skew = 12, 16, 10.0, 2.0
    K = intrinsics(H, W, f, skew=skew, dtype=torch.float64)
    pix = torch.tensor([[2.0, 3.0], [13.0, 3.0], [2.0, 9.0]], dtype=torch.float64)  # (x, y)
    z = torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64)
    yn = (pix[:, 1] - K[0, 1, 2]) / f
    xn = (pix[:, 0] - K[0, 0, 2] - skew * yn) / f
    X = torch.stack([xn * z, yn * z, z], dim=-1)[None]
    rast = rasterize(X, torch.tensor([[0, 1, 2]]), K, (H, W))
    ids = rast[0, ..., 3]
    # Vertex 0 is a pixel centre: u = 1 there; the interior pixel (4, 5) is covered.
    assert ids[3, 2] == 1 and ids[5, 4] == 1
    torch.testing.assert_close(
        rast[0, 3, 2, :3], torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
    )
    assert ids[10, 2] == 0 and ids[3, 14] == 0 and ids[8, 12] == 0


def test_shared_edges_are_drawn_exactly_once():
    # A regular grid whose vertices and diagonals pass exactly through pixel centres (exact
    # edge ties), with mixed windings: drawing each triangle alone must cover every pixel of the
    # grid's interior exactly once (watertight, no double-drawing).
    H, W, n = 20, 20, 4
    step = 4.0  # pixels per grid cell
    K = intrinsics(H, W, 10.0, dtype=torch.float64)
    K[:, 0, 2] = 0.0
    K[:, 1, 2] = 0.0
    xs = torch.arange(n + 1, dtype=torch.float64) * step + 1.0
    gy, gx = torch.meshgrid(xs, xs, indexing="ij")
    pts = torch.stack([gx.flatten() / 10.0, gy.flatten() / 10.0, torch.ones(gx.numel())], -1)
    tris = []
    for r in range(n):
        for c in range(n):
            a, b = r * (n + 1) + c, r * (n + 1) + c + 1
            d, e = a + n + 1, b + n + 1
            pair = [[a, b, e], [a, e, d]] if r % 2 else [[a, b, d], [b, e, d]]  # both diagonals
            if (r + c) % 2:
                pair = [t[::-1] for t in pair]  # both windings
            tris += pair
    faces = torch.tensor(tris, dtype=torch.int32)
    X = pts[None].double()
    count = torch.zeros(H, W)
    for k in range(faces.shape[0]):
        count += (rasterize(X, faces[k : k + 1], K, (H, W))[0, ..., 3] > 0).float()
    lo, hi = 1, 1 + int(n * step)
    inner = count[lo + 1 : hi, lo + 1 : hi]  # pixels strictly inside the grid's outline
    assert torch.all(inner == 1), f"coverage counts {inner.unique().tolist()}"
    assert torch.all(count <= 1)
    # With all triangles at once, ids match the reference exactly despite the ties.
    rast = rasterize(X, faces, K, (H, W))
    ref = rasterize_ref(X, faces, K, (H, W))
    assert torch.equal(rast[..., 3], ref[..., 3])


def _one_triangle(z0=2.0, z1=2.0, z2=2.0, ccw_on_screen=True):
    # Screen-space counter-clockwise (as displayed, y down) when ccw_on_screen.
    X = torch.tensor(
        [[[-0.5 * z0, -0.5 * z0, z0], [-0.5 * z1, 0.5 * z1, z1], [0.5 * z2, 0.4 * z2, z2]]]
    )
    if not ccw_on_screen:
        X = X[:, [0, 2, 1]]
    return X.contiguous(), torch.tensor([[0, 1, 2]], dtype=torch.int32), intrinsics(16, 16, 12.0)


def test_triangles_behind_or_straddling_the_near_plane_are_dropped():
    for zs in [(-2.0, -2.0, -2.0), (2.0, 2.0, -1.0), (2.0, 0.0, 2.0), (2.0, 0.5 * NEAR_Z, 2.0)]:
        X, faces, K = _one_triangle(*zs)
        X[0, :, 2] = torch.tensor(zs)
        for fn in (rasterize, rasterize_ref):
            rast = fn(X, faces, K, (16, 16))
            assert torch.all(rast == 0), zs
            assert torch.isfinite(rast).all()
    X, faces, K = _one_triangle(2.0, 2.0 * NEAR_Z, 2.0)
    X[0, 1, 2] = 2.0 * NEAR_Z  # just in front of the near plane: drawn, finite
    rast = rasterize(X, faces, K, (16, 16))
    assert (rast[..., 3] > 0).any() and torch.isfinite(rast).all()


def test_nonfinite_vertices_draw_nothing():
    X, faces, K = _one_triangle()
    for bad in (float("nan"), float("inf")):
        Xb = X.clone()
        Xb[0, 1, 0] = bad
        assert torch.all(rasterize(Xb, faces, K, (16, 16)) == 0)


def test_degenerate_triangles_draw_nothing():
    X, _, K = _one_triangle()
    X = torch.cat([X, X[:, :1] + torch.tensor([0.1, 0.1, 0.0]), X[:, :1] * 2], dim=1)  # collinear
    for tri in ([0, 0, 1], [0, 1, 1], [2, 2, 2], [0, 3, 4]):
        assert torch.all(rasterize(X, torch.tensor([tri]), K, (16, 16)) == 0), tri


def test_backface_culling_uses_screen_winding():
    for ccw in (True, False):
        X, faces, K = _one_triangle(ccw_on_screen=ccw)
        drawn = rasterize(X, faces, K, (16, 16))
        culled = rasterize(X, faces, K, (16, 16), cull_backfaces=True)
        assert (drawn[..., 3] > 0).sum() > 10
        if ccw:
            assert torch.equal(culled, drawn)
        else:
            assert torch.all(culled == 0)
        torch.testing.assert_close(
            culled, rasterize_ref(X, faces, K, (16, 16), cull_backfaces=True)
        )


def test_culling_keeps_visible_ict_face_and_drops_it_from_behind(ict_mesh):
    verts, faces = ict_mesh
    H = W = 96
    X, K = ict_scene(verts, H, W)
    full = rasterize(X, faces, K, (H, W))
    culled = rasterize(X, faces, K, (H, W), cull_backfaces=True)
    covered = full[..., 3] > 0
    assert torch.equal(culled[..., 3], full[..., 3])  # every visible face pixel is front-facing
    assert covered.sum() > 1000
    # Seen from behind (yaw 180 degrees), the front-facing facial triangles are back-facing.
    tri = verts[faces.long()]
    normal = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    front = faces[normal[:, 2] > 0.3 * normal.norm(dim=-1)]  # ICT winds CCW seen from outside
    assert torch.equal(
        rasterize(X, front, K, (H, W), cull_backfaces=True), rasterize(X, front, K, (H, W))
    )
    X_back = (verts * torch.tensor([-1.0, -1.0, 1.0]) + torch.tensor([0.0, 0.0, 550.0]))[None]
    assert (rasterize(X_back, front, K, (H, W))[..., 3] > 0).sum() > 200
    assert (rasterize(X_back, front, K, (H, W), cull_backfaces=True)[..., 3] > 0).sum() == 0


def test_empty_scenes_give_zeros_and_zero_gradients():
    X, faces, K = _one_triangle()
    Xg = X.clone().requires_grad_()
    empty = rasterize(Xg, torch.zeros(0, 3, dtype=torch.int32), K, (16, 16))
    assert empty.shape == (1, 16, 16, 4) and torch.all(empty == 0)
    empty.sum().backward()
    assert torch.all(Xg.grad == 0)
    off = X + torch.tensor([100.0, 0.0, 0.0])
    assert torch.all(rasterize(off, faces, K, (16, 16)) == 0)
    assert torch.all(rasterize_ref(off, faces, K, (16, 16)) == 0)


def test_batch_items_are_independent(ict_mesh):
    verts, faces = ict_mesh
    H, W = 48, 40
    X, K = ict_scene(verts, H, W, B=3, seed=11)
    K[2, 0, 0] *= 1.2
    rast = rasterize(X, faces, K, (H, W))
    assert not torch.equal(rast[0, ..., 3], rast[1, ..., 3])
    for b in range(3):
        torch.testing.assert_close(
            rast[b : b + 1], rasterize(X[b : b + 1], faces, K[b : b + 1], (H, W))
        )


def test_non_square_image_orientation():
    # Vertices in the right half and lower half of a 30x50 image (x = column, y = row).
    H, W = 30, 50
    K = intrinsics(H, W, 20.0)
    X = torch.tensor([[[0.1, 0.1, 1.0], [1.1, 0.1, 1.0], [0.1, 0.6, 1.0]]])
    ids = rasterize(X, torch.tensor([[0, 1, 2]]), K, (H, W))[0, ..., 3]
    rows, cols = (ids > 0).nonzero(as_tuple=True)
    assert rows.min() >= H // 2 and cols.min() >= W // 2
    assert cols.max() > 40 and rows.max() > 24


def test_noncontiguous_inputs_and_int64_faces_are_accepted():
    X, faces, K = random_mesh(B=2, n_tris=15, H=20, W=24, seed=2)
    expected = rasterize(X, faces, K, (20, 24))
    Xt = X.transpose(0, 1).contiguous().transpose(0, 1)
    assert not Xt.is_contiguous()
    torch.testing.assert_close(rasterize(Xt, faces.long(), K[0], (20, 24)), expected)


def test_invalid_inputs_raise_clear_errors():
    X, faces, K = random_mesh(B=1, n_tris=4, H=8, W=8, seed=3)
    with pytest.raises(TypeError, match="verts_cam"):
        rasterize(X.int(), faces, K, (8, 8))
    with pytest.raises(TypeError, match="faces"):
        rasterize(X, faces.float(), K, (8, 8))
    with pytest.raises(ValueError, match="faces"):
        rasterize(X, faces + 100, K, (8, 8))
    with pytest.raises(ValueError, match="faces"):
        rasterize(X, faces - 1, K, (8, 8))
    with pytest.raises(ValueError, match="faces"):
        rasterize(X, faces[:, :2], K, (8, 8))
    with pytest.raises(ValueError, match="verts_cam"):
        rasterize(X[..., :2], faces, K, (8, 8))
    with pytest.raises(ValueError, match="K"):
        rasterize(X, faces, K[:, :2], (8, 8))
    with pytest.raises(ValueError, match="K"):
        rasterize(X.expand(2, -1, -1), faces, torch.cat([K, K, K]), (8, 8))
    with pytest.raises(ValueError, match="size"):
        rasterize(X, faces, K, (0, 8))
    with pytest.raises(TypeError, match="size"):
        rasterize(X, faces, K, (8.0, 8))
    with pytest.raises(TypeError, match="verts_cam"):
        rasterize(X.numpy(), faces, K, (8, 8))
    with pytest.raises((ValueError, RuntimeError), match="verts_cam|CUDA"):
        rasterize(X.to("meta"), faces.to("meta"), K.to("meta"), (8, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_kernel_matches_reference_or_reports_missing_cuda():
    X, faces, K = random_mesh(B=2, n_tris=30, H=32, W=40, seed=4)
    dev = torch.device("cuda")
    if not _C.with_cuda:
        with pytest.raises(RuntimeError, match="not compiled with CUDA"):
            rasterize(X.to(dev), faces.to(dev), K.to(dev), (32, 40))
        return
    Xg = X.to(dev).requires_grad_()
    rast = rasterize(Xg, faces.to(dev), K.to(dev), (32, 40))
    assert_matches_reference(rast.detach().cpu(), rasterize_ref(X, faces, K, (32, 40)))
    grad = torch.randn_like(rast)
    rast.backward(grad)
    Xc = X.clone().requires_grad_()
    rast_cpu = rasterize(Xc, faces, K, (32, 40))
    rast_cpu.backward(grad.cpu() * (rast_cpu[..., 3:] == rast.detach().cpu()[..., 3:]))
