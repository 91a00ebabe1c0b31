"""Server settings (flags > env > YAML > defaults), the reenactor factory, and protobuf generation."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from jr2net.server import protocol
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
    factory = ReenactorFactory(ServerConfig())
    assert factory.available_modes() == ["geometric"]
    with pytest.raises(ValueError, match="not available"):
        factory.get("learned")
    with pytest.raises(ValueError, match="mode must be one of"):
        factory.get("fancy")


def _generated_files(folder):
    return [folder / n for n in ("__init__.py", "jr2net_pb2.py", "jr2net_pb2_grpc.py")]


def test_generated_code_is_regenerated_when_the_proto_is_newer(tmp_path):
    out = tmp_path / "gen"
    protocol.ensure_generated(out)
    files = _generated_files(out)
    assert all(f.is_file() for f in files)
    assert "from . import jr2net_pb2" in files[2].read_text()
    stamp = files[1].stat().st_mtime
    protocol.ensure_generated(out)  # up to date: untouched
    assert files[1].stat().st_mtime == stamp
    old = protocol.proto_path().stat().st_mtime - 10
    os.utime(files[1], (old, old))  # now older than the .proto
    protocol.ensure_generated(out)
    assert files[1].stat().st_mtime > old


def test_concurrent_generation_in_two_processes_is_safe(tmp_path):
    out = tmp_path / "gen"
    code = (
        "import sys, importlib.util; from pathlib import Path\n"
        "from jr2net.server.protocol import ensure_generated\n"
        "d = ensure_generated(Path(sys.argv[1]))\n"
        "spec = importlib.util.spec_from_file_location('g', d / '__init__.py', "
        "submodule_search_locations=[str(d)])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['g'] = m; spec.loader.exec_module(m)\n"
        "import g.jr2net_pb2_grpc as grpc_mod\n"
        "assert grpc_mod.ReenactmentStub\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(out)], stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    assert sorted(f.name for f in out.iterdir() if not f.name.startswith(".")) == sorted(
        f.name for f in _generated_files(out))


def test_proto_is_found_in_the_checkout():
    assert protocol.proto_path().name == "jr2net.proto"
    assert protocol.SERVICE_NAME == "jr2net.v1.Reenactment"
