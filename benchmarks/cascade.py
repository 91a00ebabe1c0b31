"""Cascade benchmark: the reconstruction table in the shape of the seed's Table 4.

Rows: the fitter (``SourceFitter``, the geometric path's source fit); zero expression (the fitter's
identity and pose with β = 0: what predicting no expression costs); fitter + ETNet (the fitter's
identity and pose with ``RUN/etnet/best.pt``'s β on the same crop: the driving tracker of
``jr2net.pipeline.etnet_tracker``; its ms are ETNet's alone); RecNet; the ablations Baseline,
RecCopyNet, RecDataNet; RecAugNet (each from ``RUN/<stage>/best.pt``; missing ones are listed and
left out). Columns: mesh RMSE (mm: mean, STD, median, 80th percentile over the faces;
face region, similarity + ICP alignment, 85 mm crop around the nose tip, ``jr2net.eval.geometry``
as ``benchmarks/fitting.py``), expression MAE (mean |β − β_gt| over the 53 shapes), ms per image
(the fit given the detection; the machine is shared, compare rows, not absolute values).

Test sets, neither seen in training: ``fitting``, the synthetic faces of ``benchmarks/fitting.py``
(seed 0, the same draws: sparse prior, 256², blurred photo backgrounds); ``large``, the same
renderer with every expression from the large-expression prior (seed 2002, not a training or
held-out seed of the cascade). One detection per image (``--detector``, default the project's)
is shared by every row. Run: ``.venv/bin/python -m benchmarks.cascade --run runs/tiny [--n 100]``;
writes ``benchmarks/results/cascade.json`` (``--name``). ``--cache DIR`` keeps each image's
detection and fitter result (run-independent, the slow part) for later runs.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import math  # noqa: E402
import pickle  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import percentile, print_table, write_results  # noqa: E402

SIZE = 256
YAW_MAX_DEG = 35.0  # benchmarks/fitting.py's
LARGE_SEED = 2002
NETWORK_ROWS = (
    ("RecNet", "recnet"),
    ("Baseline", "baseline"),
    ("RecCopyNet", "reccopynet"),
    ("RecDataNet", "recdatanet"),
    ("RecAugNet", "recaugnet"),
)


def test_set(model, kind: str, n: int, seed: int):  # noqa: ANN001, ANN201
    """``n`` (image uint8 HWC, true coefficients) of test set ``kind`` (``fitting`` / ``large``),
    drawn in ``benchmarks/fitting.py``'s order (backgrounds first, then one face per image)."""
    from jr2net.face.camera import default_intrinsics
    from jr2net.face.renderer import FaceRenderer
    from jr2net.face.synthetic import (
        backgrounds,
        large_expression,
        random_coeffs,
        render_composite,
        render_model,
    )

    renderer = FaceRenderer(render_model(model))
    rng = np.random.default_rng(seed)
    bgs = backgrounds(rng, n, SIZE)
    K = default_intrinsics((SIZE, SIZE))
    for i in range(n):
        c = random_coeffs(model, rng, YAW_MAX_DEG)
        if kind == "large":
            c.expression = torch.as_tensor(large_expression(model.expression_names, rng)[None],
                                           dtype=torch.float32)  # fmt: skip
        yield render_composite(renderer, c, K, bgs[i]), c


def _summary(errs: list[float], maes: list[float], ms: list[float]) -> dict:
    return {
        "n": len(errs),
        "rmse_mm_mean": float(np.mean(errs)) if errs else math.nan,
        "rmse_mm_std": float(np.std(errs)) if errs else math.nan,
        "rmse_mm_median": float(np.median(errs)) if errs else math.nan,
        "rmse_mm_p80": percentile(errs, 80),
        "expression_mae": float(np.mean(maes)) if maes else math.nan,
        "ms_per_image": float(np.median(ms)) if ms else math.nan,
    }


