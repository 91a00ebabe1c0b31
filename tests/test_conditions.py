"""DCNet conditions: rendered maps, the view-synthesis warp and co-visibility on synthetic faces."""

from __future__ import annotations

import pytest
import torch

from jr2net.face.camera import default_intrinsics
from jr2net.face.coeffs import FaceCoefficients
from jr2net.face.model import load_face_model
from jr2net.face.renderer import FaceRenderer
from jr2net.pipeline.conditions import (
    REL_EPS,
    ConditionMesh,
    build_conditions,
    conditions_from_coefficients,
    recombine,
    render_source,
)

S = 128


@pytest.fixture(scope="module")
def model():
    return load_face_model("generic")


@pytest.fixture(scope="module")
def mesh(model):
    return ConditionMesh(model)


def _coeffs(model, batch=1, yaw=0.0, jaw=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = FaceCoefficients.zeros(model, batch=batch, n_identity=10, n_albedo=12)
    c.identity = torch.randn(batch, 10, generator=g) * 0.8
    c.albedo = torch.randn(batch, 12, generator=g) * 0.8
    c.angles = torch.tensor([[0.05, yaw, 0.0]]).expand(batch, 3).clone()
    if jaw:
        c.expression[:, model.expression_names.index("jawOpen")] = jaw
    return c


def _image(model, coeffs):
    """The whole model rendered over grey (image = albedo under the neutral light)."""
    out = FaceRenderer(model).render(coeffs, default_intrinsics(S), (S, S))
    return out.image * out.mask + 0.4 * (1 - out.mask), out


def test_identical_driving_warps_the_source_onto_itself(model, mesh):
    src = _coeffs(model)
    img, _ = _image(model, src)
    K = default_intrinsics(S)
    cond = conditions_from_coefficients(mesh, img, K, src, src, K, S)
    cov = cond.covisible > 0.5
    assert cov.sum() > 0.9 * cond.mask.sum()
    diff = (cond.warped - img).abs()[cov.expand_as(img)]
    assert diff.max() < 1e-3
    assert (cond.warped[~cov.expand_as(img)] == 0).all()


def test_pose_and_expression_change_warps_source_to_the_driving_render(model, mesh):
    src = _coeffs(model)
    drv = _coeffs(model, yaw=0.35, jaw=0.6)
    drv.identity, drv.albedo = src.identity, src.albedo  # same person
    img_src, _ = _image(model, src)
    img_drv, _ = _image(model, drv)
    K = default_intrinsics(S)
    cond = conditions_from_coefficients(mesh, img_src, K, src, drv, K, S)
    cov = cond.covisible
    err_warp = ((cond.warped - img_drv).abs() * cov).sum() / (3 * cov.sum())
    err_copy = ((img_src - img_drv).abs() * cov).sum() / (3 * cov.sum())
    assert err_warp < 0.01, err_warp
    assert err_copy > 3 * err_warp
    # The turned head hides part of the face: fewer co-visible pixels, and the mouth opened.
    assert 0 < cov.sum() < cond.mask.sum()
    assert (cond.mask - cov).clamp_min(0).sum() > 20
    assert cond.mouth.sum() > 0


def test_maps_match_the_face_renderer(model, mesh):
    src = _coeffs(model)
    drv = _coeffs(model, yaw=-0.2, jaw=0.3, seed=1)
    light = torch.zeros(1, 9, 3)
    light[:, 0] = 1.0
    light[:, 3] = -0.3
    drv.light = light
    img, _ = _image(model, src)
    K = default_intrinsics(S)
    cond = conditions_from_coefficients(mesh, img, K, src, drv, K, S, light="driving")
    ref = FaceRenderer(model).render(recombine(src, drv), K, (S, S))
    # Interior face pixels (both renders cover them and the neighbourhood): same maps.
    both = (cond.mask * ref.mask).bool()
    inner = -torch.nn.functional.max_pool2d(-both.float(), 5, 1, 2) > 0.5
    m = inner.expand(-1, 3, -1, -1)
    assert inner.sum() > 2000
    for ours, theirs in ((cond.normals, ref.normals), (cond.light, ref.irradiance),
                         (cond.rendered, ref.image)):
        assert (ours - theirs).abs()[m].median() < 1e-4
        assert (ours - theirs).abs()[m].mean() < 5e-3


def test_recombine_takes_identity_from_source_and_motion_from_driving(model):
    src, drv = _coeffs(model, seed=0), _coeffs(model, yaw=0.3, jaw=0.5, seed=1)
    r = recombine(src, drv)
    assert torch.equal(r.identity, src.identity) and torch.equal(r.albedo, src.albedo)
    assert torch.equal(r.expression, drv.expression) and torch.equal(r.angles, drv.angles)
    assert torch.equal(r.light, drv.light)
    assert torch.equal(recombine(src, drv, light="source").light, src.light)
    with pytest.raises(ValueError, match="light"):
        recombine(src, drv, light="scene")


def test_batched_conditions_equal_one_by_one_and_carry_gradients(model, mesh):
    src = FaceCoefficients.cat([_coeffs(model, seed=0), _coeffs(model, seed=2)])
    drv = FaceCoefficients.cat([_coeffs(model, yaw=0.2, seed=3), _coeffs(model, yaw=-0.3, seed=4)])
    img = _image(model, src)[0].requires_grad_(True)
    K = default_intrinsics(S, batch=2)
    cond = conditions_from_coefficients(mesh, img, K, src, drv, K, S)
    one = conditions_from_coefficients(
        mesh, img[1:].detach(), K[1:], src.select(1), drv.select(1), K[1:], S
    )
    assert torch.allclose(cond.warped[1:], one.warped, atol=1e-5)
    assert torch.equal(cond.covisible[1:], one.covisible)
    cond.warped.sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0


def test_dcnet_takes_the_conditions_and_sees_the_same_warp(model, mesh):
    from jr2net.models.dcnet import DCNet, DCNetConfig

    src = _coeffs(model)
    drv = _coeffs(model, yaw=0.25, jaw=0.4)
    drv.identity, drv.albedo = src.identity, src.albedo
    img, _ = _image(model, src)
    K = default_intrinsics(S)
    cond = conditions_from_coefficients(mesh, img, K, src, drv, K, S)
    net = DCNet(DCNetConfig.tiny(crop_size=S, rel_eps=REL_EPS)).eval()
    inputs = cond.dcnet_inputs()
    with torch.no_grad():
        warped, covisible = net.view_synthesis(inputs)
        out = net(inputs)
    assert torch.equal(covisible, cond.covisible)
    assert torch.allclose(warped, cond.warped, atol=1e-6)
    assert out.shape == (1, 3, S, S) and torch.isfinite(out).all()


def test_bad_inputs_are_refused_with_clear_errors(model, mesh):
    src = _coeffs(model)
    img, _ = _image(model, src)
    K = default_intrinsics(S)
    view = render_source(mesh, img, K, src)
    with pytest.raises(ValueError, match="K_target"):
        build_conditions(mesh, view, src, torch.eye(4), S)
    with pytest.raises(ValueError, match="size"):
        build_conditions(mesh, view, src, K, 8)
    with pytest.raises(ValueError, match="needs"):
        build_conditions(mesh, view, None, K, S)
    with pytest.raises(ValueError, match="image"):
        render_source(mesh, img[0], K, src)
    with pytest.raises(TypeError, match="FaceModel"):
        ConditionMesh("generic")  # type: ignore[arg-type]
