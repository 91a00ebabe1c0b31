"""The dcnet stage: tiny and full configurations train on real frame pairs; checkpoints, losses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jr2net.face.model import load_face_model
from jr2net.training.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from jr2net.training.config import RunConfig, from_dict, load_config, to_dict
from jr2net.training.losses import (
    feature_matching_loss,
    hinge_d_loss,
    hinge_g_loss,
    perceptual_loss,
)
from jr2net.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY_DCNET = {
    "steps": 3, "batch_size": 2, "eval_every": 0, "eval_batches": 1, "log_every": 1,
    "ckpt_every": 3, "channels": [8, 16, 16], "spade_hidden": 8, "d_channels": 8, "d_layers": 2,
}  # fmt: skip


def _config(ict_model_path, **dcnet) -> RunConfig:
    return from_dict(RunConfig, {
        "run": {"seed": 0, "device": "cpu", "face_model": str(ict_model_path)},
        "data": {"crop_size": 64, "shared_videos": ["d0"], "shared_photos": []},
        # d0 frames 0-39, every 4th: 8 training frames, 2 held out (the last 20 %).
        "prepare": {"video_stride": 4, "max_frames": 40, "photometric": False},
        "dcnet": {**TINY_DCNET, **dcnet},
    })  # fmt: skip


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, ict_model_path) -> Path:
    run = tmp_path_factory.mktemp("dcnet_prep")
    Trainer("prepare", _config(ict_model_path), run).run()
    return run / "prepare"


def _run_dir(tmp_path: Path, prepared: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "prepare").symlink_to(prepared, target_is_directory=True)
    return run


def test_tiny_dcnet_trains_evaluates_and_its_checkpoint_loads(tmp_path, prepared, ict_model_path):
    from jr2net.pipeline.learned import load_dcnet

    run = _run_dir(tmp_path, prepared)
    result = Trainer("dcnet", _config(ict_model_path), run).run()
    out = run / "dcnet"
    assert result["status"] == "done" and result["step"] == 3
    for name in ("last.pt", "best.pt", "metrics.csv", "eval.json", "loss.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "eval.json").read_text())
    text = json.dumps(metrics)
    for key in ("dcnet_face_l1", "warped_face_psnr", "copy_crop_ssim", "dcnet_mouth_l1",
                "dcnet_hidden_l1", "covisible_fraction"):  # fmt: skip
        assert key in text, key
    ckpt = load_checkpoint(out / "best.pt")
    assert set(ckpt["models"]) == {"generator", "discriminator"}
    model = load_face_model(str(ict_model_path))
    net, spec = load_dcnet(out / "best.pt", model)
    assert spec["config"]["crop_size"] == 64 and spec["config"]["channels"] == [8, 16, 16]
    assert not any(p.requires_grad for p in net.parameters())
    with pytest.raises(CheckpointError, match="sha256"):
        load_dcnet(out / "best.pt", load_face_model("generic"))
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a JR2Net checkpoint"):
        load_dcnet(tmp_path / "broken.pt", model)


def test_full_config_builds_and_runs_two_steps(tmp_path, prepared, ict_model_path):
    run = _run_dir(tmp_path, prepared)
    cfg = load_config(
        ROOT / "training" / "configs" / "dcnet_full.yaml",
        [f"run.face_model={ict_model_path}", "run.device=cpu", "run.num_threads=0",
         "dcnet.steps=2", "dcnet.batch_size=1", "dcnet.eval_every=0", "dcnet.eval_batches=1",
         "dcnet.num_workers=0", "dcnet.warmup_steps=0"],
    )  # fmt: skip
    assert cfg.dcnet.generator == "full" and cfg.dcnet.crop_size == 256
    result = Trainer("dcnet", cfg, run).run()
    assert result["status"] == "done" and result["step"] == 2
    spec = load_checkpoint(run / "dcnet" / "last.pt")["model_spec"]
    assert spec["config"]["crop_size"] == 256 and spec["config"]["channels"][-1] == 512
    assert spec["config"]["spectral_norm"] is True


def test_conditions_from_recnet_predictions(tmp_path, prepared, ict_model_path):
    from jr2net.models.checkpoint import build_recnet, recnet_spec

    run = _run_dir(tmp_path, prepared)
    model = load_face_model(str(ict_model_path))
    net = build_recnet(model, {"backbone": "resnet18", "width": 0.25, "crop_size": 64,
                               "n_identity": 20, "n_albedo": 10,
                               "n_expression": model.n_expression})  # fmt: skip
    cfg = _config(ict_model_path, conditions="recnet", steps=1, ckpt_every=1,
                  recnet_checkpoint=str(tmp_path / "recnet.pt"))  # fmt: skip
    save_checkpoint(tmp_path / "recnet.pt", {
        "stage": "recnet", "step": 0, "models": {"recnet": net.state_dict()},
        "config": to_dict(cfg), "face_model": {"name": model.name, "sha256": model.sha256},
        "model_spec": recnet_spec(net),
    })  # fmt: skip
    result = Trainer("dcnet", cfg, run).run()
    assert result["status"] == "done"
    assert load_checkpoint(run / "dcnet" / "last.pt")["model_spec"]["conditions"] == "recnet"


def test_recnet_conditions_without_a_recnet_run_name_the_missing_stage(
    tmp_path, prepared, ict_model_path
):
    from jr2net.training.stages.base import StageOutputMissing

    run = _run_dir(tmp_path, prepared)
    cfg = _config(ict_model_path, conditions="recnet", steps=1)
    with pytest.raises(StageOutputMissing, match="recnet"):
        Trainer("dcnet", cfg, run).run()


def test_gan_losses_are_zero_at_their_optimum_and_positive_otherwise():
    big = torch.full((2, 1, 4, 4), 5.0)
    feats = [torch.randn(2, 3, 8, 8)]
    real = [feats + [big]]
    fake = [feats + [-big]]
    assert float(hinge_d_loss(real, fake)) == 0.0
    assert float(hinge_d_loss(fake, real)) == pytest.approx(12.0)
    assert float(hinge_g_loss(fake)) == pytest.approx(5.0)
    assert float(feature_matching_loss(real, fake)) == 0.0
    moved = [[feats[0] + 1.0, -big]]
    assert float(feature_matching_loss(real, moved)) == pytest.approx(1.0)
    x = [torch.rand(1, 4, 8, 8), torch.rand(1, 8, 4, 4)]
    assert float(perceptual_loss(x, x)) == 0.0
    assert float(perceptual_loss([x[0] + 0.5, x[1]], x, (2.0, 1.0))) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="feature"):
        feature_matching_loss(real, [[big]])
    with pytest.raises(ValueError, match="weights"):
        perceptual_loss(x, x, (1.0,))


def test_training_pairs_are_resampled_within_the_identity_and_split(prepared, ict_model_path):
    from jr2net.training.stages.base import TrainContext
    from jr2net.training.stages.dcnet import DCNetStage

    cfg = _config(ict_model_path, source_repeats=3)
    stage = DCNetStage(
        cfg, prepared.parent, TrainContext("cpu", face_model_spec=cfg.run.face_model)
    )
    ds = stage.train_dataset()
    n = len(ds.pairs)
    assert len(ds) == 3 * n and n == 8
    sources = set()
    for k in (2, 2 + n, 2 + 2 * n):
        item = ds[k]
        assert item["identity"] == "d0" and item["source"]["identity"] == "d0"
        assert torch.equal(item["driving"]["image"], ds[2]["driving"]["image"])
        assert not torch.equal(item["source"]["image"], item["driving"]["image"])
        sources.add(item["source"]["image"].sum().item())
    assert len(sources) >= 2  # another source on another repeat
    held = stage.eval_dataset()
    assert len(held) == 2  # the d0 tail pairs only with itself


def test_the_generated_image_is_supervised_where_the_blend_hides_it():
    """Where the source sees a pixel the blend weight a is near 1 and the output barely depends on
    the generated image; the objective must still pull that image toward the target, else it
    becomes a residual and shows raw (purple mouths, magenta specks) wherever C is 0."""
    from jr2net.training.config import DCNetStageConfig
    from jr2net.training.stages.dcnet import reconstruction_terms

    torch.manual_seed(0)
    real = torch.rand(2, 3, 16, 16)
    warped = real.clone()  # the source sees every face pixel, exactly
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    generated = torch.rand(2, 3, 16, 16, requires_grad=True)
    a = mask  # blend weight 1 on the (co-visible) face: the output there is the warped image
    fake = generated + a * (warped - generated)
    sec = DCNetStageConfig(w_l1=10.0, w_l1_face=30.0)
    assert sec.w_l1_generated > 0  # on by default
    terms = reconstruction_terms(sec, fake, generated, real, mask)
    assert set(terms) == {"l1", "l1_face", "l1_generated"}
    torch.stack(list(terms.values())).sum().backward()
    face = mask.bool().expand_as(real)
    assert (generated.grad[face] != 0).all()  # supervised under the blend
    assert float(terms["l1_generated"]) > 0
    # A generator that does not blend has no separate generated image: no extra term.
    assert set(reconstruction_terms(sec, fake, None, real, mask)) == {"l1", "l1_face"}
    off = DCNetStageConfig(w_l1_generated=0.0)
    assert "l1_generated" not in reconstruction_terms(off, fake, generated, real, mask)


def test_the_hidden_pixel_term_weighs_only_what_the_source_does_not_see():
    from jr2net.training.config import DCNetStageConfig
    from jr2net.training.stages.dcnet import reconstruction_terms

    torch.manual_seed(0)
    real = torch.rand(2, 3, 16, 16)
    mask = torch.ones(2, 1, 16, 16)
    covisible = torch.ones(2, 1, 16, 16)
    covisible[0, :, 5:9, 5:9] = 0  # image 1 sees everything: an empty hidden region
    fake = torch.rand(2, 3, 16, 16, requires_grad=True)
    sec = DCNetStageConfig(w_l1=0.0, w_l1_face=0.0, w_l1_generated=0.0, w_l1_hidden=5.0)
    assert DCNetStageConfig().w_l1_hidden == 0  # off unless a config asks for it
    terms = reconstruction_terms(sec, fake, None, real, mask, covisible)
    expected = 5.0 * (fake - real).abs()[0, :, 5:9, 5:9].mean() / 2  # batch mean, 0 for image 1
    assert torch.allclose(terms["l1_hidden"], expected)
    terms["l1_hidden"].backward()
    assert torch.isfinite(fake.grad).all()
    hidden = (covisible == 0).expand_as(real)
    assert (fake.grad[hidden] != 0).all() and (fake.grad[~hidden] == 0).all()
