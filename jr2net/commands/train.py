"""``jr2net train STAGE``: train one stage of the learned cascade, or the whole cascade.

The same parser serves ``torchrun --nproc_per_node N -m jr2net.training STAGE ...``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "train"
HELP = "train a stage of the learned cascade, or the whole cascade (YAML config + overrides)"


def _epilog() -> str:
    import jr2net.training as package
    from jr2net.training.config import ABLATIONS, STAGE_HELP, STAGE_ORDER

    stages_dir = Path(package.__file__).parent / "stages"
    lines = ["stages (in cascade order, then the ablations):"]
    for name in (*STAGE_ORDER, *ABLATIONS):
        todo = "" if (stages_dir / f"{name}.py").is_file() else " [not implemented in this version]"
        lines.append(f"  {name:<11} {STAGE_HELP[name]}{todo}")
    lines += [
        "  cascade     run.stages in order (then run.ablations); a finished stage is skipped,",
        "              an unfinished one resumed (--force redoes them)",
        "",
        "Each stage writes RUN/STAGE/{last.pt, best.pt, metrics.csv, loss.png, eval.json} and",
        "reads earlier stages' outputs from RUN. Overrides: dotted config keys, YAML values, e.g.",
        "  jr2net train recnet --config training/configs/tiny.yaml --out runs/tiny recnet.lr=1e-4",
        "Multi-process (DDP; gloo on CPU, NCCL on CUDA; batch_size is the global batch):",
        "  torchrun --nproc_per_node 2 -m jr2net.training recnet --config FILE --out RUN",
    ]
    return "\n".join(lines)


class _IntermixedParser(argparse.ArgumentParser):
    """Accepts options and key=value overrides in any order (plain argparse stops collecting a
    positional list at the first option after it)."""

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from jr2net.training.config import ABLATIONS, STAGE_ORDER

    if type(parser) is argparse.ArgumentParser:
        parser.__class__ = _IntermixedParser
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _epilog()
    parser.add_argument(
        "stage", metavar="STAGE", choices=[*STAGE_ORDER, *ABLATIONS, "cascade"],
        help="a stage (listed below) or 'cascade'",
    )
    parser.add_argument("--config", type=Path, required=True, help="run configuration (YAML)")
    parser.add_argument("--out", type=Path, required=True, help="run folder RUN")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue from RUN/STAGE/last.pt")
    mode.add_argument("--force", action="store_true", help="discard RUN/STAGE and start over")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides (recnet.lr=1e-4)"
    )


def run(args: argparse.Namespace) -> int:
    import sys

    from jr2net.errors import FaceModelError
    from jr2net.training.checkpoints import CheckpointError
    from jr2net.training.config import ConfigError, load_config

    prog = "jr2net train"
    try:
        cfg = load_config(args.config, args.overrides)
    except (FileNotFoundError, ConfigError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2

    import torch.distributed as dist

    from jr2net.training.cascade import run_cascade
    from jr2net.training.stages.base import StageNotImplemented, StageOutputMissing, get_stage
    from jr2net.training.trainer import StageOutputExists, Trainer

    try:
        if args.stage == "cascade":
            if args.resume:
                print(f"{prog}: note: cascade always resumes unfinished stages", file=sys.stderr)
            results = run_cascade(cfg, args.out, force=args.force, config_path=args.config)
            ok = all(r["status"] in ("done", "skipped") for r in results.values())
            return 0 if ok else 130
        stage = get_stage(args.stage)
        result = Trainer(
            stage, cfg, args.out, resume=args.resume, force=args.force, config_path=args.config
        ).run()
        return 0 if result["status"] == "done" else 130
    except (
        StageNotImplemented,
        StageOutputMissing,
        StageOutputExists,
        CheckpointError,
        ConfigError,
        FaceModelError,
        FileNotFoundError,
    ) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
