"""DCNet acceptance: learning, ablation and speed of the learned path (prints tables, writes JSON).

* **Learning**: on every held-out pair of a trained run (``FramePairs`` ``heldout``: d20 whole and
  the last 20 % of every training video), L1 / PSNR / SSIM against the driving crop for DCNet's
  output, its own input (the warped source image), the geometric path's output and the learned
  path's served output (both run on the full frames, pose ``absolute``, cropped to the driving
  crop; the learned path with its default mouth transfer, ``learned``, and with DCNet's own
  generated mouth, ``learned_generated``: on these same-identity pairs the transferred interior
  is the driving frame's, i.e. the target's own pixels, as for the geometric path) and copy-source; over the target face mask (``face``), the whole crop (``crop``), the
  mouth region (``mouth``) and the face pixels the source does not see (``hidden``); for a blend
  generator also its generated image before the blend (``generated``: what the pixels the source
  does not see get).
* **Ablation** (seed Table 5): the same held-out pairs through each ablation's generator
  (``--ablation ours_r=RUN ...``: runs of the same config with ``dcnet.ablation`` changed).
* **Speed**: ms per frame of the learned path on 1 thread (d0, 512² input, 512² output): DCNet
  alone (split into its view synthesis and its decoder) and the whole path, per stage, wall and
  CPU-time medians (the machine's load average recorded), PyTorch eager vs ONNX Runtime, at 128² (the run's generator) and 256²
  (the same architecture at 256², untrained weights: speed does not depend on them), with the
  geometric path measured in the same run as the reference.
* A side-by-side PNG per held-out video: source | driving | geometric | learned.

Run: ``.venv/bin/python -m benchmarks.dcnet --run runs/tiny [--ablation ours_r=runs/abl_r ...]``.
Writes ``benchmarks/results/dcnet.json`` and ``benchmarks/results/dcnet_<video>.png``.
``--only speed`` runs the speed part alone (a few minutes; on a quiet machine, e.g. at the end)
and replaces only the ``speed`` rows (and ``speed_machine``, its load and date) of an existing
``dcnet.json``, keeping its learning and ablation results; ``--only learning`` is
``--skip-speed``; ``--only ablation --ablation-step N`` replaces only the ablation rows, taken
from the runs' held-out evaluations at step N (their ``dcnet/eval.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import RESULTS_DIR, print_table, write_results

METHODS = ("dcnet", "warped", "geometric", "learned", "learned_generated", "copy", "generated")
REGIONS = ("face", "crop", "mouth", "hidden")


def load_run(run: Path, dcnet_path: Path | None = None):
    """(stage, generator, spec, config) of a trained run's best DCNet checkpoint."""
    from jr2net.pipeline.learned import load_dcnet
    from jr2net.training.checkpoints import load_checkpoint
    from jr2net.training.config import RunConfig, from_dict
    from jr2net.training.stages.base import TrainContext, get_stage

    path = dcnet_path or run / "dcnet" / "best.pt"
    stored = load_checkpoint(path)["config"]
    # The sections DCNet reads (other stages' sections may have changed since it was trained).
    cfg = from_dict(RunConfig, {k: stored[k] for k in ("run", "data", "prepare", "dcnet")})
    ctx = TrainContext("cpu", face_model_spec=cfg.run.face_model, seed=cfg.run.seed)
    stage = get_stage("dcnet")(cfg, run, ctx)
    net, spec = load_dcnet(path, ctx.face_model)
    return stage, net, spec, cfg


def video_frames(name: str, cache: dict[str, list[np.ndarray]], upto: int) -> list[np.ndarray]:
    """The first ``upto + 1`` frames of shared video ``name`` (read once)."""
    from jr2net.io.video import VideoReader
    from jr2net.paths import shared_path

    if name not in cache or len(cache[name]) <= upto:
        with VideoReader(shared_path("data", "videos", f"{name}.mp4")) as r:
            cache[name] = r.read_all(max_frames=upto + 1)
    return cache[name]


