"""The whole cascade: the configured stages in order, each skipped when its output exists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import ABLATIONS, STAGE_ORDER, RunConfig, stage_section
from .stages.base import StageNotImplemented, get_stage, read_status
from .trainer import Trainer, make_context, note


def cascade_stages(cfg: RunConfig) -> list[str]:
    """``run.stages`` in cascade order, then ``run.ablations``."""
    stages = [s for s in STAGE_ORDER if s in cfg.run.stages]
    return stages + [a for a in ABLATIONS if a in cfg.run.ablations]


def run_cascade(
    cfg: RunConfig,
    run_dir: str | Path,
    force: bool = False,
    config_path: str | Path | None = None,
) -> dict[str, Any]:
    """Run ``cascade_stages(cfg)`` in order; a finished stage is skipped unless ``force``, an
    unfinished one (or one whose configured steps were raised) is resumed. Every stage is
    checked to be implemented before anything runs."""
    run_dir = Path(run_dir)
    names = cascade_stages(cfg)
    if not names:
        raise ValueError("run.stages and run.ablations are empty: nothing to run")
    missing = []
    classes = {}
    for name in names:
        try:
            classes[name] = get_stage(name)
        except StageNotImplemented:
            missing.append(name)
    if missing:
        keep = [n for n in cfg.run.stages if n not in missing]
        raise StageNotImplemented(
            f"stage(s) {', '.join(missing)} not implemented in this version; run the others "
            f"with run.stages=[{','.join(keep)}] run.ablations=[]"
        )
    ctx = make_context(cfg, config_path)
    results: dict[str, Any] = {}
    note(f"cascade in {run_dir}: {' -> '.join(names)}", ctx)
    for name in names:
        cls = classes[name]
        status = read_status(run_dir / name) or {}
        more = not cls.non_training and status.get("step", 0) < stage_section(cfg, name).steps
        if status.get("status") == "done" and not force and not more:
            note(f"skip {name}: already done in {run_dir / name} (--force redoes it)", ctx)
            results[name] = {"status": "skipped"}
            continue
        partial = (run_dir / name / "last.pt").exists() or (run_dir / name / "stage.json").exists()
        note(f"run {name}{' (resuming)' if partial and not force else ''}", ctx)
        result = Trainer(cls, cfg, run_dir, resume=partial and not force, force=force, ctx=ctx).run()
        results[name] = result
        if result["status"] != "done":
            note(f"cascade stopped in {name} ({result['status']})", ctx)
            break
    return results
