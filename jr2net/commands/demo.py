"""``jr2net demo``: the main job end to end, offline: reenact a video through a real gRPC server.

Inputs: ``--source``/``--driving`` when given; otherwise the shared media (s42.jpg, else
obama.jpg, driven by d0.mp4) when the shared data folder is there; otherwise a self-contained pair
generated from the face model (a rendered face as the source photo, the model animated as the
driving video). Face model: ``--face-model``, else ICT-FaceKit when it is imported or in the shared
folder, else the standard lookup (the embedded generic model on a fresh machine).
Outputs in ``--out``: reenacted.mp4, side_by_side.mp4 (source | driving | output) and
contact_sheet.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "demo"
HELP = "reenact a sample video end to end through an in-process gRPC server (offline)"

DEFAULT_SOURCES = ("s42.jpg", "obama.jpg", "lin-manuel-miranda.png")
DEFAULT_DRIVING = "d0.mp4"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    parser.add_argument("--source", help="source face photo (default: shared media or generated)")
    parser.add_argument("--driving", help="driving video (default: shared media or generated)")
    parser.add_argument(
        "--max-frames", type=int, default=0, help="stop after N driving frames (0: all)"
    )
    parser.add_argument("--pose-mode", choices=("relative", "absolute"), default="relative")
    parser.add_argument(
        "--face-model",
        default=None,
        help="face model (path, 'ict', 'generic'; default: the standard lookup)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help="use the generated inputs even when shared media is present",
    )


def pick_inputs(args: argparse.Namespace, out: Path) -> tuple[Path, Path, str]:
    """(source, driving, where they came from) following the order in the module doc."""
    if args.source or args.driving:
        if not (args.source and args.driving):
            raise SystemExit("demo: give both --source and --driving, or neither")
        return Path(args.source), Path(args.driving), "command line"
    if not args.synthetic:
        from jr2net.paths import SharedDataMissingError, shared_path

        try:
            driving = shared_path("data", "videos", DEFAULT_DRIVING)
            for name in DEFAULT_SOURCES:
                try:
                    return shared_path("data", "images", name), driving, "shared media"
                except SharedDataMissingError:
                    continue
        except SharedDataMissingError:
            pass
    from jr2net.pipeline.synthetic import write_synthetic_inputs

    source, driving = write_synthetic_inputs(out / "inputs", face_model=args.face_model)
    return source, driving, "generated from the face model"


def _best_face_model() -> str | None:
    """ICT-FaceKit when it is installed or in the shared data folder, else the standard lookup."""
    from jr2net.errors import FaceModelError
    from jr2net.face.model import resolve_face_model

    try:
        choice = resolve_face_model("ict")
    except FaceModelError:
        return None
    return str(choice.path) if choice.path is not None else None


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from jr2net.clients.reenact import reenact_video
    from jr2net.errors import JR2NetError
    from jr2net.server.app import local_server

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        source, driving, origin = pick_inputs(args, out)
    except JR2NetError as exc:
        print(f"jr2net demo: cannot prepare inputs: {exc}", file=sys.stderr)
        return 2
    face_model = args.face_model or _best_face_model()
    print(f"demo: source  {source}\ndemo: driving {driving}  ({origin})")
    print(f"demo: face model {face_model or 'default lookup'}")
    outputs = {
        "video": out / "reenacted.mp4",
        "side_by_side": out / "side_by_side.mp4",
        "contact_sheet": out / "contact_sheet.png",
    }
    try:
        with local_server(max_sessions=1, face_model=face_model) as address:
            summary = reenact_video(
                source,
                driving,
                outputs["video"],
                server=address,
                side_by_side=outputs["side_by_side"],
                contact_sheet_path=outputs["contact_sheet"],
                max_frames=args.max_frames or None,
                pose_mode=args.pose_mode,
                progress=not args.no_progress,
            )
    except (FileNotFoundError, ValueError, JR2NetError) as exc:
        print(f"jr2net demo: {exc}", file=sys.stderr)
        return 2
    (out / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    print("demo: done; outputs:")
    for label, path in {**outputs, "summary": out / "summary.json"}.items():
        print(f"  {label:14s} {path.resolve()}")
    return 0 if not summary.errors else 1