def served_crops(reenactors: dict[str, Any], pairs, index: int, frames: dict) -> dict[str, Any]:
    """Each path run on the full frames of pair ``index`` (pose absolute), cropped like the
    driving sample; also the full frames for the side-by-side sheet."""
    from jr2net.errors import NoFaceError
    from jr2net.pipeline.base import SessionOptions
    from jr2net.training.data.sample import crop_image

    _, (ss, sj), (ds, dj) = pairs.pair_rows(index)
    lab_s, lab_d = pairs.shards[ss].labels, pairs.shards[ds].labels
    src = video_frames(str(lab_s["name"][sj]), frames, int(lab_s["frame_index"][sj]))
    drv = video_frames(str(lab_d["name"][dj]), frames, int(lab_d["frame_index"][dj]))
    source, driving = src[int(lab_s["frame_index"][sj])], drv[int(lab_d["frame_index"][dj])]
    box = lab_d["crop_box"][dj].astype(np.float64).tolist()
    out: dict[str, Any] = {"full": {"source": source, "driving": driving}}
    for name, reenactor in reenactors.items():
        try:
            session = reenactor.start_session(source, SessionOptions(pose_mode="absolute"))
        except NoFaceError:
            continue
        try:
            res = session.process(driving)
        finally:
            session.close()
        if res.face_found:
            out["full"][name] = res.image
            crop = crop_image(res.image, box, pairs.crop_size)
            out[name] = torch.from_numpy(crop.copy()).permute(2, 0, 1)[None].float() / 255.0
    return out


class WithExtra:
    """A reenactor whose sessions get extra ``options.extra`` entries (e.g. ``mouth``)."""

    def __init__(self, reenactor: Any, **extra: str) -> None:
        self.reenactor, self.extra = reenactor, extra

    def start_session(self, source: np.ndarray, options: Any) -> Any:
        import dataclasses

        extra = {**(options.extra or {}), **self.extra}
        return self.reenactor.start_session(source, dataclasses.replace(options, extra=extra))


def evaluate_pairs(stage, nets: dict[str, Any], reenactors: dict[str, Any], batch: int = 8):
    """Per-pair metric rows for every method and region, and the full frames per pair."""
    from jr2net.training.data.sample import collate
    from jr2net.training.stages.dcnet import image_metrics

    pairs = stage._pairs("heldout")
    rows: list[dict[str, Any]] = []
    sheets: dict[str, list] = defaultdict(list)
    frames: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(pairs), batch):
        idx = list(range(start, min(start + batch, len(pairs))))
        b = collate([pairs[i] for i in idx])
        with torch.no_grad():
            cond = stage.conditions(b)
            inputs = cond.dcnet_inputs()
            outputs = {name: net(inputs) for name, net in nets.items()}
            first = next(iter(nets.values()))
            warped, covisible = first.view_synthesis(inputs)
            if first.config.blends:  # DCNet's generated image before the blend
                outputs["generated"] = first(inputs, with_generated=True)[1]
        outputs["warped"], outputs["copy"] = warped, b["source"]["image"]
        real = b["driving"]["image"]
        masks = {"face": cond.mask, "crop": torch.ones_like(cond.mask), "mouth": cond.mouth,
                 "hidden": cond.mask * (1 - covisible)}  # fmt: skip
        for j, i in enumerate(idx):
            served = served_crops(reenactors, pairs, i, frames) if reenactors else {}
            video = str(pairs.shards[pairs.pair_rows(i)[2][0]].labels["name"][0])
            row: dict[str, Any] = {
                "pair": i,
                "video": video,
                "covisible": float(covisible[j].sum() / cond.mask[j].sum()),
            }
            per = {**{k: v[j : j + 1] for k, v in outputs.items()},
                   **{k: v for k, v in served.items() if k != "full"}}  # fmt: skip
            for method, image in per.items():
                for region, mask in masks.items():
                    for metric, v in image_metrics(image, real[j : j + 1], mask[j : j + 1]).items():
                        row[f"{method}_{region}_{metric}"] = float(v[0])
            rows.append(row)
            columns = ("source", "driving", "geometric", "learned")
            if "full" in served and len(sheets[video]) < 3 and set(columns) <= set(served["full"]):
                f = served["full"]
                sheets[video].append([f["source"], f["driving"], f["geometric"], f["learned"]])
    return rows, sheets


def summarise(rows: list[dict[str, Any]], methods, regions=REGIONS) -> list[dict[str, Any]]:
    """Mean of each metric over the pairs (finite values only) per (method, region)."""
    out = []
    for m in methods:
        for r in regions:
            entry: dict[str, Any] = {"method": m, "region": r}
            for k in ("l1", "psnr", "ssim"):
                vals = [row[f"{m}_{r}_{k}"] for row in rows if f"{m}_{r}_{k}" in row]
                vals = [v for v in vals if math.isfinite(v)]
                entry[k] = float(np.mean(vals)) if vals else math.nan
                entry["n"] = len(vals)
            out.append(entry)
    return out


def _ms(fn, n: int) -> tuple[float, float]:
    """Median wall and CPU (this thread's) ms of ``fn`` over ``n`` calls after 2 warm-up calls.

    On a loaded machine the wall time is an upper bound; the CPU time is what the frame costs."""
    for _ in range(2):
        fn()
    ts, cs = [], []
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        ts.append(time.perf_counter() - t0)
        cs.append(time.thread_time() - c0)
    return 1000 * statistics.median(ts), 1000 * statistics.median(cs)


