"""The mode registry: built-in modes, the unavailable 'learned' placeholder, registering a mode."""

from __future__ import annotations

import pytest

from jr2net.pipeline import registry
from jr2net.pipeline.registry import ReenactorSettings


def test_geometric_is_registered_and_learned_is_known():
    assert registry.available_modes()[0] == "geometric"
    assert registry.known_modes()[:2] == ["geometric", "learned"]
    with pytest.raises(ValueError, match="mode must be one of"):
        registry.check_mode("nope")


def test_an_unavailable_mode_is_refused_with_its_message_until_a_factory_replaces_it():
    registry.register_unavailable("test_mode_u", "mode 'test_mode_u' is not available here")
    try:
        assert "test_mode_u" in registry.known_modes()
        assert "test_mode_u" not in registry.available_modes()
        with pytest.raises(ValueError, match="not available here"):
            registry.create_reenactor("test_mode_u", ReenactorSettings())
        registry.register_mode("test_mode_u", lambda settings: "built")
        assert registry.create_reenactor("test_mode_u") == "built"
        registry.register_unavailable("test_mode_u", "too late")  # a real factory wins
        assert registry.create_reenactor("test_mode_u") == "built"
    finally:
        registry._MODES.pop("test_mode_u", None)


def test_a_registered_mode_is_created_with_its_settings_and_cannot_be_registered_twice():
    made = []

    def factory(settings: ReenactorSettings):
        made.append(settings)
        return object()

    registry.register_mode("test_mode_x", factory)
    try:
        settings = ReenactorSettings(face_model="generic", checkpoints={"dcnet": "a.pt"})
        registry.create_reenactor("test_mode_x", settings)
        assert made == [settings]
        assert "test_mode_x" in registry.available_modes()
        with pytest.raises(ValueError, match="already registered"):
            registry.register_mode("test_mode_x", factory)
    finally:
        registry._MODES.pop("test_mode_x", None)


def test_registration_validates_its_arguments():
    with pytest.raises(ValueError, match="identifier"):
        registry.register_mode("", lambda s: None)
    with pytest.raises(TypeError, match="callable"):
        registry.register_mode("test_mode_y", "not a factory")
    with pytest.raises(TypeError, match="ReenactorSettings"):
        registry.create_reenactor("geometric", {"face_model": None})
