"""Run-time SIMD dispatch: every vectorised copy of the CPU kernels matches the references.

The kernels pick AVX-512, AVX2 or baseline x86-64 copies of their hot loops at run time
(``jr2net._C.simd_level()``); ``JR2NET_SIMD`` lowers the choice, so one AVX-512 machine covers the
copies an AVX2-only CPU runs. Each level reruns the reference comparisons (exact ids and covisible
masks, allclose values, forward and backward) in a fresh process, since the level is read once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch  # noqa: F401  (loads libtorch before the extension)

from jr2net import _C

LEVELS = ("baseline", "avx2", "avx512")
TESTS = Path(__file__).resolve().parent
KERNEL_TESTS = ["test_warp.py", "test_sh_shading.py", "test_rasterize.py", "test_interpolate.py"]


def _run(code: str, level: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JR2NET_SIMD=level)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


def test_cpu_level_is_one_of_the_known_levels():
    assert _C.cpu_simd_level() in LEVELS
    assert LEVELS.index(_C.simd_level()) <= LEVELS.index(_C.cpu_simd_level())


@pytest.mark.parametrize("level", LEVELS)
def test_environment_lowers_the_level_and_never_raises_it(level):
    proc = _run("import torch\nfrom jr2net import _C; print(_C.simd_level(), _C.cpu_simd_level())", level)
    assert proc.returncode == 0, proc.stderr
    got, cpu = proc.stdout.split()
    assert got == LEVELS[min(LEVELS.index(level), LEVELS.index(cpu))]


def test_unknown_level_is_a_value_error_naming_the_variable():
    proc = _run(
        "import torch\nfrom jr2net import _C\n"
        "try:\n    _C.simd_level()\nexcept ValueError as e:\n    print('ValueError', e)\n",
        "sse9",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ValueError") and "JR2NET_SIMD" in proc.stdout


@pytest.mark.parametrize("level", LEVELS)
def test_every_simd_level_matches_the_references(level):
    if LEVELS.index(level) > LEVELS.index(_C.cpu_simd_level()):
        pytest.skip(f"this CPU has no {level}")
    env = dict(os.environ, JR2NET_SIMD=level)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
           *(str(TESTS / t) for t in KERNEL_TESTS),
           "-k", "matches_reference or gradcheck or backward_through"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout
