"""The ETNet driving expression tracker on and off (issue 11, "Driving tracker"), geometric path.

One ``GeometricReenactor`` loaded with an ETNet checkpoint (``--etnet CKPT``, as ``jr2net serve
--etnet``) serves both settings: sessions with option ``expression=etnet`` (ETNet's β, the fitter
keeps the pose) and ``expression=fitter`` (the fitter's β). On every shared video:

- **cross identity** (source photo(s) ``--sources``, default obama.jpg, driven by the video):
  EFL = RMSE of the generated frame's normalised 68 landmarks against the driving frame's
  (``jr2net.eval.reenact_eval.normalised_landmarks``: centred, / inter-ocular distance), and
  ``efl_aligned`` after the 2D similarity (in-plane rotation removed: expression and face shape);
  ``efl_mouth``: the aligned RMSE over the mouth points 48-67 only (where expressions show most);
- **same identity** (the video's first face frame is the source,
  ``reenact_eval.evaluate_same_identity``): PSNR over the face box and the mouth box;
- **ms per frame**: median ``session.process`` wall time, and the median ``etnet`` stage.

Only the first ``--frames`` frames of each video are streamed (the tracker and filters see them in
order) and ``--eval`` of them, spread evenly, are scored: a modest run; raise both for more.
Writes benchmarks/results/tracker.json and tracker_cross.png (driving | fitter | ETNet faces;
``--name`` renames both).
Run: ``.venv/bin/python -m benchmarks.tracker --etnet RUN/etnet/best.pt [--frames 40 --eval 8]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS_DIR, print_table, write_results

TRACKERS = ("fitter", "etnet")
MOUTH = slice(48, 68)


def _mean(values: list[float]) -> float:
    return float(statistics.mean(values)) if values else float("nan")


def _frames(video: Path, count: int) -> list[np.ndarray]:
    from jr2net.io.video import VideoReader

    with VideoReader(video) as reader:
        return [f for _, f in zip(range(count), reader, strict=False)]


def _face(image: np.ndarray, landmarks: np.ndarray, margin: float = 0.3) -> np.ndarray:
    """The square crop around ``landmarks`` (for the contact sheet)."""
    lm = np.asarray(landmarks, float)
    c, side = (lm.min(0) + lm.max(0)) / 2, (lm.max(0) - lm.min(0)).max() * (1 + 2 * margin)
    x0, y0 = (max(0, int(v - side / 2)) for v in c)
    return image[y0 : y0 + int(side), x0 : x0 + int(side)]


def cross_identity(reenactor, source: np.ndarray, frames: list[np.ndarray], options, n_eval: int):
    """EFL scores and timings of ``source`` driven by ``frames``; the (driving, output) faces
    of the middle scored frame."""
    from jr2net.eval import metrics
    from jr2net.eval.reenact_eval import aligned, normalised_landmarks, spread
    from jr2net.face.landmarks import detect_faces

    ids = spread(range(len(frames)), n_eval)
    eval_ids, middle = set(ids), ids[len(ids) // 2]
    vals = {"efl": [], "efl_aligned": [], "efl_mouth": []}
    times, etnet_times, no_face, sample = [], [], 0, None
    session = reenactor.start_session(source, options)
    try:
        for i, frame in enumerate(frames):
            t0 = time.perf_counter()
            res = session.process(frame)
            times.append(time.perf_counter() - t0)
            if "etnet" in res.timings:
                etnet_times.append(res.timings["etnet"])
            if i not in eval_ids or not res.face_found:
                continue
            drv_det, gen_det = detect_faces(frame), detect_faces(res.image)
            if not drv_det or not gen_det:
                no_face += 1
                continue
            drv = normalised_landmarks(drv_det[0].landmarks)
            gen = normalised_landmarks(gen_det[0].landmarks)
            al = aligned(gen, drv)
            vals["efl"].append(float(metrics.landmark_rmse(gen, drv)[0]))
            vals["efl_aligned"].append(float(metrics.landmark_rmse(al, drv)[0]))
            vals["efl_mouth"].append(float(metrics.landmark_rmse(al[MOUTH], drv[MOUTH])[0]))
            if i == middle:
                sample = (_face(frame, drv_det[0].landmarks), _face(res.image, gen_det[0].landmarks))
    finally:
        session.close()
    return {
        **{k: _mean(v) for k, v in vals.items()},
        "frames_evaluated": len(vals["efl"]), "no_face": no_face,
        "ms_per_frame": 1e3 * statistics.median(times),
        "etnet_ms": 1e3 * statistics.median(etnet_times) if etnet_times else 0.0,
    }, sample  # fmt: skip


def same_identity(reenactor, video: Path, options, frames: int, n_eval: int) -> dict:
    from jr2net.eval.reenact_eval import evaluate_same_identity

    res = evaluate_same_identity(reenactor, video, options, max_frames=n_eval, max_stream=frames,
                                 regions=("face_box", "mouth_box"))  # fmt: skip
    ours = res.summary["methods"]["ours"]
    return {"face_psnr": ours["face_box"]["psnr"], "mouth_psnr": ours["mouth_box"]["psnr"],
            "frames_evaluated": res.summary["frames_evaluated"],
            "ms_per_frame": res.summary["process_ms_median"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--etnet", required=True, type=Path, help="etnet or recaugnet checkpoint")
    ap.add_argument("--face-model", default="ict")
    ap.add_argument("--videos", nargs="*", help="video files (default: every shared video)")
    ap.add_argument("--sources", nargs="*", default=["obama.jpg"],
                    help="cross-identity source photos (names in the shared images folder)")
    ap.add_argument("--frames", type=int, default=40, help="frames streamed per video")
    ap.add_argument("--eval", type=int, default=8, help="frames scored per video")
    ap.add_argument("--cross-expression", default="absolute", choices=("absolute", "relative"))
    ap.add_argument("--same-expression", default="relative", choices=("absolute", "relative"))
    ap.add_argument("--name", default="tracker", help="results name (RESULTS/NAME.json, NAME_cross.png)")
    ap.add_argument("--note", default="", help="free text recorded in the JSON (e.g. how the "
                                               "checkpoint was trained)")
    args = ap.parse_args()

    import torch

    from jr2net.eval.reenact_eval import contact_sheet
    from jr2net.io.images import load_image, save_image
    from jr2net.paths import shared_path
    from jr2net.pipeline import registry
    from jr2net.pipeline.base import SessionOptions
    from jr2net.training.checkpoints import load_checkpoint

    torch.set_num_threads(1)
    videos = [Path(v) for v in args.videos] if args.videos else sorted(
        shared_path("data", "videos").glob("*.mp4"))
    reenactor = registry.create_reenactor("geometric", registry.ReenactorSettings(
        face_model=args.face_model, etnet=str(args.etnet)))  # fmt: skip
    ckpt = load_checkpoint(args.etnet)
    sources = {n: np.asarray(load_image(shared_path("data", "images", n))) for n in args.sources}

    def opts(tracker: str, mode: str) -> SessionOptions:
        return SessionOptions(extra={"expression": f"{tracker}+{mode}"})

    per_video, sheet = {}, []
    for video in videos:
        frames = _frames(video, args.frames)
        row: dict = {"cross": {}, "same": {}}
        samples = {}
        for tracker in TRACKERS:
            crosses = []
            for src in sources.values():
                scores, sample = cross_identity(
                    reenactor, src, frames, opts(tracker, args.cross_expression), args.eval)
                crosses.append(scores)
                samples.setdefault(tracker, sample)
            row["cross"][tracker] = {k: _mean([c[k] for c in crosses]) for k in crosses[0]}
            row["same"][tracker] = same_identity(
                reenactor, video, opts(tracker, args.same_expression), args.frames, args.eval)
        per_video[video.name] = row
        if all(samples.get(t) is not None for t in TRACKERS):
            sheet.append([samples["fitter"][0], samples["fitter"][1], samples["etnet"][1]])
        print(video.name, {t: round(row["cross"][t]["efl"], 4) for t in TRACKERS}, flush=True)

    def avg(part: str, tracker: str, key: str) -> float:
        return _mean([v[part][tracker][key] for v in per_video.values()
                      if np.isfinite(v[part][tracker][key])])  # fmt: skip

    summary = {t: {"efl": avg("cross", t, "efl"), "efl_aligned": avg("cross", t, "efl_aligned"),
                   "efl_mouth": avg("cross", t, "efl_mouth"),
                   "same_face_psnr": avg("same", t, "face_psnr"),
                   "same_mouth_psnr": avg("same", t, "mouth_psnr"),
                   "ms_per_frame": avg("cross", t, "ms_per_frame"),
                   "etnet_ms": avg("cross", t, "etnet_ms")} for t in TRACKERS}  # fmt: skip
    cols = ["tracker", *summary["fitter"]]
    print_table([{"tracker": t, **summary[t]} for t in TRACKERS], cols,
                f"ETNet tracker on/off, geometric path, mean over {len(per_video)} videos "
                f"({args.frames} frames streamed, {args.eval} scored each)")  # fmt: skip
    if sheet:
        save_image(RESULTS_DIR / f"{args.name}_cross.png",
                   contact_sheet(sheet, ["driving", "fitter's expression", "ETNet's expression"]))
    write_results(args.name, {
        "etnet": {"path": str(args.etnet), "stage": ckpt["stage"], "step": int(ckpt["step"]),
                  "model_spec": ckpt["model_spec"], "note": args.note},
        "settings": {"frames": args.frames, "eval": args.eval, "sources": args.sources,
                     "cross_expression": args.cross_expression,
                     "same_expression": args.same_expression, "pose_mode": "relative",
                     "face_model": args.face_model, "torch_threads": 1},
        "summary": summary, "per_video": per_video,
    })  # fmt: skip


if __name__ == "__main__":
    main()
