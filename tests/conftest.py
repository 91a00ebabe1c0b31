"""Shared pytest fixtures. Tests that need ../shared fail loudly (never skip) when it is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from jr2net.paths import shared_dir, shared_path


@pytest.fixture(scope="session")
def shared() -> Path:
    """The shared data folder (``../shared``); raises if it is missing."""
    return shared_dir()


@pytest.fixture(scope="session")
def ict_model_path() -> Path:
    return shared_path("assets", "ict_face_model.npz")


@pytest.fixture(scope="session")
def images_dir() -> Path:
    return shared_path("data", "images")


@pytest.fixture(scope="session")
def videos_dir() -> Path:
    return shared_path("data", "videos")
