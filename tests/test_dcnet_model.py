"""DCNet (texture encoder, view synthesis, context encoder, SPADE generator) and the discriminator."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from jr2net.face.camera import default_intrinsics
from jr2net.models.dcnet import ABLATIONS, DCNet, DCNetConfig, DCNetInputs
from jr2net.models.discriminator import MultiScaleDiscriminator
from jr2net.models.spade import SPADEResBlock

S = 32
SHIFT_PX = 2.0  # driving pixel (i, j) sees the source point at (i, j + SHIFT_PX)


def small_config(**kw) -> DCNetConfig:
    return DCNetConfig.tiny(crop_size=S, channels=(8, 12, 16), context_channels=16,
                            spade_hidden=8, **kw)  # fmt: skip


def make_inputs(batch: int = 2, seed: int = 0, face_radius: float = 0.35) -> DCNetInputs:
    """A flat source at 400 mm seen by a driving view shifted SHIFT_PX pixels, a disc of face."""
    g = torch.Generator().manual_seed(seed)
    K = default_intrinsics(S, batch)
    f, c = float(K[0, 0, 0]), float(K[0, 0, 2])
    ys, xs = torch.meshgrid(torch.arange(S).float(), torch.arange(S).float(), indexing="ij")
    z = 400.0
    pts = torch.stack([(xs + SHIFT_PX - c) * z / f, (ys - c) * z / f, torch.full_like(xs, z)], -1)
    disc = ((xs - c) ** 2 + (ys - c) ** 2) < (face_radius * S) ** 2
    valid = disc.float().expand(batch, 1, S, S).contiguous()

    def r(ch: int) -> torch.Tensor:
        return torch.rand(batch, ch, S, S, generator=g)

    return DCNetInputs(
        source_image=r(3),
        source_light=r(3),
        source_normal=r(3) * 2 - 1,
        points_src=pts.expand(batch, S, S, 3).contiguous(),
        valid=valid,
        K_src=K,
        driving_light=r(3),
        driving_normal=r(3) * 2 - 1,
        source_depth=torch.full((batch, 1, S, S), z),
        rendered=r(3),
    )


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_dcnet_forward_gives_an_image_per_ablation(ablation: str) -> None:
    torch.manual_seed(0)
    net = DCNet(small_config(ablation=ablation))
    out = net(make_inputs())
    assert out.shape == (2, 3, S, S)
    assert (out >= 0).all() and (out <= 1).all()


def _output_change(ablation: str, **changes) -> float:
    torch.manual_seed(0)
    net = DCNet(small_config(ablation=ablation)).eval()
    a = make_inputs()
    b = dataclasses.replace(a, **{k: v(a) for k, v in changes.items()})
    with torch.no_grad():
        return float((net(a) - net(b)).abs().max())


def _other(name: str):
    return lambda inp: torch.rand_like(getattr(inp, name))


def test_ablations_drop_exactly_their_conditions() -> None:
    light = {"driving_light": _other("driving_light")}
    normal = {"driving_normal": _other("driving_normal")}
    rendered = {"rendered": _other("rendered")}
    assert _output_change("ours", **light) > 1e-4
    assert _output_change("ours_p", **light) > 1e-4
    assert _output_change("ours_l", **light) == 0.0
    assert _output_change("ours_l", **normal) > 1e-4
    assert _output_change("ours_r", **light, **normal) == 0.0
    assert _output_change("ours_r", **rendered) > 1e-4
    assert _output_change("ours", **rendered) == 0.0
    inp = make_inputs()
    warped, cov = DCNet(small_config()).view_synthesis(inp)
    for ab, n in (("ours", 10), ("ours_p", 7), ("ours_l", 7), ("ours_r", 3)):
        net = DCNet(small_config(ablation=ab))
        cond = net.conditions(inp, warped, cov)
        assert cond.shape[1] == n == net.config.cond_channels
    cond_p = DCNet(small_config(ablation="ours_p")).conditions(inp, warped, cov)
    assert torch.equal(cond_p[:, :1], cov)  # no warped image in ours_p


def test_texture_gradients_flow_through_correspondence_warp() -> None:
    torch.manual_seed(0)
    net = DCNet(small_config())
    inp = make_inputs()
    net(inp).mean().backward()
    g = net.texture_encoder.stem[0].weight.grad
    assert g is not None and g.abs().sum() > 0
    # With no valid driving pixel nothing is warped: the encoder gets no gradient at all.
    net.zero_grad()
    none = dataclasses.replace(inp, valid=torch.zeros_like(inp.valid))
    net(none).mean().backward()
    g = net.texture_encoder.stem[0].weight.grad
    assert g is None or g.abs().sum() == 0


def test_warped_texture_features_sample_the_source_and_are_zero_off_the_face() -> None:
    torch.manual_seed(0)
    net = DCNet(small_config()).eval()
    inp = make_inputs()
    with torch.no_grad():
        _, cov = net.view_synthesis(inp)
        feats = net.texture_encoder(inp.source_image, inp.source_light, inp.source_normal)
        warped = net.warp_features(feats, inp, cov)
    assert [w.shape[-1] for w in warped] == [S, S // 2, S // 4]
    assert [w.shape[1] for w in warped] == [8, 12, 16]
    for w in warped:
        off = F.interpolate(inp.valid, size=w.shape[-2:], mode="area") == 0
        assert (w * off).abs().max() == 0
        assert w.abs().sum() > 0
    # A horizontal shift of SHIFT_PX / 2^k pixels at scale k (integers here, so exact samples).
    for k in (0, 1):
        ref = torch.roll(feats[k], shifts=-int(SHIFT_PX) >> k, dims=-1)
        inside = (F.avg_pool2d(cov, 1 << k) == 1).expand_as(ref)
        assert inside.sum() > 20
        assert torch.allclose(warped[k][inside], ref[inside], atol=1e-5)


def test_dcnet_runs_under_bfloat16_autocast_with_float32_warps() -> None:
    torch.manual_seed(0)
    net = DCNet(small_config())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(make_inputs())
    assert out.shape == (2, 3, S, S) and torch.isfinite(out).all()
    out.float().mean().backward()
    assert net.texture_encoder.stem[0].weight.grad.abs().sum() > 0


def test_dcnet_rejects_bad_inputs_with_named_errors() -> None:
    net = DCNet(small_config(ablation="ours_r"))
    with pytest.raises(ValueError, match="rendered"):
        net(dataclasses.replace(make_inputs(), rendered=None))
    with pytest.raises(ValueError, match=r"points_src must be \[2, 32, 32, 3\]"):
        net(dataclasses.replace(make_inputs(), points_src=torch.zeros(2, 32, 32, 2)))
    with pytest.raises(TypeError, match="DCNetInputs"):
        net(torch.zeros(1))
    with pytest.raises(ValueError, match="unknown ablation"):
        DCNetConfig(ablation="ours_x")
    with pytest.raises(ValueError, match="divisible"):
        DCNetConfig(crop_size=100)


def test_presets_tiny_at_128_and_full_at_256_with_seed_sized_channels() -> None:
    tiny, full = DCNetConfig.tiny(), DCNetConfig.full()
    assert tiny.crop_size == 128 and full.crop_size == 256
    assert max(tiny.channels) <= 64 and max(full.channels) == 512 and full.spectral_norm
    net = DCNet(full)  # built only at 256²; its layout runs at 64² below (a 256² pass is slow)
    n_full = sum(p.numel() for p in net.parameters())
    n_tiny = sum(p.numel() for p in DCNet(tiny).parameters())
    assert n_full > 30 * n_tiny
    small_full = DCNet(DCNetConfig.full(crop_size=64)).eval()
    with torch.no_grad():
        inp = make_inputs(batch=1)
        up = {
            f.name: (
                F.interpolate(getattr(inp, f.name), size=(64, 64), mode="nearest")
                if f.name not in ("points_src", "K_src")
                else getattr(inp, f.name)
            )
            for f in dataclasses.fields(inp)
        }
        pts = inp.points_src.permute(0, 3, 1, 2)
        up["points_src"] = F.interpolate(pts, size=(64, 64)).permute(0, 2, 3, 1).contiguous()
        up["K_src"] = default_intrinsics(64)
        assert small_full(DCNetInputs(**up)).shape == (1, 3, 64, 64)


def test_spade_block_modulation_depends_on_the_condition() -> None:
    torch.manual_seed(0)
    block = SPADEResBlock(8, 4, 8)
    x = torch.randn(1, 8, 16, 16)
    a, b = block(x, torch.rand(1, 4, 32, 32)), block(x, torch.rand(1, 4, 32, 32))
    assert a.shape == x.shape and (a - b).abs().max() > 1e-4


# ---- discriminator ----------------------------------------------------------------------------


@pytest.mark.parametrize("spectral_norm", [True, False])
def test_multiscale_patchgan_returns_per_scale_features_and_logits(spectral_norm: bool) -> None:
    d = MultiScaleDiscriminator(in_channels=13, n_scales=3, channels=8, n_layers=3,
                                spectral_norm=spectral_norm)  # fmt: skip
    x = torch.rand(2, 13, 64, 64, requires_grad=True)
    out = d(x)
    assert len(out) == 3
    for k, feats in enumerate(out):
        assert len(feats) == 5
        assert [f.shape[1] for f in feats] == [8, 16, 32, 64, 1]
        assert feats[-1].shape[0] == 2
        assert feats[0].shape[-1] == 64 // 2**k // 2 + 1
    out[-1][-1].mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    has_sn = any("parametrizations" in n for n, _ in d.named_parameters())
    assert has_sn == spectral_norm
    with pytest.raises(ValueError, match=r"\[B,13,H,W\]"):
        d(torch.rand(1, 3, 64, 64))


def test_blend_output_keeps_the_warped_image_where_co_visible_and_generates_elsewhere() -> None:
    torch.manual_seed(0)
    net = DCNet(small_config()).eval()
    assert net.config.blends and net.to_rgb[1].out_channels == 4
    with torch.no_grad():
        net.to_rgb[1].bias[3] = 30.0  # blend weight sigmoid(30) = 1 where the source sees
        inp = make_inputs(face_radius=0.3)
        warped, cov = net.view_synthesis(inp)
        out = net(inp)
        seen = (cov == 1).expand_as(out)
        assert seen.sum() > 100 and (cov == 0).sum() > 100
        assert torch.allclose(out[seen], warped[seen], atol=1e-6)
        # Unseen pixels are generated: a different source image changes them, not to zero.
        other = net(dataclasses.replace(inp, source_image=torch.rand_like(inp.source_image)))
        unseen = (cov == 0).expand_as(out)
        assert (out[unseen] - other[unseen]).abs().max() > 1e-4 and out[unseen].min() > 0


def test_forward_with_generated_gives_the_image_before_the_blend() -> None:
    torch.manual_seed(0)
    net = DCNet(small_config()).eval()
    inp = make_inputs(face_radius=0.3)
    with torch.no_grad():
        out, gen = net(inp, with_generated=True)
        assert torch.equal(out, net(inp))
        warped, cov = net.view_synthesis(inp)
        unseen = (cov == 0).expand_as(out)
        assert torch.equal(out[unseen], gen[unseen])  # C = 0: the generated image, raw
        seen = (cov == 1).expand_as(out)
        assert (out[seen] - gen[seen]).abs().max() > 1e-3
        direct = DCNet(small_config(output="direct")).eval()
        d_out, d_gen = direct(inp, with_generated=True)
        assert torch.equal(d_out, d_gen)


def test_hidden_face_pixels_of_the_warped_condition_get_the_colour_around_them() -> None:
    from jr2net.models.dcnet import fill_hidden

    img = torch.zeros(1, 3, 32, 32)
    img[:, 0], img[:, 1] = 0.8, 0.3
    img[..., :, 16:] *= 0.5  # two colours, left and right
    cov = torch.ones(1, 1, 32, 32)
    cov[..., 10:13, 4:7] = 0  # a hole on the left, a speck on the right
    cov[..., 20, 25] = 0
    valid = torch.ones(1, 1, 32, 32)
    valid[..., :2, :] = 0  # off the face (and not co-visible): stays 0
    cov[..., :2, :] = 0
    out = fill_hidden(img * cov, cov, valid)
    seen = cov.bool().expand_as(img)
    assert torch.equal(out[seen], img[seen])
    assert torch.allclose(out[0, :, 11, 5], img[0, :, 11, 5], atol=0.01)
    assert torch.allclose(out[0, :, 20, 25], img[0, :, 20, 25], atol=0.02)
    assert out[..., :2, :].abs().max() == 0
    # The presets condition on the filled image; a config without the key does not.
    assert DCNetConfig.tiny().fill_hidden and DCNetConfig.full().fill_hidden
    assert not DCNetConfig().fill_hidden
    inp = make_inputs(face_radius=0.3)
    inp.source_depth[..., 14:18, 14:20] = 300.0  # something in front: those points are hidden
    for fill in (True, False):
        net = DCNet(small_config(fill_hidden=fill)).eval()
        with torch.no_grad():
            warped, cov = net.view_synthesis(inp)
            cond = net.conditions(inp, warped, cov)
        hidden = ((cov == 0) & (inp.valid > 0)).expand_as(warped)
        assert hidden.sum() > 0
        assert (cond[:, :3][hidden].abs().min() > 0) == fill


def test_direct_output_and_the_ablations_without_the_warped_image_do_not_blend() -> None:
    assert DCNet(small_config(output="direct")).to_rgb[1].out_channels == 3
    for ab in ("ours_p", "ours_r"):
        assert not small_config(ablation=ab).blends
    assert small_config(ablation="ours_l").blends
    assert not DCNetConfig().blends  # checkpoints saved before the option load as they were
    with pytest.raises(ValueError, match="unknown output"):
        DCNetConfig(output="residual")


def test_runner_serves_direct_and_blend_generators_like_forward() -> None:
    from jr2net.pipeline.dcnet_runtime import DCNetRunner, _probe_inputs

    for cfg in (small_config(ablation="ours_p"), small_config()):  # ours_p: no image input used
        torch.manual_seed(0)
        net = DCNet(dataclasses.replace(cfg, crop_size=32)).eval()
        inputs = _probe_inputs(net)
        with torch.inference_mode():
            ref = net(inputs)
            assert torch.allclose(DCNetRunner(net, "eager").generate(inputs), ref, atol=1e-6)
            ort = DCNetRunner(net, "auto")
            assert ort.runtime == "onnxruntime"
            assert (ort.generate(inputs) - ref).abs().max() < 1e-4
