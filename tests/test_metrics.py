"""Reenactment metrics against hand-computed values, and the 2D baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from jr2net.eval.baselines import copy_source, similarity_matrices, similarity_warp
from jr2net.eval.metrics import identity_cosine, l1, landmark_rmse, psnr, ssim


def _rand(b=2, h=32, w=32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g)


def test_l1_and_psnr_of_a_known_error():
    a = torch.zeros(2, 3, 8, 8)
    b = a.clone()
    b[0] += 0.1  # MSE 0.01 -> 20 dB
    b[1, :, :4] += 0.5  # half the pixels off by 0.5: L1 0.25, MSE 0.125
    assert torch.allclose(l1(b, a), torch.tensor([0.1, 0.25]))
    expected = torch.tensor([20.0, 10 * math.log10(1 / 0.125)])
    assert torch.allclose(psnr(b, a), expected, atol=1e-4)
    assert torch.isinf(psnr(a, a)).all()


def test_masked_averages_only_use_the_mask():
    a = torch.zeros(1, 3, 8, 8)
    b = a.clone()
    b[..., :, 4:] = 1.0  # right half totally wrong
    left = torch.zeros(1, 1, 8, 8)
    left[..., :4] = 1
    assert l1(b, a, mask=left).item() == 0.0
    assert torch.isinf(psnr(b, a, mask=left)).all()
    right = 1 - left
    assert l1(b, a, mask=right).item() == pytest.approx(1.0)
    assert l1(b, a, mask=right[:, 0]).item() == pytest.approx(1.0)  # [B, H, W] mask


def test_ssim_identical_is_one_and_decreases_with_noise():
    x = _rand(h=48, w=48)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g)
    vals = [ssim((x + s * noise).clamp(0, 1), x).mean().item() for s in (0.02, 0.1, 0.3)]
    assert 1.0 > vals[0] > vals[1] > vals[2]


def test_ssim_constant_images_match_the_closed_form():
    # Constant images: sigma = 0, so SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1).
    x = torch.full((1, 3, 16, 16), 0.2)
    y = torch.full((1, 3, 16, 16), 0.6)
    c1 = 0.01**2
    expected = (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1)
    assert ssim(x, y).item() == pytest.approx(expected, rel=1e-4)


def test_ssim_mask_restricts_the_average():
    x = _rand(b=1, h=40, w=40)
    y = x.clone()
    y[..., :, 24:] = torch.rand(1, 3, 40, 16, generator=torch.Generator().manual_seed(3))
    left = torch.zeros(1, 1, 40, 40)
    left[..., :10] = 1  # far from the changed columns (window radius 5)
    assert ssim(x, y, mask=left).item() == pytest.approx(1.0, abs=1e-5)
    assert ssim(x, y).item() < 0.9


def test_metrics_validate_inputs():
    x = _rand()
    with pytest.raises(ValueError, match="differ in shape"):
        l1(x, x[:1])
    with pytest.raises(TypeError, match="pred"):
        psnr(x.to(torch.uint8), x)
    with pytest.raises(ValueError, match="mask"):
        l1(x, x, mask=torch.ones(2, 2, 32, 32))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(x[..., :8, :8], x[..., :8, :8])


def test_landmark_rmse_pixels_and_interocular():
    q = np.zeros((68, 2))
    q[36] = (0, 0)
    q[45] = (100, 0)
    p = q + np.array([3.0, 4.0])  # every point off by 5 px
    assert landmark_rmse(p, q).item() == pytest.approx(5.0)
    assert landmark_rmse(p, q, normalize="interocular").item() == pytest.approx(0.05)
    batch = landmark_rmse(torch.tensor(np.stack([p, q])), torch.tensor(np.stack([q, q])))
    assert torch.allclose(batch, torch.tensor([5.0, 0.0], dtype=batch.dtype))
    with pytest.raises(ValueError, match="normalize"):
        landmark_rmse(p, q, normalize="box")


def test_identity_cosine():
    a = np.array([1.0, 0.0, 0.0])
    assert identity_cosine(a, a).item() == pytest.approx(1.0)
    assert identity_cosine(a, np.array([0.0, 2.0, 0.0])).item() == pytest.approx(0.0)
    assert identity_cosine(a, -a).item() == pytest.approx(-1.0)
    out = identity_cosine(torch.eye(3), torch.ones(3, 3))
    assert torch.allclose(out, torch.full((3,), 1 / math.sqrt(3), dtype=out.dtype))
    with pytest.raises(ValueError, match="emb_a"):
        identity_cosine(np.ones(3), np.ones(4))


def test_copy_source_resizes_and_repeats():
    src = torch.rand(1, 3, 16, 16)
    out = copy_source(src, (4, 3, 16, 16))
    assert out.shape == (4, 3, 16, 16) and torch.equal(out[3], src[0])
    assert copy_source(src, torch.Size([2, 3, 8, 8])).shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="channels"):
        copy_source(src, (1, 1, 8, 8))


def _blob_image(h: int, w: int, cx: float, cy: float) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    g = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * 4.0**2))
    return g.expand(1, 3, h, w).clone()


def test_similarity_warp_moves_content_to_the_driving_landmarks():
    src = _blob_image(64, 64, cx=20, cy=30)
    lm_src = np.array([[20.0, 30.0], [30.0, 30.0], [20.0, 40.0]])
    # Driving: shifted by (+15, +5) and scaled x1.5 about the first point.
    lm_drv = (lm_src - lm_src[0]) * 1.5 + lm_src[0] + np.array([15.0, 5.0])
    out = similarity_warp(src, lm_src, lm_drv, (64, 80))
    assert out.shape == (1, 3, 64, 80)
    peak = torch.nonzero(out[0, 0] == out[0, 0].max())[0]
    assert (peak[1].item(), peak[0].item()) == (35, 35)  # blob centre (x=20+15, y=30+5)
    mats = similarity_matrices(lm_src, lm_drv)
    assert torch.allclose(mats[0, :, :2], 1.5 * torch.eye(2, dtype=mats.dtype), atol=1e-9)


def test_similarity_warp_identity_reproduces_the_source():
    src = torch.rand(2, 3, 24, 24)
    lm = np.random.default_rng(0).uniform(2, 20, (2, 68, 2))
    out = similarity_warp(src, lm, lm, (24, 24))
    assert torch.allclose(out, src, atol=1e-5)


def _ssim_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Independent SSIM (scipy Gaussian filter, 11 taps, valid region), one HWC image pair."""
    from scipy.ndimage import gaussian_filter

    def blur(a):
        return gaussian_filter(a, sigma=1.5, truncate=5 / 1.5)[5:-5, 5:-5]

    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for c in range(x.shape[0]):
        a, b = x[c].astype(np.float64), y[c].astype(np.float64)
        ma, mb = blur(a), blur(b)
        va, vb, cov = blur(a * a) - ma**2, blur(b * b) - mb**2, blur(a * b) - ma * mb
        m = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
        vals.append(m.mean())
    return float(np.mean(vals))


def test_ssim_matches_an_independent_implementation():
    x = _rand(b=1, h=40, w=36, seed=5)
    y = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(6))).clamp(0, 1)
    ref = _ssim_reference(x[0].numpy(), y[0].numpy())
    assert ssim(x, y).item() == pytest.approx(ref, abs=1e-5)


def test_baselines_accept_uint8_images_at_the_io_edge():
    img = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    out = copy_source(img, (40, 60, 3))
    assert out.dtype == np.uint8 and out.shape == (40, 60, 3)
    lm = np.random.default_rng(1).uniform(2, 18, (68, 2))
    warped = similarity_warp(img, lm, lm, (20, 30))
    assert warped.dtype == np.uint8 and warped.shape == (20, 30, 3)
    assert np.abs(warped.astype(int) - img).max() <= 1
