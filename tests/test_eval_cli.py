"""``jr2net eval reenact|reconstruct`` end to end, and the benchmark report (``make report``)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jr2net.cli import main
from jr2net.eval.geometry import mesh_vertex_normals
from jr2net.io.meshes import save_mesh

REPO = Path(__file__).resolve().parents[1]
METHODS = ("ours", "copy_source", "similarity_warp")


# ---------------------------------------------------------------------------------------------
# eval reenact


def _write_faceless_video(path: Path) -> None:
    from jr2net.io.video import VideoWriter

    rng = np.random.default_rng(0)
    with VideoWriter(path, 25) as w:
        for _ in range(6):
            w.write(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def reenact_run(tmp_path_factory, videos_dir, images_dir, ict_model_path):
    """d0 (6 evaluated frames), a face-less video and a corrupt one; s42.jpg as the source."""
    root = tmp_path_factory.mktemp("eval_reenact")
    videos, sources, out = root / "videos", root / "sources", root / "out"
    videos.mkdir()
    sources.mkdir()
    (videos / "d0.mp4").symlink_to(videos_dir / "d0.mp4")
    _write_faceless_video(videos / "noise.mp4")
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated junk")
    (sources / "s42.jpg").symlink_to(images_dir / "s42.jpg")
    (sources / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n junk")
    rc = main([
        "eval", "reenact", "--videos", str(videos), "--sources", str(sources), "--out", str(out),
        "--max-frames", "6", "--face-model", str(ict_model_path), "--fid", "--no-progress",
    ])  # fmt: skip
    return rc, out


@pytest.mark.slow
def test_eval_reenact_writes_every_metric_for_ours_and_both_baselines(reenact_run):
    rc, out = reenact_run
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    d0 = m["same_identity"]["per_video"]["d0.mp4"]
    assert d0["source_frame"] == 0 and d0["frames_streamed"] == 78
    assert d0["frames_evaluated"] == 6
    for method in METHODS:
        for region in ("face_box", "mouth_box", "full", "face_hull"):
            s = d0["methods"][method][region]
            assert 0 < s["l1"] < 0.2 and 15 < s["psnr"] < 60 and 0.3 < s["ssim"] <= 1
    # The copy of the first frame is farther from later frames than ours on the face (d0 moves).
    assert (
        d0["methods"]["ours"]["face_hull"]["ssim"]
        > d0["methods"]["copy_source"]["face_hull"]["ssim"]
    )
    (pair,) = m["cross_identity"]["pairs"]
    assert (pair["source"], pair["video"], pair["frames_evaluated"]) == ("s42.jpg", "d0.mp4", 6)
    for method in METHODS:
        c = pair["methods"][method]
        assert 0 < c["efl"] < 0.5 and c["output_no_face"] == 0
        assert 0 < c["efl_aligned"] <= c["efl"] + 1e-9  # the similarity only removes error
        assert 0 <= c["id_distance"] < 0.6 and c["id_cosine"] > 0.9  # still the source's identity
    assert pair["methods"]["copy_source"]["id_distance"] == pytest.approx(0.0, abs=1e-6)
    fid = m["fid"]
    assert fid["real_frames"] == 6 and fid["extractor"] == "face_id_resnet_128"
    assert all(math.isfinite(fid[k]) and fid[k] >= -1e-6 for k in METHODS)


@pytest.mark.slow
def test_eval_reenact_skips_and_reports_faceless_and_corrupt_inputs(reenact_run):
    _, out = reenact_run
    skipped = {s["file"]: s for s in json.loads((out / "metrics.json").read_text())["skipped"]}
    assert skipped["noise.mp4"]["reason"] == "no face"
    assert "broken.mp4" in skipped["broken.mp4"]["reason"]
    assert skipped["broken.png"]["part"] == "source"


@pytest.mark.slow
def test_eval_reenact_writes_contact_sheets(reenact_run):
    from jr2net.io.images import load_image

    _, out = reenact_run
    sheet = load_image(out / "sheet_d0.png")
    assert sheet.shape[1] == 5 * 192 and sheet.shape[0] == 18 + 4 * 192  # 5 columns, 4 rows
    cross = load_image(out / "cross_d0.png")
    assert cross.shape[0] == 18 + 192


def test_eval_reenact_refuses_missing_and_empty_folders(tmp_path, capsys):
    assert (
        main(["eval", "reenact", "--videos", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    )
    assert "videos folder not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no videos here")
    assert main(["eval", "reenact", "--videos", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "has no videos" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.mp4").write_bytes(b"not a video")
    assert main(["eval", "reenact", "--videos", str(broken), "--out", str(tmp_path / "o")]) == 2
    assert "no video in" in capsys.readouterr().err


def test_eval_reenact_unavailable_mode_fails_with_the_registry_message(tmp_path, capsys):
    from jr2net.pipeline.registry import register_unavailable

    register_unavailable("evaltest_off", "mode 'evaltest_off' is switched off for this test")
    videos = tmp_path / "v"
    videos.mkdir()
    args = ["eval", "reenact", "--videos", str(videos), "--out", str(tmp_path / "o")]
    assert main([*args, "--mode", "evaltest_off"]) == 2
    assert "mode 'evaltest_off' is switched off for this test" in capsys.readouterr().err
    assert main([*args, "--mode", "no_such_mode"]) == 2
    assert "mode must be one of" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# eval reconstruct


@pytest.fixture(scope="module")
def face(ict_model_path):
    d = np.load(ict_model_path)
    return d["vertices"].astype(np.float64), d["faces"].astype(np.int64), d["landmarks68"]


def _perturbed(face, amplitude: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The face bumped along its normals by ``amplitude * sin(2 pi x / 30 mm)``, then moved by a
    random similarity; returns (moved vertices, the displacement per vertex)."""
    v, f, _ = face
    disp = amplitude * np.sin(2 * np.pi * v[:, 0] / 30.0)
    p = v + disp[:, None] * mesh_vertex_normals(v, f)
    rng = np.random.default_rng(seed)
    rot = Rotation.from_euler("xyz", rng.uniform(-20, 20, 3), degrees=True).as_matrix()
    return 1.2 * p @ rot.T + rng.uniform(-10, 10, 3), disp


