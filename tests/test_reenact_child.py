"""``jr2net reenact``'s local server is a child ``jr2net serve`` process: it serves the run and is
gone afterwards, whether the run succeeds, the source has no face, the child cannot start, or the
command is interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jr2net.cli import main as cli_main
from jr2net.server import child as child_module

SMALL = ["--max-frames", "3", "--size", "128x128", "--crop-size", "64", "--no-progress"]


def _alive(pid: int) -> bool:
    """True while ``pid`` is a running (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _serve_children(parent: int) -> list[int]:
    """Pids of running ``jr2net.cli serve`` processes whose parent is ``parent``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"jr2net.cli" in cmdline and b"serve" in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture
def started(monkeypatch):
    """The ServerProcess objects the command starts (the real ones, recorded)."""
    seen: list[child_module.ServerProcess] = []
    real_start = child_module.ServerProcess.start

    def start(self):
        seen.append(self)
        return real_start(self)

    monkeypatch.setattr(child_module.ServerProcess, "start", start)
    return seen


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_reenact_runs_through_a_child_server_that_is_gone_afterwards(
    started, tmp_path, images_dir, videos_dir, ict_model_path, capsys
):
    out = tmp_path / "out.mp4"
    rc = cli_main(["reenact", "--source", str(images_dir / "obama.jpg"), "--driving",
                   str(videos_dir / "d11.mp4"), "--out", str(out), "--face-model",
                   str(ict_model_path), *SMALL])  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert len(started) == 1 and summary["server"] == started[0].address
    assert summary["outputs"] == 3 and summary["first_output_unix"] > 0
    assert 0 < summary["startup_s"] < 600
    assert started[0].process.returncode is not None and not _alive(started[0].pid)
    assert out.is_file()


def test_a_no_face_source_fails_as_before_and_leaves_no_child(
    started, tmp_path, images_dir, videos_dir, ict_model_path, capsys
):
    rc = cli_main(["reenact", "--source", str(images_dir / "s31.jpg"), "--driving",
                   str(videos_dir / "d0.mp4"), "--out", str(tmp_path / "x.mp4"), "--face-model",
                   str(ict_model_path), *SMALL])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1
    assert "INVALID_ARGUMENT" in err and "no face" in err
    assert len(started) == 1 and not _alive(started[0].pid)
    assert not (tmp_path / "x.mp4").exists()


def test_a_child_that_cannot_start_is_reported_with_its_reason(
    started, tmp_path, images_dir, videos_dir, capsys
):
    missing = tmp_path / "no_such_run"
    rc = cli_main(["reenact", "--source", str(images_dir / "obama.jpg"), "--driving",
                   str(videos_dir / "d0.mp4"), "--out", str(tmp_path / "x.mp4"), "--checkpoints",
                   str(missing), *SMALL])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    assert f"checkpoints: no such file or directory: {missing}" in err
    assert "jr2net serve, exited with code 2" in err
    assert len(started) == 1 and not _alive(started[0].pid)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_reenact_stops_its_child(
    sig, tmp_path, images_dir, videos_dir, ict_model_path
):
    cmd = [sys.executable, "-m", "jr2net.cli", "reenact", "--source", str(images_dir / "obama.jpg"),
           "--driving", str(videos_dir / "d11.mp4"), "--out", str(tmp_path / "o.mp4"),
           "--face-model", str(ict_model_path), "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        children: list[int] = []
        while not children and time.monotonic() < deadline and proc.poll() is None:
            children = _serve_children(proc.pid)
            time.sleep(0.05)
        assert children, "no child jr2net serve appeared"
        time.sleep(0.5)  # the parent is past its imports and is waiting for the child
        os.kill(proc.pid, sig)  # the parent only, not its process group
        err = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert not any(_alive(pid) for pid in children)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_handled_inside_a_weakref_callback_is_not_lost(sig):
    """The old bug: a KeyboardInterrupt raised by the signal handler while the main thread ran an
    import's weakref callback was printed as 'Exception ignored' and the run went on (exit 0)."""
    import weakref

    from jr2net.commands.reenact import Interrupts

    class Lock:
        pass

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    interrupts = Interrupts()
    interrupts.install()
    try:
        lock = Lock()
        ref = weakref.ref(lock, lambda _: (os.kill(os.getpid(), sig), sum(range(1000))))
        del lock  # the callback runs, and the Python-level handler within it
        assert ref() is None and interrupts.signum == sig
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
    finally:
        interrupts.restore()
    # restored to what was there before (SIG_IGN when the suite runs as a background job)
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_signal_cancels_the_guarded_coroutine_even_if_it_swallows_the_cancellation():
    import asyncio

    from jr2net.commands.reenact import Interrupts

    interrupts = Interrupts()
    reached = []

    async def stubborn():
        try:
            await asyncio.sleep(0.05)
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            reached.append("cancelled")  # and carries on as if nothing happened
        return "done"

    interrupts.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            asyncio.run(interrupts.guard(stubborn()))
    finally:
        interrupts.restore()
    assert reached == ["cancelled"]


def test_the_child_gets_the_network_flags_and_none_of_the_callers_server_environment(tmp_path):
    import argparse

    from jr2net.commands import serve
    from jr2net.server.config import load_config

    files = {name: tmp_path / f"{name}.pt" for name in ("recnet", "dcnet", "etnet")}
    for path in files.values():
        path.write_bytes(b"x")
    cmd = child_module.serve_command(
        1234,
        max_sessions=1,
        preload=False,
        face_model="ict",
        checkpoints=str(tmp_path),
        face_id=None,
        **{k: str(v) for k, v in files.items()},
    )
    assert cmd[2:4] == ["jr2net.cli", "serve"] and "--face-id" not in cmd
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    env = child_module.child_env(
        {
            "JR2NET_TOKEN": "secret",
            "JR2NET_CONFIG": "x.yaml",
            "JR2NET_MAX_SESSIONS": "8",
            "JR2NET_FACE_MODEL": "ict",
            "JR2NET_DETECTOR": "dlib",
            "PATH": "/bin",
        }
    )
    assert env == {"JR2NET_FACE_MODEL": "ict", "JR2NET_DETECTOR": "dlib", "PATH": "/bin"}
    config = load_config(parser.parse_args(cmd[4:]), env=env)
    assert (config.host, config.port, config.metrics_port) == ("127.0.0.1", 1234, -1)
    assert config.max_sessions == 1 and config.preload is False and config.token is None
    assert config.checkpoints == str(tmp_path) and config.face_model == "ict"
    assert {k: getattr(config, k) for k in files} == {k: str(v) for k, v in files.items()}
