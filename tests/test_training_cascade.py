"""The cascade runner: stages in order, finished ones skipped, --force redoes them."""

from __future__ import annotations

from pathlib import Path

import pytest

from jr2net.training.cascade import cascade_stages, run_cascade
from jr2net.training.config import ABLATIONS, STAGE_ORDER, RunConfig, apply_overrides
from jr2net.training.stages.base import (
    Stage,
    StageNotImplemented,
    StageOutputMissing,
    read_status,
    register_stage,
    stage_module_exists,
)
from jr2net.training.trainer import Trainer

# An empty data selection keeps the real prepare stage instant.
EMPTY = ["run.device=cpu", "run.face_model=generic", "run.stages=[prepare]",
         "data.shared_videos=[]", "data.shared_photos=[]"]


def test_cascade_runs_then_skips_then_forces(tmp_path: Path, capsys) -> None:
    cfg = apply_overrides(RunConfig(), EMPTY)
    assert run_cascade(cfg, tmp_path) == {"prepare": {"status": "done", "step": 0, "best": None}}
    assert read_status(tmp_path / "prepare")["status"] == "done"
    assert run_cascade(cfg, tmp_path) == {"prepare": {"status": "skipped"}}
    assert "skip prepare: already done" in capsys.readouterr().err
    before = read_status(tmp_path / "prepare")["time"]
    assert run_cascade(cfg, tmp_path, force=True)["prepare"]["status"] == "done"
    assert "already done" not in capsys.readouterr().err
    assert read_status(tmp_path / "prepare")["time"] > before  # redone, not reported as done


@register_stage
class AfterPrepare(Stage):
    """Reads the prepare output (a non-training stage, so the test stays quick)."""

    name = "toy_after_prepare"
    requires = ("prepare",)
    non_training = True
    found: Path | None = None

    def run(self) -> None:
        type(self).found = self.require_output("prepare")


def test_a_later_stage_needs_then_finds_the_prepare_output(tmp_path: Path) -> None:
    cfg = apply_overrides(RunConfig(), EMPTY)
    with pytest.raises(StageOutputMissing, match="make it with: jr2net train prepare --config"):
        Trainer("toy_after_prepare", cfg, tmp_path).run()
    run_cascade(cfg, tmp_path)
    assert Trainer("toy_after_prepare", cfg, tmp_path).run()["status"] == "done"
    assert AfterPrepare.found == tmp_path / "prepare"


def test_cascade_order_and_unimplemented_stages(tmp_path: Path) -> None:
    cfg = apply_overrides(RunConfig(), ["run.stages=[recnet,prepare]", "run.ablations=[baseline]"])
    assert cascade_stages(cfg) == ["prepare", "recnet", "baseline"]
    missing = [n for n in (*STAGE_ORDER, *ABLATIONS) if not stage_module_exists(n)]
    if not missing:
        pytest.skip("every cascade stage is implemented")
    name = missing[0]
    key = "run.stages=[prepare," if name in STAGE_ORDER else "run.ablations=["
    cfg = apply_overrides(RunConfig(), [*EMPTY, f"{key}{name}]"])
    with pytest.raises(StageNotImplemented, match=f"{name} not implemented in this version"):
        run_cascade(cfg, tmp_path)
    assert not (tmp_path / "prepare").exists()  # refused before anything ran
