"""Triangle-mesh files: OBJ (``v`` / ``f``) and PLY (ASCII, binary little- and big-endian).

``load_mesh`` returns float64 vertices ``[V, 3]`` and int64 triangles ``[F, 3]`` (0-based);
polygons are fan-triangulated, OBJ's negative (relative) indices are resolved, everything else
(normals, texture coordinates, colours, other PLY elements) is ignored. A file that cannot be
read raises FileNotFoundError, or ValueError naming the file, the line or element, and the
problem. ``save_mesh`` writes the same formats (used by tests and tools).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Mesh", "load_mesh", "save_mesh", "MESH_SUFFIXES"]

MESH_SUFFIXES = (".obj", ".ply")

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip


@dataclass
class Mesh:
    """A triangle mesh: ``vertices`` float64 ``[V, 3]``, ``faces`` int64 ``[F, 3]`` (0-based)."""

    vertices: np.ndarray
    faces: np.ndarray

    def __post_init__(self) -> None:
        self.vertices = np.asarray(self.vertices, dtype=np.float64)
        self.faces = np.asarray(self.faces, dtype=np.int64).reshape(-1, 3)
        if self.vertices.ndim != 2 or self.vertices.shape[1] != 3:
            raise ValueError(f"vertices must be [V, 3], got {list(self.vertices.shape)}")


def load_mesh(path: str | Path) -> Mesh:
    """Read an OBJ or PLY triangle mesh (by suffix); see the module docstring for the errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".obj":
        mesh = _read_obj(path)
    elif suffix == ".ply":
        mesh = _read_ply(path)
    else:
        raise ValueError(f"{path}: unsupported mesh format {suffix!r} (expected .obj or .ply)")
    return _validated(mesh, path)


def _validated(mesh: Mesh, path: Path) -> Mesh:
    v, f = mesh.vertices, mesh.faces
    if len(v) == 0:
        raise ValueError(f"{path}: the mesh has no vertices")
    if not np.isfinite(v).all():
        raise ValueError(f"{path}: vertex coordinates contain NaN or inf")
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        bad = int(f.max()) if f.max() >= len(v) else int(f.min())
        raise ValueError(f"{path}: face index {bad} outside the {len(v)} vertices")
    return mesh


# ---------------------------------------------------------------------------------------------
# OBJ


def _read_obj(path: Path) -> Mesh:
    verts: list[list[float]] = []
    tris: list[tuple[int, int, int]] = []
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path}: not a text OBJ file ({exc.reason} at byte {exc.start})"
        ) from None
    for lineno, raw in enumerate(text.splitlines(), 1):
        parts = raw.split("#", 1)[0].split()
        if not parts:
            continue
        if parts[0] == "v":
            try:
                xyz = [float(t) for t in parts[1:4]]
            except ValueError:
                raise ValueError(f"{path}:{lineno}: bad vertex line {raw.strip()!r}") from None
            if len(xyz) != 3:
                raise ValueError(f"{path}:{lineno}: a vertex needs 3 coordinates: {raw.strip()!r}")
            verts.append(xyz)
        elif parts[0] == "f":
            idx = []
            for token in parts[1:]:
                try:
                    i = int(token.split("/", 1)[0])
                except ValueError:
                    raise ValueError(f"{path}:{lineno}: bad face index {token!r}") from None
                if i == 0:
                    raise ValueError(f"{path}:{lineno}: OBJ indices start at 1, got 0")
                idx.append(i - 1 if i > 0 else len(verts) + i)  # negative: relative to the end
            if len(idx) < 3:
                raise ValueError(f"{path}:{lineno}: a face needs at least 3 vertices")
            tris.extend((idx[0], idx[k], idx[k + 1]) for k in range(1, len(idx) - 1))
    return Mesh(np.array(verts, dtype=np.float64).reshape(-1, 3), np.array(tris, dtype=np.int64))


# ---------------------------------------------------------------------------------------------
# PLY


@dataclass
class _Element:
    name: str
    count: int
    props: list[tuple[str, str, str | None]]  # (name, value dtype, list count dtype or None)


