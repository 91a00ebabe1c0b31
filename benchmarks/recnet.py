"""RecNet benchmark: the tiny training run, held-out landmarks, synthetic shape, inference time.

1. Training (``--train``): ``jr2net train prepare`` then ``jr2net train recnet`` with
   ``training/configs/tiny.yaml`` into ``--run`` (default ``runs/tiny``), each timed: wall clock
   and CPU time (user + sys of the child process; on a shared machine the wall clock is an upper
   bound and the CPU time is what the stage costs); without ``--train`` an existing run is read
   (its timings from ``RUN/timings.json`` when this benchmark trained it).
2. Held-out landmarks: on the prepare cache's held-out split (the held-out identities, d20, whole;
   the last ``data.heldout_tail`` of every training video), the 68-landmark error (mean distance /
   inter-ocular distance, jaw on the occluding contour) against dlib's detections of: RecNet at
   initialisation (zero heads: the mean face framed by the crop), the trained RecNet (``last.pt``
   by default, the end of the fixed schedule: no checkpoint is chosen on these frames; the
   stage's ``best.pt`` is chosen on them, by its mean ``landmark_iod``) and the fitter (the cache's
   pseudo-labels: ``DrivingFitter`` per frame), mean and median,
   d20 and the video tails apart; improvement = 1 - trained / init.
3. Shape: the 100 synthetic faces of ``benchmarks/fitting.py`` (seed 0, same renders, same dlib
   detections): RecNet fitted through ``RecNetFitter.fit`` (the ``jr2net fit --recnet`` path);
   mesh RMSE with the fitting benchmark's protocol (``jr2net.eval.geometry.reconstruction_errors``:
   similarity on landmarks + ICP, 85 mm crop, face region) and expression MAE, beside the mean
   shape and zero expression (computed here), and the fitter (``SourceFitter``: the per-face
   figures stored in ``benchmarks/results/fitting.json``, matched by face index, because
   re-running 100 photometric fits takes minutes; ``--rerun-fitter`` re-runs them).
4. Inference: ms per face on 1 thread (median), the network alone and the whole fit path after
   detection (crop, forward, camera change, landmarks), for the tiny config and ResNet-50 at 224².
5. ``benchmarks/results/recnet.json`` and a contact sheet of RecNet fits on held-out d20 frames,
   ``benchmarks/results/recnet_d20.png`` (``jr2net fit --recnet`` overlays: mesh over the frame,
   detected landmarks vs RecNet's).

Run: ``.venv/bin/python -m benchmarks.recnet [--train] [--run runs/tiny]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import RESULTS_DIR, median_time, print_table, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "training" / "configs" / "tiny.yaml"
TARGETS = {
    "train_minutes": 10.0,
    "improvement_vs_init": 0.40,
    "d20_median_iod": 0.06,
    "inference_ms_tiny": 15.0,
}


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


# ---- 1. training -----------------------------------------------------------------------------


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def train(run: Path, config: Path) -> dict:
    """Run prepare + recnet (fresh, --force) and time each (wall and CPU seconds); writes
    RUN/timings.json."""
    out = {"config": str(config), "load_before": _load(),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}  # fmt: skip
    for stage in ("prepare", "recnet"):
        cmd = [sys.executable, "-m", "jr2net.cli", "train", stage, "--config", str(config),
               "--out", str(run), "--force"]  # fmt: skip
        print("$", " ".join(cmd), flush=True)
        t0, c0 = time.perf_counter(), _children_cpu_s()
        subprocess.run(cmd, check=True, cwd=ROOT)
        out[f"{stage}_s"] = time.perf_counter() - t0
        out[f"{stage}_cpu_s"] = _children_cpu_s() - c0
    out["total_s"] = out["prepare_s"] + out["recnet_s"]
    out["total_cpu_s"] = out["prepare_cpu_s"] + out["recnet_cpu_s"]
    out["load_after"] = _load()
    (run / "timings.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


# ---- 2. held-out landmarks -------------------------------------------------------------------


def heldout(run: Path, ckpt: Path) -> tuple[dict, dict]:
    """Per-group landmark errors of init / trained RecNet / fitter on the held-out real frames."""
    from jr2net.face.coeffs import FaceCoefficients
    from jr2net.models.checkpoint import build_recnet, load_recnet
    from jr2net.training.data.prepared import PreparedFaces
    from jr2net.training.data.sample import collate
    from jr2net.training.losses import landmark_error_iod

    fitter = load_recnet(ckpt)
    ckpt_cfg = torch.load(ckpt, weights_only=True)["config"]
    held_ids = set(ckpt_cfg["data"]["heldout_identities"])
    model = fitter.model
    init = build_recnet(model, _spec(fitter.net)).eval()  # zero heads: weights do not matter
    ds = PreparedFaces(run / "prepare", "heldout", fitter.crop_size)
    lm = fitter.landmarks
    errs: dict[str, dict[str, list[float]]] = {
        k: {"held": [], "tail": []} for k in ("init", "recnet", "fitter")
    }
    with torch.inference_mode():
        for start in range(0, len(ds), 32):
            b = collate([ds[i] for i in range(start, min(start + 32, len(ds)))])
            K, target = b["K"], b["landmarks"]
            gt = FaceCoefficients(**b["coeffs"])
            gt = gt.replace(identity=gt.identity[:, : lm.n_identity])
            preds = {
                "init": init.to_image_camera(init(b["image"]), K),
                "recnet": fitter.net.to_image_camera(fitter.net(b["image"]), K),
                "fitter": gt,
            }
            groups = ["held" if who in held_ids else "tail" for who in b["identity"]]
            for name, c in preds.items():
                e = landmark_error_iod(lm.project(c, K), target).tolist()
                for g, v in zip(groups, e, strict=True):
                    errs[name][g].append(v)
    summary: dict = {"n_heldout_identity_frames": len(errs["init"]["held"]),
                     "n_tail_frames": len(errs["init"]["tail"]),
                     "heldout_identities": sorted(held_ids)}  # fmt: skip
    for name in errs:
        for g in ("held", "tail", "all"):
            v = errs[name]["held"] + errs[name]["tail"] if g == "all" else errs[name][g]
            summary[f"{name}_{g}_mean"] = float(np.mean(v)) if v else math.nan
            summary[f"{name}_{g}_median"] = float(np.median(v)) if v else math.nan
    for g in ("held", "tail", "all"):
        for stat in ("mean", "median"):
            i, r = summary[f"init_{g}_{stat}"], summary[f"recnet_{g}_{stat}"]
            summary[f"improvement_{g}_{stat}"] = 1.0 - r / i if i > 0 else math.nan
    return summary, errs


def _spec(net) -> dict:
    from jr2net.models.checkpoint import recnet_spec

    return recnet_spec(net)


# ---- 3. synthetic shape ----------------------------------------------------------------------


def synthetic_shape(ckpt: Path, n: int, seed: int, rerun_fitter: bool) -> tuple[dict, list[dict]]:
    """RecNet vs fitter vs mean shape on the fitting benchmark's synthetic faces."""
    from jr2net.errors import NoFaceError
    from jr2net.eval.geometry import reconstruction_errors
    from jr2net.face.camera import default_intrinsics
    from jr2net.face.fitting import SourceFitter
    from jr2net.face.landmarks import detect_largest_face
    from jr2net.face.renderer import FaceRenderer
    from jr2net.face.synthetic import (
        SIZE,
        YAW_MAX_DEG,
        backgrounds,
        random_coeffs,
        render_composite,
        render_model,
        true_landmarks,
    )
    from jr2net.models.checkpoint import load_recnet

    rec = load_recnet(ckpt)
    model = rec.model
    renderer = FaceRenderer(render_model(model))
    stored = {}
    fit_json = RESULTS_DIR / "fitting.json"
    if not rerun_fitter and fit_json.exists():
        data = json.loads(fit_json.read_text())
        if data.get("synthetic", {}).get("n") == n:
            stored = {r["i"]: r for r in data["synthetic_rows"]}
    fitter = SourceFitter(model) if rerun_fitter or not stored else None
    rng = np.random.default_rng(seed)
    bgs = backgrounds(rng, n, SIZE)
    K = default_intrinsics((SIZE, SIZE))
    face = model.subset(["face"])
    keep = face.parent_vertex_index.cpu().numpy()
    faces = face.faces.cpu().numpy()
    lmk = face.landmarks68.cpu().numpy()
    nose = int(lmk[30])

    def rmse(verts: np.ndarray, gt: np.ndarray) -> float:
        e = reconstruction_errors(verts[keep], faces, gt, faces, lmk, lmk, nose, crop_radius=85.0)
        return float(e["rmse"])

    rows = []
    for i in range(n):
        c = random_coeffs(model, rng, YAW_MAX_DEG)
        image = render_composite(renderer, c, K, bgs[i])
        gt_verts = model.shape(c.identity, c.expression)[0].numpy()
        gt_face = gt_verts[keep]
        row: dict = {"i": i}
        try:
            det = detect_largest_face(image)
        except NoFaceError:
            row["detected"] = False
            rows.append(row)
            continue
        row["detected"] = True
        gt_lm = true_landmarks(rec.landmarks.solver, model, c, K)
        iod = float(np.linalg.norm(gt_lm[36] - gt_lm[45]))
        res = rec.fit(image, det)
        rc = res.coeffs
        with torch.inference_mode():
            pv = model.shape(rc.identity, rc.expression)[0].numpy()
        row["recnet_rmse_mm"] = rmse(pv, gt_face)
        row["recnet_expr_mae"] = float((rc.expression - c.expression).abs().mean())
        row["recnet_lmk_err_iod"] = float(np.linalg.norm(res.landmarks_fit - gt_lm, axis=1).mean() / iod)
        row["base_rmse_mm"] = rmse(model.vertices.numpy(), gt_face)
        row["zero_expr_mae"] = float(c.expression.abs().mean())
        if fitter is not None:
            fc = fitter.fit(image, det).coeffs
            with torch.inference_mode():
                fv = model.shape(fc.identity, fc.expression)[0].numpy()
            row["fitter_rmse_mm"] = rmse(fv, gt_face)
            row["fitter_expr_mae"] = float((fc.expression - c.expression).abs().mean())
        elif i in stored and stored[i].get("detected"):
            row["fitter_rmse_mm"] = stored[i]["rmse_mm"]
            row["fitter_expr_mae"] = stored[i]["expr_mae"]
            row["stored_base_rmse_mm"] = stored[i]["base_rmse_mm"]
        rows.append(row)
        if i % 20 == 0:
            print(f"  synthetic {i + 1}/{n}: RecNet {row['recnet_rmse_mm']:.2f} mm, mean shape "
                  f"{row['base_rmse_mm']:.2f} mm", flush=True)  # fmt: skip
    det = [r for r in rows if r["detected"]]

    def med(key: str) -> float:
        v = [r[key] for r in det if key in r]
        return float(statistics.median(v)) if v else math.nan

    def mean(key: str) -> float:
        v = [r[key] for r in det if key in r]
        return float(np.mean(v)) if v else math.nan

    same = [abs(r["base_rmse_mm"] - r["stored_base_rmse_mm"]) for r in det if "stored_base_rmse_mm" in r]
    if same and max(same) > 1e-3:  # the stored rows are other faces: their figures do not pair
        print("  stored fitting.json rows are not these faces; rerun with --rerun-fitter")
        for r in det:
            r.pop("fitter_rmse_mm", None)
            r.pop("fitter_expr_mae", None)
    summary = {
        "n": n,
        "seed": seed,
        "detected": len(det),
        "fitter_source": "rerun" if fitter is not None else "benchmarks/results/fitting.json",
        # The stored rows are the same faces when the mean-shape RMSE (a function of the true
        # shape only) matches face by face.
        "stored_rows_match_max_diff_mm": max(same) if same else None,
        "recnet_rmse_mm_median": med("recnet_rmse_mm"),
        "recnet_rmse_mm_mean": mean("recnet_rmse_mm"),
        "fitter_rmse_mm_median": med("fitter_rmse_mm"),
        "base_rmse_mm_median": med("base_rmse_mm"),
        "recnet_expr_mae_mean": mean("recnet_expr_mae"),
        "fitter_expr_mae_mean": mean("fitter_expr_mae"),
        "zero_expr_mae_mean": mean("zero_expr_mae"),
        "recnet_lmk_err_iod_median": med("recnet_lmk_err_iod"),
    }
    return summary, rows


