"""Reenactment modes by name: ``mode -> factory(settings) -> Reenactor`` (see ``pipeline.base``).

A path registers itself when its module is imported (``register_mode``); the modules of the
built-in paths are imported on the first lookup, so asking which modes exist costs nothing until
then. The server only goes through this registry: adding a mode changes no server code.

A mode may also be registered as *unavailable* with the message a client gets for it (the server
answers INVALID_ARGUMENT with it); registering a real factory under that name later replaces it.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jr2net.pipeline.base import Reenactor


@dataclass(frozen=True)
class ReenactorSettings:
    """What a mode's factory gets: everything that is not per session.

    ``face_model``: a ``FaceModel``, a lookup spec (path, ``generic``, a cached name) or None for
    the default lookup. ``checkpoints``: network name -> checkpoint file, or a training run
    directory the mode knows how to read (the geometric path ignores it). ``etnet``: an etnet or
    recaugnet checkpoint for the driving expression tracker, loaded once by each mode that takes
    it and used by its sessions unless they ask ``expression=fitter``
    (``jr2net.pipeline.etnet_tracker``). ``device``: torch device string. ``extra``: free-form
    mode options (documented per mode).
    """

    face_model: Any = None
    checkpoints: Mapping[str, str] | str | Path | None = None
    etnet: str | Path | None = None
    device: str = "cpu"
    extra: Mapping[str, str] = field(default_factory=dict)


Factory = Callable[[ReenactorSettings], Reenactor]


@dataclass(frozen=True)
class _Mode:
    factory: Factory | None
    unavailable: str = ""  # why the mode cannot be served ("" when it can)


# Modules that register the built-in modes when imported.
BUILTIN_MODULES = ("jr2net.pipeline.geometric",)

_MODES: dict[str, _Mode] = {}
_LOCK = threading.RLock()
_loaded = False


def register_mode(name: str, factory: Factory, *, replace: bool = False) -> None:
    """Register ``factory`` for mode ``name``. A name already registered with a factory needs
    ``replace=True``; one registered as unavailable is replaced silently."""
    _check_name(name)
    if not callable(factory):
        raise TypeError(f"factory for mode {name!r} must be callable, got {type(factory).__name__}")
    with _LOCK:
        old = _MODES.get(name)
        if old is not None and old.factory is not None and not replace:
            raise ValueError(f"mode {name!r} is already registered")
        _MODES[name] = _Mode(factory)


def register_unavailable(name: str, message: str) -> None:
    """Make ``name`` a known mode that cannot be served; ``create_reenactor`` raises ValueError
    with ``message``. A real factory registered for it (before or after) wins."""
    _check_name(name)
    if not isinstance(message, str) or not message:
        raise ValueError("message must be a non-empty string")
    with _LOCK:
        old = _MODES.get(name)
        if old is None or old.factory is None:
            _MODES[name] = _Mode(None, message)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or not name.isidentifier():
        raise ValueError(f"mode name must be a non-empty identifier, got {name!r}")


def _load_builtins() -> None:
    global _loaded
    with _LOCK:
        if _loaded:
            return
        _loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
        register_unavailable(
            "learned",
            "mode 'learned' (DCNet/RecAugNet) is not available in this version: the learned "
            "networks are not implemented yet; use mode 'geometric'",
        )


def known_modes() -> list[str]:
    """Every registered mode name, servable or not (registration order)."""
    _load_builtins()
    with _LOCK:
        return list(_MODES)


def available_modes() -> list[str]:
    """The modes that can be served (registration order)."""
    _load_builtins()
    with _LOCK:
        return [name for name, m in _MODES.items() if m.factory is not None]


def check_mode(mode: str) -> None:
    """ValueError naming the problem unless ``mode`` can be served."""
    _load_builtins()
    with _LOCK:
        entry = _MODES.get(mode)
        names = tuple(_MODES)
    if entry is None:
        raise ValueError(f"mode must be one of {names}, got {mode!r}")
    if entry.factory is None:
        raise ValueError(entry.unavailable)


def create_reenactor(mode: str, settings: ReenactorSettings | None = None) -> Reenactor:
    """Build the reenactor of ``mode`` (may take seconds: models, checkpoints)."""
    if settings is None:
        settings = ReenactorSettings()
    if not isinstance(settings, ReenactorSettings):
        raise TypeError(f"settings must be a ReenactorSettings, got {type(settings).__name__}")
    check_mode(mode)
    with _LOCK:
        factory = _MODES[mode].factory
    assert factory is not None
    return factory(settings)
