"""The expression half of the cascade on a tiny run: synthesize (DCNet, with a CSV take among the
expression sources), etnet on the synthesized + rendered pairs, recaugnet and the three
ablations, run by ``run_cascade`` in order and skipped when done."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jr2net.io.arkit_csv import sample_take, write_live_link_csv
from jr2net.training.cascade import cascade_stages, run_cascade
from jr2net.training.config import RunConfig, from_dict
from jr2net.training.stages.base import TrainContext, get_stage

SMALL = {"steps": 2, "batch_size": 2, "eval_every": 0, "eval_batches": 1, "log_every": 1,
         "ckpt_every": 2, "warmup_steps": 0}  # fmt: skip
REC = {**SMALL, "landmark_only_steps": 1, "identity_samples": 1, "augmented_fraction": 0.5,
       "freeze_etnet": True}  # fmt: skip


def _config(ict_model_path: Path, csv: Path) -> RunConfig:
    return from_dict(RunConfig, {
        "run": {"seed": 0, "device": "cpu", "face_model": str(ict_model_path),
                "stages": ["prepare", "recnet", "dcnet", "synthesize", "etnet", "recaugnet"],
                "ablations": ["baseline", "reccopynet", "recdatanet"]},
        "data": {"crop_size": 64, "shared_videos": ["d0"], "shared_photos": [],
                 "synthetic": {"size": 4, "heldout_size": 2, "p_texture": 0.0}},
        "prepare": {"video_stride": 4, "max_frames": 40, "photometric": False},
        "recnet": {**SMALL, "backbone": "resnet18", "width": 0.25, "landmark_only_steps": 1,
                   "identity_samples": 1},
        "dcnet": {**SMALL, "channels": [8, 16, 16], "spade_hidden": 8, "d_channels": 8,
                  "d_layers": 2},
        "synthesize": {"n_pairs": 6, "batch_size": 3, "shard_size": 3, "sheet_tiles": 4,
                       "sources": ["tracks", "prior", "csv"], "csv_takes": [str(csv)]},
        "etnet": {**SMALL, "backbone": "resnet18", "width": 0.25, "synthetic_size": 4,
                  "heldout_size": 2, "synthesized_fraction": 0.5, "w_l1": 1.0,
                  "init_backbone": "recnet"},
        "recaugnet": REC, "baseline": REC, "reccopynet": REC, "recdatanet": REC,
    })  # fmt: skip


@pytest.fixture(scope="module")
def cascade(tmp_path_factory, ict_model_path):
    root = tmp_path_factory.mktemp("cascade")
    from jr2net.face.model import load_face_model

    names = load_face_model(str(ict_model_path)).expression_names
    beta, head = sample_take(names, seconds=0.5, fps=30)
    csv = write_live_link_csv(root / "take.csv", beta, names, fps=30, head=head)
    cfg = _config(ict_model_path, csv)
    run = root / "run"
    return cfg, run, run_cascade(cfg, run)


def test_cascade_runs_every_stage_and_ablation_in_order(cascade):
    cfg, run, results = cascade
    assert cascade_stages(cfg) == [*cfg.run.stages, *cfg.run.ablations]
    assert list(results) == cascade_stages(cfg)
    assert all(r["status"] == "done" for r in results.values()), results
    for name in ("etnet", "recaugnet", "baseline", "reccopynet", "recdatanet"):
        for f in ("best.pt", "last.pt", "eval.json", "metrics.csv"):
            assert (run / name / f).is_file(), (name, f)


def test_synthesize_writes_shards_contact_sheet_and_keeps_the_source_pose(cascade):
    cfg, run, _ = cascade
    out = run / "synthesize"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] == 6 and summary["shards"] == 2
    assert summary["sources"] == {"tracks": 2, "prior": 2, "csv": 2}
    assert (out / "contact_sheet.png").stat().st_size > 1000
    from jr2net.training.stages.etnet import SynthesizedPairs

    pairs = SynthesizedPairs(out, 64)
    assert len(pairs) == 6
    s = pairs[0]
    assert s["image"].shape == (3, 64, 64) and s["has_gt"] == 1
    assert s["coeffs"]["expression"].shape == (53,)
    assert 0 <= s["coeffs"]["expression"].min() and s["coeffs"]["expression"].max() <= 1


def test_etnet_trains_on_synthesized_and_rendered_pairs(cascade):
    cfg, run, _ = cascade
    ctx = TrainContext("cpu", face_model_spec=cfg.run.face_model)
    ds = get_stage("etnet")(cfg, run, ctx).train_dataset()
    sources = {ds[i]["source"] for i in range(len(ds))}
    assert sources == {"synthetic", "synthesize"}


def test_recaugnet_reports_large_expression_mae_and_its_checkpoint_holds_both_networks(cascade):
    cfg, run, _ = cascade
    ev = json.loads((run / "recaugnet" / "eval.json").read_text())["history"][-1]
    assert {"landmark_iod", "large_expression_mae", "large_zero_expression_mae"} <= set(ev)
    ckpt = torch.load(run / "recaugnet" / "best.pt", weights_only=True)
    assert ckpt["model_spec"]["kind"] == "recaugnet"
    keys = ckpt["models"]["recaugnet"]
    assert any(k.startswith("etnet.") for k in keys) and any(k.startswith("recnet.") for k in keys)


def test_reccopynet_starts_from_an_empty_etnet_and_recaugnet_from_the_trained_one(cascade):
    cfg, run, _ = cascade
    ctx = TrainContext("cpu", face_model_spec=cfg.run.face_model)
    copy = get_stage("reccopynet")(cfg, run, ctx).build_models()["recaugnet"]
    aug = get_stage("recaugnet")(cfg, run, ctx).build_models()["recaugnet"]
    assert float(copy.etnet.head.weight.detach().abs().sum()) == 0.0
    assert float(aug.etnet.head.weight.detach().abs().sum()) > 0.0
    trained = torch.load(run / "recnet" / "best.pt", weights_only=True)["models"]["recnet"]
    for net in (copy, aug):
        w = net.recnet.state_dict()["heads.identity.weight"]
        assert torch.equal(w, trained["heads.identity.weight"])


def test_etnet_starts_from_recnets_backbone_and_refuses_another_architecture(cascade):
    from jr2net.models.etnet import ETNet
    from jr2net.training.checkpoints import CheckpointError
    from jr2net.training.stages.etnet import init_backbone_from_recnet

    cfg, run, _ = cascade
    ctx = TrainContext("cpu", face_model_spec=cfg.run.face_model)
    net = get_stage("etnet")(cfg, run, ctx).build_models()["etnet"]
    trained = torch.load(run / "recnet" / "best.pt", weights_only=True)["models"]["recnet"]
    mine = net.backbone.state_dict()
    assert mine and all(torch.equal(v, trained[f"backbone.{k}"]) for k, v in mine.items())
    wider = ETNet("resnet18", crop_size=64, width=0.5)
    with pytest.raises(CheckpointError, match="differ"):
        init_backbone_from_recnet(wider, run / "recnet" / "best.pt", ctx.face_model)


def test_recaugnet_keeps_the_trained_etnet_frozen_and_reccopynet_trains_its_empty_one(cascade):
    cfg, run, _ = cascade
    etnet = torch.load(run / "etnet" / "best.pt", weights_only=True)["models"]["etnet"]
    aug = torch.load(run / "recaugnet" / "last.pt", weights_only=True)["models"]["recaugnet"]
    assert all(torch.equal(aug[f"etnet.{k}"], v) for k, v in etnet.items())  # BN stats too
    ctx = TrainContext("cpu", face_model_spec=cfg.run.face_model)
    net = get_stage("recaugnet")(cfg, run, ctx).build_models()["recaugnet"]
    net.train()
    assert not net.etnet.training and net.recnet.training
    assert not any(p.requires_grad for p in net.etnet.parameters())
    copy = get_stage("reccopynet")(cfg, run, ctx).build_models()["recaugnet"]
    assert all(p.requires_grad for p in copy.etnet.parameters())


def test_rendered_pairs_are_rendered_once_per_run_and_shared_by_later_stages(cascade):
    from jr2net.training.stages.etnet import renderer_pairs

    cfg, run, _ = cascade
    ctx = TrainContext("cpu", face_model_spec=cfg.run.face_model)
    files = sorted((run / "expression_pairs").glob("*.pt"))
    assert [f.name.split("_")[0] for f in files] == ["heldout", "train"]
    stamps = [f.stat().st_mtime_ns for f in files]
    ds = renderer_pairs(get_stage("baseline")(cfg, run, ctx), "train")
    assert ds.path in files and [f.stat().st_mtime_ns for f in files] == stamps  # loaded
    fresh = ds.base[1]
    assert torch.equal(ds[1]["image"], fresh["image"])
    assert torch.equal(ds[1]["coeffs"]["expression"], fresh["coeffs"]["expression"])


def test_a_second_cascade_skips_every_finished_stage(cascade):
    cfg, run, _ = cascade
    again = run_cascade(cfg, run)
    assert {r["status"] for r in again.values()} == {"skipped"}


def test_jr2net_fit_loads_a_recaugnet_checkpoint_and_reports_etnet_expressions(cascade, images_dir):
    from jr2net.io.images import load_image
    from jr2net.models.checkpoint import load_recnet

    cfg, run, _ = cascade
    fitter = load_recnet(run / "recaugnet" / "best.pt")
    assert type(fitter.net).__name__ == "CameraRecAugNet"
    res = fitter.fit(load_image(images_dir / "obama.jpg"))
    beta = fitter.net.etnet(torch.zeros(1, 3, 64, 64))
    assert res.coeffs.expression.shape == beta.shape == (1, 53)


def test_etnet_driving_tracker_keeps_the_fitters_pose_and_gives_etnets_expression(
    cascade, videos_dir
):
    from jr2net.face.fitting import DrivingFitter
    from jr2net.face.model import load_face_model
    from jr2net.io.video import VideoReader
    from jr2net.pipeline.etnet_tracker import ETNetDrivingFitter, load_tracker_etnet

    cfg, run, _ = cascade
    model = load_face_model(cfg.run.face_model)
    with VideoReader(videos_dir / "d0.mp4") as reader:
        frames = [f for _, f in zip(range(3), reader, strict=False)]
    plain = [DrivingFitter(model).fit(f) for f in frames[:1]][0]
    for ckpt in ("etnet", "recaugnet"):
        etnet = load_tracker_etnet(run / ckpt / "best.pt", model)
        tracker = ETNetDrivingFitter(DrivingFitter(model), etnet)
        fit = tracker.fit(frames[0])
        assert torch.allclose(fit.coeffs.angles, plain.coeffs.angles, atol=1e-5)
        expected = tracker.expression(frames[0], fit.detection.landmarks)
        assert torch.equal(fit.coeffs.expression, expected) and "etnet" in fit.timings
