"""The training loop on a small real stage: outputs, exact resume, held-out eval, refusals."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from jr2net.training.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from jr2net.training.config import RunConfig, apply_overrides
from jr2net.training.stages.base import Stage, StageOutputMissing, TrainContext, register_stage
from jr2net.training.trainer import StageOutputExists, Trainer


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    w = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    return TensorDataset(x, torch.sin(x @ w) + 0.05 * torch.randn(n, 1, generator=g))


@register_stage
class ToyRegression(Stage):
    """A small MLP regression: a real stage for the trainer's tests (uses the recnet section)."""

    name = "toy"
    config_section = "recnet"
    interrupt_at: int | None = None  # send ourselves SIGINT during this step

    def __init__(self, cfg, run_dir, ctx) -> None:
        super().__init__(cfg, run_dir, ctx)
        self.gen = torch.Generator().manual_seed(11)  # private stream: needs extra_state

    def build_models(self) -> dict[str, nn.Module]:
        return {"net": nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Dropout(0.1), nn.Linear(32, 1))}

    def extra_state(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_extra_state(self, state: dict) -> None:
        self.gen.set_state(state["gen"])

    def train_dataset(self) -> TensorDataset:
        return _data(40, 0)  # not a multiple of the batch: the epoch boundary is crossed

    def eval_dataset(self) -> TensorDataset:
        return _data(24, 1)

    def train_step(self, batch, step: int) -> dict[str, float]:
        if self.interrupt_at == step:
            os.kill(os.getpid(), signal.SIGINT)
        x, y = batch
        x = x + 0.05 * torch.randn(x.shape, generator=self.gen)
        loss = F.mse_loss(self.models["net"](x), y)
        self.ctx.backward_step(loss)
        return {"loss": loss.item()}

    def evaluate(self, models, loader) -> dict[str, float]:
        total, n = 0.0, 0
        for x, y in loader:
            total += F.mse_loss(models["net"](x), y, reduction="sum").item()
            n += len(x)
        return {"mse": total / n}

    def model_spec(self) -> dict:
        return {"arch": "toy-mlp", "hidden": 32}


@register_stage
class NeedsPrepare(ToyRegression):
    name = "toy_needs_prepare"
    requires = ("prepare",)


def toy_config(**over: object) -> RunConfig:
    base = {
        "run.device": "cpu", "run.face_model": "generic", "run.seed": 3,
        "recnet.steps": 6, "recnet.batch_size": 8, "recnet.lr": 1e-2, "recnet.warmup_steps": 2,
        "recnet.lr_schedule": "cosine", "recnet.log_every": 1, "recnet.eval_every": 2,
        "recnet.ckpt_every": 2, "recnet.eval_batches": 0, "recnet.eval_metric": "mse",
        "recnet.grad_clip": 1.0, **over,
    }
    return apply_overrides(RunConfig(), [f"{k}={v}" for k, v in base.items()])


def losses(csv_path: Path) -> list[float]:
    with open(csv_path, newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["models"]["net"]


def test_stage_writes_every_output(tmp_path: Path) -> None:
    result = Trainer("toy", toy_config(), tmp_path).run()
    out = tmp_path / "toy"
    for name in ("last.pt", "best.pt", "metrics.csv", "loss.png", "eval.json", "stage.json"):
        assert (out / name).is_file(), name
    assert result["status"] == "done" and result["step"] == 6
    ev = json.loads((out / "eval.json").read_text())
    assert [h["step"] for h in ev["history"]] == [2, 4, 6]
    assert ev["best"]["value"] == min(h["mse"] for h in ev["history"])
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["format"] == "jr2net-checkpoint/1" and ckpt["step"] == 6
    assert ckpt["model_spec"] == {"arch": "toy-mlp", "hidden": 32}
    assert ckpt["config"]["recnet"]["steps"] == 6
    assert set(ckpt["optimizers"]) == {"main"} and ckpt["rng"]["per_rank"]
    best = load_checkpoint(out / "best.pt")
    assert best["step"] == ev["best"]["step"]
    assert len(losses(out / "metrics.csv")) == 6
    assert ev["history"][-1]["mse"] < ev["history"][0]["mse"]  # it learns


def test_interrupt_then_resume_equals_straight_run(tmp_path: Path) -> None:
    cfg = toy_config()
    Trainer("toy", cfg, tmp_path / "straight").run()

    ToyRegression.interrupt_at = 2  # SIGINT during step index 2: stops after 3 steps
    try:
        first = Trainer("toy", cfg, tmp_path / "resumed").run()
    finally:
        ToyRegression.interrupt_at = None
    assert first == {"status": "interrupted", "step": 3, "best": first["best"]}
    assert load_checkpoint(tmp_path / "resumed" / "toy" / "last.pt")["step"] == 3
    second = Trainer("toy", cfg, tmp_path / "resumed", resume=True).run()
    assert second["status"] == "done" and second["step"] == 6

    a, b = tmp_path / "straight" / "toy", tmp_path / "resumed" / "toy"
    assert losses(a / "metrics.csv") == losses(b / "metrics.csv")
    wa, wb = weights(a / "last.pt"), weights(b / "last.pt")
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ea, eb = (json.loads((d / "eval.json").read_text()) for d in (a, b))
    assert ea["history"] == eb["history"] and ea["best"] == eb["best"]


def test_existing_output_needs_resume_or_force(tmp_path: Path) -> None:
    cfg = toy_config(**{"recnet.steps": 2})
    Trainer("toy", cfg, tmp_path).run()
    with pytest.raises(StageOutputExists, match="--resume.*--force"):
        Trainer("toy", cfg, tmp_path).run()
    again = Trainer("toy", cfg, tmp_path, resume=True).run()
    assert again["step"] == 2  # already complete: nothing to do
    more = Trainer("toy", toy_config(**{"recnet.steps": 4}), tmp_path, resume=True).run()
    assert more["step"] == 4 and len(losses(tmp_path / "toy" / "metrics.csv")) == 4
    redo = Trainer("toy", cfg, tmp_path, force=True).run()
    assert redo["step"] == 2 and len(losses(tmp_path / "toy" / "metrics.csv")) == 2


def test_missing_earlier_stage_names_the_command(tmp_path: Path) -> None:
    ctx = TrainContext("cpu", config_path="cfg.yaml", face_model_spec="generic")
    with pytest.raises(StageOutputMissing) as err:
        Trainer("toy_needs_prepare", toy_config(), tmp_path, ctx=ctx).run()
    msg = str(err.value)
    assert f"jr2net train prepare --config cfg.yaml --out {tmp_path}" in msg
    assert "'prepare'" in msg


def test_resume_refuses_another_face_models_checkpoint(tmp_path: Path) -> None:
    cfg = toy_config(**{"recnet.steps": 2})
    Trainer("toy", cfg, tmp_path).run()
    last = tmp_path / "toy" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    ckpt["face_model"] = {"name": "other", "sha256": "ab" * 32}
    save_checkpoint(last, ckpt)
    generic_sha = load_checkpoint(tmp_path / "toy" / "best.pt")["face_model"]["sha256"]
    with pytest.raises(CheckpointError) as err:
        Trainer("toy", toy_config(**{"recnet.steps": 4}), tmp_path, resume=True).run()
    assert "ab" * 32 in str(err.value) and generic_sha in str(err.value)


def test_lr_schedule_warms_up_then_decays(tmp_path: Path) -> None:
    Trainer("toy", toy_config(), tmp_path).run()
    with open(tmp_path / "toy" / "metrics.csv", newline="") as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f)]
    # lr logged after each step's scheduler update: factor of the next step
    assert lrs[0] == pytest.approx(1e-2) and max(lrs) == pytest.approx(1e-2)
    assert lrs[1:] == sorted(lrs[1:], reverse=True) and lrs[-1] < 1e-3


