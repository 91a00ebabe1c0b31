"""``jr2net assets``: import, fetch and inspect face models (ICT-FaceKit, BFM, built-in generic)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

NAME = "assets"
HELP = "Import, fetch and inspect 3D face models (ICT-FaceKit, BFM, generic)."

ICT_REPO_URL = "https://github.com/ICT-VGL/ICT-FaceKit"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="assets_command", metavar="ACTION")

    p = sub.add_parser("import-ict", help="import a native ICT-FaceKit folder (FaceXModel OBJs)")
    p.add_argument("directory", type=Path, help="ICT-FaceKit checkout or its FaceXModel/ folder")
    p.add_argument("--out", type=Path, default=None, help="output .npz (default: user cache default)")
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="accept folders without all 53 expressions / any identity OBJ (for tests)",
    )

    p = sub.add_parser("import-bfm", help="import Deep3DFaceRecon's BFM_model_front.mat")
    p.add_argument("mat", type=Path, help="path to BFM_model_front.mat")
    p.add_argument("--out", type=Path, default=None, help="output .npz (default: cache bfm.npz)")

    p = sub.add_parser("fetch", help="git-clone the public ICT-FaceKit repository and import it")
    p.add_argument("--repo", default=ICT_REPO_URL, help="repository URL or local path")
    p.add_argument("--dest", type=Path, default=None, help="clone folder (default: cache src/)")
    p.add_argument("--out", type=Path, default=None, help="output .npz (default: user cache default)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds allowed for the clone")
    p.add_argument(
        "--connect-timeout", type=float, default=20.0, help="seconds allowed to reach the remote"
    )

    p = sub.add_parser(
        "face-id", help="convert dlib's face-recognition ResNet (.dat) to PyTorch weights"
    )
    p.add_argument("--dat", type=Path, default=None, help="dlib .dat (default: installed package)")
    p.add_argument("--out", type=Path, default=None, help="output .pt (default: user cache)")

    p = sub.add_parser(
        "mediapipe",
        help="extract MediaPipe's face detector and mesh (.tflite, Apache-2.0) from its PyPI wheel",
    )
    p.add_argument("--wheel", type=Path, default=None, help="a downloaded mediapipe wheel")
    p.add_argument("--out", type=Path, default=None, help="folder (default: cache)")

    sub.add_parser("list", help="list the face models the lookup can find")

    p = sub.add_parser("info", help="which face model the lookup picks and why, with its sizes")
    p.add_argument("--face-model", default=None, help="model spec: .npz path, 'generic', 'ict', NAME")

    p = sub.add_parser(
        "write-csv", help="write a Live Link Face CSV from a fit-video track or a generated take"
    )
    p.add_argument("out", type=Path, help="output .csv")
    p.add_argument("--track", type=Path, default=None, help="a jr2net fit-video <stem>_fit.jsonl")
    p.add_argument("--seconds", type=float, default=10.0, help="length of a generated take")
    p.add_argument("--fps", type=float, default=None, help="frame rate (default: track's, or 60)")
    p.add_argument("--seed", type=int, default=0, help="seed of a generated take")
    p.add_argument("--face-model", default=None, help="model spec of a generated take")


def _error(msg: str) -> int:
    print(f"jr2net assets: error: {msg}", file=sys.stderr)
    return 1


def _git_env() -> dict[str, str]:
    env = dict(os.environ)
    # Abort transfers that stall (offline, captive portals) instead of hanging; never prompt.
    env.update(GIT_TERMINAL_PROMPT="0", GIT_HTTP_LOW_SPEED_LIMIT="1000", GIT_HTTP_LOW_SPEED_TIME="15")
    return env


def _git(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            ["git", *args], env=_git_env(), capture_output=True, text=True, timeout=timeout
        )
    except FileNotFoundError as exc:
        raise RuntimeError("git is not installed; install it or use `jr2net assets import-ict`") from exc
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"`git {args[0]}` timed out after {timeout:.0f} s") from exc


def _fetch(args: argparse.Namespace) -> int:
    from jr2net.face.importers import import_ict
    from jr2net.face.model import FaceModel, default_model_path
    from jr2net.paths import cache_dir

    dest = args.dest or cache_dir() / "src" / "ICT-FaceKit"
    hint = "offline? clone it elsewhere and run `jr2net assets import-ict DIR`"
    if not (dest / ".git").is_dir():
        # Probe the remote first so an offline machine fails within the connect timeout.
        try:
            probe = _git(["ls-remote", "--heads", str(args.repo)], timeout=args.connect_timeout)
        except RuntimeError as exc:
            return _error(f"cannot reach {args.repo}: {exc} ({hint})")
        if probe.returncode != 0:
            detail = probe.stderr.strip().splitlines()[-1:] or ["unknown error"]
            return _error(f"cannot reach {args.repo}: {detail[0]} ({hint})")
        dest.parent.mkdir(parents=True, exist_ok=True)
        print(f"cloning {args.repo} into {dest} …", flush=True)
        try:
            clone = _git(["clone", "--depth", "1", str(args.repo), str(dest)], timeout=args.timeout)
        except RuntimeError as exc:
            return _error(f"clone failed: {exc} ({hint})")
        if clone.returncode != 0:
            return _error(f"clone failed: {clone.stderr.strip()} ({hint})")
    else:
        print(f"using existing clone {dest}")
    try:
        arrays = import_ict(dest, require_complete=True)
        model = FaceModel.from_arrays(arrays)
    except ValueError as exc:
        return _error(str(exc))
    out = model.save_npz(args.out or default_model_path())
    print(f"imported {model} -> {out} (sha256 {model.sha256[:16]})")
    return 0


def _mediapipe(args: argparse.Namespace) -> int:
    from jr2net.face.mediapipe_assets import (
        LICENCE,
        MediaPipeModelsError,
        fetch_mediapipe_models,
        mediapipe_models_dir,
    )

    try:
        shas = fetch_mediapipe_models(args.wheel, args.out)
    except MediaPipeModelsError as exc:
        return _error(str(exc))
    for name, sha in shas.items():
        print(f"{name:42s} sha256 {sha}")
    print(f"-> {args.out or mediapipe_models_dir()} ({LICENCE}; LICENSE and MANIFEST.json beside)")
    return 0


def _face_id(args: argparse.Namespace) -> int:
    from jr2net.models.face_id import convert_face_id_weights

    try:
        path, count, sha = convert_face_id_weights(args.dat, args.out)
    except ModuleNotFoundError as exc:  # face-recognition-models missing
        return _error(str(exc))
    print(f"converted dlib face-recognition ResNet -> {path} ({count} tensors, sha256 {sha})")
    return 0


def _describe(model, choice=None) -> str:
    lines = []
    if choice is not None:
        lines.append(f"lookup picks: {choice.describe()}")
    lines += [
        f"name:        {model.name}",
        f"vertices:    {model.n_vertices}",
        f"triangles:   {model.n_faces}",
        f"identity:    {model.n_identity} modes",
        f"expression:  {model.n_expression} ({', '.join(model.expression_names[:4])}"
        f"{', …' if model.n_expression > 4 else ''})",
        f"albedo:      {model.n_albedo} coefficients",
        f"regions:     {', '.join(model.region_names) or '-'}",
        f"sha256:      {model.sha256}",
    ]
    if model.source:
        lines.append(f"source:      {model.source}")
    return "\n".join(lines)


def _write_csv(args: argparse.Namespace) -> int:
    from jr2net.face.model import load_face_model
    from jr2net.io.arkit_csv import sample_take, track_from_fit_jsonl, write_live_link_csv

    if args.track is not None:
        beta, names, fps, head = track_from_fit_jsonl(args.track)
        fps = args.fps or fps
    else:
        names = load_face_model(args.face_model).expression_names
        fps = args.fps or 60.0
        beta, head = sample_take(names, args.seconds, fps, args.seed)
    out = write_live_link_csv(args.out, beta, names, fps=fps, head=head)
    print(f"wrote {out} ({len(beta)} rows at {fps:g} fps)")
    return 0


def run(args: argparse.Namespace) -> int:
    from jr2net.errors import FaceModelError
    from jr2net.face.importers import import_bfm, import_ict
    from jr2net.face.model import (
        ENV_VAR,
        FaceModel,
        default_model_path,
        face_models_dir,
        load_face_model,
        resolve_face_model,
    )

    action = getattr(args, "assets_command", None)
    try:
        if action == "import-ict":
            model = FaceModel.from_arrays(
                import_ict(args.directory, require_complete=not args.allow_partial)
            )
            out = model.save_npz(args.out or default_model_path())
            print(f"imported {model} -> {out} (sha256 {model.sha256[:16]})")
            return 0
        if action == "import-bfm":
            model = FaceModel.from_arrays(import_bfm(args.mat))
            out = model.save_npz(args.out or face_models_dir() / "bfm.npz")
            print(f"imported {model} -> {out} (sha256 {model.sha256[:16]})")
            return 0
        if action == "fetch":
            return _fetch(args)
        if action == "face-id":
            return _face_id(args)
        if action == "mediapipe":
            return _mediapipe(args)
        if action == "list":
            choice = resolve_face_model(None)
            rows = [("generic", "built-in generic template (generated from code)")]
            env = os.environ.get(ENV_VAR, "").strip()
            if env:
                rows.append((f"${ENV_VAR}", env))
            folder = face_models_dir()
            for path in sorted(folder.glob("*.npz")) if folder.is_dir() else []:
                rows.append((path.stem, str(path)))
            for name, where in rows:
                print(f"{name:24s} {where}")
            print(f"\ndefault lookup: {choice.describe()}")
            return 0
        if action == "write-csv":
            return _write_csv(args)
        if action == "info":
            choice = resolve_face_model(args.face_model)
            model = load_face_model(args.face_model)
            print(_describe(model, choice))
            return 0
    except (FaceModelError, OSError, ValueError) as exc:
        return _error(str(exc))
    print(
        "usage: jr2net assets {import-ict,import-bfm,fetch,face-id,mediapipe,list,info,write-csv} …",
        file=sys.stderr,
    )
    return 2
