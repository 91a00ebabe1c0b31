"""Server settings and the reenactor factory (a cache over ``jr2net.pipeline.registry``).

Every setting comes from, in order of precedence: a command-line flag, an environment variable
``JR2NET_<NAME>`` (e.g. ``JR2NET_MAX_SESSIONS=4``), a YAML file (``--config``; keys are the setting
names, e.g. ``max_sessions: 4``), then the default below.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import threading
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jr2net.pipeline import registry


def _registry():
    """``jr2net.pipeline.registry``, imported on first use: the settings themselves (e.g. the
    environment names ``jr2net reenact`` drops for its child server) need no pipeline code."""
    from jr2net.pipeline import registry

    return registry


@dataclass(frozen=True)
class Setting:
    """One setting's flag help; its type and default come from the ServerConfig field."""

    help: str
    metavar: str | None = None


@dataclass
class ServerConfig:
    """All server settings (see the module docstring for where they come from)."""

    host: str = "0.0.0.0"
    port: int = 50051
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9090
    tls_cert: str | None = None
    tls_key: str | None = None
    token: str | None = None
    token_file: str | None = None
    max_sessions: int = 8
    max_in_flight: int = 4
    max_concurrent_rpcs: int = 64
    max_message_bytes: int = 16 * 1024 * 1024
    max_frame_pixels: int = 4096 * 4096
    idle_timeout: float = 30.0
    write_timeout: float = 30.0
    drain_timeout: float = 20.0
    workers: int = 0
    torch_threads: int = 1
    default_mode: str = "geometric"
    face_model: str | None = None
    checkpoints: str | None = None
    recnet: str | None = None
    dcnet: str | None = None
    etnet: str | None = None
    preload: bool = True
    log_level: str = "INFO"

    def validate(self) -> ServerConfig:
        """Raise ValueError naming the first bad setting; returns self."""
        for name in (
            "max_sessions",
            "max_in_flight",
            "max_concurrent_rpcs",
            "max_message_bytes",
            "max_frame_pixels",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("idle_timeout", "write_timeout", "drain_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if not -1 <= self.metrics_port <= 65535:
            raise ValueError(
                f"metrics_port must be in -1..65535 (-1 disables), got {self.metrics_port}"
            )
        if self.torch_threads < 0:
            raise ValueError(
                f"torch_threads must be >= 0 (0: torch's default), got {self.torch_threads}"
            )
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0: one per CPU), got {self.workers}")
        modes = tuple(_registry().known_modes())
        if self.default_mode not in modes:
            raise ValueError(f"default_mode must be one of {modes}, got {self.default_mode!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.checkpoints is not None and not Path(self.checkpoints).exists():
            raise ValueError(f"checkpoints: no such file or directory: {self.checkpoints}")
        for name in ("recnet", "dcnet", "etnet"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: no such checkpoint file: {path}")
        for name in ("tls_cert", "tls_key", "token_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: no such file: {path}")
        return self

    def checkpoint_sources(self) -> str | dict[str, str] | None:
        """``checkpoints`` (a run folder or file), or, when --recnet/--dcnet are given, those
        files by network name (the run folder as ``"run"``). --etnet is the expression tracker
        of every mode (``ReenactorSettings.etnet``), not one of these."""
        files = {n: getattr(self, n) for n in ("recnet", "dcnet") if getattr(self, n)}
        if not files:
            return self.checkpoints
        return {**({"run": self.checkpoints} if self.checkpoints else {}), **files}

    @property
    def worker_count(self) -> int:
        return self.workers or max(1, os.cpu_count() or 1)

    def resolved_token(self) -> str | None:
        """The bearer token from ``token`` or the first line of ``token_file``; None = no auth."""
        if self.token:
            return self.token
        if self.token_file:
            from jr2net.server.auth import read_token_file

            return read_token_file(self.token_file)
        return None


SETTINGS: dict[str, Setting] = {
    "host": Setting("address to listen on", "ADDR"),
    "port": Setting("gRPC port (0: pick a free one)", "PORT"),
    "metrics_host": Setting("address of the Prometheus /metrics HTTP endpoint", "ADDR"),
    "metrics_port": Setting("Prometheus HTTP port (0: pick a free one, -1: disabled)", "PORT"),
    "tls_cert": Setting("PEM certificate chain file; with --tls-key enables TLS", "FILE"),
    "tls_key": Setting("PEM private key file for --tls-cert", "FILE"),
    "token": Setting(
        "require 'authorization: Bearer TOKEN' on every call but health checks", "TOKEN"
    ),
    "token_file": Setting("read the bearer token from this file (first line)", "FILE"),
    "max_sessions": Setting("concurrent streaming sessions; more get RESOURCE_EXHAUSTED", "N"),
    "max_in_flight": Setting(
        "unanswered frames admitted per stream; when full the oldest queued frame is answered "
        "FrameError DROPPED",
        "N",
    ),
    "max_concurrent_rpcs": Setting("gRPC-level cap on concurrent calls (RESOURCE_EXHAUSTED)", "N"),
    "max_message_bytes": Setting("largest request/response message in bytes", "BYTES"),
    "max_frame_pixels": Setting("largest accepted image (width*height), source or frame", "PIXELS"),
    "idle_timeout": Setting(
        "end a stream with DEADLINE_EXCEEDED after this many seconds without a message while no "
        "frame is in flight",
        "SECONDS",
    ),
    "write_timeout": Setting(
        "end a stream with DEADLINE_EXCEEDED when a reply has waited this many seconds for the "
        "client to read it (a stalled reader frees its session slot)",
        "SECONDS",
    ),
    "drain_timeout": Setting(
        "on SIGTERM/SIGINT: health NOT_SERVING, refuse new sessions (UNAVAILABLE), finish in-flight "
        "frames, stop after at most this many seconds",
        "SECONDS",
    ),
    "workers": Setting("threads running model work off the event loop (0: one per CPU)", "N"),
    "torch_threads": Setting(
        "torch intra-op threads (0: torch's default); 1 keeps concurrent sessions from "
        "oversubscribing the cores",
        "N",
    ),
    "default_mode": Setting(
        "mode for sessions that do not choose one (geometric; learned needs checkpoints)", "MODE"
    ),
    "face_model": Setting(
        "face model file (.npz); default: $JR2NET_FACE_MODEL, cache, generic", "FILE"
    ),
    "checkpoints": Setting(
        "network weights for modes that use them: a training run directory or a checkpoint file "
        "(the geometric mode needs none)",
        "PATH",
    ),
    "recnet": Setting(
        "RecNet checkpoint (replaces the fitter in mode learned; overrides RUN's)", "FILE"
    ),
    "dcnet": Setting(
        "DCNet checkpoint: enables mode learned (overrides RUN's dcnet/best.pt)", "FILE"
    ),
    "etnet": Setting(
        "ETNet checkpoint (etnet or recaugnet stage): the driving expression tracker of every mode, "
        "loaded at start; sessions opt out with option expression=fitter",
        "FILE",
    ),
    "preload": Setting("build the default reenactor at start-up so the first session is fast"),
    "log_level": Setting("logging level (DEBUG, INFO, WARNING, ERROR)", "LEVEL"),
}

_FIELDS = {f.name: f for f in fields(ServerConfig)}


def _field_type(name: str) -> type:
    default = _FIELDS[name].default
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    return str


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _coerce(name: str, value: Any, origin: str) -> Any:
    """Convert a YAML/env value to the setting's type, or raise ValueError naming it and its origin."""
    if value is None:
        return None
    kind = _field_type(name)
    try:
        if kind is bool:
            return value if isinstance(value, bool) else _parse_bool(str(value))
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError("not an integer")
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{origin}: bad value {value!r} for {name} ({exc})") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one flag per setting; defaults are SUPPRESSed so precedence can apply."""
    parser.add_argument(
        "--config",
        metavar="YAML",
        default=argparse.SUPPRESS,
        help="YAML file of settings (keys as the flag names with underscores, e.g. max_sessions: 4)",
    )
    for name, setting in SETTINGS.items():
        flag = "--" + name.replace("_", "-")
        default = _FIELDS[name].default
        env = f"JR2NET_{name.upper()}"
        help_text = f"{setting.help} [env {env}; default {default}]"
        if _field_type(name) is bool:
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            parser.add_argument(
                flag,
                type=_field_type(name),
                metavar=setting.metavar,
                default=argparse.SUPPRESS,
                help=help_text,
            )


def load_config(
    args: argparse.Namespace | dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    yaml_path: str | os.PathLike | None = None,
) -> ServerConfig:
    """Merge defaults < YAML < environment < flags into a validated ServerConfig.

    ``args`` holds only the flags actually given (see :func:`add_arguments`); ``yaml_path`` defaults
    to ``args.config``; ``env`` defaults to ``os.environ``.
    """
    flags = dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args or {})
    env = os.environ if env is None else env
    yaml_path = yaml_path or flags.pop("config", None) or env.get("JR2NET_CONFIG")
    flags.pop("config", None)
    values: dict[str, Any] = {}
    if yaml_path:
        import yaml

        path = Path(yaml_path)
        if not path.is_file():
            raise ValueError(f"--config: no such file: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(
                f"--config {path}: expected a mapping of settings, got {type(data).__name__}"
            )
        for key, value in data.items():
            name = str(key).replace("-", "_")
            if name not in _FIELDS:
                raise ValueError(f"--config {path}: unknown setting {key!r}")
            values[name] = _coerce(name, value, f"--config {path}")
    for name in _FIELDS:
        key = f"JR2NET_{name.upper()}"
        if key in env and env[key] != "":
            values[name] = _coerce(name, env[key], f"${key}")
    for name, value in flags.items():
        if name in _FIELDS and value is not None:
            values[name] = value
    return ServerConfig(**values).validate()


# Modes whose networks come from --checkpoints / --recnet / --dcnet (see ReenactorFactory).
CHECKPOINT_MODES = ("learned",)


class ReenactorFactory:
    """Builds (once, thread-safely) and caches the reenactor of each mode.

    Modes and their factories come from ``jr2net.pipeline.registry``; ``overrides`` (mode ->
    reenactor) replace construction, for embedding and tests, and make a known mode available.
    """

    def __init__(self, config: ServerConfig, overrides: dict[str, Any] | None = None) -> None:
        self.config = config
        self._cache: dict[str, Any] = dict(overrides or {})
        self._lock = threading.Lock()
        self._refused: dict[str, str] = {}
        self._build_checkpoint_modes()

    def _build_checkpoint_modes(self) -> None:
        """Modes built from network checkpoints (``CHECKPOINT_MODES``) are built now, when the
        server starts, so a corrupt file or another face model's checkpoint stops the start with
        a clear message (never the first frame); without checkpoints they are not listed, and
        their factories refuse each session with how to enable them."""
        import jr2net.pipeline.learned  # noqa: F401  (registers mode 'learned')
        from jr2net.pipeline.learned import ModeNotConfigured

        if self.config.etnet:  # the tracker: every mode loads it now (a bad file stops the start)
            for mode in _registry().available_modes():
                if mode not in self._cache and mode not in CHECKPOINT_MODES:
                    self._cache[mode] = _registry().create_reenactor(mode, self.settings())
        if self.config.checkpoint_sources() is None:
            return  # their factories refuse each session, saying how to enable them
        for mode in CHECKPOINT_MODES:
            if mode in self._cache:
                continue
            try:
                self._cache[mode] = _registry().create_reenactor(mode, self.settings())
            except ModeNotConfigured as exc:  # e.g. a run folder without dcnet/best.pt yet
                self._refused[mode] = str(exc)

    def available_modes(self) -> list[str]:
        ready = [
            m
            for m in _registry().available_modes()
            if m not in self._refused and (m not in CHECKPOINT_MODES or m in self._cache)
        ]
        return ready + [m for m in _registry().known_modes() if m not in ready and m in self._cache]

    def check_mode(self, mode: str) -> None:
        """ValueError (-> INVALID_ARGUMENT) unless this server can serve ``mode``."""
        if mode in self._cache and mode in _registry().known_modes():
            return
        if mode in self._refused:
            raise ValueError(self._refused[mode])
        _registry().check_mode(mode)

    def get(self, mode: str) -> Any:
        """The reenactor for ``mode`` (built on first use; may take seconds: call off the loop)."""
        self.check_mode(mode)
        with self._lock:
            if mode not in self._cache:
                self._cache[mode] = _registry().create_reenactor(mode, self.settings())
            return self._cache[mode]

    def settings(self) -> registry.ReenactorSettings:
        """What every mode's factory gets from this server's configuration."""
        return _registry().ReenactorSettings(
            face_model=self.config.face_model,
            checkpoints=self.config.checkpoint_sources(),
            etnet=self.config.etnet,
        )

    def loaded(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._cache)


def replace(config: ServerConfig, **changes: Any) -> ServerConfig:
    """A validated copy of ``config`` with ``changes`` applied (for tests and embedding)."""
    return dataclasses.replace(config, **changes).validate()
