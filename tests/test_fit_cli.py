"""The fit / fit-video / reconstruct sub-commands, run in-process through the real CLI entry point."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from jr2net.cli import main


@pytest.fixture(scope="module")
def ict_spec(ict_model_path) -> str:
    return str(ict_model_path)


def test_fit_writes_coefficients_json_and_overlay_png(images_dir, ict_spec, tmp_path, capsys):
    rc = main(
        ["fit", str(images_dir / "obama.jpg"), "--out-dir", str(tmp_path), "--face-model", ict_spec]
    )
    assert rc == 0
    data = json.loads((tmp_path / "obama.json").read_text())
    coeffs = data["coefficients"]
    assert len(coeffs["expression_names"]) == len(coeffs["expression"][0]) == 53
    assert len(coeffs["identity"][0]) == 80
    assert np.array(coeffs["light"]).shape == (1, 9, 3)
    assert np.array(data["K"]).shape == (3, 3)
    assert data["residual_iod"] < 0.03
    assert data["image_size"] == [1137, 910]
    assert {"detect", "landmarks", "total"} <= set(data["timings"])
    overlay = Image.open(tmp_path / "obama_overlay.png")
    assert overlay.mode == "RGB" and min(overlay.size) >= 256
    assert "residual" in capsys.readouterr().out


def test_fit_without_a_face_exits_2_with_a_clear_message(images_dir, ict_spec, tmp_path, capsys):
    rc = main(
        ["fit", str(images_dir / "s31.jpg"), "--out-dir", str(tmp_path), "--face-model", ict_spec]
    )
    assert rc == 2
    assert "no face" in capsys.readouterr().err
    assert not (tmp_path / "s31.json").exists()


def test_fit_of_a_missing_file_exits_2(tmp_path, capsys):
    assert main(["fit", str(tmp_path / "nope.jpg"), "--out-dir", str(tmp_path)]) == 2
    assert "error" in capsys.readouterr().err


def test_reconstruct_writes_an_obj_mesh_in_millimetres(images_dir, ict_spec, tmp_path):
    out = tmp_path / "mesh.obj"
    js = tmp_path / "coeffs.json"
    rc = main(
        [
            "reconstruct",
            str(images_dir / "d9.jpg"),
            "--out",
            str(out),
            "--json",
            str(js),
            "--face-model",
            ict_spec,
        ]
    )
    assert rc == 0
    lines = out.read_text().splitlines()
    verts = np.array([[float(x) for x in ln.split()[1:4]] for ln in lines if ln.startswith("v ")])
    faces = [ln for ln in lines if ln.startswith("f ")]
    assert verts.shape == (16434, 3) and len(faces) == 32716
    # Millimetres: a head is ~150 mm wide.
    assert 120 < np.ptp(verts[:, 0]) < 400
    assert json.loads(js.read_text())["coefficients"]["identity"]


def test_fit_video_writes_per_frame_jsonl_and_an_overlay_mp4(videos_dir, ict_spec, tmp_path):
    from jr2net.io.video import VideoReader

    rc = main(
        [
            "fit-video",
            str(videos_dir / "d0.mp4"),
            "--out-dir",
            str(tmp_path),
            "--max-frames",
            "3",
            "--face-model",
            ict_spec,
        ]
    )
    assert rc == 0
    records = [json.loads(ln) for ln in (tmp_path / "d0_fit.jsonl").read_text().splitlines()]
    assert records[0]["header"] and len(records[0]["expression_names"]) == 53
    frames = records[1:]
    assert [r["frame"] for r in frames] == [0, 1, 2]
    assert all(r["face_found"] for r in frames)
    assert "identity" in frames[0] and "identity" not in frames[1]
    assert len(frames[2]["expression"]) == 53
    video = VideoReader(tmp_path / "d0_overlay.mp4")
    assert len(video.read_all()) == 3
