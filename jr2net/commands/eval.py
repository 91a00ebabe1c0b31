"""``jr2net eval reenact|reconstruct``: the DESIGN §8 evaluation protocols (docs/evaluation.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "eval"
HELP = "evaluate reenactment (videos) or 3D reconstruction (meshes) with the DESIGN §8 protocols"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    r = sub.add_parser(
        "reenact",
        help="same- and cross-identity reenactment metrics, baselines beside ours",
        description="Same identity: L1/PSNR/SSIM over the face box, mouth box and full frame "
        "(first face frame = source). Cross identity: EFL and identity distance of each source "
        "driven by each video. Copy-source and the 2D similarity warp are always evaluated too.",
    )
    r.add_argument("--videos", type=Path, required=True, help="folder of driving videos")
    r.add_argument(
        "--sources",
        type=Path,
        default=None,
        help="folder of source images for cross identity "
        "(default: the first face frame of every other video)",
    )
    r.add_argument("--mode", default="geometric", help="reenactment mode: geometric | learned")
    r.add_argument("--out", type=Path, required=True, help="output folder (metrics.json, PNGs)")
    r.add_argument(
        "--max-frames",
        type=int,
        default=30,
        metavar="N",
        help="evaluated frames per video / pair, spread evenly (0: all; default 30)",
    )
    r.add_argument("--no-cross", action="store_true", help="same identity only")
    r.add_argument(
        "--fid",
        action="store_true",
        help="also a Frechet distance to the ground-truth frames (not Inception FID)",
    )
    r.add_argument(
        "--fid-extractor",
        default=None,
        metavar="MODULE:FACTORY",
        help="feature extractor factory for --fid (default: the face-identity network)",
    )
    r.add_argument("--pose-mode", choices=("relative", "absolute"), default="relative")
    r.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="pipeline option (SessionOptions.extra), repeatable",
    )
    r.add_argument("--face-model", default=None, help="face model (.npz, 'ict', 'generic')")
    r.add_argument(
        "--checkpoints", default=None, help="checkpoint file or training run folder (learned mode)"
    )
    r.add_argument("--device", default="cpu", help="torch device (default cpu)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")

    m = sub.add_parser(
        "reconstruct",
        help="mesh errors: FaceWarehouse (85 mm, RMSE/STD/median/p80) and FRGC (95 mm, MAE)",
        description="Pairs <name>_pred.obj|ply / <name>_gt.obj|ply with <name>_landmarks.json "
        "(or one landmarks.json): similarity on landmarks, nose-tip crop, ICP, point-to-plane.",
    )
    m.add_argument("--meshes", type=Path, required=True, help="folder of mesh pairs")
    m.add_argument("--out", type=Path, default=None, help="write OUT/metrics.json")
    m.add_argument("--icp-iterations", type=int, default=10)
    m.add_argument("--rigid", action="store_true", help="rigid alignment (no scale)")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")


def _fail(action: str, exc: BaseException) -> int:
    import sys

    print(f"jr2net eval {action}: error: {exc}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    return _reenact(args) if args.action == "reenact" else _reconstruct(args)


def _reenact(args: argparse.Namespace) -> int:
    from jr2net.errors import JR2NetError
    from jr2net.eval.fid import DEFAULT_EXTRACTOR, load_extractor
    from jr2net.eval.reenact_suite import run_reenact_eval, tables
    from jr2net.pipeline.base import SessionOptions
    from jr2net.pipeline.registry import ReenactorSettings, create_reenactor

    if args.max_frames < 0:
        return _fail("reenact", ValueError(f"--max-frames must be >= 0, got {args.max_frames}"))
    extra = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            return _fail("reenact", ValueError(f"--option expects KEY=VALUE, got {item!r}"))
        extra[key] = value
    for what, folder in (("videos", args.videos), ("sources", args.sources)):
        if folder is not None and not folder.is_dir():
            return _fail("reenact", FileNotFoundError(f"{what} folder not found: {folder}"))
    try:
        settings = ReenactorSettings(
            face_model=args.face_model, checkpoints=args.checkpoints, device=args.device
        )
        reenactor = create_reenactor(args.mode, settings)
        extractor = None
        spec = args.fid_extractor or DEFAULT_EXTRACTOR
        if args.fid:
            extractor = load_extractor(spec)
        metrics = run_reenact_eval(
            reenactor, args.videos, args.out, SessionOptions(pose_mode=args.pose_mode, extra=extra),
            sources=args.sources, max_frames=args.max_frames, cross=not args.no_cross,
            extractor=extractor, extractor_name=getattr(extractor, "name", spec),
            progress=not args.no_progress,
        )  # fmt: skip
    except (FileNotFoundError, ValueError, TypeError, JR2NetError) as exc:
        return _fail("reenact", exc)
    print(tables(metrics))
    print(f"\nwrote {args.out / 'metrics.json'} and contact sheets in {args.out}")
    return 0


def _reconstruct(args: argparse.Namespace) -> int:
    import json

    from jr2net.eval.reconstruct_eval import evaluate_folder, summary_rows
    from jr2net.eval.reenact_eval import format_table

    try:
        result = evaluate_folder(
            args.meshes, icp_iterations=args.icp_iterations, with_scale=not args.rigid,
            progress=not args.no_progress,
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as exc:
        return _fail("reconstruct", exc)
    cols = ["protocol", "crop_mm", "meshes", "rmse", "std", "median", "p80", "mae"]
    print(format_table(summary_rows(result), cols, "reconstruction error (mm, mean over meshes)"))
    for name, reason in result["failed"].items():
        print(f"failed: {name}: {reason}")
    if result["unpaired"]:
        print(f"unpaired (no _pred or no _gt): {', '.join(result['unpaired'])}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "metrics.json"
        path.write_text(json.dumps(result, indent=2, default=float) + "\n")
        print(f"wrote {path}")
    return 0 if result["per_mesh"] else 2
