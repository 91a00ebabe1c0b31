"""Importers from public face-model releases into the project's npz arrays (DESIGN §5).

* ICT-FaceKit (MIT): the native ``FaceXModel`` folder of OBJs (cm) + ``vertex_indices.json``.
* BFM 2009 as prepared by Deep3DFaceRecon (``BFM_model_front.mat``, decimetres).

Both return ``dict[str, np.ndarray]`` in the npz key format, ready for ``FaceModel.from_arrays``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from jr2net.errors import FaceModelError

# ICT-FaceKit full-topology vertex ranges (ICT README "geometry" table) of the parts we keep,
# in output order. The other parts (eye sockets, gums/teeth, lacrimal fluid, eye blend/occlusion,
# lashes) are inner or transparent geometry that a face renderer does not need.
ICT_REGIONS: tuple[tuple[str, int, int], ...] = (
    ("face", 0, 9409),
    ("head_neck", 9409, 11248),
    ("mouth_socket", 11248, 13294),
    ("eyeball_left", 21451, 23021),
    ("eyeball_right", 23021, 24591),
)
ICT_CM_TO_MM = 10.0
# Jaw-contour candidate vertices (face region, so same index in the full and the kept mesh):
# per side, 17 vertices from the ear towards the chin along which the 2-D jaw landmarks slide
# when the head turns (the visible silhouette moves).
ICT_JAWLINE_LEFT = (3041, 3661, 3042, 4390, 3880, 3022, 3085, 2484, 4102, 4036, 3061, 2253,
                    3466, 3490, 3493, 3496, 3498)  # fmt: skip
ICT_JAWLINE_RIGHT = (1280, 1278, 1275, 1272, 1248, 12, 820, 1834, 1902, 243, 844, 781, 1673,
                     2199, 801, 1447, 800)  # fmt: skip
ICT_SOURCE = "ICT-FaceKit (ICT Face Model Light), USC Institute for Creative Technologies, MIT License"

# ICT's 53 ARKit-style expression names, in ICT's order (vertex_indices.json "expressions").
ICT_EXPRESSIONS = (
    "browDown_L browDown_R browInnerUp_L browInnerUp_R browOuterUp_L browOuterUp_R cheekPuff_L "
    "cheekPuff_R cheekSquint_L cheekSquint_R eyeBlink_L eyeBlink_R eyeLookDown_L eyeLookDown_R "
    "eyeLookIn_L eyeLookIn_R eyeLookOut_L eyeLookOut_R eyeLookUp_L eyeLookUp_R eyeSquint_L "
    "eyeSquint_R eyeWide_L eyeWide_R jawForward jawLeft jawOpen jawRight mouthClose "
    "mouthDimple_L mouthDimple_R mouthFrown_L mouthFrown_R mouthFunnel mouthLeft mouthLowerDown_L "
    "mouthLowerDown_R mouthPress_L mouthPress_R mouthPucker mouthRight mouthRollLower "
    "mouthRollUpper mouthShrugLower mouthShrugUpper mouthSmile_L mouthSmile_R mouthStretch_L "
    "mouthStretch_R mouthUpperUp_L mouthUpperUp_R noseSneer_L noseSneer_R"
).split()


# ---- OBJ ----------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise FaceModelError(f"cannot read {path}: {exc}") from exc


def _parse_vertices(lines: list[str], path: Path) -> np.ndarray:
    body = " ".join(line[2:] for line in lines if line.startswith("v "))
    try:
        values = np.array(body.split(), dtype=np.float64)
    except ValueError as exc:
        raise FaceModelError(f"{path}: malformed vertex line ({exc})") from exc
    if values.size == 0 or values.size % 3:
        raise FaceModelError(f"{path}: expected 'v x y z' lines, found {values.size} numbers")
    return values.reshape(-1, 3)


def read_obj_vertices(path: str | Path) -> np.ndarray:
    """The ``v`` positions ``[N,3]`` (float64) of an OBJ file, parsed with numpy."""
    path = Path(path)
    return _parse_vertices(_read_text(path).split("\n"), path)


def read_obj(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Positions ``[N,3]``, uvs ``[T,2]``, triangles ``[F,3]`` and uv triangles ``[F,3]`` (0-based).

    Polygons are fan-triangulated: (a, b, c, d) -> (a, b, c), (a, c, d).
    """
    path = Path(path)
    text = _read_text(path).split("\n")
    verts = _parse_vertices(text, path)
    vt_body = " ".join(line[3:] for line in text if line.startswith("vt "))
    uvs = np.array(vt_body.split(), dtype=np.float64).reshape(-1, 2) if vt_body else np.zeros((0, 2))
    tris: list[tuple[int, int, int]] = []
    tri_uv: list[tuple[int, int, int]] = []
    for line in text:
        if not line.startswith("f "):
            continue
        corners = line.split()[1:]
        vi = [int(c.split("/")[0]) for c in corners]
        ti = [int(c.split("/")[1]) if c.count("/") >= 1 and c.split("/")[1] else 0 for c in corners]
        for k in range(1, len(corners) - 1):
            tris.append((vi[0], vi[k], vi[k + 1]))
            tri_uv.append((ti[0], ti[k], ti[k + 1]))
    if not tris:
        raise FaceModelError(f"{path}: no faces")
    faces = np.asarray(tris, dtype=np.int64)
    faces = np.where(faces < 0, faces + len(verts), faces - 1)  # OBJ: 1-based, negative = relative
    faces_uv = np.asarray(tri_uv, dtype=np.int64) - 1
    if faces.min() < 0 or faces.max() >= len(verts):
        raise FaceModelError(f"{path}: face index out of range")
    return verts, uvs, faces, faces_uv


