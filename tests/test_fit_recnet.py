"""``jr2net fit/reconstruct --recnet``: RecNet inference through the real CLI, with tiny checkpoints
made here, and the checkpoints it must refuse."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from jr2net.cli import main
from jr2net.face.camera import default_intrinsics
from jr2net.face.model import FaceModel, load_face_model
from jr2net.models.checkpoint import load_recnet, recnet_spec
from jr2net.models.recnet import RecNet
from jr2net.training.checkpoints import CheckpointError, save_checkpoint
from jr2net.training.config import RunConfig, to_dict


def _tiny_checkpoint(path, model: FaceModel, stage: str = "recnet"):
    torch.manual_seed(0)
    net = RecNet.from_face_model(
        model, backbone="resnet18", crop_size=64, n_identity=40, n_albedo=20, width=0.125
    )
    save_checkpoint(
        path,
        {
            "stage": stage,
            "step": 0,
            "models": {"recnet": net.state_dict()},
            "config": to_dict(RunConfig()),
            "face_model": {"name": model.name, "sha256": model.sha256},
            "model_spec": recnet_spec(net),
        },
    )
    return path


@pytest.fixture(scope="module")
def ict(ict_model_path) -> FaceModel:
    return FaceModel.from_npz(ict_model_path)


@pytest.fixture(scope="module")
def ict_ckpt(ict, tmp_path_factory):
    return _tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "recnet.pt", ict)


def _fit(images_dir, ict_model_path, ckpt, out, *extra: str) -> dict:
    rc = main(
        [
            "fit",
            str(images_dir / "obama.jpg"),
            "--out-dir",
            str(out),
            "--face-model",
            str(ict_model_path),
            "--recnet",
            str(ckpt),
            "--no-overlay",
            *extra,
        ]
    )
    assert rc == 0
    return json.loads((out / "obama.json").read_text())


def test_fit_with_recnet_writes_the_fitters_json(images_dir, ict_model_path, ict_ckpt, tmp_path):
    data = _fit(images_dir, ict_model_path, ict_ckpt, tmp_path)
    for key in ("image", "face_model", "coefficients", "K", "image_size", "box",
                "landmarks_detected", "landmarks_fit", "residual_px", "residual_iod", "timings"):  # fmt: skip
        assert key in data, key
    assert data["image_size"] == [1137, 910]
    assert np.allclose(data["K"], default_intrinsics((1137, 910))[0].numpy())
    coeffs = data["coefficients"]
    assert len(coeffs["identity"][0]) == 40 and len(coeffs["albedo"][0]) == 20
    assert len(coeffs["expression"][0]) == len(coeffs["expression_names"]) == 53
    # residual_iod is the mean distance of the projected RecNet face to the detected landmarks.
    fit, det = np.array(data["landmarks_fit"]), np.array(data["landmarks_detected"])
    assert fit.shape == det.shape == (68, 2)
    iod = np.linalg.norm(det[45] - det[36])
    assert data["residual_iod"] == pytest.approx(np.linalg.norm(fit - det, axis=1).mean() / iod, abs=1e-3)
    # An untrained RecNet predicts the mean face framed like the crop: roughly on the face.
    assert data["residual_iod"] < 0.5
    t = data["timings"]
    assert {"detect", "recnet", "total"} <= set(t) and "refine" not in t
    assert t["total"] == pytest.approx(sum(v for k, v in t.items() if k != "total"))


def test_refine_runs_fitter_steps_from_recnet_and_lowers_the_residual(
    images_dir, ict_model_path, ict_ckpt, tmp_path
):
    plain = _fit(images_dir, ict_model_path, ict_ckpt, tmp_path / "plain")
    refined = _fit(images_dir, ict_model_path, ict_ckpt, tmp_path / "refined", "--refine")
    assert "refine" in refined["timings"]
    assert refined["residual_iod"] < 0.5 * plain["residual_iod"]
    assert refined["residual_iod"] < 0.06


def test_reconstruct_with_recnet_writes_a_mesh(images_dir, ict_model_path, ict_ckpt, tmp_path):
    out = tmp_path / "mesh.obj"
    rc = main(
        ["reconstruct", str(images_dir / "d9.jpg"), "--out", str(out), "--face-model",
         str(ict_model_path), "--recnet", str(ict_ckpt), "--json", str(tmp_path / "c.json")]
    )  # fmt: skip
    assert rc == 0
    n_v = sum(1 for ln in out.read_text().splitlines() if ln.startswith("v "))
    assert n_v == 16434
    assert len(json.loads((tmp_path / "c.json").read_text())["coefficients"]["identity"][0]) == 40


def test_a_checkpoint_of_another_face_model_is_refused_naming_both_hashes(
    images_dir, ict, ict_model_path, tmp_path, capsys
):
    generic = load_face_model("generic")
    ckpt = _tiny_checkpoint(tmp_path / "generic.pt", generic)
    rc = main(["fit", str(images_dir / "obama.jpg"), "--out-dir", str(tmp_path), "--face-model",
               str(ict_model_path), "--recnet", str(ckpt)])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert generic.sha256 in err and ict.sha256 in err
    assert not (tmp_path / "obama.json").exists()
    with pytest.raises(CheckpointError, match=generic.sha256):
        load_recnet(ckpt, ict)


def test_a_corrupt_checkpoint_file_is_refused(images_dir, ict_model_path, ict_ckpt, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(ict_ckpt.read_bytes()[:5000])  # truncated
    rc = main(["fit", str(images_dir / "obama.jpg"), "--out-dir", str(tmp_path), "--recnet",
               str(bad), "--face-model", str(ict_model_path)])  # fmt: skip
    assert rc == 2
    assert "not a JR2Net checkpoint" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError):
        load_recnet(junk)
    with pytest.raises(FileNotFoundError):
        load_recnet(tmp_path / "missing.pt")


def test_a_checkpoint_of_another_stage_is_refused(ict, tmp_path):
    ckpt = _tiny_checkpoint(tmp_path / "dcnet.pt", ict, stage="dcnet")
    with pytest.raises(CheckpointError, match="dcnet"):
        load_recnet(ckpt, ict)


def test_refine_without_recnet_is_an_error(images_dir, tmp_path, capsys):
    assert main(["fit", str(images_dir / "obama.jpg"), "--out-dir", str(tmp_path), "--refine"]) == 2
    assert "--refine needs --recnet" in capsys.readouterr().err
