"""Fuzzing in the suite: every input kept in tests/fuzz/corpus/ (seeds and the crashes found) is
replayed through its target, then short bounded runs: atheris (libFuzzer) on image decoding and
on mid-stream messages, the random-mutation loop on first messages. The long runs are
``python -m benchmarks.fuzz``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from benchmarks.fuzz import (
    CORPUS,
    TARGETS,
    ServerTargets,
    corpus_inputs,
    have_atheris,
    image_target,
    run_random,
)
from jr2net.paths import PROJECT_ROOT


@pytest.fixture(scope="module")
def server_targets():
    targets = ServerTargets()
    yield targets
    targets.close()


def test_every_target_has_a_corpus():
    for target in TARGETS:
        assert corpus_inputs(target), f"no inputs in {CORPUS / target}"


def test_image_corpus_replays_cleanly():
    for path, data in corpus_inputs("image"):
        try:
            image_target(data)
        except Exception as exc:
            raise AssertionError(f"{path.name}: {type(exc).__name__}: {exc}") from None


@pytest.mark.parametrize("target", ["first", "frame"])
def test_server_corpus_replays_cleanly(server_targets, target):
    fn = getattr(server_targets, f"{target}_target")
    for path, data in corpus_inputs(target):
        try:
            fn(data)
        except AssertionError as exc:
            raise AssertionError(f"{path.name}: {exc}") from None


def test_a_contract_break_is_reported_as_a_crash_and_saved(tmp_path, monkeypatch):
    """The harness can fail: a decoder answer of the wrong kind is a crash, saved to crash_dir."""
    import numpy as np

    from benchmarks import fuzz

    monkeypatch.setattr("jr2net.protocol.decode_image", lambda *a, **k: np.zeros((2, 2), np.uint8))
    monkeypatch.setattr(fuzz, "corpus_inputs", lambda target: [])  # mutate from b"" only
    report = fuzz.run_random("image", seconds=5, runs=50, crash_dir=tmp_path)
    assert report["crash"] and "decode_image returned" in report["crash"]["error"]
    assert len(list(tmp_path.iterdir())) == 1


def test_random_mutation_of_first_messages_finds_no_crash(tmp_path):
    report = run_random("first", seconds=6, runs=3000, crash_dir=tmp_path)
    assert report["crash"] is None, report
    assert report["inputs"] > len(corpus_inputs("first"))


@pytest.mark.parametrize("target, seconds", [("image", 8), ("frame", 6)])
def test_bounded_atheris_run_finds_no_crash(tmp_path, target, seconds):
    assert have_atheris(), "atheris is in requirements.txt: pip install -r requirements.txt"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.fuzz", "--target", target, "--engine", "atheris",
         "--seconds", str(seconds), "--crash-dir", str(tmp_path)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Done" in done.stderr and not list(tmp_path.iterdir())