def test_eval_reconstruct_gives_the_known_rmse_on_obj_and_ply(tmp_path, face, capsys):
    v, f, lmk = face
    meshes = tmp_path / "meshes"
    exact, _ = _perturbed(face, 0.0, seed=1)
    bumpy, disp = _perturbed(face, 0.5, seed=2)
    save_mesh(meshes / "exact_pred.ply", exact, f)  # binary PLY
    save_mesh(meshes / "exact_gt.obj", v, f)
    save_mesh(meshes / "bumpy_pred.obj", bumpy, f)
    save_mesh(meshes / "bumpy_gt.ply", v, f, binary=False)  # ASCII PLY
    (meshes / "landmarks.json").write_text(json.dumps({"pred": lmk.tolist(), "gt": lmk.tolist()}))
    # Per-pair landmarks as points (snapped to the nearest vertex) override landmarks.json.
    (meshes / "bumpy_landmarks.json").write_text(
        json.dumps({"pred": bumpy[lmk].tolist(), "gt": v[lmk].tolist(), "nose_tip": int(lmk[30])})
    )
    out = tmp_path / "out"
    assert main(["eval", "reconstruct", "--meshes", str(meshes), "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "facewarehouse" in printed and "frgc" in printed
    res = json.loads((out / "metrics.json").read_text())
    assert res["failed"] == {} and res["unpaired"] == []
    for protocol, radius in (("facewarehouse", 85.0), ("frgc", 95.0)):
        e = res["per_mesh"]["exact"][protocol]
        assert e["rmse"] < 1e-3 and e["mae"] < 1e-3
        assert e["scale"] == pytest.approx(1 / 1.2, rel=1e-4)
        b = res["per_mesh"]["bumpy"][protocol]
        crop = np.linalg.norm(v - v[lmk[30]], axis=1) <= radius
        assert b["n_points"] == int(crop.sum())
        expected = float(np.sqrt((disp[crop] ** 2).mean()))  # ~0.354 mm
        assert b["rmse"] == pytest.approx(expected, rel=0.06)
        assert b["mae"] == pytest.approx(float(np.abs(disp[crop]).mean()), rel=0.06)
        assert b["std"] == pytest.approx(math.sqrt(b["rmse"] ** 2 - b["mae"] ** 2))
        assert b["median"] <= b["p80"] <= 2 * b["rmse"]
    assert res["summary"]["facewarehouse"]["crop_mm"] == 85.0
    assert res["summary"]["frgc"]["meshes"] == 2


def test_eval_reconstruct_reports_corrupt_meshes_and_bad_layouts(tmp_path, face, capsys):
    v, f, lmk = face
    meshes = tmp_path / "m"
    assert main(["eval", "reconstruct", "--meshes", str(meshes)]) == 2
    assert "meshes folder not found" in capsys.readouterr().err
    meshes.mkdir()
    save_mesh(meshes / "lonely_pred.obj", v, f)
    assert main(["eval", "reconstruct", "--meshes", str(meshes)]) == 2
    err = capsys.readouterr().err
    assert "no mesh pairs" in err and "unpaired: lonely" in err
    save_mesh(meshes / "good_pred.obj", v, f)
    save_mesh(meshes / "good_gt.ply", v, f)
    bad = save_mesh(meshes / "bad_gt.ply", v, f)
    bad.write_bytes(bad.read_bytes()[:-100])  # truncated
    save_mesh(meshes / "bad_pred.obj", v, f)
    save_mesh(meshes / "nolmk_pred.obj", v, f)
    save_mesh(meshes / "nolmk_gt.obj", v, f)
    lm = json.dumps({"pred": lmk.tolist(), "gt": lmk.tolist()})
    (meshes / "good_landmarks.json").write_text(lm)
    (meshes / "bad_landmarks.json").write_text(lm)
    out = tmp_path / "out"
    assert main(["eval", "reconstruct", "--meshes", str(meshes), "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    res = json.loads((out / "metrics.json").read_text())
    assert list(res["per_mesh"]) == ["good"]
    assert "bad_gt.ply" in res["failed"]["bad"] and "truncated" in res["failed"]["bad"]
    assert "no landmarks" in res["failed"]["nolmk"]
    assert res["unpaired"] == ["lonely"]
    assert "failed: bad:" in printed and "unpaired" in printed


# ---------------------------------------------------------------------------------------------
# make report


def _report(results: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.report", "--results", str(results), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_report_renders_the_stored_results_with_plots(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(REPO / "benchmarks" / "results", results,
                    ignore=shutil.ignore_patterns("*.png"))  # fmt: skip
    proc = _report(results, tmp_path / "report.md")
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "report.md").read_text()
    for heading in ("## Kernels", "## Pipeline", "## Server", "## Quality", "## Reconstruction"):
        assert heading in text
    for name in ("kernels", "server_latency_cdf", "server_throughput", "quality",
                 "reconstruction_hist"):  # fmt: skip
        png = results / f"report_{name}.png"
        assert png.stat().st_size > 10_000 and f"results/report_{name}.png" in text
    assert "| rasterize | 256² b1 |" in text and "| d0.mp4 | ours |" in text


def test_report_notes_missing_results_and_uses_per_frame_latencies(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    scenario = {"streams": 1, "target_fps": 30, "throughput_fps": 30.0, "dropped": 0, "errors": 0,
                "latency_ms": {"p50": 30.0, "p95": 40.0, "p99": 50.0},
                "latencies_ms": list(np.linspace(20, 50, 100))}  # fmt: skip
    (results / "server.json").write_text(json.dumps(
        {"config": {}, "runs": {"in-process": {"scenarios": {"single_30fps": scenario}}}}
    ))  # fmt: skip
    (results / "quality.json").write_text("{ not json")
    proc = _report(results, tmp_path / "report.md")
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "report.md").read_text()
    assert "`kernels.json` is missing" in text and "`fitting.json` is missing" in text
    assert "`quality.json` is unreadable" in text
    assert "no per-frame latencies" not in text  # the CDF came from latencies_ms
    assert (results / "report_server_latency_cdf.png").is_file()
