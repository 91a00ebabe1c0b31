"""sh_shading: kernel vs reference, gradients, the DESIGN §3 basis, masks, validation."""

from __future__ import annotations

import pytest
import torch

from jr2net import _C
from jr2net.ops import sh_shading
from jr2net.ops.reference import sh_shading_ref


def _inputs(B, H, W, gen, dtype=torch.float32, mask=True):
    normals = torch.nn.functional.normalize(
        torch.randn(B, 3, H, W, generator=gen, dtype=dtype), dim=1
    )
    albedo = torch.rand(B, 3, H, W, generator=gen, dtype=dtype)
    sh = torch.randn(B, 9, 3, generator=gen, dtype=dtype) * 0.5
    m = torch.rand(B, 1, H, W, generator=gen, dtype=dtype) if mask else None
    return normals, albedo, sh, m


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("shape", [(1, 16, 16), (3, 13, 29), (2, 40, 7)])
def test_matches_reference_forward_and_backward(shape, with_mask):
    gen = torch.Generator().manual_seed(0)
    args = [
        t.requires_grad_() if t is not None else None for t in _inputs(*shape, gen, mask=with_mask)
    ]
    image, irr = sh_shading(*args)
    image_ref, irr_ref = sh_shading_ref(*args)
    torch.testing.assert_close(image, image_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(irr, irr_ref, rtol=1e-5, atol=1e-5)
    grads = [torch.randn(image.shape, generator=gen), torch.randn(irr.shape, generator=gen)]
    inputs = [t for t in args if t is not None]
    got = torch.autograd.grad([image, irr], inputs, grads)
    want = torch.autograd.grad([image_ref, irr_ref], inputs, grads)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def test_backward_through_one_output_only():
    gen = torch.Generator().manual_seed(1)
    args = [t.requires_grad_() for t in _inputs(2, 9, 11, gen)]
    for pick in (0, 1):
        out = sh_shading(*args)[pick]
        ref = sh_shading_ref(*args)[pick]
        g = torch.randn(out.shape, generator=gen)
        got = torch.autograd.grad(out, args, g, allow_unused=True, materialize_grads=True)
        want = torch.autograd.grad(ref, args, g, allow_unused=True, materialize_grads=True)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_result_does_not_depend_on_the_thread_count():
    """Large enough for several pixel chunks; dL/dsh is summed in a fixed order."""
    gen = torch.Generator().manual_seed(10)
    args = [t.requires_grad_() for t in _inputs(2, 160, 150, gen)]
    grads = [torch.randn(2, 3, 160, 150, generator=gen) for _ in range(2)]
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            outs = sh_shading(*args)
            results.append([*outs, *torch.autograd.grad(outs, args, grads)])
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
    ref = sh_shading_ref(*args)
    for a, b in zip(torch.autograd.grad(ref, args, grads), results[0][2:], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-3)


def test_gradcheck_every_input_float64():
    gen = torch.Generator().manual_seed(2)
    args = [t.requires_grad_() for t in _inputs(2, 3, 4, gen, dtype=torch.float64)]
    assert torch.autograd.gradcheck(lambda *a: sh_shading(*a), args)
    assert torch.autograd.gradcheck(lambda n, a, s: sh_shading(n, a, s), args[:3])


def test_basis_order_and_constants_follow_design():
    """One SH coefficient at a time reproduces the DESIGN §3 basis on arbitrary normals."""
    gen = torch.Generator().manual_seed(3)
    n = torch.randn(1, 3, 5, 6, generator=gen, dtype=torch.float64)
    x, y, z = n[:, 0], n[:, 1], n[:, 2]
    expected = [
        0.886227 * torch.ones_like(x),
        1.023328 * y,
        1.023328 * z,
        1.023328 * x,
        0.858086 * x * y,
        0.858086 * y * z,
        0.247708 * (3 * z * z - 1),
        0.858086 * x * z,
        0.429043 * (x * x - y * y),
    ]
    albedo = torch.ones(1, 3, 5, 6, dtype=torch.float64)
    for band, want in enumerate(expected):
        sh = torch.zeros(1, 9, 3, dtype=torch.float64)
        sh[0, band, 1] = 2.0  # green only
        image, irr = sh_shading(n, albedo, sh)
        torch.testing.assert_close(irr[:, 1], 2.0 * want)
        assert torch.equal(irr[:, 0], torch.zeros_like(x)) and torch.equal(irr[:, 2], irr[:, 0])
        torch.testing.assert_close(image, irr)


def test_image_is_albedo_times_irradiance_and_normals_are_used_as_given():
    gen = torch.Generator().manual_seed(4)
    normals, albedo, sh, _ = _inputs(1, 6, 6, gen)
    image, irr = sh_shading(2.0 * normals, albedo, sh)  # not renormalised
    _, irr_ref = sh_shading_ref(2.0 * normals, albedo, sh)
    torch.testing.assert_close(irr, irr_ref)
    torch.testing.assert_close(image, albedo * irr)
    _, irr_unit = sh_shading(normals, albedo, sh)
    assert not torch.allclose(irr, irr_unit)


def test_mask_zeroes_the_outside_and_bool_masks_work():
    gen = torch.Generator().manual_seed(5)
    normals, albedo, sh, _ = _inputs(2, 8, 10, gen)
    mask = torch.rand(2, 1, 8, 10, generator=gen) > 0.5
    image, irr = sh_shading(normals, albedo, sh, mask)
    full_image, full_irr = sh_shading(normals, albedo, sh)
    outside = ~mask.expand_as(image)
    assert torch.equal(image[outside], torch.zeros_like(image[outside]))
    assert torch.equal(irr[outside], torch.zeros_like(irr[outside]))
    torch.testing.assert_close(image[~outside], full_image[~outside])
    torch.testing.assert_close(irr[~outside], full_irr[~outside])


def test_wrapper_accepts_noncontiguous_inputs():
    gen = torch.Generator().manual_seed(6)
    normals, albedo, sh, mask = _inputs(1, 7, 5, gen)
    nt = normals.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    assert not nt.is_contiguous()
    for a, b in zip(
        sh_shading(nt, albedo, sh, mask), sh_shading(normals, albedo, sh, mask), strict=True
    ):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "index, bad, exc, name",
    [
        (0, torch.rand(1, 4, 6, 6), ValueError, "normals"),
        (0, torch.randint(0, 3, (1, 3, 6, 6)), TypeError, "normals"),
        (1, torch.rand(1, 3, 6, 5), ValueError, "albedo"),
        (1, torch.rand(1, 3, 6, 6, dtype=torch.float64), TypeError, "albedo"),
        (2, torch.rand(1, 9, 2), ValueError, "sh"),
        (2, torch.rand(2, 9, 3), ValueError, "sh"),
        (3, torch.rand(1, 3, 6, 6), ValueError, "mask"),
        (2, "sh", TypeError, "sh"),
    ],
)
def test_rejects_bad_arguments_naming_them(index, bad, exc, name):
    gen = torch.Generator().manual_seed(7)
    args = list(_inputs(1, 6, 6, gen))
    args[index] = bad
    with pytest.raises(exc, match=name):
        sh_shading(*args)


