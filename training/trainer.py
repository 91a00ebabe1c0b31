"""The training loop every stage shares: devices, DDP, AMP, exact resume, checkpoints and logs.

``Trainer(stage, cfg, run_dir).run()`` writes ``RUN/STAGE/{last.pt, best.pt, metrics.csv,
loss.png, eval.json, stage.json}``. Resuming restores weights, optimisers, schedulers, the AMP
scaler, every rank's RNG states and the data order (the sampler is a function of seed and step),
so 3 steps + resume + 3 steps equals 6 straight steps.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from .checkpoints import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from .config import RunConfig, to_dict
from .logs import CSVLogger, TensorBoardLogger, plot_curves, read_csv, write_json
from .stages.base import Stage, TrainContext, get_stage, make_scheduler, read_status, write_status

OUTPUTS = ("last.pt", "best.pt", "metrics.csv", "loss.png", "eval.json", "stage.json", "tb")


class StageOutputExists(FileExistsError):
    """The stage's output folder already holds a run and neither --resume nor --force was given."""


def note(msg: str, ctx: TrainContext | None = None) -> None:
    """A progress message on stderr (rank 0 only), kept clear of the tqdm bar."""
    if ctx is not None and not ctx.is_main:
        return
    from tqdm import tqdm

    tqdm.write(f"jr2net train: {msg}", file=sys.stderr)


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """'auto' -> CUDA when available; 'cuda' without a GPU is an error."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("run.device is 'cuda' but no CUDA device is available")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup_distributed(device: torch.device) -> DistInfo:
    """Join the torchrun process group (RANK/WORLD_SIZE/MASTER_ADDR env): gloo on CPU, NCCL on CUDA."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local)
    return DistInfo(0, 1, 0)


