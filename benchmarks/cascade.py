"""Cascade benchmark: the reconstruction table in the shape of the seed's Table 4.

Rows: the fitter (``SourceFitter``, the geometric path's source fit); zero expression (the fitter's
identity and pose with β = 0: what predicting no expression costs); RecNet; the ablations
Baseline, RecCopyNet, RecDataNet; RecAugNet (each from ``RUN/<stage>/best.pt``; missing ones are
listed and left out). Columns: mesh RMSE (mm: mean, STD, median, 80th percentile over the faces;
face region, similarity + ICP alignment, 85 mm crop around the nose tip, ``jr2net.eval.geometry``
as ``benchmarks/fitting.py``), expression MAE (mean |β − β_gt| over the 53 shapes), ms per image
(the fit given the detection; the machine is shared, compare rows, not absolute values).

Test sets, neither seen in training: ``fitting``, the synthetic faces of ``benchmarks/fitting.py``
(seed 0, the same draws: sparse prior, 256², blurred photo backgrounds); ``large``, the same
renderer with every expression from the large-expression prior (seed 2002, not a training or
held-out seed of the cascade). One detection per image (``--detector``, default the project's)
is shared by every row. Run: ``.venv/bin/python -m benchmarks.cascade --run runs/tiny [--n 100]``;
writes ``benchmarks/results/cascade.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import math  # noqa: E402
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


def evaluate_set(kind: str, n: int, seed: int, run: Path, detector: str | None) -> dict:
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
    acc: dict = {k: ([], [], []) for k in ["fitter", "zero expression", *list(methods)[1:]]}
    undetected = 0
    for i, (image, c) in enumerate(test_set(model, kind, n, seed)):
        try:
            det = find_largest_face(image, detector)
        except NoFaceError:
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
            t0 = time.perf_counter()
            res = fitter.fit(image, det)
            dt = time.perf_counter() - t0
            score(name, res.coeffs.detach(), dt)
            if name == "fitter":
                zero = res.coeffs.detach()
                score("zero expression", zero.replace(expression=torch.zeros_like(zero.expression)), 0.0)
        if i % 10 == 0:
            print(f"  {kind} {i + 1}/{n}", flush=True)
    rows = [{"method": k, **_summary(*v)} for k, v in acc.items()]
    return {"set": kind, "seed": seed, "n_images": n, "undetected": undetected,
            "missing_checkpoints": missing, "rows": rows}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/tiny"), help="cascade run folder")
    ap.add_argument("--n", type=int, default=100, help="faces per test set")
    ap.add_argument("--detector", default=None, help="landmark detector (default: project's)")
    ap.add_argument("--sets", default="fitting,large", help="comma-separated: fitting, large")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out: dict = {"run": str(args.run), "sets": {}}
    cols = ["method", "rmse_mm_mean", "rmse_mm_std", "rmse_mm_median", "rmse_mm_p80",
            "expression_mae", "ms_per_image", "n"]  # fmt: skip
    for kind in args.sets.split(","):
        seed = 0 if kind == "fitting" else LARGE_SEED
        res = evaluate_set(kind, args.n, seed, args.run, args.detector)
        out["sets"][kind] = res
        print_table(res["rows"], cols, title=f"{kind} synthetic set (seed {seed}, n={args.n}, "
                    f"undetected {res['undetected']})")  # fmt: skip
        if res["missing_checkpoints"]:
            print("  missing:", ", ".join(res["missing_checkpoints"]))
    path = write_results("cascade", out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
