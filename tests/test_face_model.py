"""Face model maths, subsets, persistence, lookup order, albedo and coefficient containers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from jr2net.errors import FaceModelError
from jr2net.face.albedo import AlbedoModel, build_laplacian_albedo, mesh_laplacian
from jr2net.face.coeffs import NEUTRAL_LIGHT_DC, FaceCoefficients
from jr2net.face.mesh import (
    MeshOperators,
    fast_vertex_normals,
    normal_operator,
    vertex_normals,
    vertex_normals_np,
)
from jr2net.face.model import FaceModel, load_face_model, resolve_face_model


@pytest.fixture(scope="module")
def ict(ict_model_path: Path) -> FaceModel:
    return FaceModel.from_npz(ict_model_path)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets an empty user cache and no $JR2NET_FACE_MODEL."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("JR2NET_CACHE", str(cache))
    monkeypatch.delenv("JR2NET_FACE_MODEL", raising=False)
    return cache


def grid_model_arrays(rows: int = 9, cols: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """A small planar grid model (z out of the plane) with two regions split by column."""
    rng = np.random.default_rng(seed)
    ys, xs = np.meshgrid(np.arange(rows, dtype=np.float32), np.arange(cols, dtype=np.float32), indexing="ij")
    verts = np.stack([xs.ravel() * 10, -ys.ravel() * 10, np.zeros(rows * cols, np.float32)], 1)
    faces = []
    for i in range(rows - 1):
        for j in range(cols - 1):
            a, b, c, d = i * cols + j, i * cols + j + 1, (i + 1) * cols + j + 1, (i + 1) * cols + j
            faces += [(a, d, c), (a, c, b)]  # counter-clockwise seen from +z
    region = (xs.ravel() >= cols // 2).astype(np.uint8)
    return {
        "vertices": verts,
        "faces": np.asarray(faces, np.int32),
        "identity_basis": rng.normal(size=(5, rows * cols, 3)).astype(np.float32),
        "expression_basis": rng.normal(size=(3, rows * cols, 3)).astype(np.float32),
        "expression_names": np.array(["jawOpen", "eyeBlink_L", "mouthSmile_R"]),
        "landmarks68": np.array([i * cols + (i % (cols // 2)) for i in range(rows)] * 8, np.int32)[:68],
        "region": region,
        "region_names": np.array(["left", "right"]),
    }


# ---- maths -------------------------------------------------------------------------------------


def test_shape_is_linear_in_identity_and_expression(ict: FaceModel) -> None:
    g = torch.Generator().manual_seed(0)
    a1, a2 = torch.randn(2, 80, generator=g), torch.randn(2, 80, generator=g)
    b1, b2 = torch.rand(2, 53, generator=g), torch.rand(2, 53, generator=g)
    mean = ict.vertices
    lhs = ict.shape(a1 + a2, b1 + b2) - mean
    rhs = (ict.shape(a1, b1) - mean) + (ict.shape(a2, b2) - mean)
    assert torch.allclose(lhs, rhs, atol=1e-3)
    # Fewer identity coefficients means the first modes (the rest zero).
    full = torch.cat([a1, torch.zeros(2, ict.n_identity - 80)], 1)
    assert torch.allclose(ict.shape(a1, None), ict.shape(full, None), atol=1e-4)
    # One unit of mode k moves the mesh by exactly identity_basis[k].
    e = torch.zeros(1, 53)
    e[0, ict.expression_names.index("jawOpen")] = 1.0
    assert torch.allclose(ict.shape(None, e)[0] - mean, ict.expression_basis[26], atol=1e-5)
    assert ict.shape(batch=3).shape == (3, ict.n_vertices, 3)


def test_shape_rejects_bad_coefficients(ict: FaceModel) -> None:
    with pytest.raises(ValueError, match="identity"):
        ict.shape(torch.zeros(1, ict.n_identity + 1))
    with pytest.raises(ValueError, match="expression"):
        ict.shape(None, torch.zeros(1, 52))
    with pytest.raises(ValueError, match="batch"):
        ict.shape(torch.zeros(2, 10), torch.zeros(3, 53))
    with pytest.raises(ValueError, match="identity"):
        ict.shape(torch.zeros(10))
    with pytest.raises(TypeError, match="identity"):
        ict.shape(np.zeros((1, 10)))


def test_vertex_normals_are_unit_and_outward_on_ict(ict: FaceModel) -> None:
    verts = ict.shape(torch.zeros(1, 10), torch.zeros(1, 53))
    n = ict.vertex_normals(verts)[0]
    assert torch.allclose(n.norm(dim=-1), torch.ones(ict.n_vertices), atol=1e-4)
    lm = ict.landmarks68
    assert n[lm[30], 2] > 0.9  # nose tip looks out of the face (+z)
    assert n[lm[8], 1] < -0.5  # chin looks down
    top = int(torch.argmax(verts[0, :, 1]))
    assert n[top, 1] > 0.7  # top of the head looks up
    # Skin surfaces face away from the head's centre for the vast majority of vertices.
    centre = verts[0].mean(0)
    for name in ("face", "head_neck", "eyeball_left"):
        sel = ict.region == ict.region_index(name)
        outward = ((n[sel] * (verts[0, sel] - centre)).sum(-1) > 0).float().mean()
        assert outward > 0.7, name


def test_vertex_normals_of_a_tetrahedron_point_away_from_it() -> None:
    v = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]])
    f = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], dtype=torch.int32)
    n = vertex_normals(v, f)[0]
    assert torch.allclose(n.norm(dim=-1), torch.ones(4))
    assert ((n * (v[0] - v[0].mean(0))).sum(-1) > 0).all()
    assert torch.allclose(n[0], -torch.ones(3) / 3**0.5, atol=1e-6)  # symmetric corner


def test_every_vertex_normal_variant_agrees(ict: FaceModel) -> None:
    verts = ict.shape(torch.randn(1, 5), torch.rand(1, 53) * 0.5)
    ref = ict.vertex_normals(verts)[0]
    torch.testing.assert_close(vertex_normals(verts[0], ict.faces), ref)  # unbatched [V,3]
    op = normal_operator(ict.faces, ict.n_vertices)
    torch.testing.assert_close(fast_vertex_normals(verts[0], ict.faces, op), ref, atol=1e-5, rtol=1e-4)
    ops = MeshOperators(ict.faces, ict.n_vertices)
    torch.testing.assert_close(ops.normals(verts[0]), ref, atol=1e-5, rtol=1e-4)
    n_np = vertex_normals_np(verts[0].double().numpy(), ict.faces.numpy().astype(np.int64))
    np.testing.assert_allclose(n_np, ref.double().numpy(), atol=1e-4)


def test_landmarks_follow_ibug_layout(ict: FaceModel) -> None:
    verts = ict.shape(torch.zeros(2, 5), torch.zeros(2, 53))
    lms = ict.landmarks(verts)
    assert lms.shape == (2, 68, 3)
    assert torch.equal(lms, verts[:, ict.landmarks68])
    p = lms[0]
    assert p[36, 0] < 0 < p[45, 0]  # subject's right eye corner at -x (the subject's left is +x)
    assert int(torch.argmax(p[:, 2])) in range(27, 36)  # the nose sticks out most
    assert int(torch.argmin(p[:, 1])) in (7, 8, 9)  # chin lowest
    with pytest.raises(ValueError, match="verts"):
        ict.landmarks(verts[:, :100])


# ---- subsets -----------------------------------------------------------------------------------


def test_subset_keeps_region_and_remaps_indices(ict: FaceModel) -> None:
    sub = ict.subset(["face"])
    assert ict.subset(["face"]) is sub  # memoised: sessions share it
    keep = sub.parent_vertex_index
    assert sub.n_vertices == int((ict.region == 0).sum()) == keep.numel()
    assert sub.region_names == ["face"]
    a = torch.randn(1, 30)
    b = torch.rand(1, 53)
    full, part = ict.shape(a, b), sub.shape(a, b)
    assert torch.allclose(part, full[:, keep], atol=1e-4)
    assert torch.allclose(sub.landmarks(part), ict.landmarks(full), atol=1e-4)
    assert torch.equal(keep[sub.jawline_left], ict.jawline_left)
    # Every subset triangle is a parent triangle.
    parent_faces = {tuple(f) for f in ict.faces.tolist()}
    mapped = keep[sub.faces.long()].tolist()
    assert all(tuple(f) in parent_faces for f in mapped[:: max(1, len(mapped) // 500)])
    assert sub.faces.max() < sub.n_vertices


def test_subset_albedo_is_the_parents_restricted() -> None:
    model = FaceModel.from_arrays(grid_model_arrays())
    sub = model.subset(["left"])
    g = torch.randn(2, sub.n_albedo) * 0.5
    assert sub.n_albedo == model.n_albedo
    assert torch.allclose(sub.albedo.colors(g), model.albedo.colors(g)[:, sub.parent_vertex_index])


def test_subset_that_drops_landmarks_is_an_error(ict: FaceModel) -> None:
    with pytest.raises(FaceModelError, match="landmark"):
        ict.subset(["eyeball_left", "eyeball_right"])
    with pytest.raises(FaceModelError, match="no region"):
        ict.subset(["ears"])


# ---- persistence and validation ---------------------------------------------------------------


def test_from_arrays_rejects_inconsistent_models() -> None:
    good = grid_model_arrays()
    FaceModel.from_arrays(good)
    bad_cases = {
        "missing": {k: v for k, v in good.items() if k != "faces"},
        "faces_range": {**good, "faces": good["faces"] + 1000},
        "basis_shape": {**good, "identity_basis": good["identity_basis"][:, :10]},
        "names_count": {**good, "expression_names": np.array(["a", "b"])},
        "landmarks": {**good, "landmarks68": good["landmarks68"][:60]},
        "nan": {**good, "vertices": np.full_like(good["vertices"], np.nan)},
    }
    for case, arrays in bad_cases.items():
        with pytest.raises(FaceModelError):
            FaceModel.from_arrays(arrays)
            pytest.fail(case)


def test_save_npz_round_trips_and_hash_tracks_geometry(tmp_path: Path) -> None:
    model = FaceModel.from_arrays(grid_model_arrays(), name="grid")
    path = model.save_npz(tmp_path / "grid.npz")
    again = FaceModel.from_npz(path)
    assert again.name == "grid"
    assert again.sha256 == model.sha256
    assert torch.equal(again.faces, model.faces)
    assert again.expression_names == model.expression_names
    other = FaceModel.from_arrays(grid_model_arrays(seed=1))
    assert other.sha256 != model.sha256
    with pytest.raises(FaceModelError, match="not found"):
        FaceModel.from_npz(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(FaceModelError):
        FaceModel.from_npz(tmp_path / "junk.npz")


# ---- lookup -------------------------------------------------------------------------------------


def test_lookup_order_explicit_env_cache_then_generic(
    tmp_path: Path, isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resolve_face_model(None).kind == "generic"
    cached = FaceModel.from_arrays(grid_model_arrays(seed=2), name="cached").save_npz(
        isolated_cache / "face_models" / "default.npz"
    )
    choice = resolve_face_model(None)
    assert choice.path == cached and "cache" in choice.reason
    env_model = FaceModel.from_arrays(grid_model_arrays(seed=3), name="env").save_npz(
        tmp_path / "env.npz"
    )
    monkeypatch.setenv("JR2NET_FACE_MODEL", str(env_model))
    assert resolve_face_model(None).path == env_model
    explicit = FaceModel.from_arrays(grid_model_arrays(seed=4), name="explicit").save_npz(
        tmp_path / "explicit.npz"
    )
    assert resolve_face_model(explicit).path == explicit
    assert load_face_model(explicit).name == "explicit"
    assert load_face_model(None).name == "env"
    assert resolve_face_model("generic").kind == "generic"
    # Bare names are imported models in the cache.
    assert resolve_face_model("default").path == cached
    with pytest.raises(FaceModelError, match="unknown face model"):
        resolve_face_model("no-such-model")
    with pytest.raises(FaceModelError, match="not found"):
        resolve_face_model(tmp_path / "missing.npz")
    monkeypatch.setenv("JR2NET_FACE_MODEL", str(tmp_path / "missing.npz"))
    with pytest.raises(FaceModelError, match="JR2NET_FACE_MODEL"):
        resolve_face_model(None)


def test_generic_fallback_loads_the_embedded_model() -> None:
    model = load_face_model(None)  # empty cache, no env var
    assert model.name == "generic" and model is load_face_model("generic")
    assert model.n_expression == 53 and model.landmarks68.shape == (68,)


def test_load_face_model_caches_per_path_and_mtime(tmp_path: Path) -> None:
    path = FaceModel.from_arrays(grid_model_arrays(), name="a").save_npz(tmp_path / "m.npz")
    first = load_face_model(path)
    assert load_face_model(str(path)) is first
    FaceModel.from_arrays(grid_model_arrays(seed=5), name="b").save_npz(path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = load_face_model(path)
    assert second is not first and second.name == "b"


# ---- albedo -------------------------------------------------------------------------------------


def test_laplacian_albedo_is_smooth_deterministic_and_cached(isolated_cache: Path) -> None:
    model = FaceModel.from_arrays(grid_model_arrays(rows=12, cols=12), name="grid")
    alb = model.albedo
    assert isinstance(alb, AlbedoModel)
    assert alb.basis.shape == (model.n_albedo, model.n_vertices, 3) and model.n_albedo == 96
    files = list((isolated_cache / "albedo").glob("*.npz"))
    assert len(files) == 1 and model.sha256 in files[0].name
    files[0].unlink()  # rebuild from scratch: identical
    again = build_laplacian_albedo(FaceModel.from_arrays(grid_model_arrays(rows=12, cols=12)))
    assert torch.equal(again.basis, alb.basis)
    # Row 3k+c is eigenvector k in channel c only; energies xᵀLx grow with k.
    assert torch.count_nonzero(alb.basis[4, :, [0, 2]]) == 0
    lap = mesh_laplacian(model.faces.numpy(), model.n_vertices)
    vecs = alb.basis[0::3, :, 0].double().numpy()
    energy = np.einsum("kv,kv->k", vecs, (lap @ vecs.T).T) / np.einsum("kv,kv->k", vecs, vecs)
    assert energy[0] < 1e-8 and np.all(np.diff(energy) > -1e-9) and energy[-1] > energy[1]
    assert torch.allclose(alb.colors(torch.zeros(2, 96)), alb.mean.expand(2, -1, -1))
    out = alb.colors(torch.full((1, 96), 50.0))
    assert out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match="gamma"):
        alb.colors(torch.zeros(1, 97))


# ---- coefficients -------------------------------------------------------------------------------


def test_coefficients_zeros_shapes_and_neutral_light(ict: FaceModel) -> None:
    c = FaceCoefficients.zeros(ict, batch=2, n_identity=80)
    assert c.identity.shape == (2, 80) and c.expression.shape == (2, 53)
    assert c.albedo.shape == (2, ict.n_albedo) and c.light.shape == (2, 9, 3)
    assert torch.allclose(c.light[:, 0], torch.full((2, 3), NEUTRAL_LIGHT_DC))
    assert c.light[:, 1:].abs().sum() == 0
    assert c.translation[0, 2] < 0  # model origin in front of the camera (X_cam z = -t_z)
    with pytest.raises(ValueError, match="n_identity"):
        FaceCoefficients.zeros(ict, n_identity=ict.n_identity + 1)
    with pytest.raises(ValueError, match="light"):
        FaceCoefficients(c.identity, c.expression, c.albedo, c.angles, c.translation, c.light[:, :4])
    with pytest.raises(ValueError, match="batch"):
        FaceCoefficients(c.identity[:1], c.expression, c.albedo, c.angles, c.translation, c.light)


def test_coefficients_dict_round_trip_maps_expressions_by_name(ict: FaceModel) -> None:
    c = FaceCoefficients.zeros(ict, batch=2, n_identity=10, n_albedo=6)
    c.expression[1, ict.expression_names.index("jawOpen")] = 0.7
    c.angles[0, 1] = 0.3
    d = c.to_dict(ict.expression_names)
    import json

    back = FaceCoefficients.from_dict(json.loads(json.dumps(d)), model=ict)
    for k, v in c.tensors().items():
        assert torch.allclose(getattr(back, k), v), k
    # A dict naming only some expressions (other order) lands in the model's slots.
    small = {**d, "expression": [[0.5, 0.2]] * 2, "expression_names": ["eyeBlink_L", "jawOpen"]}
    mapped = FaceCoefficients.from_dict(small, model=ict)
    assert mapped.expression[0, ict.expression_names.index("jawOpen")] == pytest.approx(0.2)
    assert mapped.expression[0, ict.expression_names.index("eyeBlink_L")] == pytest.approx(0.5)
    assert mapped.expression.sum() == pytest.approx(1.4)
    with pytest.raises(ValueError, match="not in face model"):
        FaceCoefficients.from_dict({**small, "expression_names": ["exp_000", "jawOpen"]}, model=ict)


def test_coefficients_select_cat_and_detach(ict: FaceModel) -> None:
    c = FaceCoefficients.zeros(ict, batch=3, n_identity=4, n_albedo=2)
    c.translation[:, 0] = torch.tensor([1.0, 2.0, 3.0])
    one = c.select(1)
    assert one.batch_size == 1 and one.translation[0, 0] == 2.0
    both = FaceCoefficients.cat([c.select(2), c.select(0)])
    assert both.translation[:, 0].tolist() == [3.0, 1.0]
    c.requires_grad_(["expression"])
    assert c.expression.requires_grad and not c.detach().expression.requires_grad
    assert one.expand(4).batch_size == 4


def test_albedo_first_built_under_inference_mode_still_supports_autograd():
    import torch

    from jr2net.face.model import load_face_model

    model = load_face_model("generic")
    model._albedo = None  # force a fresh build inside inference mode
    with torch.inference_mode():
        model.albedo  # noqa: B018
    coeffs = torch.zeros(1, model.n_albedo, requires_grad=True)
    model.albedo.colors(coeffs).sum().backward()
    assert coeffs.grad is not None and torch.isfinite(coeffs.grad).all()