def speed(run: Path, face_model, dcnet_path: Path, frames: list[np.ndarray], n: int) -> list[dict]:
    """ms per frame (1 thread) of DCNet alone and of the whole learned path, eager vs ONNX
    Runtime, at the run's size and at 256², with the geometric path as the same-run reference."""
    import tempfile

    from jr2net.models.dcnet import DCNetConfig
    from jr2net.pipeline.base import SessionOptions
    from jr2net.pipeline.dcnet_runtime import DCNetRunner, _probe_inputs
    from jr2net.pipeline.geometric import GeometricReenactor
    from jr2net.pipeline.learned import LearnedReenactor, build_dcnet, dcnet_spec, load_dcnet
    from jr2net.training.checkpoints import load_checkpoint, save_checkpoint

    torch.set_num_threads(1)
    net, spec = load_dcnet(dcnet_path, face_model)
    paths = {int(spec["config"]["crop_size"]): dcnet_path}
    tmp = Path(tempfile.mkdtemp())
    for S in (128, 256):
        if S not in paths:  # the same architecture at S (untrained: speed only)
            cfg = DCNetConfig(**{**spec["config"], "crop_size": S})
            other = dcnet_spec(cfg, spec.get("conditions", "fitter"), spec.get("light", "driving"))
            ck = load_checkpoint(dcnet_path)
            ck.update(model_spec=other, models={"generator": build_dcnet(other).state_dict()})
            ck.pop("format", None)
            paths[S] = save_checkpoint(tmp / f"dcnet_{S}.pt", ck)
    source, drive = frames[0], frames[1:]
    opts = SessionOptions()
    geo = GeometricReenactor(face_model)
    g = geo.start_session(source, opts)
    it = iter(range(10**9))
    geo_ms, geo_cpu = _ms(lambda: g.process(drive[next(it) % len(drive)]), n)
    rows = []
    for S, path in sorted(paths.items()):
        for runtime in ("eager", "onnxruntime"):
            r = LearnedReenactor(face_model, dcnet=path, runtime=runtime)
            runner = DCNetRunner(r.dcnet, runtime)
            probe = _probe_inputs(r.dcnet)
            feats = runner.encode(probe.source_image, probe.source_light, probe.source_normal)
            with torch.inference_mode():
                net_ms, net_cpu = _ms(lambda runner=runner, probe=probe, feats=feats:
                                      runner.generate(probe, feats), n)  # fmt: skip
                # Where DCNet's time goes: the view synthesis (PyTorch, our warp kernel) and
                # the decoder (context encoder + SPADE generator, in the chosen runtime).
                args = runner._warp(probe, feats)
                warp_cpu = _ms(lambda runner=runner, probe=probe, feats=feats:
                               runner._warp(probe, feats), n)[1]  # fmt: skip
                decode = runner._decode_ort if runner._ort is not None else (
                    lambda a, runner=runner: runner.decoder(*a))  # fmt: skip
                decoder_cpu = _ms(lambda decode=decode, args=args: decode(args), n)[1]
            s = r.start_session(source, opts)
            stages: dict[str, list[float]] = defaultdict(list)

            def step(s=s, stages=stages) -> None:
                res = s.process(drive[next(it) % len(drive)])
                for k, v in res.timings.items():
                    stages[k].append(1000 * v)

            path_ms, path_cpu = _ms(step, n)
            rows.append({
                "crop": S, "runtime": r.runner.runtime, "dcnet_ms": net_ms, "path_ms": path_ms,
                "dcnet_cpu_ms": net_cpu, "dcnet_warp_cpu_ms": warp_cpu,
                "dcnet_decoder_cpu_ms": decoder_cpu, "path_cpu_ms": path_cpu,
                "geometric_ms": geo_ms, "geometric_cpu_ms": geo_cpu,
                "ratio_to_geometric": path_ms / geo_ms, "mismatch": runner.mismatch,
                "stages_ms": {k: statistics.median(v) for k, v in stages.items()},
                "load_average": list(os.getloadavg()),
            })  # fmt: skip
    return rows


