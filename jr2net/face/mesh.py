"""Triangle-mesh operators: vertex normals, the vertex-face normal operator, vertex adjacency.

One home for them (torch, plus a numpy twin for the float64 solvers). Normals are area-weighted
sums of incident face normals, oriented by the faces' winding (counter-clockwise seen from outside
-> outward).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def vertex_normals(verts: Tensor, faces: Tensor) -> Tensor:
    """Unit vertex normals of ``verts [B,V,3]`` (or ``[V,3]``), weighting faces by their area.

    Orientation follows the faces' winding (counter-clockwise seen from outside -> outward).
    """
    if verts.dim() == 2:
        return vertex_normals(verts.unsqueeze(0), faces)[0]
    f = faces.long()
    v0, v1, v2 = verts[:, f[:, 0]], verts[:, f[:, 1]], verts[:, f[:, 2]]
    fn = torch.cross(v1 - v0, v2 - v0, dim=-1)  # length = 2·area: area weighting for free
    normals = torch.zeros_like(verts)
    for c in range(3):
        normals = normals.index_add(1, f[:, c], fn)
    return F.normalize(normals, dim=-1, eps=1e-12)


def vertex_normals_np(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """numpy twin of :func:`vertex_normals` for one mesh ``[V,3]`` (any float dtype)."""
    fn = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    n = np.zeros_like(verts)
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def normal_operator(faces: Tensor, n_vertices: int) -> Tensor:
    """Sparse vertex-face incidence ``[V, F]`` (CSR): ``op @ face_normals`` sums incident faces."""
    f = faces.long()
    rows = f.reshape(-1)
    cols = torch.arange(f.shape[0]).repeat_interleave(3)
    op = torch.sparse_coo_tensor(
        torch.stack([rows, cols]),
        torch.ones(rows.numel()),
        (n_vertices, f.shape[0]),
        check_invariants=True,
    )
    return _to_csr(op)


def _to_csr(op: Tensor) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": it is fine for spmm
        warnings.simplefilter("ignore", UserWarning)
        return op.coalesce().to_sparse_csr()


def fast_vertex_normals(verts: Tensor, faces: Tensor, op: Tensor) -> Tensor:
    """Unit area-weighted vertex normals ``[V,3]`` of ``verts [V,3]`` via ``normal_operator``.

    Same result as :func:`vertex_normals`, several times faster per frame.
    """
    f = faces.long()
    v0, v1, v2 = (verts.index_select(0, f[:, k]) for k in range(3))  # ~2x cheaper than verts[idx]
    fn = torch.linalg.cross(v1 - v0, v2 - v0)
    return F.normalize(op @ fn, dim=-1, eps=1e-12)


def vertex_adjacency(faces: Tensor, n_vertices: int) -> Tensor:
    """Row-normalised vertex adjacency (sparse CSR ``[V, V]``) of a triangle mesh."""
    f = faces.long()
    i = torch.cat([f[:, 0], f[:, 1], f[:, 2], f[:, 1], f[:, 2], f[:, 0]])
    j = torch.cat([f[:, 1], f[:, 2], f[:, 0], f[:, 0], f[:, 1], f[:, 2]])
    A = torch.sparse_coo_tensor(
        torch.stack([i, j]), torch.ones(i.numel()), (n_vertices, n_vertices), check_invariants=True
    ).coalesce()
    vals = torch.ones_like(A.values())  # duplicates collapse to one edge
    deg = torch.zeros(n_vertices).index_add_(0, A.indices()[0], vals).clamp_min(1)
    vals = vals / deg[A.indices()[0]]
    return _to_csr(
        torch.sparse_coo_tensor(A.indices(), vals, (n_vertices, n_vertices), check_invariants=True)
    )


class MeshOperators:
    """The per-mesh operators a session uses every frame, built once per mesh.

    ``faces_long`` (int64 faces), ``normal_op`` (see :func:`normal_operator`) and ``adjacency``
    (see :func:`vertex_adjacency`); :meth:`normals` is :func:`fast_vertex_normals` on this mesh.
    """

    def __init__(self, faces: Tensor, n_vertices: int) -> None:
        self.faces_long = faces.long()
        self.n_vertices = int(n_vertices)
        self.normal_op = normal_operator(faces, n_vertices)
        self.adjacency = vertex_adjacency(faces, n_vertices)

    def normals(self, verts: Tensor) -> Tensor:
        """Unit vertex normals ``[V,3]`` of ``verts [V,3]`` on this mesh."""
        return fast_vertex_normals(verts, self.faces_long, self.normal_op)

    def smooth(self, values: Tensor, passes: int = 1) -> Tensor:
        """``passes`` rounds of neighbour averaging of per-vertex ``values [V,C]``."""
        for _ in range(passes):
            values = self.adjacency @ values
        return values
