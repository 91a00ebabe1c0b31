"""``jr2net fit IMAGE``: fit the face model to a photo; write coefficients JSON and an overlay PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "fit"
HELP = "fit the 3D face model to a photo (coefficients JSON + overlay PNG)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, help="photo with a face (JPEG/PNG/...)")
    parser.add_argument(
        "--out-dir", type=Path, default=Path("."), help="output folder (default: .)"
    )
    parser.add_argument(
        "--face-model",
        default=None,
        help="face model (.npz path, 'ict', 'generic'; default: lookup)",
    )
    parser.add_argument(
        "--no-photometric", action="store_true", help="landmarks only (no albedo/light refinement)"
    )
    parser.add_argument("--no-overlay", action="store_true", help="skip the overlay PNG")
    add_detector_argument(parser)
    add_recnet_arguments(parser)


def add_detector_argument(parser: argparse.ArgumentParser) -> None:
    """``--detector mediapipe|dlib`` (default: $JR2NET_DETECTOR, else the project default)."""
    from jr2net.face.landmarks import DETECTORS

    parser.add_argument(
        "--detector",
        choices=DETECTORS,
        default=None,
        help="face landmark detector: mediapipe (Apache-2.0) or dlib (iBUG 300-W, non-commercial)",
    )


REFINE_ITERATIONS = 8  # landmark-solver iterations of --refine


def add_recnet_arguments(parser: argparse.ArgumentParser) -> None:
    """``--recnet CKPT`` and ``--refine`` (shared by fit and reconstruct)."""
    parser.add_argument(
        "--recnet",
        type=Path,
        default=None,
        metavar="CKPT",
        help="fit with a trained RecNet checkpoint (one forward pass) instead of the fitter",
    )
    parser.add_argument(
        "--refine",
        action="store_true",
        help="with --recnet: a few landmark-fitter steps from RecNet's result",
    )


def build_fitter(args: argparse.Namespace, model, *, photometric: bool = True):
    """``fit(image) -> FitResult`` as the flags ask: RecNet (optionally refined) or the fitter.

    Raises ValueError (``--refine`` without ``--recnet``), FileNotFoundError and
    ``CheckpointError`` (unusable checkpoint).
    """
    import functools

    if args.recnet is None:
        if args.refine:
            raise ValueError("--refine needs --recnet CKPT")
        from jr2net.face.fitting import SourceFitter

        detector = getattr(args, "detector", None)
        return SourceFitter(model, photometric=photometric, detector=detector).fit
    from jr2net.models.checkpoint import load_recnet

    recnet = load_recnet(args.recnet, model)
    return functools.partial(recnet.fit, refine_iterations=REFINE_ITERATIONS if args.refine else 0)


def _setup_logging() -> None:
    import logging

    log = logging.getLogger("jr2net")
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("jr2net: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from jr2net.errors import FaceModelError, InvalidImageError, NoFaceError
    from jr2net.face.landmarks import detector_description
    from jr2net.face.model import load_face_model
    from jr2net.face.overlay import render_fit_overlay
    from jr2net.io.images import load_image, save_image
    from jr2net.training.checkpoints import CheckpointError

    _setup_logging()
    try:
        image = load_image(args.image)
        model = load_face_model(args.face_model)
        fit = build_fitter(args, model, photometric=not args.no_photometric)
        if args.recnet is None:
            print(f"jr2net fit: {detector_description(args.detector)}", file=sys.stderr)
    except (FileNotFoundError, InvalidImageError, FaceModelError, CheckpointError, ValueError) as exc:
        print(f"jr2net fit: error: {exc}", file=sys.stderr)
        return 2
    try:
        result = fit(image)
    except NoFaceError as exc:
        print(f"jr2net fit: error: {exc} ({args.image})", file=sys.stderr)
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.image.stem
    payload = {
        "image": str(args.image),
        "face_model": {"name": model.name, "sha256": model.sha256},
        **result.to_dict(model.expression_names),
    }
    json_path = args.out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {json_path}")
    if not args.no_overlay:
        png_path = args.out_dir / f"{stem}_overlay.png"
        save_image(png_path, render_fit_overlay(image, result, model))
        print(f"wrote {png_path}")
    t = result.timings
    print(
        f"landmark residual {result.residual_px:.2f} px ({100 * result.residual_iod:.2f}% of the "
        f"inter-ocular distance); fit {t.get('total', 0.0):.2f} s"
    )
    return 0