# ---- ICT-FaceKit -------------------------------------------------------------------------------


def find_ict_dir(path: str | Path) -> Path:
    """The folder holding ``generic_neutral_mesh.obj``: ``path`` itself or ``path/FaceXModel``."""
    path = Path(path)
    for cand in (path, path / "FaceXModel"):
        if (cand / "generic_neutral_mesh.obj").is_file():
            return cand
    raise FaceModelError(
        f"{path} is not an ICT-FaceKit model folder (no generic_neutral_mesh.obj here or in FaceXModel/)"
    )


def import_ict(directory: str | Path, require_complete: bool = False) -> dict[str, np.ndarray]:
    """Import native ICT-FaceKit OBJs into npz arrays (mm; face, head/neck, mouth, eyeballs).

    Bases are ``shape OBJ − neutral``; identity modes are ``identityNNN.obj`` in numeric order,
    expressions follow ICT's order (``vertex_indices.json``) and include those present unless
    ``require_complete`` (then all 53 and ≥1 identity are required). Kept vertices are the
    ICT_REGIONS ranges, faces those whose corners are all kept (uvs compacted likewise).
    """
    root = find_ict_dir(directory)
    index_path = root / "vertex_indices.json"
    meta: dict = {}
    if index_path.is_file():
        try:
            meta = json.loads(index_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise FaceModelError(f"cannot read {index_path}: {exc}") from exc
    names = [str(n) for n in meta.get("expressions", ICT_EXPRESSIONS)]

    neutral, uvs, faces_full, faces_uv_full = read_obj(root / "generic_neutral_mesh.obj")
    n_full = neutral.shape[0]
    if n_full < ICT_REGIONS[-1][2]:
        raise FaceModelError(
            f"{root / 'generic_neutral_mesh.obj'} has {n_full} vertices; the ICT topology has "
            f"at least {ICT_REGIONS[-1][2]}"
        )
    keep = np.concatenate([np.arange(a, b) for _, a, b in ICT_REGIONS])
    region = np.concatenate(
        [np.full(b - a, i, dtype=np.uint8) for i, (_, a, b) in enumerate(ICT_REGIONS)]
    )
    remap = np.full(n_full, -1, dtype=np.int64)
    remap[keep] = np.arange(keep.size)
    face_keep = (remap[faces_full] >= 0).all(axis=1)
    faces = remap[faces_full[face_keep]]
    fuv = faces_uv_full[face_keep]
    out: dict[str, np.ndarray] = {}
    if uvs.size and fuv.min() >= 0:
        used = np.unique(fuv)
        uv_remap = np.full(uvs.shape[0], -1, dtype=np.int64)
        uv_remap[used] = np.arange(used.size)
        out["uvs"] = uvs[used].astype(np.float32)
        out["faces_uv"] = uv_remap[fuv].astype(np.int32)

    def delta(obj: Path) -> np.ndarray:
        v = read_obj_vertices(obj)
        if v.shape != neutral.shape:
            raise FaceModelError(f"{obj} has {v.shape[0]} vertices, the neutral mesh {n_full}")
        return ((v - neutral)[keep] * ICT_CM_TO_MM).astype(np.float32)

    id_files = sorted(
        (p for p in root.glob("identity*.obj") if re.fullmatch(r"identity\d+\.obj", p.name)),
        key=lambda p: int(p.stem[len("identity") :]),
    )
    present = [n for n in names if (root / f"{n}.obj").is_file()]
    if require_complete:
        missing = [n for n in names if n not in present]
        if missing or not id_files:
            raise FaceModelError(
                f"incomplete ICT-FaceKit folder {root}: missing expressions {missing[:5]}"
                f"{'…' if len(missing) > 5 else ''}{'; no identity OBJs' if not id_files else ''}"
            )
    n_keep = keep.size
    identity = np.zeros((len(id_files), n_keep, 3), dtype=np.float32)
    for i, p in enumerate(id_files):
        identity[i] = delta(p)
    expression = np.zeros((len(present), n_keep, 3), dtype=np.float32)
    for i, n in enumerate(present):
        expression[i] = delta(root / f"{n}.obj")

    landmarks = np.asarray(meta.get("idx_to_landmark_verts", []), dtype=np.int64)
    if landmarks.shape != (68,):
        raise FaceModelError(f"{index_path}: idx_to_landmark_verts must list 68 vertex indices")
    if (remap[landmarks] < 0).any():
        raise FaceModelError("ICT landmark vertices fall outside the kept regions")
    out.update(
        vertices=(neutral[keep] * ICT_CM_TO_MM).astype(np.float32),
        faces=faces.astype(np.int32),
        identity_basis=identity,
        expression_basis=expression,
        expression_names=np.array(present, dtype=str),
        landmarks68=remap[landmarks].astype(np.int32),
        jawline_left=remap[np.array(ICT_JAWLINE_LEFT)].astype(np.int32),
        jawline_right=remap[np.array(ICT_JAWLINE_RIGHT)].astype(np.int32),
        region=region,
        region_names=np.array([r[0] for r in ICT_REGIONS], dtype=str),
        name=np.array("ict"),
        source=np.array(ICT_SOURCE),
        units=np.array("millimetre"),
    )
    return out


# ---- BFM (Deep3DFaceRecon) ---------------------------------------------------------------------

BFM_DM_TO_MM = 100.0  # Deep3DFaceRecon divides BFM09's micrometres by 1e5: decimetres


def import_bfm(path: str | Path, recenter: bool = True) -> dict[str, np.ndarray]:
    """Import Deep3DFaceRecon's ``BFM_model_front.mat`` (BFM 2009 + expression PCA) into npz arrays.

    Layout read: ``meanshape [1,3N]`` (x,y,z interleaved, decimetres: scaled ×100 to mm),
    ``idBase [3N,80]``, ``exBase [3N,64]`` (PCA·σ, so α, β ~ N(0,1) — BFM expressions are PCA
    modes named ``exp_000…``, not ARKit shapes: transferring expressions needs the same model),
    ``meantex [1,3N]`` and ``texBase [3N,80]`` in 0–255 (scaled to [0,1] and stored as the albedo
    model), ``tri [F,3]`` and ``keypoints [68]`` 1-based. BFM's axes are already y up, z out of the
    face. With ``recenter`` the mean shape is centred at its centroid, as Deep3DFaceRecon does.
    """
    from scipy.io import loadmat

    path = Path(path)
    if not path.is_file():
        raise FaceModelError(f"BFM file not found: {path}")
    try:
        mat = loadmat(str(path))
    except Exception as exc:  # scipy raises several types for non-.mat input
        raise FaceModelError(f"cannot read {path} as a MATLAB file: {exc}") from exc
    need = ["meanshape", "idBase", "exBase", "tri", "keypoints"]
    missing = [k for k in need if k not in mat]
    if missing:
        raise FaceModelError(f"{path} lacks {missing}; expected Deep3DFaceRecon's BFM_model_front.mat")
    mean = np.asarray(mat["meanshape"], dtype=np.float64).reshape(-1)
    if mean.size % 3:
        raise FaceModelError(f"{path}: meanshape length {mean.size} is not a multiple of 3")
    n = mean.size // 3

    def basis(key: str) -> np.ndarray:
        b = np.asarray(mat[key], dtype=np.float64)
        if b.ndim != 2 or b.shape[0] != 3 * n:
            raise FaceModelError(f"{path}: {key} must be [3N={3 * n}, k], got {b.shape}")
        return b.T.reshape(-1, n, 3)

    verts = mean.reshape(n, 3)
    if recenter:
        verts = verts - verts.mean(axis=0, keepdims=True)
    tri = np.asarray(mat["tri"], dtype=np.int64) - 1
    kp = np.asarray(mat["keypoints"], dtype=np.int64).reshape(-1) - 1
    if tri.ndim != 2 or tri.shape[1] != 3 or tri.min() < 0 or tri.max() >= n:
        raise FaceModelError(f"{path}: tri must be [F,3] 1-based indices into {n} vertices")
    if kp.shape != (68,) or kp.min() < 0 or kp.max() >= n:
        raise FaceModelError(f"{path}: keypoints must be 68 1-based vertex indices")
    ex = basis("exBase")
    out: dict[str, np.ndarray] = {
        "vertices": (verts * BFM_DM_TO_MM).astype(np.float32),
        "faces": tri.astype(np.int32),
        "identity_basis": (basis("idBase") * BFM_DM_TO_MM).astype(np.float32),
        "expression_basis": (ex * BFM_DM_TO_MM).astype(np.float32),
        "expression_names": np.array([f"exp_{i:03d}" for i in range(ex.shape[0])], dtype=str),
        "landmarks68": kp.astype(np.int32),
        "region": np.zeros(n, dtype=np.uint8),
        "region_names": np.array(["face"], dtype=str),
        "name": np.array("bfm"),
        "source": np.array("Basel Face Model 2009 via Deep3DFaceRecon BFM_model_front.mat"),
        "units": np.array("millimetre"),
    }
    if "meantex" in mat and "texBase" in mat:
        tex_mean = np.asarray(mat["meantex"], dtype=np.float64).reshape(n, 3) / 255.0
        out["albedo_mean"] = np.clip(tex_mean, 0.0, 1.0).astype(np.float32)
        out["albedo_basis"] = (basis("texBase") / 255.0).astype(np.float32)
    return out
