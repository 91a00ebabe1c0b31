"""``jr2net reconstruct IMAGE --out mesh.obj``: the fitted 3D face as a mesh (model space, mm)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "reconstruct"
HELP = "reconstruct the 3D face of a photo as an OBJ mesh (model space, mm) + coefficients"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, help="photo with a face")
    parser.add_argument("--out", type=Path, required=True, help="output mesh (.obj)")
    parser.add_argument("--json", type=Path, default=None, help="also write the coefficients JSON")
    parser.add_argument(
        "--face-model",
        default=None,
        help="face model (.npz path, 'ict', 'generic'; default: lookup)",
    )
    parser.add_argument("--neutral", action="store_true", help="neutral expression (identity only)")
    parser.add_argument(
        "--no-colors", action="store_true", help="omit the fitted albedo as OBJ vertex colours"
    )
    from jr2net.commands.fit import add_recnet_arguments

    add_recnet_arguments(parser)


def write_obj(path: Path, vertices, faces, colors=None) -> None:
    """Write a triangle mesh as OBJ (1-based faces; optional ``v x y z r g b`` vertex colours)."""
    import numpy as np

    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64) + 1
    if colors is not None:
        rows = np.concatenate([v, np.clip(np.asarray(colors, dtype=np.float64), 0, 1)], axis=1)
        vtxt = "\n".join(
            "v {:.4f} {:.4f} {:.4f} {:.4f} {:.4f} {:.4f}".format(*r) for r in rows.tolist()
        )
    else:
        vtxt = "\n".join("v {:.4f} {:.4f} {:.4f}".format(*r) for r in v.tolist())
    ftxt = "\n".join("f {} {} {}".format(*r) for r in f.tolist())
    path.write_text(f"# jr2net reconstruct: model space, millimetres, y up\n{vtxt}\n{ftxt}\n")


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    import torch

    from jr2net.commands.fit import _setup_logging, build_fitter
    from jr2net.errors import FaceModelError, InvalidImageError, NoFaceError
    from jr2net.face.model import load_face_model
    from jr2net.io.images import load_image
    from jr2net.training.checkpoints import CheckpointError

    _setup_logging()
    if args.out.suffix.lower() != ".obj":
        print(f"jr2net reconstruct: error: --out must end in .obj, got {args.out}", file=sys.stderr)
        return 2
    try:
        image = load_image(args.image)
        model = load_face_model(args.face_model)
        result = build_fitter(args, model)(image)
    except (
        FileNotFoundError,
        InvalidImageError,
        FaceModelError,
        NoFaceError,
        CheckpointError,
        ValueError,
    ) as exc:
        print(f"jr2net reconstruct: error: {exc} ({args.image})", file=sys.stderr)
        return 2
    c = result.coeffs
    with torch.inference_mode():
        expression = torch.zeros_like(c.expression) if args.neutral else c.expression
        verts = model.shape(c.identity, expression)[0].numpy()
        colors = None if args.no_colors else model.albedo.colors(c.albedo)[0].numpy()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_obj(args.out, verts, model.faces.cpu().numpy(), colors)
    print(f"wrote {args.out} ({len(verts)} vertices, {model.n_faces} triangles)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "image": str(args.image),
            "face_model": {"name": model.name, "sha256": model.sha256},
            **result.to_dict(model.expression_names),
        }
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0
