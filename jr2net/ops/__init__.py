"""Differentiable rendering and warping kernels (C++/CUDA in ``csrc/``, autograd wrappers here).

Signatures and conventions: DESIGN §3-§4. Pure-PyTorch references live in ``jr2net.ops.reference``.
"""

import torch  # noqa: F401  (loads libtorch before the extension)

# ---- rasterize / interpolate ------------------------------------------------------------------

# ---- sh_shading / depth_warp / correspondence_warp -------------------------------------------
