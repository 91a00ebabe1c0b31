"""The stage API every cascade stage implements, the trainer-side context it talks to, a registry.

A training stage builds its networks (``build_models``), optimisers, datasets, and one
``train_step``; the trainer owns the loop, devices, DDP, AMP, checkpoints and logs. Non-training
stages (prepare, synthesize) set ``non_training = True`` and override ``run``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset, Sampler

from ..config import ABLATIONS, STAGE_HELP, STAGE_ORDER, RunConfig, TrainConfig, stage_section

STATUS_FILE = "stage.json"


class StageOutputMissing(FileNotFoundError):
    """An earlier stage's output, which this stage reads, is not in the run folder."""


class StageNotImplemented(NotImplementedError):
    """A cascade stage that this version does not implement."""


# ---- trainer-side context ------------------------------------------------------------------------


class StepSampler(Sampler[int]):
    """Infinite, resumable, rank-sharded index stream: one global batch of ``global_batch`` per step.

    The stream is the concatenation of per-epoch permutations (seeded by ``seed + epoch``); global
    batch ``k`` is positions ``[k*B, (k+1)*B)`` and rank ``r`` of ``W`` takes every W-th index of it,
    so W ranks with B/W each see exactly the batch one rank with B sees, and the order depends
    only on (seed, step): starting at ``start_step`` resumes the data order exactly.
    """

    def __init__(
        self,
        n: int,
        global_batch: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        start_step: int = 0,
        shuffle: bool = True,
    ) -> None:
        if n < 1:
            raise ValueError("the training dataset is empty")
        if global_batch % world_size:
            raise ValueError(
                f"batch_size {global_batch} (global) is not divisible by {world_size} processes"
            )
        self.n, self.batch, self.rank, self.world = n, global_batch, rank, world_size
        self.seed, self.start_step, self.shuffle = seed, start_step, shuffle
        self._perm: tuple[int, torch.Tensor] | None = None

    def _epoch_perm(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
                perm = torch.randperm(self.n, generator=g)
            else:
                perm = torch.arange(self.n)
            self._perm = (epoch, perm)
        return self._perm[1]

    def global_batch_indices(self, step: int) -> list[int]:
        """The dataset indices of global batch ``step`` (all ranks together)."""
        out = []
        for pos in range(step * self.batch, (step + 1) * self.batch):
            epoch, off = divmod(pos, self.n)
            out.append(int(self._epoch_perm(epoch)[off]))
        return out

    def epoch_of(self, step: int) -> int:
        return (step * self.batch) // self.n

    def __iter__(self) -> Iterator[int]:
        step = self.start_step
        while True:
            yield from self.global_batch_indices(step)[self.rank :: self.world]
            step += 1

    def __len__(self) -> int:  # infinite; DataLoader only needs it for len(loader)
        return 2**62


class TrainContext:
    """What the trainer gives a stage: device, ranks, AMP, DDP wrapping and the backward step."""

    def __init__(
        self,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        local_rank: int = 0,
        amp: bool = False,
        amp_dtype: torch.dtype = torch.bfloat16,
        seed: int = 0,
        config_path: str | Path | None = None,
        face_model_spec: str = "",
    ) -> None:
        self.device = torch.device(device)
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.distributed = world_size > 1
        self.amp = bool(amp) and self.device.type == "cuda"
        self.amp_dtype = amp_dtype
        self.seed = seed
        self.config_path = Path(config_path) if config_path else None
        self.face_model_spec = face_model_spec
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.grad_clip = 0.0
        use_scaler = self.amp and amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type) if use_scaler else None
        self.last_grad_norm: dict[str, float] = {}
        self.scaler_stepped = False  # the trainer updates the scaler once per step, if stepped
        self._face_model = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def face_model(self):  # -> jr2net.face.model.FaceModel
        """The run's face model (``run.face_model``), loaded once, on the training device."""
        if self._face_model is None:
            from jr2net.face.model import load_face_model

            self._face_model = load_face_model(self.face_model_spec or None).to(self.device)
        return self._face_model

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for forward passes (a no-op on CPU or with amp off)."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def backward_step(self, loss: torch.Tensor, optimizer: str = "main") -> None:
        """zero_grad, (scaled) backward, unscale, clip, step of optimiser ``optimizer``."""
        if optimizer not in self.optimizers:
            raise KeyError(f"no optimizer {optimizer!r}; have {sorted(self.optimizers)}")
        if not torch.isfinite(loss.detach()).all():
            raise FloatingPointError(f"non-finite loss {loss.item()} (optimizer {optimizer!r})")
        opt = self.optimizers[optimizer]
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=self.device.type, enabled=False):
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
        if self.scaler is not None:
            self.scaler.unscale_(opt)
        if self.grad_clip > 0:
            params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
            self.last_grad_norm[optimizer] = float(norm)
        if self.scaler is not None:
            self.scaler.step(opt)
            self.scaler_stepped = True
        else:
            opt.step()

    def wrap(self, model: nn.Module, **ddp_kwargs: Any) -> nn.Module:
        """DDP-wrap ``model`` when distributed and it has trainable parameters; else unchanged."""
        if not self.distributed or not any(p.requires_grad for p in model.parameters()):
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, **ddp_kwargs)

    @staticmethod
    def unwrap(model: nn.Module) -> nn.Module:
        return model.module if hasattr(model, "module") and hasattr(model, "reducer") else model

    def all_reduce_mean(
        self, values: dict[str, float], weight: float | dict[str, float] = 1.0
    ) -> dict[str, float]:
        """The weighted mean of each scalar over ranks (``weight`` per rank, or per key); a key
        some ranks lack is averaged over the ranks that have it. Identity on one process.
        Every rank must call it (a collective)."""
        w = weight if isinstance(weight, dict) else {k: float(weight) for k in values}
        if not self.distributed:
            return {k: float(v) for k, v in values.items()}
        import torch.distributed as dist

        names: list[Any] = [None] * self.world_size
        dist.all_gather_object(names, sorted(values))
        keys = sorted(set().union(*names))
        dev = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        t = torch.tensor(
            [[float(values[k]) * w[k], w[k]] if k in values else [0.0, 0.0] for k in keys],
            dtype=torch.float64, device=dev,
        ).reshape(-1, 2)
        dist.all_reduce(t)
        return {k: float(t[i, 0] / t[i, 1]) for i, k in enumerate(keys) if t[i, 1] > 0}

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def seed_worker(self, worker_id: int) -> None:
        """DataLoader ``worker_init_fn``: seed numpy/python in each worker from torch's seed;
        workers ignore Ctrl-C (the main process stops the run cleanly and shuts them down)."""
        import random
        import signal

        import numpy as np

        signal.signal(signal.SIGINT, signal.SIG_IGN)
        s = torch.initial_seed() % 2**32
        np.random.seed(s)
        random.seed(s)

    def local_batch(self, global_batch: int) -> int:
        if global_batch % self.world_size:
            raise ValueError(
                f"batch_size {global_batch} (global) is not divisible by {self.world_size} processes"
            )
        return global_batch // self.world_size

    def train_sampler(self, dataset: Dataset, global_batch: int, start_step: int = 0) -> StepSampler:
        """This rank's share of the global batch stream, deterministic given the seed."""
        return StepSampler(
            len(dataset), global_batch, self.rank, self.world_size, self.seed, start_step
        )