def _amp_ctx(dtype: torch.dtype) -> TrainContext:
    """A CPU context with mixed precision forced on (the config enables it on CUDA only), so
    the autocast / GradScaler path runs here too."""
    ctx = TrainContext("cpu", seed=3, face_model_spec="generic")
    ctx.amp, ctx.amp_dtype = True, dtype
    ctx.scaler = torch.amp.GradScaler("cpu") if dtype == torch.float16 else None
    return ctx


def test_mixed_precision_path_trains_and_resumes_the_scaler(tmp_path: Path) -> None:
    cfg = toy_config()
    ToyRegression.interrupt_at = 2
    try:
        first = Trainer("toy", cfg, tmp_path, ctx=_amp_ctx(torch.float16)).run()
    finally:
        ToyRegression.interrupt_at = None
    assert first["status"] == "interrupted"
    last = tmp_path / "toy" / "last.pt"
    ckpt = load_checkpoint(last)
    assert 0 < ckpt["scaler"]["scale"] <= 2.0**16
    ckpt["scaler"]["scale"] = 1024.0  # a state the resumed run must pick up
    save_checkpoint(last, ckpt)
    ctx = _amp_ctx(torch.float16)
    assert Trainer("toy", cfg, tmp_path, resume=True, ctx=ctx).run()["step"] == 6
    assert all(torch.isfinite(torch.tensor(losses(tmp_path / "toy" / "metrics.csv"))))
    assert ctx.scaler.get_scale() == 1024.0
    bf16 = Trainer("toy", cfg, tmp_path / "bf16", ctx=_amp_ctx(torch.bfloat16)).run()
    assert bf16["status"] == "done"


@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_a_truncated_checkpoint_is_refused_as_not_a_checkpoint(tmp_path: Path, keep: float) -> None:
    Trainer("toy", toy_config(**{"recnet.steps": 2}), tmp_path).run()
    data = (tmp_path / "toy" / "last.pt").read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="not a JR2Net checkpoint"):
        load_checkpoint(bad)
