"""Where JR2Net finds things: the project root, the shared data folder and the user cache."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class SharedDataMissingError(FileNotFoundError):
    """Raised when the ``../shared`` data folder (or a file in it) is not where it must be."""


def shared_dir() -> Path:
    """The shared data folder: ``$JR2NET_SHARED`` or ``<project root>/../shared``; fails loudly."""
    env = os.environ.get("JR2NET_SHARED")
    path = Path(env) if env else PROJECT_ROOT.parent / "shared"
    if not path.is_dir():
        raise SharedDataMissingError(
            f"shared data folder not found at {path}; set JR2NET_SHARED or check out ../shared "
            "beside the project"
        )
    return path


def shared_path(*parts: str) -> Path:
    """A file or folder inside the shared data folder; raises if it does not exist."""
    path = shared_dir().joinpath(*parts)
    if not path.exists():
        raise SharedDataMissingError(f"missing shared file: {path}")
    return path


def cache_dir() -> Path:
    """The user cache (imported face models etc.): ``$JR2NET_CACHE`` or ``~/.cache/jr2net``."""
    env = os.environ.get("JR2NET_CACHE")
    path = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "jr2net"
    return path
