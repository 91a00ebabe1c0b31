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
    proc = _run(
        "import torch\nfrom jr2net import _C; print(_C.simd_level(), _C.cpu_simd_level())", level
    )
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


_RASTER_BITS = """
import hashlib, sys
import numpy as np, torch
from jr2net import _C
from jr2net.ops import rasterize
data = np.load(sys.argv[1])
v = torch.tensor(data["vertices"], dtype=torch.float32) * torch.tensor([1.0, -1.0, -1.0])
faces = torch.tensor(data["faces"], dtype=torch.int32)
h = hashlib.sha256()
for size, f, cull in ((256, 1.3, True), (200, 2.6, False), (96, 0.7, True)):
    X = (v + torch.tensor([3.0, -10.0, 550.0]))[None].contiguous()
    K = torch.tensor([[f * size, 0.4, (size - 1) / 2], [0.0, f * size, size / 2 - 1], [0, 0, 1.0]])
    for dtype in (torch.float32, torch.float64):
        r = rasterize(X.to(dtype), faces, K[None].to(dtype), (size, size), cull_backfaces=cull)
        h.update(r.numpy().tobytes())
print(_C.simd_level(), h.hexdigest())
"""


def test_rasterize_copies_give_identical_bits(ict_model_path):
    """The AVX2 / AVX-512 rasteriser copies compute the baseline's operations (no FMA contraction):
    same ids, u, v and z bit for bit on the ICT mesh (small and large triangles, both cull modes)."""
    digests = {}
    for level in LEVELS:
        if LEVELS.index(level) > LEVELS.index(_C.cpu_simd_level()):
            continue
        env = dict(os.environ, JR2NET_SIMD=level)
        proc = subprocess.run([sys.executable, "-c", _RASTER_BITS, str(ict_model_path)], env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        got, digest = proc.stdout.split()
        assert got == level
        digests[level] = digest
    assert len(set(digests.values())) == 1, digests