def median_rows(runs: list[list[dict]]) -> list[dict]:
    """Per setting, the median over repeated speed runs of every timing (``stages_ms`` per
    stage), with each run's wall / CPU path ms and load average under ``repeats``."""
    out = []
    for rows in zip(*runs, strict=True):
        row = {k: v for k, v in rows[0].items() if not isinstance(v, float)}
        for k, v in rows[0].items():
            if isinstance(v, float):
                row[k] = statistics.median(r[k] for r in rows)
        row["stages_ms"] = {k: statistics.median(r["stages_ms"][k] for r in rows)
                            for k in rows[0]["stages_ms"]}  # fmt: skip
        keep = ("path_ms", "path_cpu_ms", "dcnet_ms", "geometric_ms", "load_average")
        row["repeats"] = [{k: r[k] for k in keep} for r in rows]
        out.append(row)
    return out


def run_speed(run: Path, face_model, n: int, repeats: int = 1) -> list[dict]:
    """The speed rows of ``run``'s DCNet on d0's first frames, printed as a table; with
    ``repeats`` > 1 the medians over that many runs of the whole table."""
    from jr2net.io.video import VideoReader
    from jr2net.paths import shared_path

    with VideoReader(shared_path("data", "videos", "d0.mp4")) as r:
        frames = r.read_all(max_frames=40)
    runs = []
    for k in range(max(1, repeats)):
        runs.append(speed(run, face_model, run / "dcnet" / "best.pt", frames, n))
        if repeats > 1:
            ms = ", ".join(f"{r['crop']}² {r['runtime']} {r['path_ms']:.1f}" for r in runs[-1])
            print(f"speed run {k + 1}/{repeats} (path wall ms): {ms}; load {os.getloadavg()}")
    rows = runs[0] if len(runs) == 1 else median_rows(runs)
    print_table(rows, ["crop", "runtime", "dcnet_ms", "dcnet_cpu_ms", "dcnet_warp_cpu_ms",
                       "dcnet_decoder_cpu_ms", "path_ms", "path_cpu_ms", "geometric_ms",
                       "ratio_to_geometric", "mismatch"],
                f"Speed: ms per frame, 1 thread (d0 512²; wall and CPU medians, {max(1, repeats)} run(s), "
                f"load average {os.getloadavg()[0]:.1f})")  # fmt: skip
    for row in rows:
        print(
            f"  {row['crop']}² {row['runtime']}: stages (wall ms) "
            + ", ".join(f"{k} {v:.1f}" for k, v in row["stages_ms"].items())
        )
    return rows


def speed_only(run: Path, n: int, repeats: int = 1) -> int:
    """``--only speed``: the speed table alone, merged into an existing ``dcnet.json``."""
    from benchmarks.common import machine_info
    from jr2net.face.model import load_face_model
    from jr2net.training.checkpoints import load_checkpoint

    stored = load_checkpoint(run / "dcnet" / "best.pt").get("config") or {}
    model = load_face_model((stored.get("run") or {}).get("face_model") or "ict")
    rows = run_speed(run, model, n, repeats)
    path = RESULTS_DIR / "dcnet.json"
    if not path.is_file():
        write_results("dcnet", {"run": str(run), "speed": rows,
                                "load_average": list(os.getloadavg())})  # fmt: skip
        return 0
    data = json.loads(path.read_text())
    if data.get("run") not in (None, str(run)):
        print(f"note: {path} holds the learning results of {data['run']}; speed of {run}")
    data.update(speed=rows, speed_run=str(run), speed_machine=machine_info())
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")
    print(f"\nupdated the speed rows of {path}")
    return 0


def step_row(name: str, path: Path, step: int) -> dict[str, Any]:
    """An ablation row from run ``path``'s held-out evaluation at ``step`` (its eval.json)."""
    hist = json.loads((path / "dcnet" / "eval.json").read_text())["history"]
    e = next((h for h in hist if h["step"] == step), None)
    if e is None:
        raise SystemExit(f"{path}: no held-out evaluation at step {step} in dcnet/eval.json")
    vals = {f"{r}_{k}": e[f"dcnet_{r}_{k}"] for r in ("face", "crop") for k in ("l1", "psnr", "ssim")}
    return {"ablation": name, "step": step, "run": str(path), **vals}