# ---- optimisers and schedules --------------------------------------------------------------------


def make_optimizer(
    tc: TrainConfig, params: Any, lr: float | None = None
) -> torch.optim.Optimizer:
    """The optimiser ``tc.optimizer`` over ``params`` with the section's lr / weight decay."""
    lr = tc.lr if lr is None else lr
    if tc.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    if tc.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=tc.momentum, weight_decay=tc.weight_decay)


def lr_factor(tc: TrainConfig, step: int) -> float:
    """Multiplier of the base lr at (0-based) ``step``: linear warm-up then the schedule."""
    if tc.warmup_steps and step < tc.warmup_steps:
        return (step + 1) / tc.warmup_steps
    if tc.lr_schedule == "constant":
        return 1.0
    if tc.lr_schedule == "step":
        return tc.lr_gamma ** ((step - tc.warmup_steps) // tc.lr_step_every)
    span = max(1, tc.steps - tc.warmup_steps)
    p = min(1.0, (step - tc.warmup_steps) / span)
    return tc.lr_min_ratio + (1 - tc.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * p))


def make_scheduler(opt: torch.optim.Optimizer, tc: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR following ``lr_factor``; the trainer steps it once per training step."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(tc, s))


# ---- status file ---------------------------------------------------------------------------------


def write_status(out_dir: Path, status: str, **info: Any) -> None:
    """``out_dir/stage.json``: {"status": "running"|"done", ...}; marks a finished stage."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{STATUS_FILE}.tmp"
    tmp.write_text(json.dumps({"status": status, "time": time.time(), **info}, indent=1) + "\n")
    tmp.replace(out_dir / STATUS_FILE)


def read_status(out_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out_dir / STATUS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# ---- the stage -----------------------------------------------------------------------------------


class Stage:
    """Base of every cascade stage (abstract: subclasses set ``name`` and implement the hooks)."""

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()  # earlier stages whose outputs this stage reads
    non_training: ClassVar[bool] = False  # True: the trainer calls run() instead of the loop
    config_section: ClassVar[str | None] = None  # RunConfig section; defaults to ``name``
    ddp_kwargs: ClassVar[dict[str, Any]] = {}  # e.g. {"find_unused_parameters": True}

    def __init__(self, cfg: RunConfig, run_dir: Path, ctx: TrainContext) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.ctx = ctx
        # Filled in by the trainer: models on the device (DDP-wrapped when distributed) and the
        # optimisers; train_step uses these.
        self.models: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    @property
    def section(self) -> Any:
        """This stage's config section (``cfg.recnet`` for RecNet)."""
        return stage_section(self.cfg, self.config_section or self.name)

    @property
    def out_dir(self) -> Path:
        return self.run_dir / self.name

    # -- hooks of training stages --
    def build_models(self) -> dict[str, nn.Module]:
        """The trainable networks by name (saved in checkpoints under these names)."""
        raise NotImplementedError(f"stage {self.name!r} does not define build_models()")

    def build_optimizers(self, models: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        """Default: one optimiser "main" over every model's trainable parameters."""
        params = [p for m in models.values() for p in m.parameters() if p.requires_grad]
        return {"main": make_optimizer(self.section, params)}

    def train_dataset(self) -> Dataset:
        raise NotImplementedError(f"stage {self.name!r} does not define train_dataset()")

    def collate(self, items: list[Any]) -> Any:
        """The DataLoader collate_fn of both datasets (default: torch's default_collate)."""
        from torch.utils.data import default_collate

        return default_collate(items)

    def eval_dataset(self) -> Dataset | None:
        """The held-out set (None: no evaluation)."""
        return None

    def train_step(self, batch: Any, step: int) -> dict[str, float]:
        """One step (``step`` = steps done before it, 0-based): losses, ``ctx.backward_step``
        once per optimiser; returns scalars for the log, including "loss"."""
        raise NotImplementedError(f"stage {self.name!r} does not define train_step()")

    def evaluate(self, models: dict[str, nn.Module], loader: Any) -> dict[str, float]:
        """Held-out metrics (means over ``loader``); models are unwrapped and in eval mode."""
        raise NotImplementedError(f"stage {self.name!r} has an eval set but no evaluate()")

    def model_spec(self) -> dict[str, Any]:
        """Everything needed to rebuild the networks for inference (stored in checkpoints)."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """This process's state, beyond models, optimisers and the global RNGs, that an exact
        resume needs (e.g. ``{"gen": self._gen.get_state()}``); tensors and plain values only.
        Saved per rank in last.pt, handed back to ``load_extra_state`` on resume."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``extra_state`` returned (called on resume, after build_models)."""

    # -- non-training stages --
    def run(self) -> None:
        raise NotImplementedError(f"stage {self.name!r} is a non-training stage without run()")

    # -- earlier outputs --
    def stage_dir(self, name: str) -> Path:
        return self.run_dir / name

    def require_output(self, name: str) -> Path:
        """The folder of earlier stage ``name``'s finished output; a clear error if missing."""
        d = self.stage_dir(name)
        status = read_status(d)
        if status is None or status.get("status") != "done":
            cfg_arg = str(self.ctx.config_path) if self.ctx.config_path else "FILE"
            state = "missing" if status is None else f"unfinished ({status.get('status')})"
            raise StageOutputMissing(
                f"stage {self.name!r} needs the output of stage {name!r} in {d} ({state}); "
                f"make it with: jr2net train {name} --config {cfg_arg} --out {self.run_dir}"
            )
        return d

    @classmethod
    def is_done(cls, run_dir: Path) -> bool:
        status = read_status(Path(run_dir) / cls.name)
        return bool(status and status.get("status") == "done")


# ---- registry ------------------------------------------------------------------------------------

_REGISTRY: dict[str, type[Stage]] = {}


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make ``cls`` runnable as ``jr2net train <cls.name>``."""
    if not (isinstance(cls, type) and issubclass(cls, Stage)) or not cls.name:
        raise TypeError("register_stage takes a Stage subclass with a non-empty name")
    _REGISTRY[cls.name] = cls
    return cls


def stage_module_exists(name: str) -> bool:
    return importlib.util.find_spec(f"{__package__}.{name}") is not None


def get_stage(name: str) -> type[Stage]:
    """The registered stage ``name`` (importing ``stages/<name>.py`` on first use)."""
    if name not in _REGISTRY and name in STAGE_HELP and stage_module_exists(name):
        importlib.import_module(f"{__package__}.{name}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in STAGE_ORDER or name in ABLATIONS:
        raise StageNotImplemented(f"stage {name!r} is not implemented in this version")
    known = ", ".join([*STAGE_ORDER, *ABLATIONS, *sorted(set(_REGISTRY) - set(STAGE_HELP))])
    raise ValueError(f"unknown stage {name!r}; stages: {known}")
