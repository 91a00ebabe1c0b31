"""Server settings (flags > env > YAML > defaults) and the reenactor factory."""

from __future__ import annotations

import argparse

import pytest

from jr2net.server.config import ReenactorFactory, ServerConfig, add_arguments, load_config


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_precedence_is_flags_then_env_then_yaml_then_defaults(tmp_path):
    yaml_file = tmp_path / "server.yaml"
    yaml_file.write_text("max_sessions: 3\nmax_in_flight: 7\nidle_timeout: 12.5\nport: 6000\n")
    env = {"JR2NET_MAX_IN_FLIGHT": "5", "JR2NET_PORT": "7000", "JR2NET_PRELOAD": "false"}
    cfg = load_config(parse(["--config", str(yaml_file), "--port", "8000"]), env=env)
    assert cfg.port == 8000  # flag beats env and YAML
    assert cfg.max_in_flight == 5  # env beats YAML
    assert cfg.max_sessions == 3 and cfg.idle_timeout == 12.5  # YAML beats defaults
    assert cfg.preload is False
    assert cfg.drain_timeout == ServerConfig().drain_timeout  # default
    assert load_config(parse([]), env={}) == ServerConfig()


@pytest.mark.parametrize(
    "argv, env, yaml_text, needle",
    [
        (["--max-sessions", "0"], {}, None, "max_sessions"),
        ([], {"JR2NET_IDLE_TIMEOUT": "soon"}, None, "JR2NET_IDLE_TIMEOUT"),
        ([], {}, "max_sesions: 2\n", "unknown setting 'max_sesions'"),
        ([], {}, "- a list\n", "mapping"),
        (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], {}, None, "tls_cert"),
        (["--tls-cert", "/nonexistent.pem"], {}, None, "together"),
        (["--default-mode", "magic"], {}, None, "default_mode"),
    ],
)
def test_bad_settings_raise_value_error_naming_them(tmp_path, argv, env, yaml_text, needle):
    if yaml_text is not None:
        path = tmp_path / "bad.yaml"
        path.write_text(yaml_text)
        argv = [*argv, "--config", str(path)]
    with pytest.raises(ValueError, match=needle):
        load_config(parse(argv), env=env)


def test_token_file_is_read_and_empty_file_refused(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("abc123\n")
    assert load_config({"token_file": str(token_file)}, env={}).resolved_token() == "abc123"
    assert load_config({}, env={}).resolved_token() is None
    token_file.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        load_config({"token_file": str(token_file)}, env={}).resolved_token()


def test_learned_mode_is_refused_clearly():
    """Without checkpoints 'learned' is refused with a message naming it, whether this version
    registers it as unavailable or as a mode whose factory needs trained networks."""
    factory = ReenactorFactory(ServerConfig())
    assert factory.available_modes()[0] == "geometric"
    with pytest.raises(ValueError, match="learned"):
        factory.get("learned")
    with pytest.raises(ValueError, match="mode must be one of"):
        factory.get("fancy")


def test_factory_builds_registered_modes_with_the_server_checkpoints(tmp_path):
    from jr2net.pipeline import registry

    made = []
    registry.register_mode("test_server_mode", lambda settings: made.append(settings) or object())
    try:
        config = ServerConfig(face_model="generic", checkpoints=str(tmp_path)).validate()
        factory = ReenactorFactory(config)
        assert "test_server_mode" in factory.available_modes()
        first = factory.get("test_server_mode")
        assert factory.get("test_server_mode") is first  # built once
        assert [(s.face_model, s.checkpoints) for s in made] == [("generic", str(tmp_path))]
    finally:
        registry._MODES.pop("test_server_mode", None)
    with pytest.raises(ValueError, match="checkpoints"):
        ServerConfig(checkpoints=str(tmp_path / "missing")).validate()
