"""Face-model lookup (DESIGN §5): ``--face-model``, ``$JR2NET_FACE_MODEL``, the user cache, then
the embedded generic template; ``load_face_model`` caches loaded models per path and mtime."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from jr2net.errors import FaceModelError
from jr2net.paths import SharedDataMissingError, cache_dir, shared_path

if TYPE_CHECKING:
    from jr2net.face.model import FaceModel

ENV_VAR = "JR2NET_FACE_MODEL"


def face_models_dir() -> Path:
    """Folder of imported face models in the user cache (``<cache>/face_models``)."""
    return cache_dir() / "face_models"


def default_model_path() -> Path:
    """Where ``jr2net assets import-ict`` writes the model the lookup picks by default."""
    return face_models_dir() / "default.npz"


@dataclass(frozen=True)
class ModelChoice:
    """Which model the lookup picked: ``kind`` 'generic' or 'file', the path, and why."""

    kind: str
    path: Path | None
    reason: str

    def describe(self) -> str:
        where = "built-in generic template" if self.path is None else str(self.path)
        return f"{where} ({self.reason})"


def _npz_name(path: Path) -> str | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return str(data["name"]) if "name" in data.files else None
    except (OSError, ValueError):
        return None


def _resolve_explicit(spec: str | Path, reason: str) -> ModelChoice:
    text = str(spec)
    if text == "generic":
        return ModelChoice("generic", None, reason)
    path = Path(text).expanduser()
    if isinstance(spec, Path) or text.endswith(".npz") or os.sep in text or path.exists():
        if not path.is_file():
            raise FaceModelError(f"face model file not found: {path} ({reason})")
        return ModelChoice("file", path, reason)
    # A bare name: an imported model in the user cache.
    named = face_models_dir() / f"{text}.npz"
    if named.is_file():
        return ModelChoice("file", named, f"{reason}; imported model '{text}'")
    if text == "ict":
        default = default_model_path()
        if default.is_file() and _npz_name(default) == "ict":
            return ModelChoice("file", default, f"{reason}; imported ICT-FaceKit in the user cache")
        try:
            path = shared_path("assets", "ict_face_model.npz")
            return ModelChoice("file", path, f"{reason}; ICT-FaceKit from the shared data folder")
        except SharedDataMissingError:
            pass
        raise FaceModelError(
            "face model 'ict' is not installed; run `jr2net assets fetch` (online) or "
            "`jr2net assets import-ict DIR`"
        )
    raise FaceModelError(
        f"unknown face model {text!r}: not a file, not 'generic', and no {named} in the cache"
    )


def resolve_face_model(spec: str | Path | None = None) -> ModelChoice:
    """Apply the lookup order (explicit spec, $JR2NET_FACE_MODEL, user cache, generic)."""
    if spec is not None and str(spec) != "":
        return _resolve_explicit(spec, "given explicitly")
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return _resolve_explicit(env, f"${ENV_VAR}")
    default = default_model_path()
    if default.is_file():
        return ModelChoice("file", default, "user cache default (jr2net assets import-ict)")
    return ModelChoice(
        "generic", None, "fallback: no explicit model, no $JR2NET_FACE_MODEL, no cache"
    )


_CACHE: dict[tuple, FaceModel] = {}
_CACHE_LOCK = threading.Lock()


def load_face_model(spec: str | Path | None = None) -> FaceModel:
    """Load the face model the lookup picks (see ``resolve_face_model``), cached per path+mtime."""
    choice = resolve_face_model(spec)
    if choice.kind == "generic":
        key: tuple = ("generic",)
    else:
        assert choice.path is not None
        st = choice.path.stat()
        key = (str(choice.path.resolve()), st.st_mtime_ns, st.st_size)
    with _CACHE_LOCK:
        model = _CACHE.get(key)
        if model is not None:
            return model
    from jr2net.face.model import FaceModel

    if choice.kind == "generic":
        from jr2net.face.generic import generic_face_model

        model = FaceModel.from_arrays(generic_face_model(), name="generic")
    else:
        model = FaceModel.from_npz(choice.path)
    with _CACHE_LOCK:
        # Drop stale entries of the same path (older mtimes).
        for k in [k for k in _CACHE if len(k) == 3 and k[0] == key[0]]:
            del _CACHE[k]
        _CACHE.setdefault(key, model)
        return _CACHE[key]
