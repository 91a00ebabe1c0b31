"""``jr2net eval reconstruct``: predicted vs ground-truth meshes under the FaceWarehouse and FRGC
protocols (DESIGN §8), with the alignment and errors of ``jr2net.eval.geometry``.

Folder layout (``--meshes DIR``; docs/evaluation.md has the full description)::

    <name>_pred.obj|ply     the reconstruction, any topology, millimetres
    <name>_gt.obj|ply       the ground-truth scan or mesh, millimetres
    <name>_landmarks.json   {"pred": L, "gt": L, "nose_tip": N}  (or one landmarks.json for all)

``L`` is a list of vertex indices or of ``[x, y, z]`` points in that mesh's coordinates (points
snap to the nearest vertex); both lists have the same length (>= 3) and order. ``nose_tip`` is
a ground-truth vertex index or point; without it, the ground truth's landmark 30 (iBUG nose tip)
is used when there are 68 landmarks.

Per pair and protocol: similarity on the landmarks, crop of the ground truth around the nose tip
(FaceWarehouse 85 mm, FRGC 95 mm), ICP, point-to-plane error of every cropped ground-truth point
to the aligned prediction. FaceWarehouse reports RMSE, STD, median and 80th percentile; FRGC the
MAE (mean absolute error); both keep every statistic.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jr2net.io.meshes import MESH_SUFFIXES, Mesh, load_mesh

__all__ = ["PROTOCOLS", "MeshPair", "find_mesh_pairs", "evaluate_pair", "evaluate_folder"]

# name -> (crop radius in mm, headline statistics)
PROTOCOLS: dict[str, tuple[float, tuple[str, ...]]] = {
    "facewarehouse": (85.0, ("rmse", "std", "median", "p80")),
    "frgc": (95.0, ("mae",)),
}
STATS = ("rmse", "std", "median", "p80", "mae")
NOSE_TIP_68 = 30


@dataclass
class MeshPair:
    """One prediction / ground-truth pair found in the folder."""

    name: str
    pred: Path
    gt: Path
    landmarks: Path | None


def _one(folder: Path, stem: str) -> Path | None:
    found = [folder / f"{stem}{s}" for s in MESH_SUFFIXES if (folder / f"{stem}{s}").is_file()]
    found += [
        p for p in folder.glob(f"{stem}.*") if p.suffix.lower() in MESH_SUFFIXES and p not in found
    ]
    if len(found) > 1:
        raise ValueError(f"{folder}: both {found[0].name} and {found[1].name}; keep one")
    return found[0] if found else None


def find_mesh_pairs(folder: str | Path) -> tuple[list[MeshPair], list[str]]:
    """The ``<name>_pred`` / ``<name>_gt`` pairs of ``folder`` and the names with only one half.

    FileNotFoundError when the folder is missing, ValueError when it holds no pair.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"meshes folder not found: {folder}")
    names = set()
    for p in folder.iterdir():
        if p.suffix.lower() in MESH_SUFFIXES and p.stem.endswith(("_pred", "_gt")):
            names.add(p.stem.rsplit("_", 1)[0])
    pairs, unpaired = [], []
    shared_lmk = folder / "landmarks.json"
    for name in sorted(names):
        pred, gt = _one(folder, f"{name}_pred"), _one(folder, f"{name}_gt")
        if pred is None or gt is None:
            unpaired.append(name)
            continue
        own = folder / f"{name}_landmarks.json"
        lmk = own if own.is_file() else shared_lmk if shared_lmk.is_file() else None
        pairs.append(MeshPair(name, pred, gt, lmk))
    if not pairs:
        raise ValueError(
            f"{folder}: no mesh pairs (expected <name>_pred.obj|ply with <name>_gt.obj|ply"
            + (f"; unpaired: {', '.join(unpaired)}" if unpaired else "")
            + ")"
        )
    return pairs, unpaired


def _landmark_indices(value: object, mesh: Mesh, what: str) -> np.ndarray:
    """Vertex indices from a list of indices or of 3-D points (snapped to the nearest vertex)."""
    a = np.asarray(value)
    if a.ndim == 1 and a.size and np.issubdtype(a.dtype, np.integer):
        if a.min() < 0 or a.max() >= len(mesh.vertices):
            raise ValueError(f"{what}: vertex index outside the mesh's {len(mesh.vertices)}")
        return a.astype(np.int64)
    if a.ndim == 2 and a.shape[1] == 3 and np.issubdtype(a.dtype, np.number):
        from scipy.spatial import cKDTree

        return cKDTree(mesh.vertices).query(a.astype(np.float64))[1].astype(np.int64)
    raise ValueError(f"{what}: expected a list of vertex indices or of [x, y, z] points")