def ablation_only(run: Path, items: list[str], step: int) -> int:
    """``--only ablation``: the ablation rows from eval.json at ``step``, merged into
    ``dcnet.json`` (its other results kept)."""
    if step <= 0:
        raise SystemExit("--only ablation needs --ablation-step N (> 0)")
    runs = {"ours": run, **{i.partition("=")[0]: Path(i.partition("=")[2]) for i in items}}
    rows = [step_row(name, path, step) for name, path in runs.items()]
    print_table(rows, ["ablation", "step", "face_l1", "face_psnr", "face_ssim", "crop_l1",
                       "crop_psnr", "crop_ssim"], "Ablation (seed Table 5)")  # fmt: skip
    path = RESULTS_DIR / "dcnet.json"
    data = json.loads(path.read_text()) if path.is_file() else {"run": str(run)}
    data["ablation"] = rows
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")
    print(f"\nupdated the ablation rows of {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="training run folder (dcnet/best.pt)")
    ap.add_argument(
        "--ablation",
        nargs="*",
        default=[],
        metavar="NAME=RUN",
        help="ablation runs (their dcnet/best.pt), e.g. ours_r=runs/abl_r",
    )
    ap.add_argument(
        "--ablation-step",
        type=int,
        default=0,
        help="take every ablation row (ours included) from the runs' held-out "
        "evaluation at this step (eval.json: same pairs, same metrics), so "
        "equally long trainings are compared; 0: their best.pt here",
    )
    ap.add_argument("--speed-frames", type=int, default=20, help="timed frames per setting")
    ap.add_argument("--speed-runs", type=int, default=1,
                    help="repeat the speed table this many times and keep the medians "
                    "(each run's path times under 'repeats')")  # fmt: skip
    ap.add_argument("--skip-served", action="store_true", help="skip the geometric/learned paths")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument(
        "--only",
        choices=("all", "learning", "speed", "ablation"),
        default="all",
        help="speed: the speed table alone, merged into an existing dcnet.json "
        "(its learning results kept); learning: as --skip-speed; ablation: the "
        "ablation rows alone from the runs' eval.json at --ablation-step, merged likewise",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.only == "speed":
        return speed_only(args.run, args.speed_frames, args.speed_runs)
    if args.only == "ablation":
        return ablation_only(args.run, args.ablation, args.ablation_step)
    from jr2net.eval.reenact_eval import contact_sheet
    from jr2net.io.images import save_image
    from jr2net.pipeline.geometric import GeometricReenactor
    from jr2net.pipeline.learned import LearnedReenactor

    stage, net, spec, cfg = load_run(args.run)
    model = stage.ctx.face_model
    nets = {"dcnet": net}
    ablations = {"ours": args.run}
    for item in args.ablation:
        name, _, path = item.partition("=")
        ablations[name] = Path(path)
        if not args.ablation_step:
            nets[name] = load_run(Path(path))[1]
    reenactors = {}
    if not args.skip_served:
        recnet = args.run / "recnet" / "best.pt" if spec.get("conditions") == "recnet" else None
        learned = LearnedReenactor(model, dcnet=args.run / "dcnet" / "best.pt", recnet=recnet)
        reenactors = {
            "geometric": GeometricReenactor(model),
            "learned": learned,
            "learned_generated": WithExtra(learned, mouth="synthetic"),
        }
    t0 = time.perf_counter()
    rows, sheets = evaluate_pairs(stage, nets, reenactors)
    learning = summarise(rows, [m for m in METHODS if any(f"{m}_face_l1" in r for r in rows)])
    print_table(
        learning,
        ["method", "region", "l1", "psnr", "ssim", "n"],
        f"Learning: {len(rows)} held-out pairs ({time.perf_counter() - t0:.0f} s)",
    )
    per_video = {}
    for video in sorted({r["video"] for r in rows}):
        vr = [r for r in rows if r["video"] == video]
        per_video[video] = summarise(vr, ["dcnet", "warped", "geometric", "copy"], ("face",))
    ablation_rows = []
    for name, path in ablations.items():
        key = "dcnet" if name == "ours" else name
        if args.ablation_step:
            ablation_rows.append(step_row(name, path, args.ablation_step))
            continue
        s = {x["region"]: x for x in summarise(rows, [key])}
        ablation_rows.append({"ablation": name, **{f"{r}_{k}": s[r][k] for r in ("face", "crop")
                                                  for k in ("l1", "psnr", "ssim")}})  # fmt: skip
    print_table(ablation_rows, ["ablation", "face_l1", "face_psnr", "face_ssim", "crop_l1",
                                "crop_psnr", "crop_ssim"], "Ablation (seed Table 5)")  # fmt: skip
    for video, sheet_rows in sheets.items():
        sheet = contact_sheet(sheet_rows, ("source", "driving", "geometric", "learned"))
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        save_image(RESULTS_DIR / f"dcnet_{video}.png", sheet)
    speed_rows = []
    if not args.skip_speed and args.only == "all":
        speed_rows = run_speed(args.run, model, args.speed_frames, args.speed_runs)
    write_results("dcnet", {
        "run": str(args.run), "model_spec": spec, "pairs": len(rows), "learning": learning,
        "per_video_face": per_video, "ablation": ablation_rows, "speed": speed_rows,
        "rows": rows, "load_average": list(os.getloadavg()),
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