def _ply_header(data: bytes, path: Path) -> tuple[str, list[_Element], int]:
    if not data.startswith(b"ply"):
        raise ValueError(f"{path}: not a PLY file (no 'ply' magic)")
    end = data.find(b"end_header")
    if end < 0:
        raise ValueError(f"{path}: PLY header has no end_header")
    body = data.index(b"\n", end) + 1 if b"\n" in data[end:] else len(data)
    fmt = ""
    elements: list[_Element] = []
    for line in data[:end].decode("ascii", errors="replace").splitlines()[1:]:
        parts = line.split()
        if not parts or parts[0] in ("comment", "obj_info"):
            continue
        try:
            if parts[0] == "format":
                fmt = parts[1]
            elif parts[0] == "element":
                elements.append(_Element(parts[1], int(parts[2]), []))
            elif parts[0] == "property":
                if not elements:
                    raise ValueError("property before any element")
                if parts[1] == "list":
                    elements[-1].props.append(
                        (parts[4], _PLY_TYPES[parts[3]], _PLY_TYPES[parts[2]])
                    )
                else:
                    elements[-1].props.append((parts[2], _PLY_TYPES[parts[1]], None))
        except (IndexError, KeyError, ValueError) as exc:
            raise ValueError(f"{path}: bad PLY header line {line!r} ({exc})") from None
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise ValueError(f"{path}: unsupported PLY format {fmt!r}")
    names = [e.name for e in elements]
    if "vertex" not in names:
        raise ValueError(f"{path}: PLY has no vertex element")
    vertex = elements[names.index("vertex")]
    missing = {"x", "y", "z"} - {p[0] for p in vertex.props}
    if missing:
        raise ValueError(f"{path}: PLY vertex element lacks {sorted(missing)}")
    return fmt, elements, body


def _face_list(elem: _Element, path: Path) -> str:
    lists = [p for p in elem.props if p[2] is not None]
    name = next((p[0] for p in lists if p[0] in ("vertex_indices", "vertex_index")), None)
    if name is None:
        raise ValueError(f"{path}: PLY face element has no vertex_indices list property")
    return name


def _triangulate(polys: list[np.ndarray]) -> np.ndarray:
    tris = [(p[0], p[k], p[k + 1]) for p in polys for k in range(1, len(p) - 1)]
    return np.array(tris, dtype=np.int64).reshape(-1, 3)


def _read_ply(path: Path) -> Mesh:
    data = path.read_bytes()
    fmt, elements, offset = _ply_header(data, path)
    if fmt == "ascii":
        return _read_ply_ascii(data[offset:], elements, path)
    return _read_ply_binary(data, offset, elements, "<" if "little" in fmt else ">", path)


def _read_ply_ascii(body: bytes, elements: list[_Element], path: Path) -> Mesh:
    lines = body.decode("ascii", errors="replace").splitlines()
    pos = 0
    verts = None
    polys: list[np.ndarray] = []
    for elem in elements:
        if pos + elem.count > len(lines):
            raise ValueError(
                f"{path}: PLY element {elem.name!r} expects {elem.count} lines, file ends after "
                f"{len(lines) - pos}"
            )
        rows = lines[pos : pos + elem.count]
        pos += elem.count
        if elem.name == "vertex":
            names = [p[0] for p in elem.props]
            if any(p[2] is not None for p in elem.props):
                raise ValueError(f"{path}: list properties on PLY vertices are not supported")
            try:
                table = np.array([r.split()[: len(names)] for r in rows], dtype=np.float64)
            except ValueError as exc:
                raise ValueError(f"{path}: bad PLY vertex data ({exc})") from None
            if table.shape != (elem.count, len(names)):
                raise ValueError(f"{path}: PLY vertex lines must have {len(names)} values")
            verts = table[:, [names.index(c) for c in ("x", "y", "z")]]
        elif elem.name == "face":
            key = _face_list(elem, path)
            for k, row in enumerate(rows):
                tokens = row.split()
                values = _ascii_props(tokens, elem.props, path, k)
                poly = values[key]
                if len(poly) < 3:
                    raise ValueError(f"{path}: PLY face {k} has fewer than 3 vertices")
                polys.append(poly)
    assert verts is not None
    return Mesh(verts, _triangulate(polys))


def _ascii_props(tokens: list[str], props, path: Path, k: int) -> dict[str, np.ndarray]:
    out = {}
    i = 0
    try:
        for name, _dtype, count in props:
            if count is None:
                out[name] = np.array([float(tokens[i])])
                i += 1
            else:
                n = int(tokens[i])
                out[name] = np.array([int(t) for t in tokens[i + 1 : i + 1 + n]], dtype=np.int64)
                if len(out[name]) != n:
                    raise IndexError
                i += 1 + n
    except (IndexError, ValueError):
        raise ValueError(f"{path}: bad or short PLY face line {k}: {' '.join(tokens)!r}") from None
    return out


