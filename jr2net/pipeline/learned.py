"""The learned reenactment path (DESIGN §1): RecNet (or the fitter) + DCNet, served like geometric.

Checkpoints: a DCNet checkpoint is a ``jr2net-checkpoint/1`` file of stage ``dcnet`` whose
``model_spec`` (``dcnet_spec``) rebuilds the generator and whose face-model hash must be the
face model's in use; ``load_dcnet`` refuses anything else with a ``CheckpointError``.
"""

from __future__ import annotations

import dataclasses
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
