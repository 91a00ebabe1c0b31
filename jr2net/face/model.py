"""The linear 3D face model (DESIGN §5): mean shape + identity and expression blendshape bases.

Model space is millimetres, y up, z out of the face; +x is the subject's *left* (ICT-FaceKit).
Shapes are ``vertices + Σ α_k identity_basis[k] + Σ β_e expression_basis[e]``, batched in torch.
Which model file a command uses (the lookup order) is ``jr2net.face.model_lookup``, re-exported here.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from jr2net.errors import FaceModelError
from jr2net.face.albedo import DEFAULT_N_EIGEN, AlbedoModel, build_laplacian_albedo
from jr2net.face.mesh import vertex_normals
from jr2net.face.model_format import OPTIONAL_KEYS, REQUIRED_KEYS, validate_arrays  # noqa: F401
from jr2net.face.model_lookup import (  # noqa: F401  (the lookup, re-exported for callers)
    ENV_VAR,
    ModelChoice,
    default_model_path,
    face_models_dir,
    load_face_model,
    resolve_face_model,
)

# Arrays that define the model's geometry: the hash covers exactly these (in this order).
_HASH_KEYS = REQUIRED_KEYS + ("region", "region_names", "albedo_mean", "albedo_basis")

def _index_tensor(a: np.ndarray | None) -> Tensor | None:
    return None if a is None else torch.as_tensor(np.asarray(a, dtype=np.int64))


class FaceModel:
    """A linear face model held as CPU (or device) torch tensors; see the module docstring."""

    def __init__(
        self,
        *,
        name: str,
        vertices: Tensor,
        faces: Tensor,
        identity_basis: Tensor,
        expression_basis: Tensor,
        expression_names: Sequence[str],
        landmarks68: Tensor,
        jawline_left: Tensor | None = None,
        jawline_right: Tensor | None = None,
        uvs: Tensor | None = None,
        faces_uv: Tensor | None = None,
        region: Tensor | None = None,
        region_names: Sequence[str] = (),
        albedo: AlbedoModel | None = None,
        albedo_factory: Callable[[], AlbedoModel] | None = None,
        n_albedo: int | None = None,
        source: str = "",
    ) -> None:
        self.name = name
        self.source = source
        self.vertices = vertices
        self.faces = faces
        self.identity_basis = identity_basis
        self.expression_basis = expression_basis
        self.expression_names = [str(n) for n in expression_names]
        self.landmarks68 = landmarks68
        self.jawline_left = jawline_left
        self.jawline_right = jawline_right
        self.uvs = uvs
        self.faces_uv = faces_uv
        self.region = region
        self.region_names = [str(n) for n in region_names]
        self._albedo = albedo
        self._albedo_factory = albedo_factory
        self._n_albedo = n_albedo
        self._sha256: str | None = None
        self._lock = threading.Lock()
        # Derived models are memoised: models are treated as immutable once built.
        self._derived: dict[tuple, FaceModel] = {}

    # ---- construction / persistence ---------------------------------------------------------

    @classmethod
    def from_npz(cls, path: str | Path, name: str | None = None) -> FaceModel:
        """Load a model file in the DESIGN §5 ``.npz`` format; bad files raise FaceModelError."""
        path = Path(path)
        if not path.is_file():
            raise FaceModelError(f"face model file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise FaceModelError(f"cannot read face model {path}: {exc}") from exc
        if name is None and "name" not in arrays:
            name = path.stem
        return cls.from_arrays(arrays, name=name)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], name: str | None = None) -> FaceModel:
        """Build from a dict of numpy arrays (npz key format), validating keys and shapes."""
        a = validate_arrays(arrays)
        if name is None:
            name = str(a["name"]) if "name" in a else "unnamed"
        albedo = None
        if "albedo_mean" in a:
            albedo = AlbedoModel(
                torch.as_tensor(a["albedo_mean"], dtype=torch.float32),
                torch.as_tensor(a["albedo_basis"], dtype=torch.float32),
            )
        model = cls(
            name=name,
            source=str(a["source"]) if "source" in a else "",
            vertices=torch.as_tensor(a["vertices"], dtype=torch.float32),
            faces=torch.as_tensor(a["faces"].astype(np.int32)),
            identity_basis=torch.as_tensor(a["identity_basis"], dtype=torch.float32),
            expression_basis=torch.as_tensor(a["expression_basis"], dtype=torch.float32),
            expression_names=[str(n) for n in a["expression_names"]],
            landmarks68=_index_tensor(a["landmarks68"]),
            jawline_left=_index_tensor(a.get("jawline_left")),
            jawline_right=_index_tensor(a.get("jawline_right")),
            uvs=None if "uvs" not in a else torch.as_tensor(a["uvs"], dtype=torch.float32),
            faces_uv=None if "faces_uv" not in a else torch.as_tensor(a["faces_uv"].astype(np.int32)),
            region=_index_tensor(a.get("region")),
            region_names=[str(n) for n in a.get("region_names", [])],
            albedo=albedo,
        )
        if albedo is None:
            model._albedo_factory = lambda m=model: build_laplacian_albedo(m)
        return model

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The model as numpy arrays in the npz key format (inverse of ``from_arrays``)."""
        out: dict[str, np.ndarray] = {
            "vertices": self.vertices.detach().cpu().numpy().astype(np.float32),
            "faces": self.faces.cpu().numpy().astype(np.int32),
            "identity_basis": self.identity_basis.detach().cpu().numpy().astype(np.float32),
            "expression_basis": self.expression_basis.detach().cpu().numpy().astype(np.float32),
            "expression_names": np.array(self.expression_names, dtype=str),
            "landmarks68": self.landmarks68.cpu().numpy().astype(np.int32),
            "name": np.array(self.name),
            "units": np.array("millimetre"),
        }
        if self.source:
            out["source"] = np.array(self.source)
        for key in ("jawline_left", "jawline_right", "faces_uv"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value.cpu().numpy().astype(np.int32)
        if self.uvs is not None:
            out["uvs"] = self.uvs.cpu().numpy().astype(np.float32)
        if self.region is not None:
            out["region"] = self.region.cpu().numpy().astype(np.uint8)
            out["region_names"] = np.array(self.region_names, dtype=str)
        # Only an albedo that came with the model is stored (the Laplacian one is re-derivable).
        if self._albedo is not None and self._albedo_factory is None:
            out["albedo_mean"] = self._albedo.mean.detach().cpu().numpy().astype(np.float32)
            out["albedo_basis"] = self._albedo.basis.detach().cpu().numpy().astype(np.float32)
        return out

    def save_npz(self, path: str | Path) -> Path:
        """Write the model as an uncompressed ``.npz`` (atomically: temp file then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **self.to_arrays())
        os.replace(tmp, path)
        return path

    # ---- properties ---------------------------------------------------------------------------

    @property
    def n_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def n_faces(self) -> int:
        return int(self.faces.shape[0])

    @property
    def n_identity(self) -> int:
        return int(self.identity_basis.shape[0])

    @property
    def n_expression(self) -> int:
        return int(self.expression_basis.shape[0])

    @property
    def n_albedo(self) -> int:
        """Albedo coefficient count, known without building the (lazy) albedo basis."""
        if self._albedo is not None:
            return self._albedo.n_coeffs
        if self._n_albedo is not None:
            return self._n_albedo
        return 3 * min(DEFAULT_N_EIGEN, self.n_vertices - 2)

    @property
    def device(self) -> torch.device:
        return self.vertices.device

    @property
    def albedo(self) -> AlbedoModel:
        """The albedo model; the Laplacian one is built (or read from the cache) on first use."""
        if self._albedo is None:
            with self._lock:
                if self._albedo is None:
                    if self._albedo_factory is None:
                        raise FaceModelError(f"face model {self.name!r} has no albedo model")
                    # Built outside inference mode, so a first use under torch.inference_mode()
                    # does not leave inference tensors that later autograd code cannot use.
                    with torch.inference_mode(False):
                        self._albedo = self._albedo_factory().to(self.device)
        return self._albedo

    @property
    def sha256(self) -> str:
        """Hex SHA-256 over the geometry arrays (key, dtype, shape, bytes); names checkpoints."""
        if self._sha256 is None:
            arrays = self.to_arrays()
            h = hashlib.sha256()
            for key in _HASH_KEYS:
                if key not in arrays:
                    continue
                arr = np.ascontiguousarray(arrays[key])
                if arr.dtype.kind == "U":
                    data = "\n".join(map(str, arr.tolist())).encode()
                else:
                    data = arr.tobytes()
                h.update(f"{key}:{arr.dtype.str}:{arr.shape};".encode())
                h.update(data)
            self._sha256 = h.hexdigest()
        return self._sha256

    def region_index(self, name: str) -> int:
        """Index of a region name (``region`` values); FaceModelError if unknown."""
        if name not in self.region_names:
            raise FaceModelError(f"face model {self.name!r} has no region {name!r}; has {self.region_names}")
        return self.region_names.index(name)

    def __repr__(self) -> str:
        return (
            f"FaceModel(name={self.name!r}, V={self.n_vertices}, F={self.n_faces}, "
            f"K={self.n_identity}, E={self.n_expression}, regions={self.region_names})"
        )

    # ---- device ------------------------------------------------------------------------------

    def to(self, device: torch.device | str) -> FaceModel:
        """A copy with every tensor on ``device`` (self if already there; memoised)."""
        device = torch.device(device)
        if device == self.device:
            return self
        key = ("to", str(device))
        with self._lock:
            if key in self._derived:
                return self._derived[key]

        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        parent = self
        model = FaceModel(
            name=self.name,
            source=self.source,
            vertices=mv(self.vertices),
            faces=mv(self.faces),
            identity_basis=mv(self.identity_basis),
            expression_basis=mv(self.expression_basis),
            expression_names=self.expression_names,
            landmarks68=mv(self.landmarks68),
            jawline_left=mv(self.jawline_left),
            jawline_right=mv(self.jawline_right),
            uvs=mv(self.uvs),
            faces_uv=mv(self.faces_uv),
            region=mv(self.region),
            region_names=self.region_names,
            albedo=None if self._albedo is None else self._albedo.to(device),
            albedo_factory=None if self._albedo_factory is None else (lambda: parent.albedo),
            n_albedo=self._n_albedo,
        )
        model._sha256 = self._sha256
        with self._lock:
            return self._derived.setdefault(key, model)

    # ---- maths ---------------------------------------------------------------------------------

    def shape(
        self, identity: Tensor | None = None, expression: Tensor | None = None, batch: int = 1
    ) -> Tensor:
        """Vertices ``[B,V,3]`` (mm) for identity ``[B,k≤K]`` and expression ``[B,E]`` coefficients.

        Fewer than K identity coefficients use the first k modes; ``None`` means zeros.
        """
        bsz = None
        for arg, t in (("identity", identity), ("expression", expression)):
            if t is None:
                continue
            if not isinstance(t, Tensor):
                raise TypeError(f"{arg} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 2:
                raise ValueError(f"{arg} must be [B, n], got shape {tuple(t.shape)}")
            if bsz is not None and t.shape[0] != bsz:
                raise ValueError(f"identity and expression batch sizes differ: {bsz} vs {t.shape[0]}")
            bsz = t.shape[0]
        bsz = batch if bsz is None else bsz
        V = self.n_vertices
        out = self.vertices.unsqueeze(0).expand(bsz, V, 3)
        if identity is not None:
            k = identity.shape[1]
            if k > self.n_identity:
                raise ValueError(f"identity has {k} coefficients; the model has {self.n_identity}")
            if k:
                basis = self.identity_basis[:k].reshape(k, V * 3)
                out = out + (identity.to(basis.dtype) @ basis).view(bsz, V, 3)
        if expression is not None:
            if expression.shape[1] != self.n_expression:
                raise ValueError(
                    f"expression has {expression.shape[1]} coefficients; the model has "
                    f"{self.n_expression}"
                )
            basis = self.expression_basis.reshape(self.n_expression, V * 3)
            out = out + (expression.to(basis.dtype) @ basis).view(bsz, V, 3)
        return out.contiguous() if identity is None and expression is None else out

    def vertex_normals(self, verts: Tensor) -> Tensor:
        """Unit outward vertex normals ``[B,V,3]``: area-weighted sums of incident face normals."""
        verts = _check_verts(verts, self.n_vertices, "verts")
        return vertex_normals(verts, self.faces)

    def landmarks(self, verts: Tensor) -> Tensor:
        """The 68 iBUG landmark vertices ``[B,68,3]`` of ``verts [B,V,3]``."""
        verts = _check_verts(verts, self.n_vertices, "verts")
        return verts[:, self.landmarks68]

    def subset(self, region_names: Sequence[str]) -> FaceModel:
        """A submesh keeping only these regions' vertices and the faces among them.

        Indices (faces, landmarks, jaw contours) are remapped; a dropped landmark vertex raises
        FaceModelError. The albedo is the parent's, restricted, so albedo coefficients stay valid.
        """
        if isinstance(region_names, str):
            region_names = [region_names]
        key = ("subset", tuple(region_names))
        with self._lock:
            if key in self._derived:
                return self._derived[key]
        if self.region is None or not self.region_names:
            raise FaceModelError(f"face model {self.name!r} has no regions to take a subset of")
        ids = [self.region_index(n) for n in region_names]
        region = self.region.cpu()
        keep_mask = torch.zeros(self.n_vertices, dtype=torch.bool)
        for i in ids:
            keep_mask |= region == i
        keep = torch.nonzero(keep_mask).squeeze(1)
        remap = torch.full((self.n_vertices,), -1, dtype=torch.long)
        remap[keep] = torch.arange(keep.numel())
        faces = self.faces.cpu().long()
        face_keep = keep_mask[faces].all(dim=1)
        new_faces = remap[faces[face_keep]].to(torch.int32)

        lm_new = remap[self.landmarks68.cpu()]
        if (lm_new < 0).any():
            lost = self.landmarks68.cpu()[lm_new < 0].tolist()
            raise FaceModelError(
                f"subset {list(region_names)} drops landmark vertices {lost}; keep their region"
            )

        def remap_contour(idx: Tensor | None) -> Tensor | None:
            if idx is None:
                return None
            new = remap[idx.cpu()]
            # Contour candidates outside the subset are dropped (they are only candidates).
            new = new[new >= 0]
            return new if new.numel() else None

        # Keep only the region names that survive, renumbered densely.
        names = [self.region_names[i] for i in sorted(ids)]
        region_map = torch.full((len(self.region_names),), -1, dtype=torch.long)
        for j, i in enumerate(sorted(ids)):
            region_map[i] = j
        parent = self
        keep_dev = keep.to(self.device)

        def sub_albedo() -> AlbedoModel:
            return parent.albedo.subset(keep_dev)

        dev = self.device
        model = FaceModel(
            name=f"{self.name}[{'+'.join(region_names)}]",
            source=self.source,
            vertices=self.vertices[keep_dev].contiguous(),
            faces=new_faces.to(dev),
            identity_basis=self.identity_basis[:, keep_dev].contiguous(),
            expression_basis=self.expression_basis[:, keep_dev].contiguous(),
            expression_names=self.expression_names,
            landmarks68=lm_new.to(dev),
            jawline_left=_opt_to(remap_contour(self.jawline_left), dev),
            jawline_right=_opt_to(remap_contour(self.jawline_right), dev),
            uvs=self.uvs,
            faces_uv=None if self.faces_uv is None else self.faces_uv[face_keep.to(dev)],
            region=region_map[region[keep]].to(dev),
            region_names=names,
            albedo=None if self._albedo is None else self._albedo.subset(keep_dev),
            albedo_factory=sub_albedo,
            n_albedo=self.n_albedo,
        )
        model.parent_vertex_index = keep_dev  # type: ignore[attr-defined]
        with self._lock:
            return self._derived.setdefault(key, model)


def _opt_to(t: Tensor | None, device: torch.device) -> Tensor | None:
    return None if t is None else t.to(device)


def _check_verts(verts: Tensor, n_vertices: int, arg: str) -> Tensor:
    if not isinstance(verts, Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor, got {type(verts).__name__}")
    if verts.dim() != 3 or verts.shape[1] != n_vertices or verts.shape[2] != 3:
        raise ValueError(f"{arg} must be [B, {n_vertices}, 3], got {tuple(verts.shape)}")
    return verts
