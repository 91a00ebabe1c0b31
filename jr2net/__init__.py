"""JR2Net: joint 3D face reconstruction and reenactment, with C++/CUDA kernels and a gRPC server."""

import os as _os

# OpenMP's default spin-waiting makes the multithreaded CPU kernels 10-20x slower on a busy
# machine (a server with several sessions is one). Must be set before libgomp loads (torch import);
# an explicit user setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