def make_context(cfg: RunConfig, config_path: str | Path | None = None) -> TrainContext:
    """The TrainContext of this process (joins the process group when launched by torchrun)."""
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    device = resolve_device(cfg.run.device, local)
    info = setup_distributed(device)
    if cfg.run.num_threads > 0:
        torch.set_num_threads(cfg.run.num_threads)
    dtype = torch.float16 if cfg.run.amp_dtype == "float16" else torch.bfloat16
    return TrainContext(
        device, info.rank, info.world_size, info.local_rank, cfg.run.amp, dtype,
        cfg.run.seed, config_path, cfg.run.face_model,
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors in (nested) dicts / lists / tuples moved to ``device``; other values unchanged."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and not hasattr(batch, "_fields"):
        return type(batch)(to_device(v, device) for v in batch)
    if hasattr(batch, "to") and callable(batch.to) and not isinstance(batch, type):
        return batch.to(device)
    return batch


class Trainer:
    """Run one stage: the non-training ``run()``, or the training loop with resume and logs."""

    def __init__(
        self,
        stage: str | type[Stage],
        cfg: RunConfig,
        run_dir: str | Path,
        resume: bool = False,
        force: bool = False,
        config_path: str | Path | None = None,
        ctx: TrainContext | None = None,
    ) -> None:
        self.stage_cls = get_stage(stage) if isinstance(stage, str) else stage
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.resume, self.force = resume, force
        self.ctx = ctx or make_context(cfg, config_path)
        self.out = self.run_dir / self.stage_cls.name
        self._stop = False

    # -- the outer flow --
    def run(self) -> dict[str, Any]:
        """Run the stage; returns {"status": "done"|"interrupted", "step", "best"}."""
        ctx = self.ctx
        stage = self.stage_cls(self.cfg, self.run_dir, ctx)
        for earlier in self.stage_cls.requires:
            stage.require_output(earlier)
        status = read_status(self.out)
        has_output = status is not None or (self.out / "last.pt").exists()
        ctx.barrier()  # every rank has looked before rank 0 writes anything
        if has_output and self.force:
            if ctx.is_main:
                note(f"--force: removing the earlier output in {self.out}")
                for name in OUTPUTS:
                    p = self.out / name
                    shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
            ctx.barrier()
            has_output, status = False, None
        if has_output and not self.resume:
            what = "is already complete" if status and status.get("status") == "done" else (
                "already holds a run")
            raise StageOutputExists(
                f"{self.out} {what}; pass --resume to continue it or --force to redo it"
            )
        if self.stage_cls.non_training:
            return self._run_non_training(stage, status)
        return self._run_training(stage)

    def _run_non_training(self, stage: Stage, status: dict | None) -> dict[str, Any]:
        if status and status.get("status") == "done":
            note(f"{self.stage_cls.name} is already done in {self.out}", self.ctx)
            return {"status": "done", "step": 0, "best": None}
        if self.ctx.is_main:
            write_status(self.out, "running", stage=self.stage_cls.name)
        seed_everything(self.cfg.run.seed + self.ctx.rank)
        stage.run()
        self.ctx.barrier()
        if self.ctx.is_main:
            write_status(self.out, "done", stage=self.stage_cls.name)
        return {"status": "done", "step": 0, "best": None}

    # -- the training loop --
    def _build(self, stage: Stage) -> None:
        ctx, sec = self.ctx, stage.section
        seed_everything(self.cfg.run.seed)  # same initial weights on every rank
        self.models = {n: m.to(ctx.device) for n, m in stage.build_models().items()}
        self.optimizers = stage.build_optimizers(self.models)
        self.schedulers = {n: make_scheduler(o, sec) for n, o in self.optimizers.items()}
        ctx.optimizers, ctx.grad_clip = self.optimizers, sec.grad_clip
        self.start_step, self.best, self.history = 0, None, []
        self.face = ctx.face_model
        last = self.out / "last.pt"
        if self.resume and last.exists():
            self._load(last, stage)
        else:
            if self.resume:
                note(f"no checkpoint at {last}; starting from step 0", ctx)
            seed_everything(self.cfg.run.seed + 1000003 * ctx.rank)
        stage.models = {n: ctx.wrap(m, **stage.ddp_kwargs) for n, m in self.models.items()}
        stage.optimizers = self.optimizers

    def _load(self, path: Path, stage: Stage) -> None:
        ctx = self.ctx
        ckpt = load_checkpoint(path, expect_face_model_sha256=self.face.sha256)
        if set(ckpt["models"]) != set(self.models):
            raise ValueError(f"{path}: models {sorted(ckpt['models'])}, expected {sorted(self.models)}")
        for n, m in self.models.items():
            m.load_state_dict(ckpt["models"][n])
        for n, o in self.optimizers.items():
            o.load_state_dict(ckpt["optimizers"][n])
        for n, s in self.schedulers.items():
            s.load_state_dict(ckpt["schedulers"][n])
        if ctx.scaler is not None and ckpt.get("scaler"):
            ctx.scaler.load_state_dict(ckpt["scaler"])
        self.start_step, self.best = int(ckpt["step"]), ckpt.get("best")
        sec_name = self.stage_cls.config_section or self.stage_cls.name
        old, new = ckpt["config"].get(sec_name, {}), to_dict(self.cfg).get(sec_name, {})
        changed = sorted(k for k in new if old.get(k) != new[k])
        if changed:
            note(f"resuming with changed {sec_name} settings: {', '.join(changed)}", ctx)
        per_rank = ckpt["rng"].get("per_rank", [])
        if len(per_rank) == ctx.world_size:
            restore_rng(per_rank[ctx.rank])
            stage.load_extra_state(per_rank[ctx.rank].get("stage", {}))
        else:
            note(
                f"{path} holds RNG states of {len(per_rank)} process(es), this run has "
                f"{ctx.world_size}: RNG reseeded (resume is not bit-exact)", ctx,
            )
            seed_everything(self.cfg.run.seed + 1000003 * ctx.rank + self.start_step)
        eval_json = self.out / "eval.json"
        if eval_json.exists():
            import json

            hist = json.loads(eval_json.read_text()).get("history", [])
            self.history = [h for h in hist if h["step"] <= self.start_step]
        note(f"resumed {path} at step {self.start_step}", ctx)

    def _payload(self, stage: Stage, step: int, full: bool, rng: dict) -> dict[str, Any]:
        return {
            "stage": self.stage_cls.name,
            "step": step,
            "models": {n: m.state_dict() for n, m in self.models.items()},
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()} if full else {},
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()} if full else {},
            "scaler": self.ctx.scaler.state_dict() if full and self.ctx.scaler else None,
            "rng": rng,
            "config": to_dict(self.cfg),
            "face_model": {"name": self.face.name, "sha256": self.face.sha256},
            "model_spec": stage.model_spec(),
            "metrics": self.history[-1] if self.history else {},
            "best": self.best,
            "world_size": self.ctx.world_size,
        }

    def _save_last(self, stage: Stage, step: int, collective: bool = True) -> None:
        ctx = self.ctx
        rng = {**capture_rng(), "stage": stage.extra_state()}
        if ctx.distributed and collective:
            import torch.distributed as dist

            states: list[Any] = [None] * ctx.world_size
            dist.all_gather_object(states, rng)
        else:
            states = [rng] if ctx.world_size == 1 else []
        if ctx.is_main:
            save_checkpoint(self.out / "last.pt", self._payload(stage, step, True, {"per_rank": states}))

    def _eval_loader(self, ds: Any, stage: Stage) -> DataLoader:
        ctx, sec = self.ctx, stage.section
        n = len(ds) if sec.eval_batches == 0 else min(len(ds), sec.eval_batches * sec.batch_size)
        return DataLoader(
            Subset(ds, list(range(n))), batch_size=ctx.local_batch(sec.batch_size),
            shuffle=False, num_workers=sec.num_workers, collate_fn=stage.collate,
            worker_init_fn=ctx.seed_worker,
            generator=torch.Generator().manual_seed(self.cfg.run.seed),
            pin_memory=ctx.device.type == "cuda",
        )

    def _evaluate(self, stage: Stage, ds: Any, step: int) -> None:
        """Held-out metrics, computed on rank 0 over the whole selection (so they do not depend
        on the number of processes; medians and counts stay exact) and shared with every rank."""
        ctx, sec = self.ctx, stage.section
        metrics: dict[str, float] | None = None
        error: str | None = None
        if ctx.is_main:
            for m in self.models.values():
                m.eval()
            try:
                with torch.no_grad(), ctx.autocast():
                    loader = _DeviceLoader(self._eval_loader(ds, stage), ctx.device)
                    metrics = {k: float(v) for k, v in stage.evaluate(self.models, loader).items()}
            except Exception as exc:
                if not ctx.distributed:
                    raise
                error = f"{type(exc).__name__}: {exc}"
            finally:
                for m in self.models.values():
                    m.train()
        if ctx.distributed:
            import torch.distributed as dist

            box = [metrics, error]
            dist.broadcast_object_list(box, src=0)
            metrics, error = box
        if error is not None:
            raise RuntimeError(f"{self.stage_cls.name}.evaluate() failed on rank 0: {error}")
        assert metrics is not None
        if sec.eval_metric not in metrics:
            raise KeyError(
                f"{self.stage_cls.name}.evaluate() returned {sorted(metrics)}, not the "
                f"eval_metric {sec.eval_metric!r}"
            )
        self.history.append({"step": step, **metrics})
        value = metrics[sec.eval_metric]
        improved = self.best is None or value < self.best["value"]
        if improved:
            self.best = {"step": step, "metric": sec.eval_metric, "value": value}
            if ctx.is_main:
                save_checkpoint(self.out / "best.pt", self._payload(stage, step, False, {}))
        if ctx.is_main:
            self.tb.log(step, metrics, prefix="eval")
            self._write_eval_json(sec.eval_metric)
        others = [k for k in metrics if k != sec.eval_metric][:3]
        shown = ", ".join(f"{k} {metrics[k]:.4g}" for k in [sec.eval_metric, *others])
        more = f" (+{len(metrics) - 1 - len(others)} in eval.json)" if len(metrics) > 4 else ""
        note(f"step {step}: held-out {shown}{more}{' (best)' if improved else ''}", ctx)

    def _write_eval_json(self, metric: str) -> None:
        write_json(
            self.out / "eval.json",
            {"stage": self.stage_cls.name, "metric": metric, "lower_is_better": True,
             "best": self.best, "history": self.history},
        )

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop:
            raise KeyboardInterrupt
        self._stop = True
        note(f"{signal.Signals(signum).name}: stopping after this step and saving last.pt "
             "(again to abort)")

    def _stop_requested(self) -> bool:
        if not self.ctx.distributed:
            return self._stop
        import torch.distributed as dist

        dev = self.ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
        flag = torch.tensor([1.0 if self._stop else 0.0], device=dev)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def _run_training(self, stage: Stage) -> dict[str, Any]:
        ctx, sec, name = self.ctx, stage.section, self.stage_cls.name
        self.out.mkdir(parents=True, exist_ok=True)
        self._build(stage)
        if self.start_step >= sec.steps:
            note(f"{name} is already at step {self.start_step} of {sec.steps}; nothing to do", ctx)
            return {"status": "done", "step": self.start_step, "best": self.best}
        ctx.barrier()
        if ctx.is_main:
            write_status(self.out, "running", stage=name, step=self.start_step, steps=sec.steps)
        train_ds, eval_ds = stage.train_dataset(), stage.eval_dataset()
        loader = DataLoader(
            train_ds,
            batch_size=ctx.local_batch(sec.batch_size),
            sampler=ctx.train_sampler(train_ds, sec.batch_size, self.start_step),
            num_workers=sec.num_workers,
            collate_fn=stage.collate,
            worker_init_fn=ctx.seed_worker,
            generator=torch.Generator().manual_seed(
                self.cfg.run.seed * 7919 + ctx.rank * 104729 + self.start_step
            ),
            pin_memory=ctx.device.type == "cuda",
        )
        csv_log = CSVLogger(self.out / "metrics.csv", self.start_step if self.resume else None)
        self.tb = TensorBoardLogger(self.out / "tb", lambda m: note(m, ctx), enabled=ctx.is_main)
        note(
            f"{name}: steps {self.start_step}->{sec.steps}, global batch {sec.batch_size} on "
            f"{ctx.world_size} process(es), device {ctx.device}, amp {ctx.amp}", ctx,
        )
        old_handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):  # SIGTERM: torchrun, preemption
                old_handlers[sig] = signal.signal(sig, self._on_signal)
        from tqdm import tqdm

        bar = tqdm(total=sec.steps, initial=self.start_step, desc=name, disable=not ctx.is_main,
                   dynamic_ncols=True, file=sys.stderr, mininterval=1.0)
        it, step, t0 = iter(loader), self.start_step, time.perf_counter()
        sums: dict[str, float] = {}
        counts: dict[str, float] = {}
        count = 0
        try:
            while step < sec.steps:
                batch = to_device(next(it), ctx.device)
                with ctx.autocast():
                    values = stage.train_step(batch, step)
                if "loss" not in values:
                    raise KeyError(f"{name}.train_step() must return a 'loss' entry")
                for n, g in ctx.last_grad_norm.items():  # set when grad_clip > 0
                    values[f"grad_norm_{n}" if n != "main" else "grad_norm"] = g
                ctx.last_grad_norm = {}
                if ctx.scaler is not None and ctx.scaler_stepped:
                    ctx.scaler.update()
                    ctx.scaler_stepped = False
                for s in self.schedulers.values():
                    s.step()
                step += 1
                bar.update(1)
                for k, v in values.items():  # a term may be absent on some steps
                    sums[k] = sums.get(k, 0.0) + float(v)
                    counts[k] = counts.get(k, 0.0) + 1.0
                count += 1
                if step % sec.log_every == 0 or step == sec.steps:
                    row = ctx.all_reduce_mean({k: v / counts[k] for k, v in sums.items()}, counts)
                    for n, o in self.optimizers.items():
                        row["lr" if n == "main" else f"lr_{n}"] = o.param_groups[0]["lr"]
                    row["sec_per_step"] = (time.perf_counter() - t0) / count
                    if ctx.is_main:
                        csv_log.log(step, row)
                        self.tb.log(step, row)
                    bar.set_postfix(loss=f"{row['loss']:.4g}")
                    sums, counts, count, t0 = {}, {}, 0, time.perf_counter()
                if eval_ds is not None and (
                    (sec.eval_every and step % sec.eval_every == 0) or step == sec.steps
                ):
                    self._evaluate(stage, eval_ds, step)
                if step % sec.ckpt_every == 0 or step == sec.steps:
                    self._save_last(stage, step)
                if step < sec.steps and self._stop_requested():
                    self._save_last(stage, step)
                    if ctx.is_main:
                        write_status(self.out, "interrupted", stage=name, step=step,
                                     steps=sec.steps)
                    note(f"stopped at step {step}; continue with --resume", ctx)
                    return {"status": "interrupted", "step": step, "best": self.best}
        except KeyboardInterrupt:
            self._save_last(stage, step, collective=False)
            note(f"aborted; last.pt saved at step {step} (best effort)", ctx)
            raise
        finally:
            bar.close()
            self.tb.close()
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
        self._finish(stage, step, eval_ds is not None)
        return {"status": "done", "step": step, "best": self.best}

    def _finish(self, stage: Stage, step: int, has_eval: bool) -> None:
        ctx, sec, name = self.ctx, stage.section, self.stage_cls.name
        if ctx.is_main:
            if not has_eval:  # no held-out set: best.pt is the final weights
                save_checkpoint(self.out / "best.pt", self._payload(stage, step, False, {}))
                self._write_eval_json(sec.eval_metric)
            plot_curves(read_csv(self.out / "metrics.csv"), self.history, self.out / "loss.png",
                        f"{name} ({self.run_dir.name})", sec.eval_metric)
            write_status(self.out, "done", stage=name, step=step, steps=sec.steps,
                         best=self.best, face_model_sha256=self.face.sha256)
            note(f"{name} done: {self.out}", ctx)
        ctx.barrier()


class _DeviceLoader:
    """Iterate a DataLoader with each batch moved to the training device."""

    def __init__(self, loader: DataLoader, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __iter__(self):
        for batch in self.loader:
            yield to_device(batch, self.device)

    def __len__(self) -> int:
        return len(self.loader)