def _load_cache(path: Path | None) -> dict:
    if path is None or not path.is_file():
        return {}
    with open(path, "rb") as f:  # our own file (--cache), written below
        return pickle.load(f)


def _save_cache(path: Path | None, cache: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(cache, f)
    os.replace(tmp, path)


def evaluate_set(
    kind: str,
    n: int,
    seed: int,
    run: Path,
    detector: str | None,
    cache_dir: Path | None = None,
    jobs: int = 1,
) -> dict:
    """Every row's per-image errors on test set ``kind``, in ``jobs`` processes (image ``i`` in
    process ``i % jobs``; the rows' statistics do not depend on the order)."""
    if jobs <= 1:
        acc, undetected, missing = _score_part(kind, n, seed, run, detector, cache_dir, 0, 1)
    else:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_score_part, kind, n, seed, run, detector, cache_dir, k, jobs)
                       for k in range(jobs)]  # fmt: skip
            parts = [f.result() for f in futures]
        acc = {k: tuple([] for _ in v) for k, v in parts[0][0].items()}
        for part, _, _ in parts:
            for k, lists in part.items():
                for into, vals in zip(acc[k], lists, strict=True):
                    into.extend(vals)
        undetected, missing = sum(p[1] for p in parts), parts[0][2]
        if cache_dir is not None:  # fold the parts' new entries into the set's cache
            main = cache_dir / _cache_name(kind, n, seed, detector)
            cache = _load_cache(main)
            for k in range(jobs):
                part_path = main.with_suffix(f".part{k}.pkl")
                cache.update(_load_cache(part_path))
                part_path.unlink(missing_ok=True)
            _save_cache(main, cache)
    rows = [{"method": k, **_summary(*v)} for k, v in acc.items()]
    return {"set": kind, "seed": seed, "n_images": n, "undetected": undetected,
            "missing_checkpoints": missing, "rows": rows}  # fmt: skip


def _cache_name(kind: str, n: int, seed: int, detector: str | None) -> str:
    # The images depend on n too (test_set draws the n backgrounds first).
    return f"{kind}_{seed}_n{n}_{detector or 'default'}.pkl"


