"""Per-vertex albedo models: ``colors(γ) = mean + Σ γ_g basis[g]`` in linear RGB [0,1].

ICT-FaceKit ships no albedo basis, so for such models we build one (DESIGN §5):

* mean: a constant skin albedo per region (skin, mouth interior, eyeballs);
* basis: the first ``n_eigen`` (default 32) eigenvectors of the mesh's combinatorial graph
  Laplacian ``L = D − A`` (smallest eigenvalues = smoothest fields), each used once per RGB
  channel, so ``G = 3·n_eigen`` coefficients (row ``3k+c`` is eigenvector k in channel c).
  Eigenvector k is scaled to per-vertex RMS ``0.05 / sqrt(1 + k/4)``: a unit coefficient changes
  the albedo by ~0.05 and finer patterns cost more, so γ ~ N(0,1) gives a per-channel albedo
  spread of ~0.15 (a plausible range of skin tones), which suits an N(0,1) prior on γ.

Eigenvectors come from ``scipy.sparse.linalg.eigsh`` in shift-invert mode with a fixed start
vector and a sign convention (largest-magnitude entry positive), so the basis is deterministic.
It is cached per model hash in ``<cache>/albedo/``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from jr2net.paths import cache_dir

if TYPE_CHECKING:
    from jr2net.face.model import FaceModel

DEFAULT_N_EIGEN = 32
# Linear-ish RGB albedo means per region name (others use SKIN).
SKIN = (0.70, 0.52, 0.43)
REGION_ALBEDO = {
    "mouth_socket": (0.45, 0.20, 0.20),
    "eyeball_left": (0.80, 0.78, 0.76),
    "eyeball_right": (0.80, 0.78, 0.76),
}
_ALBEDO_VERSION = 2  # bump when the construction changes (cache key)


class AlbedoModel:
    """Linear albedo: ``mean [V,3]`` in [0,1] plus ``basis [G,V,3]``; ``colors`` clamps to [0,1]."""

    def __init__(self, mean: Tensor, basis: Tensor) -> None:
        if mean.dim() != 2 or mean.shape[1] != 3:
            raise ValueError(f"mean must be [V,3], got {tuple(mean.shape)}")
        if basis.dim() != 3 or basis.shape[1:] != mean.shape:
            raise ValueError(f"basis must be [G,{mean.shape[0]},3], got {tuple(basis.shape)}")
        self.mean = mean
        self.basis = basis

    @property
    def n_coeffs(self) -> int:
        return int(self.basis.shape[0])

    def colors(self, gamma: Tensor | None = None, batch: int = 1) -> Tensor:
        """Per-vertex albedo ``[B,V,3]`` for ``gamma [B,g≤G]`` (first g modes; None = mean)."""
        V = self.mean.shape[0]
        if gamma is None:
            return self.mean.unsqueeze(0).expand(batch, V, 3)
        if not isinstance(gamma, Tensor):
            raise TypeError(f"gamma must be a torch.Tensor, got {type(gamma).__name__}")
        if gamma.dim() != 2 or gamma.shape[1] > self.n_coeffs:
            raise ValueError(f"gamma must be [B, g<={self.n_coeffs}], got {tuple(gamma.shape)}")
        g = gamma.shape[1]
        out = self.mean.unsqueeze(0)
        if g:
            out = out + (gamma @ self.basis[:g].reshape(g, V * 3)).view(-1, V, 3)
        # Clamp with a straight-through gradient inside [0,1] only (standard clamp).
        return out.clamp(0.0, 1.0)

    def to(self, device: torch.device | str) -> AlbedoModel:
        return AlbedoModel(self.mean.to(device), self.basis.to(device))

    def subset(self, vertex_index: Tensor) -> AlbedoModel:
        """The albedo restricted to these vertices (same coefficients)."""
        idx = vertex_index.to(self.mean.device)
        return AlbedoModel(self.mean[idx].contiguous(), self.basis[:, idx].contiguous())


def mesh_laplacian(faces: np.ndarray, n_vertices: int):
    """Combinatorial graph Laplacian ``D − A`` (scipy CSR, float64) of a triangle mesh."""
    import scipy.sparse as sp

    f = np.asarray(faces, dtype=np.int64)
    i = np.concatenate([f[:, 0], f[:, 1], f[:, 2], f[:, 1], f[:, 2], f[:, 0]])
    j = np.concatenate([f[:, 1], f[:, 2], f[:, 0], f[:, 0], f[:, 1], f[:, 2]])
    adj = sp.coo_matrix((np.ones(i.size), (i, j)), shape=(n_vertices, n_vertices)).tocsr()
    adj.data[:] = 1.0  # duplicates (shared edges) summed: reset to 1
    deg = np.asarray(adj.sum(axis=1)).ravel()
    return (sp.diags(deg) - adj).tocsr()


def laplacian_eigenvectors(faces: np.ndarray, n_vertices: int, n_eigen: int) -> np.ndarray:
    """The ``n_eigen`` smoothest unit eigenvectors ``[n_eigen, V]`` of the mesh Laplacian."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import LinearOperator, eigsh, splu

    lap = mesh_laplacian(faces, n_vertices)
    n_eigen = min(n_eigen, n_vertices - 2)
    v0 = np.ones(n_vertices) / np.sqrt(n_vertices)
    v0 = v0 + 1e-3 * np.cos(np.arange(n_vertices))  # fixed, non-degenerate start vector
    # Shift-invert around a small negative σ: L − σI is positive definite (L is PSD). Our own
    # COLAMD LU is several times faster than eigsh's default factorisation on 16k vertices.
    sigma = -1e-3
    lu = splu((lap - sigma * sp.eye(n_vertices)).tocsc(), permc_spec="COLAMD")
    op_inv = LinearOperator((n_vertices, n_vertices), matvec=lu.solve, dtype=np.float64)
    vals, vecs = eigsh(lap, k=n_eigen, sigma=sigma, which="LM", v0=v0, OPinv=op_inv)
    order = np.argsort(vals, kind="stable")
    vecs = vecs[:, order].T
    peak = np.argmax(np.abs(vecs), axis=1)
    signs = np.sign(vecs[np.arange(vecs.shape[0]), peak])
    return vecs * signs[:, None]


