"""Differentiable rendering and warping kernels (C++/CUDA in ``csrc/``, autograd wrappers here).

Signatures and conventions: DESIGN §3-§4. Pure-PyTorch references live in ``jr2net.ops.reference``.
"""

import torch  # noqa: F401  (loads libtorch before the extension)

# ---- rasterize / interpolate ------------------------------------------------------------------
from jr2net.ops.interpolate import interpolate  # noqa: E402,F401
from jr2net.ops.rasterize import rasterize  # noqa: E402,F401

# ---- sh_shading / depth_warp / correspondence_warp -------------------------------------------
from jr2net.ops.sh_shading import sh_shading  # noqa: E402,F401
from jr2net.ops.warp import correspondence_warp, depth_warp  # noqa: E402,F401
