"""Spherical-harmonics lighting (DESIGN §3): the 9-band irradiance basis and its constants.

The basis is evaluated on unit normals n = (x, y, z) in the *camera* frame, in the order
``1, y, z, x, xy, yz, 3z²−1, xz, x²−y²`` with the irradiance constants below; light is
``θ [B,9,3]`` and shading is ``albedo ⊙ Σ_b θ_b H_b(n)``. This module is the production home of
the basis; ``jr2net.ops.reference.sh_basis_ref`` is the test oracle (same maths, same constants)
and the kernels in ``csrc/ops/sh_shading.h`` are checked against it.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Irradiance constants in the DESIGN §3 order (1, y, z, x, xy, yz, 3z²-1, xz, x²-y²).
SH_C0 = 0.886227
SH_C1 = 1.023328
SH_C2 = 0.858086
SH_C3 = 0.247708
SH_C4 = 0.429043
SH_BANDS = 9
NEUTRAL_LIGHT_DC = 1.0 / SH_C0
"""θ_0 that gives irradiance 1 everywhere (white ambient light: image = albedo)."""


def sh_basis(normals: Tensor, dim: int = 1) -> Tensor:
    """The 9 SH irradiance basis values of camera-frame normals.

    ``normals`` holds (x, y, z) along ``dim`` ([B,3,H,W] -> [B,9,H,W] by default; ``dim=-1`` for
    [..., 3] -> [..., 9]).
    """
    x, y, z = normals.unbind(dim)
    basis = [
        torch.full_like(x, SH_C0),
        SH_C1 * y,
        SH_C1 * z,
        SH_C1 * x,
        SH_C2 * x * y,
        SH_C2 * y * z,
        SH_C3 * (3 * z * z - 1),
        SH_C2 * x * z,
        SH_C4 * (x * x - y * y),
    ]
    return torch.stack(basis, dim=dim)


def irradiance(normals: Tensor, light: Tensor) -> Tensor:
    """Irradiance ``[..., 3]`` of unit camera-frame normals ``[..., 3]`` under SH light ``[9, 3]``."""
    return sh_basis(normals, dim=-1) @ light
