"""The procedural ``generic`` face model: format, determinism, mesh sanity, landmark layout and
the semantics of its expression and identity bases (measured on landmarks and regions)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from jr2net.face.generic import EXPRESSION_NAMES, SOURCE, generic_face_model, preview_png


@pytest.fixture(scope="module")
def gm() -> dict[str, np.ndarray]:
    return generic_face_model()


@pytest.fixture(scope="module")
def ict(ict_model_path) -> dict[str, np.ndarray]:
    with np.load(ict_model_path) as z:
        return {k: z[k] for k in z.files}


def _shape(gm, name: str, beta: float = 1.0) -> np.ndarray:
    names = list(gm["expression_names"])
    return gm["vertices"] + beta * gm["expression_basis"][names.index(name)]


def _face_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    return np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode())
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    return h.hexdigest()


def test_keys_dtypes_and_shapes_follow_the_npz_format(gm, ict):
    assert set(gm) == set(ict), set(gm) ^ set(ict)
    v, f = gm["vertices"], gm["faces"]
    n_v = len(v)
    assert 3000 <= n_v <= 8000
    assert v.dtype == np.float32 and v.shape == (n_v, 3)
    assert f.dtype == np.int32 and f.ndim == 2 and f.shape[1] == 3
    assert f.min() == 0 and f.max() == n_v - 1
    ib, eb = gm["identity_basis"], gm["expression_basis"]
    assert ib.dtype == np.float32 and ib.shape[0] >= 40 and ib.shape[1:] == (n_v, 3)
    assert eb.dtype == np.float32 and eb.shape == (53, n_v, 3)
    assert list(gm["expression_names"]) == list(ict["expression_names"]) == list(EXPRESSION_NAMES)
    for key in ("landmarks68", "jawline_left", "jawline_right"):
        assert gm[key].dtype == np.int32
        assert gm[key].min() >= 0 and gm[key].max() < n_v
    assert gm["landmarks68"].shape == (68,) and len(set(gm["landmarks68"].tolist())) == 68
    assert gm["jawline_left"].shape == gm["jawline_right"].shape == (17,)
    assert gm["region"].dtype == np.uint8 and gm["region"].shape == (n_v,)
    assert list(gm["region_names"]) == list(ict["region_names"])
    assert gm["region"].max() < len(gm["region_names"])
    assert np.bincount(gm["region"], minlength=5).min() > 0
    assert gm["uvs"].dtype == np.float32 and gm["uvs"].shape[1] == 2
    assert gm["uvs"].min() >= 0.0 and gm["uvs"].max() <= 1.0
    assert gm["faces_uv"].shape == f.shape and gm["faces_uv"].max() < len(gm["uvs"])
    assert str(gm["units"]) == str(ict["units"])
    assert str(gm["source"]) == SOURCE
    for k, a in gm.items():
        if a.dtype.kind == "f":
            assert np.isfinite(a).all(), k


def test_two_calls_give_identical_arrays_and_independent_copies():
    a = generic_face_model()
    digest = _digest(a)
    a["vertices"][:] = 0.0  # callers own their copy; the cached build must not change
    b = generic_face_model()
    assert _digest(b) == digest
    assert not np.shares_memory(a["vertices"], b["vertices"])


def test_loads_as_a_face_model(gm):
    from jr2net.face.model import FaceModel

    model = FaceModel.from_arrays(gm, name="generic")
    assert model.n_expression == 53 and model.n_identity == gm["identity_basis"].shape[0]


def test_head_has_adult_size_and_ict_like_placement(gm, ict):
    v, lm = gm["vertices"], gm["landmarks68"]
    p = v[lm]
    # Outer-canthus distance ~85-95 mm, nose tip in front, face height ~120 mm (nasion-menton).
    assert 80.0 < p[45, 0] - p[36, 0] < 100.0
    assert 105.0 < p[27, 1] - p[8, 1] < 125.0
    assert p[30, 2] == v[gm["region"] == 0, 2].max()
    # A similarity transform maps our landmarks onto ICT's to within a few millimetres.
    q = ict["vertices"][ict["landmarks68"]].astype(np.float64)
    x = p.astype(np.float64)
    xm, qm = x.mean(0), q.mean(0)
    u, s, vt = np.linalg.svd((q - qm).T @ (x - xm))
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ d @ vt
    scale = (s * np.diag(d)).sum() / ((x - xm) ** 2).sum()
    res = np.linalg.norm(scale * (x - xm) @ rot.T + qm - q, axis=1)
    assert 0.9 < scale < 1.1
    assert np.sqrt((res**2).mean()) < 6.0, res.round(1)


def test_winding_matches_ict_outward_normals(gm, ict):
    def front_fraction(m):
        v, f = m["vertices"].astype(np.float64), m["faces"]
        face = (m["region"][f] == 0).all(1)
        c = v[f].mean(1)
        sel = face & (c[:, 2] > 80.0) & (np.abs(c[:, 0]) < 40.0) & (np.abs(c[:, 1]) < 60.0)
        return (_face_normals(v, f[sel])[:, 2] > 0).mean()

    ours, theirs = front_fraction(gm), front_fraction(ict)
    assert theirs > 0.8  # ICT: (v1-v0)x(v2-v0) points out of the face
    assert ours > 0.95
    # Every skin triangle faces away from the head centre (the template is star-shaped).
    v, f = gm["vertices"].astype(np.float64), gm["faces"]
    skin = (gm["region"][f] <= 1).all(1)
    c = v[f[skin]].mean(1) - np.array([0.0, 10.0, 10.0])
    assert ((_face_normals(v, f[skin]) * c).sum(1) > 0).all()


def test_mesh_is_an_oriented_manifold_without_degenerate_triangles(gm):
    v, f = gm["vertices"].astype(np.float64), gm["faces"].astype(np.int64)
    assert len(np.unique(np.sort(f, 1), axis=0)) == len(f)
    assert (f[:, 0] != f[:, 1]).all() and (f[:, 1] != f[:, 2]).all() and (f[:, 0] != f[:, 2]).all()
    assert np.bincount(f.ravel(), minlength=len(v)).min() > 0  # no unused vertices
    area = 0.5 * np.linalg.norm(_face_normals(v, f), axis=1)
    edges = [v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 1]], v[f[:, 0]] - v[f[:, 2]]]
    sq = sum((e**2).sum(1) for e in edges)
    quality = 4.0 * np.sqrt(3.0) * area / sq
    assert area.min() > 1e-3 and quality.min() > 0.05
    # Each directed edge at most once (consistent orientation), each edge in <= 2 triangles.
    directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    assert len(np.unique(directed, axis=0)) == len(directed)
    _, counts = np.unique(np.sort(directed, 1), axis=0, return_counts=True)
    assert counts.max() == 2


def test_face_region_is_dense(gm):
    v, f = gm["vertices"], gm["faces"]
    c = v[f].mean(1)
    inner = (gm["region"][f] == 0).all(1) & (np.abs(c[:, 0]) < 45) & (np.abs(c[:, 1] + 5) < 45)
    e = np.linalg.norm(v[f[inner]] - v[f[inner][:, [1, 2, 0]]], axis=2)
    assert inner.sum() > 2000
    assert np.median(e) < 3.5 and e.max() < 10.0


MIRROR_PAIRS = (
    [(k, 16 - k) for k in range(8)] + [(17 + k, 26 - k) for k in range(5)] + [(31, 35), (32, 34)]
    + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
    + [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)]
)  # fmt: skip
MIDLINE = (8, 27, 28, 29, 30, 33, 51, 57, 62, 66)


def test_landmarks_follow_the_ibug_layout(gm):
    p = gm["vertices"][gm["landmarks68"]].astype(np.float64)
    x, y = p[:, 0], p[:, 1]
    assert (np.diff(x[:17]) > 0).all()  # jaw: image left to right (subject's right to left)
    assert np.argmin(y[:17]) == 8
    assert (x[36:42] < 0).all() and (x[42:48] > 0).all() and (x[17:22] < 0).all()
    brows, eyes = y[17:27].mean(), y[36:48].mean()
    assert brows > eyes > y[30] > y[33] > y[51] > y[62] > y[57] > y[8]
    assert (np.diff(x[27:31]) == 0).all() and (np.diff(y[27:31]) < 0).all()  # bridge downward
    assert (np.diff(x[31:36]) > 0).all() and (np.diff(x[48:55]) > 0).all()
    assert (np.diff(x[54:60]) < 0).all() and (np.diff(x[60:65]) > 0).all()
    assert y[37] > y[41] and y[38] > y[40] and y[43] > y[47] and y[44] > y[46]  # lids
    for i, j in MIRROR_PAIRS:
        np.testing.assert_allclose(p[i] * [-1, 1, 1], p[j], atol=0.05, err_msg=f"{i}<->{j}")
    np.testing.assert_allclose(x[list(MIDLINE)], 0.0, atol=0.05)
    # Inner lips: separate vertices (the slit) at the same place when the mouth is closed.
    lm = gm["landmarks68"]
    for i, j in ((61, 67), (62, 66), (63, 65)):
        assert lm[i] != lm[j] and np.abs(p[i] - p[j]).max() < 1e-4


def test_jawline_candidates_run_chin_to_ear_like_ict(gm, ict):
    for m in (gm, ict):
        left = m["vertices"][m["jawline_left"]]
        right = m["vertices"][m["jawline_right"]]
        assert (left[:, 0] > 0).all() and (right[:, 0] < 0).all()
        assert left[-1, 1] - left[0, 1] > 80.0  # chin -> ear
        assert right[0, 1] - right[-1, 1] > 80.0  # ear -> chin (ICT's order)
    left = gm["vertices"][gm["jawline_left"]]
    right = gm["vertices"][gm["jawline_right"]][::-1]
    np.testing.assert_allclose(left * [-1, 1, 1], right, atol=0.05)
    assert (np.diff(left[:, 1]) > 0).all()


def test_jaw_open_parts_the_inner_lips(gm):
    lm = gm["landmarks68"]
    gap0 = gm["vertices"][lm[62], 1] - gm["vertices"][lm[66], 1]
    s = _shape(gm, "jawOpen")
    gap = s[lm[62], 1] - s[lm[66], 1]
    assert abs(gap0) < 1.0 and gap > 15.0
    assert s[lm[8], 1] < gm["vertices"][lm[8], 1] - 15.0  # chin goes down
    assert np.abs(s[lm[27]] - gm["vertices"][lm[27]]).max() < 1e-3  # upper face stays
    # mouthClose undoes the lip gap of jawOpen while the jaw stays open.
    both = s + gm["expression_basis"][list(gm["expression_names"]).index("mouthClose")]
    assert abs(both[lm[62], 1] - both[lm[66], 1]) < 1.0
    assert both[lm[8], 1] < gm["vertices"][lm[8], 1] - 15.0


def _opening(p: np.ndarray, upper, lower) -> float:
    return float(np.mean([p[u, 1] - p[lo, 1] for u, lo in zip(upper, lower, strict=True)]))


def test_eye_blink_left_closes_only_the_subjects_left_eye(gm):
    lm = gm["landmarks68"]
    p0 = gm["vertices"][lm]
    p1 = _shape(gm, "eyeBlink_L")[lm]
    left, right = ((43, 44), (47, 46)), ((37, 38), (41, 40))
    assert _opening(p0, *left) > 5.0 and _opening(p0, *right) > 5.0
    assert abs(_opening(p1, *left)) < 0.3
    assert abs(_opening(p1, *right) - _opening(p0, *right)) < 1e-4
    # Half a blink half closes it; eyeWide opens it further; _R mirrors _L.
    assert 0.3 < _opening(_shape(gm, "eyeBlink_L", 0.5)[lm], *left) / _opening(p0, *left) < 0.7
    assert _opening(_shape(gm, "eyeWide_L")[lm], *left) > _opening(p0, *left) + 1.5
    assert abs(_opening(_shape(gm, "eyeBlink_R")[lm], *right)) < 0.3


def test_blinked_lid_stays_in_front_of_the_eyeball(gm):
    s = _shape(gm, "eyeBlink_L")
    eye = gm["region"] == list(gm["region_names"]).index("eyeball_left")
    lid = np.abs(gm["expression_basis"][list(gm["expression_names"]).index("eyeBlink_L")]).max(1)
    lid = (lid > 1.0) & (gm["region"] == 0)
    # For each moved lid vertex, the eyeball vertices within 1.5 mm in (x, y) lie behind it.
    e = s[eye]
    for q in s[lid]:
        near = np.hypot(e[:, 0] - q[0], e[:, 1] - q[1]) < 1.5
        if near.any():
            assert e[near, 2].max() < q[2] + 0.1


def test_mouth_smile_left_raises_the_left_corner(gm):
    lm = gm["landmarks68"]
    d = _shape(gm, "mouthSmile_L")[lm] - gm["vertices"][lm]
    assert d[54, 1] > 4.0 and d[54, 0] > 1.0
    assert np.abs(d[48]).max() < 0.5
    d = _shape(gm, "mouthFrown_L")[lm] - gm["vertices"][lm]
    assert d[54, 1] < -3.0


EXPECTED_Y = {  # where each expression family acts (weighted mean y of its displacement, mm)
    "brow": (38.0, 70.0), "eye": (15.0, 50.0), "cheek": (-45.0, 25.0), "jaw": (-120.0, -20.0),
    "mouth": (-70.0, -10.0), "nose": (-15.0, 40.0),
}  # fmt: skip


@pytest.mark.parametrize("name", EXPRESSION_NAMES)
def test_every_expression_is_a_real_local_deformation(gm, name):
    d = gm["expression_basis"][list(gm["expression_names"]).index(name)].astype(np.float64)
    mag = np.linalg.norm(d, axis=1)
    assert mag.max() > 1.0
    assert mag.max() < 45.0
    v = gm["vertices"]
    family = next(k for k in EXPECTED_Y if name.startswith(k))
    lo, hi = EXPECTED_Y[family]
    assert lo < (mag * v[:, 1]).sum() / mag.sum() < hi
    if name.endswith(("_L", "_R")):
        side = 1.0 if name.endswith("_L") else -1.0
        share = mag[side * v[:, 0] > 0].sum() / mag.sum()
        assert share > 0.8, share
        # _R is the mirror image of _L.
        other = name[:-1] + ("R" if side > 0 else "L")
        mo = np.linalg.norm(
            gm["expression_basis"][list(gm["expression_names"]).index(other)], axis=1
        )
        np.testing.assert_allclose(np.sort(mag), np.sort(mo), atol=0.05)


@pytest.mark.parametrize(
    "name",
    [
        "jawOpen",
        "eyeBlink_L",
        "mouthSmile_R",
        "cheekPuff_L",
        "mouthPucker",
        "jawLeft",
        "browInnerUp_R",
        "mouthFunnel",
    ],
)
def test_expressions_do_not_fold_the_skin(gm, name):
    v, f = gm["vertices"].astype(np.float64), gm["faces"]
    skin = (gm["region"][f] <= 1).all(1)
    n0 = _face_normals(v, f[skin])
    n1 = _face_normals(_shape(gm, name).astype(np.float64), f[skin])
    assert ((n0 * n1).sum(1) > 0).all()


def test_identity_modes_are_smooth_orthogonal_and_a_few_mm(gm):
    b = gm["identity_basis"].astype(np.float64)
    flat = b.reshape(len(b), -1)
    g = flat @ flat.T
    norms = np.sqrt(np.diag(g))
    cos = g / norms[:, None] / norms[None]
    np.fill_diagonal(cos, 0.0)
    assert np.abs(cos).max() < 0.05
    peak = np.linalg.norm(b, axis=2).max(1)
    assert peak.min() >= 1.0 and peak.max() <= 8.0
    # Smooth: neighbouring vertices move alike (no tears along the slit or the lids).
    v, f = gm["vertices"].astype(np.float64), gm["faces"]
    e = np.unique(np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), 1), axis=0)
    length = np.linalg.norm(v[e[:, 0]] - v[e[:, 1]], axis=1)
    strain = np.linalg.norm(b[:, e[:, 0]] - b[:, e[:, 1]], axis=2) / length
    assert strain.max() < 0.6
    # The mouth stays closed and landmarks stay on their features under a random identity.
    alpha = np.random.default_rng(1).standard_normal(len(b))
    s = v + np.tensordot(alpha, b, 1)
    lm = gm["landmarks68"]
    assert abs(s[lm[62], 1] - s[lm[66], 1]) < 1e-3
    assert s[lm[30], 2] > s[lm[27], 2] and s[lm[27], 1] > s[lm[30], 1] > s[lm[51], 1]


def test_preview_png_writes_a_contact_sheet(tmp_path):
    from PIL import Image

    out = preview_png(tmp_path / "generic.png", size=96)
    img = np.asarray(Image.open(out))
    assert img.shape == (3 * 96, 5 * 96, 3)
    assert img.std() > 20  # something was drawn


@pytest.mark.parametrize(
    "shape",
    [
        "neutral",
        "identity0",
        "identity1",
        "identity2",
        "identity3",
        "eyeLookUp_L",
        "eyeLookOut_L",
        "eyeLookIn_R",
        "eyeLookDown_R",
        "eyeWide_L",
        "eyeSquint_R",
        "browDown_L",
        "cheekSquint_R",
    ],
)
def test_eyeballs_stay_behind_the_skin(gm, shape):
    from scipy.spatial import cKDTree

    if shape == "neutral":
        s = gm["vertices"]
    elif shape.startswith("identity"):  # a random face at one sigma
        alpha = np.random.default_rng(int(shape[-1])).standard_normal(len(gm["identity_basis"]))
        s = gm["vertices"] + np.tensordot(alpha, gm["identity_basis"], 1)
    else:
        s = _shape(gm, shape)
    skin = s[gm["region"] == 0]
    tree = cKDTree(skin[:, :2])
    for eye in ("eyeball_left", "eyeball_right"):
        e = s[gm["region"] == list(gm["region_names"]).index(eye)]
        for q, near in zip(e, tree.query_ball_point(e[:, :2], 1.0), strict=True):
            if near:
                assert skin[near, 2].max() > q[2] - 0.2, (eye, q)


def test_the_disk_cache_gives_the_built_arrays_and_survives_a_corrupt_file(tmp_path, monkeypatch):
    """The build is cached in the user cache (keyed by the code and the numpy/scipy installs):
    a read gives exactly the built arrays; a corrupt file is rebuilt and rewritten."""
    from jr2net.face import generic

    built = generic._build_arrays()
    monkeypatch.setenv("JR2NET_CACHE", str(tmp_path))
    generic._cached.cache_clear()
    try:
        first = generic_face_model()  # builds and writes
        (path,) = (tmp_path / "generic").glob("generic_*.npz")
        assert path == generic._cache_path()
        generic._cached.cache_clear()
        second = generic_face_model()  # reads
        for arrays in (first, second):
            assert list(arrays) == list(built)
            for k, v in built.items():
                assert arrays[k].dtype == v.dtype and np.array_equal(arrays[k], v), k
        path.write_bytes(b"not an npz")
        generic._cached.cache_clear()
        third = generic_face_model()
        assert _digest(third) == _digest(built)
        assert generic._read_cache(path) is not None  # written again
    finally:
        generic._cached.cache_clear()  # later tests build or read from their own cache
