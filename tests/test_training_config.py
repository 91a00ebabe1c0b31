"""Run configs, overrides, checkpoint files and the ``jr2net train`` command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jr2net.training.checkpoints import (
    FORMAT,
    CheckpointError,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from jr2net.training.config import (
    ABLATIONS,
    STAGE_ORDER,
    ConfigError,
    RunConfig,
    apply_overrides,
    from_dict,
    load_config,
    to_dict,
)
from jr2net.training.stages.base import (
    StageNotImplemented,
    StepSampler,
    get_stage,
    lr_factor,
    stage_module_exists,
)

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "training" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert from_dict(RunConfig, to_dict(cfg)) == cfg  # round trip


def test_tiny_and_full_configs_have_their_sizes() -> None:
    names = {p.name for p in CONFIGS}
    assert {"tiny.yaml", "recnet_full.yaml"} <= names
    tiny = load_config(CONFIGS[0].parent / "tiny.yaml")
    full = load_config(CONFIGS[0].parent / "recnet_full.yaml")
    assert (tiny.recnet.backbone, tiny.data.crop_size) == ("resnet18", 128)
    assert (full.recnet.backbone, full.data.crop_size) == ("resnet50", 224)


def test_unknown_key_in_yaml_is_named(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("recnet:\n  steps: 3\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"'recnet\.learning_rate'.*valid keys in recnet: steps"):
        load_config(p)
    p.write_text("recnett:\n  steps: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'recnett'"):
        load_config(p)


def test_wrong_type_names_key_and_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"recnet\.steps: expected int, got 'ten'"):
        from_dict(RunConfig, {"recnet": {"steps": "ten"}})
    with pytest.raises(ConfigError, match=r"run\.amp: expected bool"):
        from_dict(RunConfig, {"run": {"amp": "yes please"}})
    with pytest.raises(ConfigError, match=r"run\.device: expected one of \['auto', 'cpu', 'cuda'\]"):
        from_dict(RunConfig, {"run": {"device": "gpu"}})
    with pytest.raises(ConfigError, match=r"recnet\.betas\[1\]: expected float"):
        from_dict(RunConfig, {"recnet": {"betas": [0.9, "x"]}})
    with pytest.raises(ConfigError, match=r"run\.stages: unknown stage"):
        from_dict(RunConfig, {"run": {"stages": ["prepare", "recnett"]}})


def test_overrides_parse_yaml_values() -> None:
    cfg = apply_overrides(
        RunConfig(),
        ["recnet.lr=1e-4", "recnet.steps=10", "run.amp=false", "run.stages=[prepare,recnet]",
         "data.synthetic.size=7", "run.face_model=generic"],
    )
    assert cfg.recnet.lr == 1e-4 and cfg.recnet.steps == 10 and cfg.run.amp is False
    assert cfg.run.stages == ["prepare", "recnet"] and cfg.data.synthetic.size == 7
    assert RunConfig().recnet.steps != 10  # the original is untouched


@pytest.mark.parametrize(
    "override, message",
    [
        ("recnet.lrr=1", r"unknown config key 'recnet\.lrr'; valid keys in recnet"),
        ("nosuch.x=1", r"unknown config key 'nosuch'; valid keys: run, data"),
        ("recnet.steps=many", r"recnet\.steps: expected int"),
        ("recnet.lr.x=1", r"'recnet\.lr' is a value, not a section"),
        ("recnet.steps", r"not key=value"),
        ("recnet.steps=[1", r"not valid YAML"),
        ("recnet.steps=0", r"recnet\.steps: must be >= 1"),
    ],
)
def test_bad_override_is_a_clear_error(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        apply_overrides(RunConfig(), [override])


def test_checkpoint_round_trip_and_bad_files(tmp_path: Path) -> None:
    payload = {
        "stage": "x", "step": 3, "models": {"m": {"w": torch.ones(2)}}, "config": {},
        "face_model": {"name": "generic", "sha256": "a" * 64}, "model_spec": {"k": 1},
    }
    p = save_checkpoint(tmp_path / "c.pt", payload)
    ck = load_checkpoint(p, expect_face_model_sha256="a" * 64)
    assert ck["format"] == FORMAT and torch.equal(ck["models"]["m"]["w"], torch.ones(2))
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file is gone

    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a JR2Net checkpoint"):
        load_checkpoint(trunc)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"hello, not a checkpoint")
    with pytest.raises(CheckpointError, match="not a JR2Net checkpoint"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="no 'format' key"):
        load_checkpoint(other)
    torch.save({**payload, "format": "jr2net-checkpoint/99"}, other)
    with pytest.raises(CheckpointError, match="unsupported checkpoint format"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(p, expect_face_model_sha256="b" * 64)
    assert "a" * 64 in str(err.value) and "b" * 64 in str(err.value)


def test_rng_state_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    import random

    import numpy as np

    state = capture_rng()
    p = save_checkpoint(tmp_path / "r.pt", {
        "stage": "x", "step": 0, "models": {}, "config": {}, "face_model": {},
        "model_spec": {}, "rng": state,
    })
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng(load_checkpoint(p)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_step_sampler_shards_the_global_batch_and_resumes() -> None:
    one = StepSampler(10, 4, seed=1)
    ranks = [StepSampler(10, 4, rank=r, world_size=2, seed=1) for r in range(2)]
    for step in range(6):  # crosses epoch boundaries (10 is not a multiple of 4)
        batch = one.global_batch_indices(step)
        assert sorted(batch[0::2] + batch[1::2]) == sorted(batch)
    it1, its = iter(one), [iter(s) for s in ranks]
    for _ in range(6):
        g = [next(it1) for _ in range(4)]
        parts = [[next(i) for _ in range(2)] for i in its]
        assert sorted(parts[0] + parts[1]) == sorted(g)
    later = iter(StepSampler(10, 4, seed=1, start_step=3))
    assert [next(later) for _ in range(4)] == one.global_batch_indices(3)
    with pytest.raises(ValueError, match="not divisible by 3"):
        StepSampler(10, 4, world_size=3)


def test_lr_factor_schedules() -> None:
    cfg = apply_overrides(RunConfig(), ["recnet.steps=100", "recnet.warmup_steps=10"]).recnet
    assert lr_factor(cfg, 0) == pytest.approx(0.1) and lr_factor(cfg, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 55) == pytest.approx(0.5) and lr_factor(cfg, 100) == pytest.approx(0.0)
    step = apply_overrides(RunConfig(), ["recnet.lr_schedule=step", "recnet.lr_step_every=5"])
    assert lr_factor(step.recnet, 4) == 1.0 and lr_factor(step.recnet, 5) == pytest.approx(0.1)


def unimplemented_stage() -> tuple[str, list[str]]:
    """A cascade stage without a module yet, and the override that selects it alone."""
    for name in (*STAGE_ORDER, *ABLATIONS):
        if not stage_module_exists(name):
            key = "run.stages" if name in STAGE_ORDER else "run.ablations"
            other = "run.ablations" if key == "run.stages" else "run.stages"
            return name, [f"{key}=[{name}]", f"{other}=[]"]
    pytest.skip("every cascade stage is implemented")


def test_unimplemented_stage_says_so() -> None:
    name, _ = unimplemented_stage()
    with pytest.raises(StageNotImplemented, match=f"'{name}' is not implemented in this version"):
        get_stage(name)


def test_unknown_stage_lists_the_stages() -> None:
    with pytest.raises(ValueError, match="unknown stage 'nope'; stages: prepare, recnet"):
        get_stage("nope")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jr2net.cli", "train", *args], capture_output=True, text=True,
        timeout=120,
    )


def test_cli_help_lists_every_stage() -> None:
    out = _cli("--help")
    assert out.returncode == 0
    for name in ("prepare", "recnet", "dcnet", "synthesize", "etnet", "recaugnet", "baseline",
                 "reccopynet", "recdatanet", "cascade", "torchrun"):
        assert name in out.stdout


def test_cli_errors_name_the_problem(tmp_path: Path) -> None:
    tiny = str(CONFIGS[0].parent / "tiny.yaml")
    out = _cli("recnet", "--config", tiny, "--out", str(tmp_path), "recnet.bogus=1")
    assert out.returncode == 2 and "'recnet.bogus'" in out.stderr
    out = _cli("recnet", "--config", str(tmp_path / "none.yaml"), "--out", str(tmp_path))
    assert out.returncode == 2 and "config file not found" in out.stderr


def test_cli_refuses_unimplemented_stages(tmp_path: Path) -> None:
    tiny = str(CONFIGS[0].parent / "tiny.yaml")
    name, select = unimplemented_stage()
    # options may follow the overrides
    out = _cli("cascade", *select, "--config", tiny, "--out", str(tmp_path))
    assert out.returncode == 2 and f"{name} not implemented in this version" in out.stderr
    out = _cli(name, "--config", tiny, "--out", str(tmp_path))
    assert out.returncode == 2 and f"'{name}' is not implemented in this version" in out.stderr
    assert not any(tmp_path.iterdir())  # refused before anything ran
