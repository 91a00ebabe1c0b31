"""Training checkpoints: one ``torch.save``d dict per file, written atomically, loaded safely.

Format ``jr2net-checkpoint/1`` (a dict):
  format, stage, step (steps completed), models {name: state_dict}, optimizers {name: state_dict},
  schedulers {name: state_dict}, scaler (GradScaler state or None), rng (see ``capture_rng``),
  config (``to_dict`` of the RunConfig), face_model {"name", "sha256"}, model_spec (dict),
  metrics (last evaluation), best {"step", "value", "metric"} or None, world_size.
"""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "jr2net-checkpoint/1"
REQUIRED_KEYS = ("format", "stage", "step", "models", "config", "face_model", "model_spec")


class CheckpointError(ValueError):
    """A checkpoint is not usable: corrupt, wrong format, or made for another face model."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (``format`` is filled in) to ``path`` atomically (tmp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, **payload}
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise ValueError(f"checkpoint payload lacks keys {missing}")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(
    path: str | Path,
    expect_face_model_sha256: str | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load a JR2Net checkpoint (weights-only unpickling); refuse another face model's checkpoint.

    Raises FileNotFoundError for a missing file and CheckpointError for a corrupt or truncated
    file, a wrong format, or a face-model hash different from ``expect_face_model_sha256``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (
        RuntimeError,
        EOFError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        ValueError,
        KeyError,
        AttributeError,
        OSError,  # a truncated zip archive
    ) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"not a JR2Net checkpoint: {path} ({first})") from None
    if not isinstance(ckpt, dict) or "format" not in ckpt:
        raise CheckpointError(f"not a JR2Net checkpoint: {path} (no 'format' key)")
    if ckpt["format"] != FORMAT:
        raise CheckpointError(
            f"{path}: unsupported checkpoint format {ckpt['format']!r} (this version reads {FORMAT!r})"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks keys {missing}")
    if expect_face_model_sha256 is not None:
        check_face_model(ckpt, expect_face_model_sha256, path)
    return ckpt


def check_face_model(ckpt: dict[str, Any], sha256: str, path: str | Path = "checkpoint") -> None:
    """Raise CheckpointError naming both hashes when ``ckpt`` was made for another face model."""
    fm = ckpt.get("face_model") or {}
    theirs = fm.get("sha256")
    if theirs != sha256:
        raise CheckpointError(
            f"{path} was trained with face model {fm.get('name', '?')!r} (sha256 {theirs}); "
            f"the face model in use has sha256 {sha256}; pass the same face model "
            "(run.face_model) or retrain"
        )


# ---- RNG state ---------------------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA) RNG states as weights-only-loadable values."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"]).astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of ``capture_rng`` (CUDA states restored when the device count matches)."""
    random.setstate(_as_tuple(state["python"]))
    npst = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": npst["bit_generator"],
            "state": {"key": npst["key"].numpy().astype(np.uint32), "pos": int(npst["pos"])},
            "has_gauss": int(npst["has_gauss"]),
            "gauss": float(npst["gauss"]),
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def _as_tuple(x: Any) -> Any:
    """Lists back to tuples (``random.setstate`` wants the nested tuple it produced)."""
    if isinstance(x, (list, tuple)):
        return tuple(_as_tuple(v) for v in x)
    return x
