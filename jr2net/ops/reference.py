"""Pure-PyTorch references of every kernel in ``jr2net.ops`` (same signatures, autograd for free).

They define the semantics the C++/CUDA kernels must reproduce; tests compare the two.
"""

from __future__ import annotations

import torch

# ---- rasterize / interpolate ------------------------------------------------------------------

# ---- sh_shading / depth_warp / correspondence_warp -------------------------------------------