def _score_part(
    kind: str,
    n: int,
    seed: int,
    run: Path,
    detector: str | None,
    cache_dir: Path | None,
    part: int,
    parts: int,
) -> tuple[dict, int, list[str]]:
    torch.set_num_threads(1)
    from jr2net.errors import NoFaceError
    from jr2net.eval.geometry import reconstruction_errors
    from jr2net.face.fitting import SourceFitter
    from jr2net.face.landmarks import find_largest_face
    from jr2net.face.model import load_face_model
    from jr2net.models.checkpoint import RecNetFitter
    from jr2net.training.stages.recaugnet import load_cascade_net

    model = load_face_model("ict")
    face = model.subset(["face"])
    keep = face.parent_vertex_index.cpu().numpy()
    faces = face.faces.cpu().numpy()
    lmk = face.landmarks68.cpu().numpy()
    nose = int(lmk[30])
    methods: dict = {"fitter": SourceFitter(model)}
    missing = []
    for label, stage in NETWORK_ROWS:
        path = run / stage / "best.pt"
        if path.is_file():
            methods[label] = RecNetFitter(load_cascade_net(path, model), model, path=path)
        else:
            missing.append(str(path))
    tracker = None
    etnet_path = run / "etnet" / "best.pt"
    if etnet_path.is_file():
        from jr2net.pipeline.etnet_tracker import ETNetDrivingFitter, load_tracker_etnet

        tracker = ETNetDrivingFitter(None, load_tracker_etnet(etnet_path, model))
    else:
        missing.append(str(etnet_path))
    extra = ["zero expression", *(["fitter + ETNet"] if tracker else [])]
    acc: dict = {k: ([], [], []) for k in ["fitter", *extra, *list(methods)[1:]]}
    undetected = 0
    cache_path = None if cache_dir is None else cache_dir / _cache_name(kind, n, seed, detector)
    cache = _load_cache(cache_path)
    if cache_path is not None and parts > 1:  # new entries go to this part's own file
        cache_path = cache_path.with_suffix(f".part{part}.pkl")
    for i, (image, c) in enumerate(test_set(model, kind, n, seed)):
        if i % parts != part:
            continue
        if i in cache:
            det, fitted, fit_s = cache[i]
        else:
            try:
                det = find_largest_face(image, detector)
            except NoFaceError:
                det = None
            fitted = fit_s = None
            if det is not None:
                t0 = time.perf_counter()
                fitted = methods["fitter"].fit(image, det).coeffs.detach()
                fit_s = time.perf_counter() - t0
            cache[i] = (det, fitted, fit_s)
            _save_cache(cache_path, cache)
        if det is None:
            undetected += 1
            continue
        gt = model.shape(c.identity, c.expression)[0].numpy()[keep]

        def score(name: str, coeffs, seconds: float, gt=gt, c=c) -> None:  # noqa: ANN001
            with torch.no_grad():
                pred = model.shape(coeffs.identity[:, : model.n_identity], coeffs.expression)
            e = reconstruction_errors(pred[0].numpy()[keep], faces, gt, faces, lmk, lmk, nose,
                                      crop_radius=85.0)  # fmt: skip
            acc[name][0].append(float(e["rmse"]))
            acc[name][1].append(float((coeffs.expression - c.expression).abs().mean()))
            acc[name][2].append(1000 * seconds)

        for name, fitter in methods.items():
            if name == "fitter":  # run-independent: fitted once per image (cached with --cache)
                coeffs, dt = fitted, fit_s
            else:
                t0 = time.perf_counter()
                coeffs = fitter.fit(image, det).coeffs.detach()
                dt = time.perf_counter() - t0
            score(name, coeffs, dt)
            if name == "fitter":
                zero = coeffs
                score("zero expression", zero.replace(expression=torch.zeros_like(zero.expression)), 0.0)
                if tracker is not None:
                    t0 = time.perf_counter()
                    beta = tracker.expression(image, det.landmarks)
                    score("fitter + ETNet", zero.replace(expression=beta), time.perf_counter() - t0)
        if i % 10 == part:
            print(f"  {kind} {i + 1}/{n}", flush=True)
    return acc, undetected, missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/tiny"), help="cascade run folder")
    ap.add_argument("--n", type=int, default=100, help="faces per test set")
    ap.add_argument("--detector", default=None, help="landmark detector (default: project's)")
    ap.add_argument("--sets", default="fitting,large", help="comma-separated: fitting, large")
    ap.add_argument("--cache", type=Path, default=None,
                    help="folder keeping each test image's detection and fitter result (they do "
                         "not depend on the run): a later run, or the other set, reuses them")
    ap.add_argument("--name", default="cascade", help="results name (benchmarks/results/NAME.json)")
    ap.add_argument("--jobs", type=int, default=1, help="processes per set (images split among them)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out: dict = {"run": str(args.run), "sets": {}}
    cols = ["method", "rmse_mm_mean", "rmse_mm_std", "rmse_mm_median", "rmse_mm_p80",
            "expression_mae", "ms_per_image", "n"]  # fmt: skip
    for kind in args.sets.split(","):
        seed = 0 if kind == "fitting" else LARGE_SEED
        res = evaluate_set(kind, args.n, seed, args.run, args.detector, args.cache, args.jobs)
        out["sets"][kind] = res
        print_table(res["rows"], cols, title=f"{kind} synthetic set (seed {seed}, n={args.n}, "
                    f"undetected {res['undetected']})")  # fmt: skip
        if res["missing_checkpoints"]:
            print("  missing:", ", ".join(res["missing_checkpoints"]))
    path = write_results(args.name, out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