# ---- 4. inference time -----------------------------------------------------------------------


def inference_times(ckpt: Path, repeats: int = 3) -> dict:
    """ms per face on one thread: the network alone and the fit path after detection (the best
    of ``repeats`` medians)."""
    from jr2net.face.landmarks import detect_largest_face
    from jr2net.io.images import load_image
    from jr2net.models.checkpoint import RecNetFitter, build_recnet, load_recnet
    from jr2net.paths import shared_path

    torch.set_num_threads(1)
    tiny = load_recnet(ckpt)
    spec = {**_spec(tiny.net), "backbone": "resnet50", "width": 1.0, "crop_size": 224}
    r50 = RecNetFitter(build_recnet(tiny.model, spec), tiny.model)
    image = load_image(shared_path("data", "images", "obama.jpg"))
    det = detect_largest_face(image)
    out: dict = {"threads": torch.get_num_threads(), "load": _load(), "repeats": repeats}
    # The machine is shared: the best of a few medians is the least disturbed measurement.
    for name, f in (("tiny", tiny), ("resnet50_224", r50)):
        x = torch.rand(1, 3, f.crop_size, f.crop_size).contiguous(memory_format=torch.channels_last)
        nets, fits = [], []
        for _ in range(repeats):
            with torch.inference_mode():
                nets.append(1000 * median_time(lambda f=f, x=x: f.net(x), warmup=3, iters=20))
            fits.append(1000 * median_time(lambda f=f: f.fit(image, det), warmup=2, iters=10))
        out[f"{name}_net_ms"], out[f"{name}_fit_ms"] = min(nets), min(fits)
        out[f"{name}_net_ms_all"], out[f"{name}_fit_ms_all"] = nets, fits
        out[f"{name}_params"] = sum(p.numel() for p in f.net.parameters())
    out["tiny_over_resnet50_net"] = out["tiny_net_ms"] / out["resnet50_224_net_ms"]
    return out