def test_extension_rejects_noncontiguous_tensors_naming_them():
    gen = torch.Generator().manual_seed(8)
    normals, albedo, sh, mask = _inputs(1, 6, 6, gen)
    with pytest.raises(ValueError, match="albedo must be contiguous"):
        _C.sh_shading_fwd(normals, albedo.transpose(2, 3), sh, mask)


@pytest.mark.skipif(
    not (torch.cuda.is_available() and _C.with_cuda), reason="needs a CUDA build and a GPU"
)
def test_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(9)
    cpu = [t.requires_grad_() for t in _inputs(2, 33, 47, gen)]
    gpu = [t.detach().cuda().requires_grad_() for t in cpu]
    out_c, out_g = sh_shading(*cpu), sh_shading(*gpu)
    for a, b in zip(out_c, out_g, strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-5, atol=1e-5)
    grads = [torch.randn(out_c[0].shape, generator=gen), torch.randn(out_c[1].shape, generator=gen)]
    g_c = torch.autograd.grad(out_c, cpu, grads)
    g_g = torch.autograd.grad(out_g, gpu, [g.cuda() for g in grads])
    for a, b in zip(g_c, g_g, strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-3)


def test_production_sh_basis_matches_the_oracle():
    from jr2net.face.sh import irradiance, sh_basis
    from jr2net.ops.reference import sh_basis_ref

    n = torch.nn.functional.normalize(torch.randn(2, 3, 5, 7), dim=1)
    torch.testing.assert_close(sh_basis(n), sh_basis_ref(n), rtol=0, atol=0)
    flat = n.permute(0, 2, 3, 1).reshape(-1, 3)
    torch.testing.assert_close(sh_basis(flat, dim=-1), sh_basis_ref(flat, dim=-1), rtol=0, atol=0)
    light = torch.randn(9, 3)
    torch.testing.assert_close(irradiance(flat, light), sh_basis_ref(flat, dim=-1) @ light)
