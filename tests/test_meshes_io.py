"""Mesh files (jr2net.io.meshes): OBJ and PLY (ASCII, binary LE/BE) round trips and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from jr2net.io.meshes import load_mesh, save_mesh


@pytest.fixture(scope="module")
def ict_mesh(ict_model_path):
    d = np.load(ict_model_path)
    return d["vertices"].astype(np.float64), d["faces"].astype(np.int64)


@pytest.mark.parametrize("name,binary", [("m.obj", True), ("m.ply", True), ("m.ply", False)])
def test_round_trip_keeps_the_ict_mesh(tmp_path, ict_mesh, name, binary):
    v, f = ict_mesh
    mesh = load_mesh(save_mesh(tmp_path / name, v, f, binary=binary))
    assert mesh.vertices.dtype == np.float64 and mesh.faces.dtype == np.int64
    assert np.abs(mesh.vertices - v).max() < 1e-5
    assert np.array_equal(mesh.faces, f)


def test_obj_polygons_slashes_negative_indices_and_comments(tmp_path):
    path = tmp_path / "quad.obj"
    path.write_text(
        "# a unit quad and a triangle\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0 0.5 0.5 0.5\n"
        "vn 0 0 1\nvt 0 0\nf 1/1/1 2/1/1 3/1/1 4/1/1  # quad\nv 2 0 0\nf -1 2 3\n"
    )
    mesh = load_mesh(path)
    assert mesh.vertices.shape == (5, 3)
    assert mesh.faces.tolist() == [[0, 1, 2], [0, 2, 3], [4, 1, 2]]


def test_big_endian_ply_with_extra_properties_and_a_quad(tmp_path):
    v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32)
    header = (
        "ply\nformat binary_big_endian 1.0\ncomment made by hand\nelement vertex 4\n"
        "property float x\nproperty float y\nproperty float z\nproperty uchar red\n"
        "element face 2\nproperty list uchar int vertex_indices\nproperty uchar flags\n"
        "end_header\n"
    )
    rec = np.zeros(4, dtype=[("x", ">f4"), ("y", ">f4"), ("z", ">f4"), ("red", "u1")])
    rec["x"], rec["y"], rec["z"], rec["red"] = v[:, 0], v[:, 1], v[:, 2], 200
    faces = (
        np.array([4], ">u1").tobytes() + np.array([0, 1, 2, 3], ">i4").tobytes() + b"\x00"
        + np.array([3], ">u1").tobytes() + np.array([0, 2, 3], ">i4").tobytes() + b"\x01"
    )  # fmt: skip
    path = tmp_path / "be.ply"
    path.write_bytes(header.encode() + rec.tobytes() + faces)
    mesh = load_mesh(path)
    assert np.allclose(mesh.vertices, v)
    assert mesh.faces.tolist() == [[0, 1, 2], [0, 2, 3], [0, 2, 3]]


def _small(tmp_path, name, binary=True):
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
    f = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]])
    return save_mesh(tmp_path / name, v, f, binary=binary)


def test_truncated_binary_ply_names_the_element(tmp_path):
    path = _small(tmp_path, "t.ply")
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match=r"t\.ply.*truncated.*'face'"):
        load_mesh(path)
    head = path.read_bytes()
    path.write_bytes(head[: head.index(b"end_header") + 11 + 20])  # inside the vertices
    with pytest.raises(ValueError, match="truncated in element 'vertex'"):
        load_mesh(path)


def test_short_ascii_ply_and_bad_header(tmp_path):
    path = _small(tmp_path, "a.ply", binary=False)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-2]) + "\n")
    with pytest.raises(ValueError, match="'face' expects 4 lines"):
        load_mesh(path)
    path.write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\n")
    with pytest.raises(ValueError, match="no end_header"):
        load_mesh(path)
    path.write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty quux x\nend_header\n0\n")
    with pytest.raises(ValueError, match="bad PLY header line"):
        load_mesh(path)
    path.write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n0\n")
    with pytest.raises(ValueError, match=r"lacks \['y', 'z'\]"):
        load_mesh(path)
    path.write_bytes(b"\x89PNG not a mesh")
    with pytest.raises(ValueError, match="not a PLY file"):
        load_mesh(path)


def test_obj_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.obj"
    path.write_text("v 0 0 0\nv 1 0 zero\nf 1 2 3\n")
    with pytest.raises(ValueError, match=r"bad\.obj:2: bad vertex line"):
        load_mesh(path)
    path.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 7\n")
    with pytest.raises(ValueError, match="face index 6 outside the 3 vertices"):
        load_mesh(path)
    path.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 0 1 2\n")
    with pytest.raises(ValueError, match="start at 1"):
        load_mesh(path)
    path.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no vertices"):
        load_mesh(path)
    path.write_bytes(b"v 0 0 0\n\xff\xfe\x00binary junk")
    with pytest.raises(ValueError, match="not a text OBJ"):
        load_mesh(path)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="mesh file not found"):
        load_mesh(tmp_path / "none.obj")
    (tmp_path / "m.stl").write_text("solid x\n")
    with pytest.raises(ValueError, match="unsupported mesh format '.stl'"):
        load_mesh(tmp_path / "m.stl")