def _region_mean(model: FaceModel) -> np.ndarray:
    V = model.n_vertices
    mean = np.tile(np.asarray(SKIN, dtype=np.float32), (V, 1))
    if model.region is not None:
        region = model.region.cpu().numpy()
        for idx, name in enumerate(model.region_names):
            if name in REGION_ALBEDO:
                mean[region == idx] = REGION_ALBEDO[name]
    return mean


def build_laplacian_albedo(model: FaceModel, n_eigen: int = DEFAULT_N_EIGEN) -> AlbedoModel:
    """The Laplacian albedo of the module docstring, read from / written to the cache by hash."""
    path = cache_dir() / "albedo" / f"{model.sha256}_v{_ALBEDO_VERSION}_n{n_eigen}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                mean, basis = data["mean"], data["basis"]
            if mean.shape == (model.n_vertices, 3) and basis.shape[1:] == mean.shape:
                return AlbedoModel(torch.from_numpy(mean), torch.from_numpy(basis))
        except (OSError, ValueError, KeyError):
            pass  # corrupt cache entry: rebuild below
    V = model.n_vertices
    vecs = laplacian_eigenvectors(model.faces.cpu().numpy(), V, n_eigen)
    k = np.arange(vecs.shape[0])
    scale = 0.05 * np.sqrt(V) / np.sqrt(1.0 + k / 4.0)  # unit vectors -> per-vertex RMS 0.05/…
    vecs = (vecs * scale[:, None]).astype(np.float32)
    basis = np.zeros((3 * vecs.shape[0], V, 3), dtype=np.float32)
    for c in range(3):
        basis[c::3, :, c] = vecs
    mean = _region_mean(model)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, mean=mean, basis=basis)
        os.replace(tmp, path)
    except OSError:
        pass  # read-only cache: just recompute next time
    return AlbedoModel(torch.from_numpy(mean), torch.from_numpy(basis))
