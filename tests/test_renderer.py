"""The differentiable face renderer on the ICT model: coverage, buffers, landmarks, gradients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from jr2net.face.camera import default_intrinsics
from jr2net.face.coeffs import FaceCoefficients
from jr2net.face.model import FaceModel
from jr2net.face.renderer import FaceRenderer

SIZE = (96, 96)


@pytest.fixture(scope="module")
def renderer(ict_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaceRenderer]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JR2NET_CACHE", str(tmp_path_factory.mktemp("cache")))
        model = FaceModel.from_npz(ict_model_path)
        model.albedo  # noqa: B018  (build the Laplacian albedo inside the temporary cache)
        yield FaceRenderer(model)


def _coeffs(model: FaceModel, batch: int = 1) -> FaceCoefficients:
    c = FaceCoefficients.zeros(model, batch=batch, n_identity=40, n_albedo=12)
    g = torch.Generator().manual_seed(0)
    c.identity += torch.randn(c.identity.shape, generator=g) * 0.5
    c.expression[:, model.expression_names.index("jawOpen")] = 0.3
    c.albedo += torch.randn(c.albedo.shape, generator=g) * 0.3
    c.angles += torch.tensor([0.05, 0.2, -0.05])
    c.translation += torch.tensor([3.0, 10.0, 0.0])
    c.light[:, 0] = 0.9
    c.light[:, 2] = -0.4  # light from the camera side: camera-facing skin is brighter
    c.light[:, 3] = 0.15
    return c


def test_render_covers_the_face_with_consistent_buffers(renderer: FaceRenderer) -> None:
    model = renderer.model
    c = _coeffs(model, batch=2)
    c.angles[1, 1] = -0.4
    out = renderer.render(c, default_intrinsics(SIZE), SIZE)
    H, W = SIZE
    assert out.image.shape == (2, 3, H, W) and out.rast.shape == (2, H, W, 4)
    mask = out.mask[:, 0] > 0
    coverage = mask.float().mean(dim=(1, 2))
    assert ((coverage > 0.3) & (coverage < 0.9)).all(), coverage
    assert (out.face_mask <= out.mask).all() and out.face_mask.mean() > 0.2
    # Depth: positive on the mesh, zero elsewhere, within the head's extent around 500 mm.
    d = out.depth[:, 0]
    assert (d[mask] > 300).all() and (d[mask] < 700).all() and (d[~mask] == 0).all()
    # Camera-frame normals are unit on the mesh and face the camera (n_z < 0) on the face.
    n = out.normals
    assert torch.allclose(n.norm(dim=1)[mask], torch.ones(int(mask.sum())), atol=1e-4)
    face = out.face_mask[:, 0] > 0
    assert (n[:, 2][face] < 0).float().mean() > 0.99
    # image = albedo ⊙ irradiance, zero off the mesh.
    assert torch.allclose(out.image, out.albedo * out.irradiance, atol=1e-5)
    assert (out.image * (1 - out.mask)).abs().max() == 0
    assert 0.0 < out.image[mask.unsqueeze(1).expand_as(out.image)].mean() < 1.0


def test_landmarks_project_inside_the_rendered_face(renderer: FaceRenderer) -> None:
    model = renderer.model
    c = _coeffs(model)
    out = renderer.render(c, default_intrinsics(SIZE), SIZE)
    lm = out.landmarks2d[0]
    assert lm.shape == (68, 2)
    ij = lm.round().long()
    inside = out.mask[0, 0, ij[:, 1].clamp(0, SIZE[0] - 1), ij[:, 0].clamp(0, SIZE[1] - 1)]
    assert inside[27:].all()  # nose, eyes, mouth
    assert inside.sum() >= 62  # jaw and brow ends on the turned-away side may leave the silhouette
    assert lm[8, 1] > lm[30, 1] > lm[27, 1]  # chin below nose tip below nose bridge
    # The visible landmark vertex depths agree with the depth buffer (no hidden offset).
    z = out.verts_cam[0, model.landmarks68, 2]
    zbuf = out.depth[0, 0, ij[:, 1], ij[:, 0]]
    assert ((z - zbuf).abs() < 15).float().mean() > 0.8


def test_backface_culling_keeps_the_frontal_face(renderer: FaceRenderer) -> None:
    c = _coeffs(renderer.model)
    K = default_intrinsics(SIZE)
    culled = renderer.render(c, K, SIZE, cull_backfaces=True)
    full = renderer.render(c, K, SIZE, cull_backfaces=False)
    agree = (culled.rast[..., 3] == full.rast[..., 3]).float().mean()
    assert agree > 0.99  # visible surfaces are front faces: culling removes hidden ones only


def test_gradients_reach_every_coefficient(renderer: FaceRenderer) -> None:
    model = renderer.model
    c = _coeffs(model).requires_grad_()
    out = renderer.render(c, default_intrinsics(SIZE), SIZE)
    g = torch.Generator().manual_seed(1)
    target = torch.rand(out.image.shape, generator=g)
    loss = ((out.image - target) ** 2 * out.mask).mean()
    loss = loss + 1e-4 * out.landmarks2d.square().mean() + 1e-6 * out.depth.mean()
    loss.backward()
    for name, t in c.tensors().items():
        assert t.grad is not None, name
        assert torch.isfinite(t.grad).all(), name
        assert t.grad.abs().sum() > 0, name
    # An expression that moves the visible mouth gets a gradient through the rasteriser alone.
    c2 = _coeffs(model).requires_grad_(["expression"])
    out2 = renderer.render(c2, default_intrinsics(SIZE), SIZE)
    (out2.image * target).sum().backward()
    assert c2.expression.grad[0, model.expression_names.index("jawOpen")].abs() > 0


def _interior_loss(renderer: FaceRenderer, c: FaceCoefficients, weight: torch.Tensor) -> torch.Tensor:
    out = renderer.render(c, default_intrinsics(SIZE), SIZE)
    return (out.image.double() * weight.double()).sum()  # float64 sum: FD needs the precision


def test_gradients_match_finite_differences(renderer: FaceRenderer) -> None:
    model = renderer.model
    base = _coeffs(model)
    out = renderer.render(base, default_intrinsics(SIZE), SIZE)
    # Weight only pixels well inside the face and away from depth discontinuities (silhouettes,
    # nose/cheek occlusion), where rasterisation is discontinuous and has no gradient by design.
    inner = -F.max_pool2d(-out.face_mask, 9, stride=1, padding=4)
    d = out.depth
    jump = (F.max_pool2d(d, 3, 1, 1) + F.max_pool2d(-d, 3, 1, 1)) > 3.0
    inner = inner * (1 - F.max_pool2d(jump.float(), 5, 1, 2))
    assert inner.sum() > 200
    g = torch.Generator().manual_seed(2)
    weight = inner * torch.rand(out.image.shape, generator=g)
    c = base.clone().requires_grad_()
    _interior_loss(renderer, c, weight).backward()
    checks = [("light", (0, 2, 1), 0.1), ("albedo", (0, 0), 0.1), ("translation", (0, 0), 0.1),
              ("angles", (0, 1), 2e-3), ("angles", (0, 0), 2e-3)]  # fmt: skip
    for name, index, eps in checks:
        plus, minus = base.clone(), base.clone()
        getattr(plus, name)[index] += eps
        getattr(minus, name)[index] -= eps
        with torch.no_grad():
            fd = (_interior_loss(renderer, plus, weight) - _interior_loss(renderer, minus, weight)) / (2 * eps)
        analytic = getattr(c, name).grad[index].double()
        assert analytic.abs() > 1e-3, name
        assert torch.allclose(analytic, fd, rtol=0.05, atol=1e-3 * fd.abs().item() + 1e-4), (name, analytic, fd)