# ---- 5. contact sheet ------------------------------------------------------------------------


def contact_sheet(ckpt: Path, path: Path, n: int = 8) -> list[float]:
    """RecNet fits (``jr2net fit --recnet`` overlays) on ``n`` evenly spread d20 frames."""
    from PIL import Image

    from jr2net.errors import NoFaceError
    from jr2net.face.overlay import render_fit_overlay
    from jr2net.io.video import VideoReader
    from jr2net.models.checkpoint import load_recnet
    from jr2net.paths import shared_path

    rec = load_recnet(ckpt)
    frames = VideoReader(shared_path("data", "videos", "d20.mp4")).read_all()
    tiles, residuals = [], []
    for k in np.linspace(0, len(frames) - 1, n).round().astype(int):
        try:
            res = rec.fit(frames[k])
        except NoFaceError:
            continue
        residuals.append(res.residual_iod)
        tile = Image.fromarray(render_fit_overlay(frames[k], res, rec.model, out_size=320))
        tile.thumbnail((320, 320))  # keeps the aspect ratio
        tiles.append(tile)
    cols = 4
    rows = max(1, math.ceil(len(tiles) / cols))
    sheet = Image.new("RGB", (cols * 320, rows * 320), (0, 0, 0))
    for j, t in enumerate(tiles):
        x, y = (j % cols) * 320 + (320 - t.width) // 2, (j // cols) * 320 + (320 - t.height) // 2
        sheet.paste(t, (x, y))
    sheet.save(path)
    print(f"wrote {path}")
    return residuals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "tiny")
    ap.add_argument("--config", type=Path, default=TINY)
    ap.add_argument("--train", action="store_true", help="run prepare + recnet first (timed)")
    ap.add_argument("--checkpoint", default="last.pt", choices=["last.pt", "best.pt"],
                    help="RUN/recnet/ checkpoint to measure (default last.pt: the end of the fixed "
                    "schedule, not chosen on the held-out frames)")
    ap.add_argument("--n", type=int, default=100, help="synthetic faces (default 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rerun-fitter", action="store_true", help="re-fit the synthetic faces")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    timings = train(args.run, args.config) if args.train else None
    if timings is None and (args.run / "timings.json").exists():
        timings = json.loads((args.run / "timings.json").read_text())

    ckpt = args.run / "recnet" / args.checkpoint
    held, _ = heldout(args.run, ckpt)
    table = []
    for label, g in (("d20 (held-out identity)", "held"), ("training-video tails", "tail"),
                     ("all held-out", "all")):  # fmt: skip
        for stat in ("mean", "median"):
            table.append({
                "frames": label, "stat": stat,
                "init": held[f"init_{g}_{stat}"], "recnet": held[f"recnet_{g}_{stat}"],
                "fitter": held[f"fitter_{g}_{stat}"],
                "improvement": held[f"improvement_{g}_{stat}"],
            })  # fmt: skip
    print_table(table, ["frames", "stat", "init", "recnet", "fitter", "improvement"],
                "Held-out 68-landmark error / IOD (vs dlib detections)")  # fmt: skip

    print(f"synthetic faces ({args.n}, seed {args.seed}) ...", flush=True)
    shape, shape_rows = synthetic_shape(ckpt, args.n, args.seed, args.rerun_fitter)
    print_table(
        [
            {"metric": "mesh RMSE mm (median)", "recnet": shape["recnet_rmse_mm_median"],
             "fitter": shape["fitter_rmse_mm_median"], "mean shape / zero": shape["base_rmse_mm_median"]},
            {"metric": "expression MAE (mean)", "recnet": shape["recnet_expr_mae_mean"],
             "fitter": shape["fitter_expr_mae_mean"], "mean shape / zero": shape["zero_expr_mae_mean"]},
        ],  # fmt: skip
        ["metric", "recnet", "fitter", "mean shape / zero"],
        f"Synthetic faces (fitter: {shape['fitter_source']})",
    )
    inf = inference_times(ckpt)
    print_table(
        [{"config": k, "net ms": inf[f"{k}_net_ms"], "fit path ms": inf[f"{k}_fit_ms"],
          "params": inf[f"{k}_params"]} for k in ("tiny", "resnet50_224")],  # fmt: skip
        ["config", "net ms", "fit path ms", "params"],
        f"Inference per face, 1 thread (load {inf['load']})",
    )
    d20_sheet = contact_sheet(ckpt, RESULTS_DIR / "recnet_d20.png")
    met = {
        "improvement_vs_init": held["improvement_all_mean"] >= TARGETS["improvement_vs_init"],
        "d20_median_iod": held["recnet_held_median"] <= TARGETS["d20_median_iod"],
        "inference_ms_tiny": inf["tiny_net_ms"] <= TARGETS["inference_ms_tiny"],
    }
    if timings is not None:
        met["train_minutes"] = timings["total_s"] / 60 <= TARGETS["train_minutes"]
        if "total_cpu_s" in timings:  # what the two stages cost, whatever else ran beside them
            met["train_minutes_cpu"] = timings["total_cpu_s"] / 60 <= TARGETS["train_minutes"]
            print(f"prepare + recnet: {timings['total_s'] / 60:.1f} min wall, "
                  f"{timings['total_cpu_s'] / 60:.1f} min CPU (load {timings['load_after']})")
    write_results(
        "recnet",
        {
            "run": str(args.run),
            "checkpoint": args.checkpoint,
            "training": timings,
            "heldout": held,
            "synthetic": shape,
            "synthetic_rows": shape_rows,
            "inference": inf,
            "d20_contact_sheet": {"path": "benchmarks/results/recnet_d20.png",
                                  "residual_iod": d20_sheet},  # fmt: skip
            "targets": TARGETS,
            "met": met,
            "runtime_s": time.perf_counter() - t_start,
        },
    )


if __name__ == "__main__":
    main()
