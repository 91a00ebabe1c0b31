"""JR2Net: joint 3D face reconstruction and reenactment, with C++/CUDA kernels and a gRPC server."""

import ctypes as _ctypes
import os as _os
import sys as _sys

# OpenMP's default spin-waiting makes the multithreaded CPU kernels 10-20x slower on a busy
# machine (a server with several sessions is one). Must be set before libgomp loads (torch import);
# an explicit user setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The fitting solves many tiny dense systems (~100x100); a threaded BLAS only adds contention there
# (0.4 ms vs 80 ms for one solve on a busy 2-core machine). Effective only before numpy loads.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _keep_large_buffers_in_heap() -> None:
    """Stop glibc from mmap-ing (and page-faulting) every multi-MB image buffer on each frame.

    With its defaults, each 512x512 float image allocated per frame is a fresh mmap that faults
    in page by page; keeping those in the heap made allocate+fill ~4x faster here.
    Set JR2NET_NO_MALLOC_TUNING=1 to keep glibc's defaults.
    """
    if not _sys.platform.startswith("linux") or _os.environ.get("JR2NET_NO_MALLOC_TUNING") == "1":
        return
    try:
        libc = _ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's maximum on 64-bit
    libc.mallopt(m_trim_threshold, 256 << 20)


_keep_large_buffers_in_heap()

__version__ = "0.1.0"
