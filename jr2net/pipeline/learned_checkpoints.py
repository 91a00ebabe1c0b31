"""The learned path's checkpoints: DCNet's ``model_spec``, loading and refusing its checkpoint
files, and finding a run folder's networks (split from ``learned``, which re-exports them).

A DCNet checkpoint is a ``jr2net-checkpoint/1`` file of stage ``dcnet`` whose ``model_spec``
(``dcnet_spec``) rebuilds the generator and whose face-model hash must be the face model's in
use; ``load_dcnet`` refuses anything else with a ``CheckpointError``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from jr2net.face.model import FaceModel

DCNET_KIND = "dcnet"


def dcnet_spec(config, conditions: str = "fitter", light: str = "driving") -> dict[str, Any]:
    """What rebuilds a DCNet generator (a checkpoint's ``model_spec``): its ``DCNetConfig`` and
    how its training conditions were made."""
    cfg = dataclasses.asdict(config)
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
    return {"kind": DCNET_KIND, "config": cfg, "conditions": conditions, "light": light}


def build_dcnet(spec: dict[str, Any]):  # -> jr2net.models.dcnet.DCNet
    """An untrained DCNet with the architecture ``spec`` describes."""
    from jr2net.models.dcnet import DCNet, DCNetConfig

    if not isinstance(spec, dict) or spec.get("kind") != DCNET_KIND or "config" not in spec:
        raise ValueError(f"not a DCNet model_spec: {spec!r}")
    known = {f.name for f in dataclasses.fields(DCNetConfig)}
    unknown = sorted(set(spec["config"]) - known)
    if unknown:
        raise ValueError(f"DCNet model_spec has unknown config keys {unknown}")
    return DCNet(DCNetConfig(**spec["config"]))


def load_dcnet(
    path: str | Path, face_model: FaceModel, *, device: torch.device | str = "cpu"
):  # -> tuple[DCNet, dict]
    """The trained generator of a DCNet checkpoint (eval mode, frozen) and its ``model_spec``.

    Raises FileNotFoundError (no file) or ``CheckpointError`` (corrupt file, another stage,
    another face model: both hashes named, weights that do not fit the spec).
    """
    from jr2net.training.checkpoints import CheckpointError, check_face_model, load_checkpoint

    ckpt = load_checkpoint(path)
    if ckpt["stage"] != DCNET_KIND:
        raise CheckpointError(f"{path} is a {ckpt['stage']!r} checkpoint, not a DCNet one")
    check_face_model(ckpt, face_model.sha256, path)
    state = (ckpt.get("models") or {}).get("generator")
    if state is None:
        raise CheckpointError(f"{path}: no 'generator' weights in the checkpoint")
    try:
        net = build_dcnet(ckpt["model_spec"])
        net.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: DCNet weights do not fit the spec ({first})") from None
    return net.to(device).eval().requires_grad_(False), ckpt["model_spec"]


HOW_TO_ENABLE = (
    "mode 'learned' needs trained networks: start the server with --checkpoints RUN (a training "
    "run folder with dcnet/best.pt, and recnet/best.pt to replace the fitter) or --dcnet FILE "
    "[--recnet FILE]; `jr2net reenact --mode learned` takes the same flags"
)


class ModeNotConfigured(ValueError):
    """Mode ``learned`` was asked for but no DCNet checkpoint is configured."""


def resolve_checkpoints(checkpoints: Any) -> dict[str, Path]:
    """Network name -> checkpoint file from a run folder, a DCNet file or a name -> file mapping.

    A run folder gives ``dcnet/best.pt`` (required) and ``recnet/best.pt`` / ``etnet/best.pt``
    (when present); a mapping may name the run folder as ``"run"``, its other entries win.
    Raises ``ModeNotConfigured`` (a ValueError saying how to enable the mode) when there is no
    DCNet checkpoint (a run folder without ``dcnet/best.pt`` included), and FileNotFoundError
    naming a checkpoint file given explicitly that does not exist."""
    if checkpoints is None or checkpoints == "" or checkpoints == {}:
        raise ModeNotConfigured(HOW_TO_ENABLE)
    given = dict(checkpoints) if isinstance(checkpoints, Mapping) else {"run": checkpoints}
    found: dict[str, Path] = {}
    run = given.pop("run", None)
    if run:
        root = Path(run)
        if root.is_dir():
            found = {n: root / n / "best.pt" for n in ("recnet", "dcnet", "etnet")}
            found = {n: p for n, p in found.items() if p.is_file() or n == "dcnet"}
        else:
            found = {"dcnet": root}
    found.update({str(k): Path(v) for k, v in given.items() if v})
    unknown = sorted(set(found) - {"recnet", "dcnet", "etnet"})
    if unknown:
        raise ValueError(f"unknown checkpoint names {unknown}; use recnet, dcnet, etnet")
    if "dcnet" not in found:
        raise ModeNotConfigured(HOW_TO_ENABLE)
    if run and "dcnet" not in given and not found["dcnet"].is_file():
        raise ModeNotConfigured(f"{HOW_TO_ENABLE} (there is no {found['dcnet']})")
    for name, path in found.items():
        if not path.is_file():
            raise FileNotFoundError(f"{name} checkpoint not found: {path}")
    return found
