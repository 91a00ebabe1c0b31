"""The mode-independent half of a session: driving reference, target pose/expression, relighting."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from jr2net.face.camera import default_intrinsics
from jr2net.face.coeffs import FaceCoefficients
from jr2net.face.model import load_face_model
from jr2net.pipeline.geometric import RENDER_REGIONS
from jr2net.pipeline.recombine import Recombiner, Relighter
from jr2net.pipeline.stages import RenderMesh, render_vertex_mask


@pytest.fixture(scope="module")
def setup():
    model = load_face_model("generic")
    mesh = RenderMesh(model, render_vertex_mask(model, RENDER_REGIONS))
    return model, mesh


def _fit(model, identity, expression, angles, translation, light=None):
    c = FaceCoefficients.zeros(model, n_identity=identity.shape[1], n_albedo=0)
    c.identity, c.expression = identity, expression
    c.angles, c.translation = angles, translation
    if light is not None:
        c.light = light
    return SimpleNamespace(coeffs=c, K=default_intrinsics(512), image_size=(512, 512))


def _source(model):
    g = torch.Generator().manual_seed(0)
    return _fit(
        model,
        torch.randn(1, 10, generator=g),
        torch.rand(1, model.n_expression, generator=g) * 0.3,
        torch.tensor([[0.1, -0.2, 0.05]]),
        torch.tensor([[3.0, -2.0, -520.0]]),
        light=torch.randn(1, 9, 3, generator=g) * 0.1 + torch.eye(9, 3)[None] * 1.1,
    )


def test_driving_by_the_source_itself_reproduces_the_source(setup):
    model, mesh = setup
    src = _source(model)
    rc = Recombiner(model, mesh, src, default_intrinsics(512)[0], (512, 512))
    own, same = rc.source(), rc.recombine(src)
    torch.testing.assert_close(same.R, own.R)
    torch.testing.assert_close(same.t, own.t)
    torch.testing.assert_close(same.verts_cam, own.verts_cam)
    torch.testing.assert_close(same.normals_cam, own.normals_cam)
    assert rc.reference is not None and rc.reference.size_ratio == pytest.approx(1.0)
    relighter = Relighter(own.normals_cam, src.coeffs.light[0], mesh.ops)
    torch.testing.assert_close(relighter.ratio(same.normals_cam), torch.ones_like(own.verts))


def test_relative_modes_follow_the_driving_change_since_its_first_frame(setup):
    model, mesh = setup
    src = _source(model)
    E = model.n_expression
    ident = torch.zeros(1, 10)
    first = _fit(
        model, ident, torch.zeros(1, E), torch.zeros(1, 3), torch.tensor([[0.0, 0.0, -600.0]])
    )
    later_beta = torch.zeros(1, E)
    later_beta[0, 3] = 0.5
    later = _fit(
        model,
        ident,
        later_beta,
        torch.tensor([[0.0, 0.3, 0.0]]),
        torch.tensor([[10.0, 0.0, -600.0]]),
    )
    rc = Recombiner(
        model, mesh, src, default_intrinsics(512)[0], (512, 512), expression_mode="relative"
    )
    rc.recombine(first)  # sets the reference
    out = rc.recombine(later)
    expected = (src.coeffs.expression + later_beta).clamp(0, 1)
    torch.testing.assert_close(out.expression, expected)
    # The head turned by the driving's yaw; depth unchanged (driving depth unchanged).
    assert not torch.allclose(out.R, rc.R_src)
    torch.testing.assert_close(out.t[2], rc.t_src[2])
    rc.reset()
    assert rc.reference is None
    with pytest.raises(ValueError, match="pose_mode"):
        Recombiner(model, mesh, src, default_intrinsics(512)[0], (512, 512), pose_mode="sideways")
