"""DDP: two gloo processes with the same global batch train exactly like one process."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from jr2net.training.checkpoints import load_checkpoint
from jr2net.training.config import RunConfig, apply_overrides
from jr2net.training.stages.base import Stage, TrainContext, register_stage
from jr2net.training.trainer import Trainer


@register_stage
class ToyDDP(Stage):
    """A deterministic (no dropout) regression MLP on a fixed tensor set."""

    name = "toy_ddp"
    config_section = "recnet"

    def build_models(self) -> dict[str, nn.Module]:
        return {"net": nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 2))}

    @staticmethod
    def _data(n: int, seed: int) -> TensorDataset:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 6, generator=g)
        return TensorDataset(x, torch.stack([x[:, :3].sum(1), torch.cos(x[:, 3:]).sum(1)], 1))

    def train_dataset(self) -> TensorDataset:
        return self._data(36, 0)

    def eval_dataset(self) -> TensorDataset:
        return self._data(16, 1)

    def train_step(self, batch, step: int) -> dict[str, float]:
        x, y = batch
        loss = F.mse_loss(self.models["net"](x), y)
        self.ctx.backward_step(loss)
        return {"loss": loss.item()}

    def evaluate(self, models, loader) -> dict[str, float]:
        se = [F.mse_loss(models["net"](x), y, reduction="none").mean(1) for x, y in loader]
        return {"mse": torch.cat(se).mean().item()}


CFG = [
    "run.device=cpu", "run.face_model=generic", "run.seed=5", "recnet.steps=5",
    "recnet.batch_size=8", "recnet.lr=0.01", "recnet.optimizer=adamw", "recnet.weight_decay=0.01",
    "recnet.warmup_steps=1", "recnet.log_every=1", "recnet.eval_every=2", "recnet.ckpt_every=5",
    "recnet.eval_batches=0", "recnet.eval_metric=mse", "recnet.grad_clip=0.5",
]


def _worker(rank: int, world: int, port: int, run_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME="lo",
    )
    torch.set_num_threads(1)
    import torch.distributed as dist

    try:
        Trainer("toy_ddp", apply_overrides(RunConfig(), CFG), Path(run_dir)).run()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def test_two_gloo_ranks_match_one_process(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    Trainer("toy_ddp", apply_overrides(RunConfig(), CFG), one).run()
    mp.spawn(_worker, args=(2, _free_port(), str(two)), nprocs=2, join=True)

    a, b = _rows(one / "toy_ddp" / "metrics.csv"), _rows(two / "toy_ddp" / "metrics.csv")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4, 5]
    la, lb = torch.tensor([r["loss"] for r in a]), torch.tensor([r["loss"] for r in b])
    assert torch.allclose(la, lb, atol=1e-6, rtol=0), (la, lb)
    assert not torch.allclose(la[:1], la[-1:])  # it trained
    ca, cb = (load_checkpoint(d / "toy_ddp" / "last.pt") for d in (one, two))
    for k, w in ca["models"]["net"].items():
        assert torch.allclose(w, cb["models"]["net"][k], atol=1e-6, rtol=0), k
    assert cb["world_size"] == 2 and len(cb["rng"]["per_rank"]) == 2
    ea = [h["mse"] for h in _eval(one)]
    eb = [h["mse"] for h in _eval(two)]
    assert torch.allclose(torch.tensor(ea), torch.tensor(eb), atol=1e-6, rtol=0)


def _eval(run: Path) -> list[dict]:
    return json.loads((run / "toy_ddp" / "eval.json").read_text())["history"]


def test_torchrun_launches_the_training_module(tmp_path: Path) -> None:
    """``torchrun -m jr2net.training`` joins a 2-process gloo group and runs a stage once."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "run: {device: cpu, face_model: generic, stages: [prepare]}\n"
        "data: {shared_videos: [], shared_photos: []}\n"
    )
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "jr2net.training", "prepare", "--config", str(cfg), "--out", str(tmp_path / "run"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    status = json.loads((tmp_path / "run" / "prepare" / "stage.json").read_text())
    assert status["status"] == "done"


def _reduce_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    try:
        ctx = TrainContext("cpu", rank=rank, world_size=2)
        values = {"loss": 1.0 + rank, **({"photo": 4.0} if rank == 0 else {})}
        got = ctx.all_reduce_mean(values, weight={"loss": 1.0 + rank, "photo": 2.0})
        Path(out, f"{rank}.json").write_text(json.dumps(got))
    finally:
        dist.destroy_process_group()


def test_all_reduce_mean_weights_and_tolerates_missing_keys(tmp_path: Path) -> None:
    mp.spawn(_reduce_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = json.loads((tmp_path / f"{rank}.json").read_text())
        assert got == {"loss": (1 * 1 + 2 * 2) / 3, "photo": 4.0}
