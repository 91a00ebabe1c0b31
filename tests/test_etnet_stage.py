"""The etnet stage: the activation loss, the full config (ResNet-34 at 224) trains 2 steps at
batch 2, and its held-out large-expression set is its own (seed, prior) and not the training
data."""

from __future__ import annotations

from pathlib import Path

import torch

from jr2net.training.config import load_config
from jr2net.training.losses import activation_loss
from jr2net.training.stages.base import TrainContext, get_stage
from jr2net.training.trainer import Trainer

CONFIGS = Path(__file__).resolve().parent.parent / "training" / "configs"
SMALL = [
    "run.device=cpu", "run.amp=false", "run.num_threads=0", "data.synthetic.p_texture=0",
    "etnet.steps=2", "etnet.batch_size=2", "etnet.synthetic_size=4", "etnet.heldout_size=2",
    "etnet.eval_every=0", "etnet.eval_batches=1", "etnet.num_workers=0", "etnet.warmup_steps=0",
]  # fmt: skip


def test_activation_loss_is_max_times_difference_in_absolute_value():
    gt = torch.tensor([[0.0, 0.8, 0.2]])
    pred = torch.tensor([[0.1, 0.4, 0.2]])
    expected = (0.1 * 0.1 + 0.8 * 0.4 + 0.0) / 3
    assert torch.isclose(activation_loss(pred, gt), torch.tensor(expected))
    assert activation_loss(gt, gt) == 0
    # The same absolute error costs more on an active shape than on an inactive one.
    off = activation_loss(torch.tensor([[0.2, 0.8, 0.2]]), gt)
    on = activation_loss(torch.tensor([[0.0, 0.6, 0.2]]), gt)
    assert on > off
    # From neutral, the gradient raises the active shapes (descent on -grad).
    p = torch.zeros(1, 3, requires_grad=True)
    activation_loss(p, gt).backward()
    assert p.grad[0, 1] < 0 and p.grad[0, 0] == 0


def test_etnet_full_config_builds_resnet34_at_224_and_trains_two_steps_at_batch_2(tmp_path):
    cfg = load_config(CONFIGS / "etnet_full.yaml", SMALL)
    assert (cfg.etnet.backbone, cfg.data.crop_size) == ("resnet34", 224)
    out = Trainer("etnet", cfg, tmp_path).run()
    assert out["status"] == "done" and out["step"] == 2
    from jr2net.face.model import load_face_model
    from jr2net.training.stages.etnet import load_etnet

    net = load_etnet(tmp_path / "etnet" / "best.pt", load_face_model("ict"))
    assert net.backbone.name == "resnet34" and net.crop_size == 224
    import json

    ev = json.loads((tmp_path / "etnet" / "eval.json").read_text())["history"][-1]
    assert {"expression_mae", "zero_expression_mae", "activation_loss"} <= set(ev)


def test_heldout_large_expression_set_is_its_own_seed_and_prior(tmp_path):
    cfg = load_config(CONFIGS / "tiny.yaml", [*SMALL, "etnet.heldout_size=3"])
    ctx = TrainContext("cpu", face_model_spec=cfg.run.face_model)
    stage = get_stage("etnet")(cfg, tmp_path, ctx)
    held = stage.eval_dataset()
    train = stage.train_dataset()
    assert len(held) == 3 and len(train) == 4  # no prepare, no synthesize: rendered faces only
    assert held.base.cfg.seed == cfg.etnet.heldout_seed != 0
    h0, t0 = held[0], train[0]
    assert not torch.equal(h0["image"], t0["image"])
    for i in range(3):  # every held-out expression is a large one
        assert held[i]["coeffs"]["expression"].max() >= 0.5