def _read_landmarks(pair: MeshPair, pred: Mesh, gt: Mesh) -> tuple[np.ndarray, np.ndarray, object]:
    if pair.landmarks is None:
        raise ValueError(
            f"{pair.name}: no landmarks for the similarity step ({pair.name}_landmarks.json or "
            "landmarks.json with 'pred' and 'gt')"
        )
    try:
        spec = json.loads(pair.landmarks.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{pair.landmarks}: not a readable JSON file ({exc})") from None
    if not isinstance(spec, dict) or "pred" not in spec or "gt" not in spec:
        raise ValueError(f"{pair.landmarks}: needs 'pred' and 'gt' landmark lists")
    pl = _landmark_indices(spec["pred"], pred, f"{pair.landmarks} 'pred'")
    gl = _landmark_indices(spec["gt"], gt, f"{pair.landmarks} 'gt'")
    if len(pl) != len(gl) or len(pl) < 3:
        raise ValueError(
            f"{pair.landmarks}: 'pred' ({len(pl)}) and 'gt' ({len(gl)}) need the same length >= 3"
        )
    nose = spec.get("nose_tip")
    if nose is None:
        if len(gl) != 68:
            raise ValueError(f"{pair.landmarks}: give 'nose_tip' (no 68-point landmarks)")
        nose = int(gl[NOSE_TIP_68])
    elif isinstance(nose, list):
        nose = np.asarray(nose, dtype=np.float64)
        if nose.shape != (3,):
            raise ValueError(f"{pair.landmarks}: 'nose_tip' must be an index or [x, y, z]")
    elif not isinstance(nose, int):
        raise ValueError(f"{pair.landmarks}: 'nose_tip' must be an index or [x, y, z]")
    return pl, gl, nose


def evaluate_pair(
    pair: MeshPair, icp_iterations: int = 10, with_scale: bool = True
) -> dict[str, dict[str, float]]:
    """Every protocol's statistics for one pair: ``{protocol: {rmse, std, median, p80, mae,
    n_points, scale}}`` (mm). Raises FileNotFoundError / ValueError naming the bad file."""
    from jr2net.eval.geometry import reconstruction_errors

    pred, gt = load_mesh(pair.pred), load_mesh(pair.gt)
    if len(pred.faces) == 0:
        raise ValueError(f"{pair.pred}: the prediction needs triangles (point-to-plane normals)")
    pl, gl, nose = _read_landmarks(pair, pred, gt)
    out = {}
    for protocol, (radius, _) in PROTOCOLS.items():
        e = reconstruction_errors(
            pred.vertices, pred.faces, gt.vertices, gt.faces, pl, gl, nose,
            crop_radius=radius, icp_iterations=icp_iterations, with_scale=with_scale,
        )  # fmt: skip
        # The errors are unsigned: STD^2 = E[e^2] - E[e]^2.
        e["std"] = math.sqrt(max(e["rmse"] ** 2 - e["mae"] ** 2, 0.0))
        out[protocol] = e
    return out


def evaluate_folder(
    folder: str | Path, icp_iterations: int = 10, with_scale: bool = True, progress: bool = True
) -> dict:
    """Evaluate every pair of ``folder``; pairs that fail are listed with their reason."""
    from tqdm import tqdm

    pairs, unpaired = find_mesh_pairs(folder)
    per_mesh: dict[str, dict] = {}
    failed: dict[str, str] = {}
    for pair in tqdm(pairs, desc="meshes", unit="pair", disable=not progress):
        try:
            per_mesh[pair.name] = evaluate_pair(pair, icp_iterations, with_scale)
        except (FileNotFoundError, ValueError) as exc:
            failed[pair.name] = str(exc)
    summary = {}
    for protocol, (radius, headline) in PROTOCOLS.items():
        rows = [m[protocol] for m in per_mesh.values()]
        summary[protocol] = {
            "crop_mm": radius,
            "headline": list(headline),
            "meshes": len(rows),
            **{
                f"{s}_mean": float(np.mean([r[s] for r in rows])) if rows else float("nan")
                for s in STATS
            },
        }
    return {
        "meshes_dir": str(Path(folder)),
        "with_scale": with_scale,
        "icp_iterations": icp_iterations,
        "direction": "ground truth -> prediction (cropped ground-truth points to the prediction)",
        "summary": summary,
        "per_mesh": per_mesh,
        "failed": failed,
        "unpaired": unpaired,
    }


def summary_rows(result: dict) -> list[dict]:
    """Table rows (one per protocol) of an ``evaluate_folder`` result."""
    rows = []
    for protocol, s in result["summary"].items():
        row = {"protocol": protocol, "crop_mm": s["crop_mm"], "meshes": s["meshes"]}
        row.update({s_: s[f"{s_}_mean"] for s_ in STATS})
        rows.append(row)
    return rows
