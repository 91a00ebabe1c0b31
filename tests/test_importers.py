"""ICT-FaceKit and BFM importers, and the ``jr2net assets`` command."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from jr2net.cli import main
from jr2net.errors import FaceModelError
from jr2net.face.importers import import_bfm, import_ict, read_obj
from jr2net.face.model import FaceModel


@pytest.fixture(scope="module")
def ict_subset(shared: Path) -> Path:
    return shared / "assets" / "ict_facekit_subset"


@pytest.fixture(scope="module")
def imported(ict_subset: Path) -> dict[str, np.ndarray]:
    return import_ict(ict_subset)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("JR2NET_CACHE", str(cache))
    monkeypatch.delenv("JR2NET_FACE_MODEL", raising=False)
    return cache


def test_import_ict_reproduces_the_shared_model_rows(
    imported: dict[str, np.ndarray], ict_model_path: Path
) -> None:
    with np.load(ict_model_path) as ref:
        assert imported["vertices"].shape == (16434, 3)
        np.testing.assert_allclose(imported["vertices"], ref["vertices"], atol=1e-4)
        np.testing.assert_array_equal(imported["faces"], ref["faces"])
        np.testing.assert_allclose(imported["identity_basis"], ref["identity_basis"][:2], atol=1e-4)
        names = list(ref["expression_names"])
        assert list(imported["expression_names"]) == ["eyeBlink_L", "jawOpen"]
        for i, name in enumerate(imported["expression_names"]):
            np.testing.assert_allclose(
                imported["expression_basis"][i], ref["expression_basis"][names.index(name)], atol=1e-4
            )
        for key in ("landmarks68", "jawline_left", "jawline_right", "region", "faces_uv"):
            np.testing.assert_array_equal(imported[key], ref[key], err_msg=key)
        np.testing.assert_allclose(imported["uvs"], ref["uvs"], atol=1e-6)
        assert list(imported["region_names"]) == list(ref["region_names"])


def test_imported_ict_loads_as_a_face_model(imported: dict[str, np.ndarray]) -> None:
    model = FaceModel.from_arrays(imported)
    assert model.name == "ict" and model.n_identity == 2 and model.n_expression == 2
    assert model.subset(["face"]).n_vertices == 9409


def test_import_ict_refuses_incomplete_or_foreign_folders(ict_subset: Path, tmp_path: Path) -> None:
    with pytest.raises(FaceModelError, match="missing expressions"):
        import_ict(ict_subset, require_complete=True)
    with pytest.raises(FaceModelError, match="not an ICT-FaceKit"):
        import_ict(tmp_path)


def test_read_obj_fan_triangulates_polygons(tmp_path: Path) -> None:
    obj = tmp_path / "quad.obj"
    obj.write_text(
        "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nv 2 0 0\n"
        "vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\n"
        "f 1/1 2/2 3/3 4/4\nf 2 5 3\n"
    )
    verts, uvs, faces, faces_uv = read_obj(obj)
    assert verts.shape == (5, 3) and uvs.shape == (4, 2)
    assert faces.tolist() == [[0, 1, 2], [0, 2, 3], [1, 4, 2]]
    assert faces_uv[:2].tolist() == [[0, 1, 2], [0, 2, 3]]
    (tmp_path / "bad.obj").write_text("v 0 0\nf 1 2 3\n")
    with pytest.raises(FaceModelError):
        read_obj(tmp_path / "bad.obj")


def _write_small_bfm(path: Path, n: int = 90, seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny model in Deep3DFaceRecon's BFM_model_front.mat layout (decimetres, 1-based)."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=(n, 3)) * 0.5 + np.array([0.1, 0.2, 0.3])
    tri = np.array([[i, (i + 1) % n, (i + 2) % n] for i in range(n)]) + 1
    mat = {
        "meanshape": mean.reshape(1, -1),
        "idBase": rng.normal(size=(3 * n, 80)) * 0.01,
        "exBase": rng.normal(size=(3 * n, 64)) * 0.01,
        "meantex": (rng.uniform(60, 200, size=(n, 3))).reshape(1, -1),
        "texBase": rng.normal(size=(3 * n, 80)) * 5,
        "tri": tri.astype(np.float64),
        "keypoints": (np.arange(68) + 1).reshape(1, -1).astype(np.float64),
    }
    scipy.io.savemat(str(path), mat)
    return mat


def test_import_bfm_reads_the_deep3dfacerecon_layout(tmp_path: Path) -> None:
    mat = _write_small_bfm(tmp_path / "BFM_model_front.mat")
    arrays = import_bfm(tmp_path / "BFM_model_front.mat")
    n = 90
    mean = mat["meanshape"].reshape(n, 3)
    np.testing.assert_allclose(arrays["vertices"], (mean - mean.mean(0)) * 100, atol=1e-3)
    assert arrays["identity_basis"].shape == (80, n, 3)
    # Column k of idBase, x/y/z interleaved per vertex, scaled to mm.
    np.testing.assert_allclose(arrays["identity_basis"][3], mat["idBase"][:, 3].reshape(n, 3) * 100, atol=1e-4)
    assert arrays["expression_basis"].shape == (64, n, 3)
    assert list(arrays["expression_names"][:2]) == ["exp_000", "exp_001"]
    assert arrays["faces"][0].tolist() == [0, 1, 2] and arrays["landmarks68"][0] == 0
    np.testing.assert_allclose(arrays["albedo_mean"], mat["meantex"].reshape(n, 3) / 255, atol=1e-6)
    model = FaceModel.from_arrays(arrays)
    assert model.n_albedo == 80 and model.albedo.basis.shape == (80, n, 3)
    # The BFM albedo survives a save/load round trip (it is not re-derivable).
    again = FaceModel.from_npz(model.save_npz(tmp_path / "bfm.npz"))
    assert again.n_albedo == 80 and again.sha256 == model.sha256
    keep = import_bfm(tmp_path / "BFM_model_front.mat", recenter=False)
    np.testing.assert_allclose(keep["vertices"], mean * 100, atol=1e-3)


def test_import_bfm_rejects_other_files(tmp_path: Path) -> None:
    scipy.io.savemat(str(tmp_path / "x.mat"), {"foo": np.zeros(3)})
    with pytest.raises(FaceModelError, match="meanshape"):
        import_bfm(tmp_path / "x.mat")
    (tmp_path / "y.mat").write_bytes(b"garbage")
    with pytest.raises(FaceModelError):
        import_bfm(tmp_path / "y.mat")
    with pytest.raises(FaceModelError, match="not found"):
        import_bfm(tmp_path / "z.mat")


# ---- CLI ------------------------------------------------------------------------------------------


def test_assets_import_ict_then_info_reports_the_lookup(
    ict_subset: Path, isolated_cache: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["assets", "import-ict", str(ict_subset)]) == 1  # incomplete without the flag
    assert "missing expressions" in capsys.readouterr().err
    assert main(["assets", "import-ict", str(ict_subset), "--allow-partial"]) == 0
    default = isolated_cache / "face_models" / "default.npz"
    assert default.is_file()
    capsys.readouterr()
    assert main(["assets", "info"]) == 0
    out = capsys.readouterr().out
    assert str(default) in out and "user cache" in out and "16434" in out
    assert FaceModel.from_npz(default).sha256 in out
    assert main(["assets", "list"]) == 0
    out = capsys.readouterr().out
    assert "default" in out and "generic" in out


def test_assets_import_bfm_writes_a_named_model(
    tmp_path: Path, isolated_cache: Path, capsys: pytest.CaptureFixture
) -> None:
    _write_small_bfm(tmp_path / "b.mat")
    assert main(["assets", "import-bfm", str(tmp_path / "b.mat")]) == 0
    assert (isolated_cache / "face_models" / "bfm.npz").is_file()
    assert main(["assets", "info", "--face-model", "bfm"]) == 0
    assert "exp_000" in capsys.readouterr().out


def test_assets_fetch_fails_fast_and_clearly_when_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    start = time.monotonic()
    code = main(
        ["assets", "fetch", "--repo", "http://127.0.0.1:9/ICT-FaceKit.git",
         "--dest", str(tmp_path / "clone"), "--connect-timeout", "10"]
    )  # fmt: skip
    assert code == 1
    assert time.monotonic() - start < 15
    err = capsys.readouterr().err
    assert "cannot reach" in err and "import-ict" in err
    assert not (tmp_path / "clone").exists()
