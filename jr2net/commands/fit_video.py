"""``jr2net fit-video VIDEO``: per-frame pose + expression fit of a video, with an overlay mp4.

Outputs in ``--out-dir``: ``<stem>_fit.jsonl`` (one JSON object per frame, in order: ``frame``,
``face_found``, and for face frames ``expression``, ``angles``, ``translation``, ``landmarks``,
``landmarks_fit``, ``residual_iod``, ``K``; the first face frame also carries the ``identity``, fitted
there and then frozen; a first header line holds the model, fps, size and expression names) and ``<stem>_overlay.mp4`` (fitted wireframe and landmarks).
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "fit-video"
HELP = "fit pose + expression to every frame of a video (JSONL coefficients + overlay mp4)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", type=Path, help="video file with a face")
    parser.add_argument(
        "--out-dir", type=Path, default=Path("."), help="output folder (default: .)"
    )
    parser.add_argument("--max-frames", type=int, default=0, help="stop after N frames (0: all)")
    parser.add_argument(
        "--face-model",
        default=None,
        help="face model (.npz path, 'ict', 'generic'; default: lookup)",
    )
    parser.add_argument("--no-overlay", action="store_true", help="skip the overlay video")


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    import numpy as np
    from tqdm import tqdm

    from jr2net.commands.fit import _setup_logging
    from jr2net.errors import FaceModelError, JR2NetError
    from jr2net.face.fitting import DrivingFitter
    from jr2net.face.model import load_face_model
    from jr2net.face.overlay import render_fit_overlay
    from jr2net.io.video import VideoReader, VideoWriter

    _setup_logging()
    if args.max_frames < 0:
        print("jr2net fit-video: error: --max-frames must be >= 0", file=sys.stderr)
        return 2
    try:
        model = load_face_model(args.face_model)
        reader = VideoReader(args.video)
    except (FileNotFoundError, FaceModelError, JR2NetError, ValueError) as exc:
        print(f"jr2net fit-video: error: {exc}", file=sys.stderr)
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.video.stem
    jsonl_path = args.out_dir / f"{stem}_fit.jsonl"
    mp4_path = args.out_dir / f"{stem}_overlay.mp4"
    fitter = DrivingFitter(model)
    total = reader.frame_count or None
    if args.max_frames:
        total = min(total or args.max_frames, args.max_frames)
    found = 0
    n = 0
    fit_times: list[float] = []
    writer = None if args.no_overlay else VideoWriter(mp4_path, reader.fps)
    with open(jsonl_path, "w") as out:
        header_written = False
        for frame in tqdm(reader, total=total, desc=f"fit {args.video.name}", unit="frame"):
            if args.max_frames and n >= args.max_frames:
                break
            result = fitter.fit(frame)
            if not header_written:
                H, W = frame.shape[:2]
                header = {
                    "header": True,
                    "video": str(args.video),
                    "face_model": {"name": model.name, "sha256": model.sha256},
                    "fps": float(reader.fps),
                    "image_size": [H, W],
                    "expression_names": model.expression_names,
                }
                out.write(json.dumps(header) + "\n")
                header_written = True
            rec: dict = {"frame": n, "face_found": result is not None}
            if result is not None:
                found += 1
                fit_times.append(result.timings["total"])
                c = result.coeffs
                rec.update(
                    expression=np.round(c.expression[0].numpy(), 5).tolist(),
                    angles=c.angles[0].tolist(),
                    translation=c.translation[0].tolist(),
                    K=result.K[0].tolist(),
                    landmarks=np.asarray(result.detection.landmarks).round(2).tolist(),
                    landmarks_fit=np.asarray(result.landmarks_fit).round(2).tolist(),
                    residual_iod=result.residual_iod,
                )
                if found == 1:  # frozen after the first face frame
                    rec["identity"] = c.identity[0].tolist()
            out.write(json.dumps(rec) + "\n")
            if writer is not None:
                writer.write(frame if result is None else render_fit_overlay(frame, result, model))
            n += 1
    if writer is not None:
        writer.close()
        print(f"wrote {mp4_path}")
    print(f"wrote {jsonl_path}")
    med = 1000 * float(np.median(fit_times)) if fit_times else float("nan")
    print(f"{n} frames, face found in {found}; median landmarks+fit {med:.1f} ms per frame")
    return 0