def _read_ply_binary(
    data: bytes, offset: int, elements: list[_Element], order: str, path: Path
) -> Mesh:
    verts = None
    faces = np.zeros((0, 3), np.int64)
    for elem in elements:
        if all(p[2] is None for p in elem.props):  # fixed-size records: one vectorised read
            dtype = np.dtype([(p[0], order + p[1]) for p in elem.props])
            size = dtype.itemsize * elem.count
            if offset + size > len(data):
                raise ValueError(
                    f"{path}: PLY is truncated in element {elem.name!r} ({elem.count} records of "
                    f"{dtype.itemsize} bytes expected)"
                )
            table = np.frombuffer(data, dtype=dtype, count=elem.count, offset=offset)
            offset += size
            if elem.name == "vertex":
                verts = np.stack([table[c].astype(np.float64) for c in ("x", "y", "z")], 1)
            continue
        if elem.name == "vertex":
            raise ValueError(f"{path}: list properties on PLY vertices are not supported")
        polys, offset = _binary_lists(data, offset, elem, order, path)
        if elem.name == "face":
            faces = _triangulate(polys[_face_list(elem, path)])
    if verts is None:
        raise ValueError(f"{path}: PLY vertex element not read")
    return Mesh(verts, faces)


def _binary_lists(
    data: bytes, offset: int, elem: _Element, order: str, path: Path
) -> tuple[dict[str, list[np.ndarray]], int]:
    """Records with list properties, read one by one (a fast path for all-triangle faces)."""
    props = elem.props
    if len(props) == 1 and props[0][2] is not None:  # the common 'list uchar int vertex_indices'
        name, vt, ct = props[0]
        tri = np.dtype([("n", order + ct), ("i", order + vt, (3,))])
        if offset + tri.itemsize * elem.count <= len(data):
            table = np.frombuffer(data, dtype=tri, count=elem.count, offset=offset)
            if (table["n"] == 3).all():
                ids = table["i"].astype(np.int64)
                return {name: list(ids)}, offset + tri.itemsize * elem.count
    out: dict[str, list[np.ndarray]] = {p[0]: [] for p in props}
    for k in range(elem.count):
        for name, vt, ct in props:
            try:
                if ct is None:
                    dt = np.dtype(order + vt)
                    out[name].append(np.frombuffer(data, dt, 1, offset))
                    offset += dt.itemsize
                else:
                    cdt, vdt = np.dtype(order + ct), np.dtype(order + vt)
                    n = int(np.frombuffer(data, cdt, 1, offset)[0])
                    offset += cdt.itemsize
                    out[name].append(np.frombuffer(data, vdt, n, offset).astype(np.int64))
                    offset += vdt.itemsize * n
            except ValueError:
                raise ValueError(
                    f"{path}: PLY is truncated in element {elem.name!r} (record {k} of "
                    f"{elem.count})"
                ) from None
    return out, offset


# ---------------------------------------------------------------------------------------------
# Writing


def save_mesh(
    path: str | Path, vertices: np.ndarray, faces: np.ndarray, binary: bool = True
) -> Path:
    """Write a triangle mesh as OBJ or PLY (by suffix; PLY binary little-endian unless
    ``binary=False``). Returns the path."""
    path = Path(path)
    mesh = Mesh(vertices, faces)
    path.parent.mkdir(parents=True, exist_ok=True)
    v, f = mesh.vertices, mesh.faces
    suffix = path.suffix.lower()
    if suffix == ".obj":
        vtxt = "\n".join("v {:.6f} {:.6f} {:.6f}".format(*r) for r in v.tolist())
        ftxt = "\n".join("f {} {} {}".format(*r) for r in (f + 1).tolist())
        path.write_text(f"{vtxt}\n{ftxt}\n")
        return path
    if suffix != ".ply":
        raise ValueError(f"{path}: unsupported mesh format {suffix!r} (expected .obj or .ply)")
    fmt = "binary_little_endian" if binary else "ascii"
    header = (
        f"ply\nformat {fmt} 1.0\nelement vertex {len(v)}\n"
        "property double x\nproperty double y\nproperty double z\n"
        f"element face {len(f)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    if not binary:
        vtxt = "\n".join("{:.6f} {:.6f} {:.6f}".format(*r) for r in v.tolist())
        ftxt = "\n".join("3 {} {} {}".format(*r) for r in f.tolist())
        path.write_text(header + vtxt + "\n" + ftxt + "\n")
        return path
    rec = np.zeros(len(f), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    rec["n"], rec["i"] = 3, f
    path.write_bytes(header.encode("ascii") + v.astype("<f8").tobytes() + rec.tobytes())
    return path
