"""Kernel benchmark: every op in ``jr2net.ops`` vs its pure-PyTorch reference, plus CPU peers.

Scenes are the real ICT-FaceKit mesh (16,434 vertices, 32,716 triangles) posed ~550 mm in front of
the camera at 256² and 512², batch 1 and 8; the warps and sh_shading run on maps rendered from it
(3-channel images, plus 64-channel feature maps at 256²). Per op and size: kernel and reference
median forward / backward times, the kernel's speed-up and its backward/forward ratio. Peers when
installed (``make bench`` installs requirements-bench.txt): kornia's warp_frame_depth vs depth_warp,
and moderngl (OpenGL via EGL; on a CPU-only machine Mesa llvmpipe) rendering the same mesh with
readback vs rasterize. Prints the tables and writes benchmarks/results/kernels.json.
Every case is timed in ``--runs`` (default 3) separate runs; the tables show the median of the
run medians (wall time; ``cpu_*``: the median CPU time per call, which a loaded machine inflates
less). ``JR2NET_SIMD=baseline|avx2|avx512`` selects the CPU copies timed (the JSON records
the level that ran, with the CPU model). Run:
``.venv/bin/python -m benchmarks.kernels [--quick] [--threads N] [--name NAME]``. On an AVX-512
CPU the 256² batch-1 kernels are also timed with ``JR2NET_SIMD=avx2`` in a child run
(``--also-simd``), so the JSON holds a row set per SIMD level (``simd_levels``) and the warp
target for each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import cpu_model, median_time, print_table, write_results

REF_SKIP_S = 10.0  # skip a reference case whose estimated time per call exceeds this
FEATURE_CHANNELS = 64


# ---- scenes -----------------------------------------------------------------------------------


def _rot_y(yaw: float) -> torch.Tensor:
    from jr2net.face.camera import euler_to_matrix

    return torch.tensor(euler_to_matrix([0.0, yaw, 0.0]), dtype=torch.float32)


def _flip_matrix() -> torch.Tensor:
    from jr2net.face.camera import FLIP_NP

    return torch.diag(torch.tensor(FLIP_NP, dtype=torch.float32))


_FLIP = _flip_matrix()


@dataclass
class Scene:
    """ICT renders of a source and a target pose, and everything the ops take as input."""

    size: int
    batch: int
    faces: torch.Tensor
    K: torch.Tensor
    verts_dst: torch.Tensor  # [B,V,3] camera frame
    colour: torch.Tensor  # [B,V,3]
    rast_dst: torch.Tensor
    src_img: torch.Tensor
    src_depth: torch.Tensor
    dst_depth: torch.Tensor
    src_T_dst: torch.Tensor
    points: torch.Tensor
    valid: torch.Tensor
    normals: torch.Tensor
    albedo: torch.Tensor
    sh: torch.Tensor
    mask: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


def _load_ict() -> tuple[torch.Tensor, torch.Tensor]:
    from jr2net.paths import shared_path

    data = np.load(shared_path("assets", "ict_face_model.npz"))
    return (
        torch.from_numpy(data["vertices"].astype(np.float32)),
        torch.from_numpy(data["faces"].astype(np.int32)),
    )


def make_scene(verts: torch.Tensor, faces: torch.Tensor, size: int, batch: int) -> Scene:
    from jr2net.face.mesh import vertex_normals
    from jr2net.ops import interpolate, rasterize

    gen = torch.Generator().manual_seed(size + batch)
    f = 1.3 * size
    K = torch.tensor([[f, 0.0, (size - 1) / 2], [0.0, f, (size - 1) / 2], [0.0, 0.0, 1.0]])
    K = K.expand(batch, 3, 3).contiguous()
    t = torch.tensor([0.0, -10.0, -550.0])
    R_src = torch.stack([_rot_y(0.04 * b) for b in range(batch)])
    R_dst = torch.stack([_rot_y(0.04 * b + 0.2) for b in range(batch)])

    def to_cam(R: torch.Tensor) -> torch.Tensor:  # X_cam = F (R X + t)
        return ((torch.einsum("bij,vj->bvi", R, verts) + t) @ _FLIP.T).contiguous()

    v_src, v_dst = to_cam(R_src), to_cam(R_dst)
    colour = torch.stack(
        [
            0.5 + 0.4 * torch.sin(verts[:, 0] / 23.0),
            0.5 + 0.4 * torch.cos(verts[:, 1] / 19.0),
            0.5 + 0.4 * torch.sin((verts[:, 0] + verts[:, 2]) / 29.0),
        ],
        dim=-1,
    )
    colour = colour.expand(batch, -1, -1).contiguous()
    rast_src = rasterize(v_src, faces, K, (size, size), cull_backfaces=True)
    rast_dst = rasterize(v_dst, faces, K, (size, size), cull_backfaces=True)
    mask_src = (rast_src[..., 3] > 0)[:, None].float()
    mask_dst = (rast_dst[..., 3] > 0)[:, None].float()
    src_img = (interpolate(colour, rast_src, faces).permute(0, 3, 1, 2) * mask_src).contiguous()
    src_depth = (rast_src[..., 2][:, None] * mask_src).contiguous()
    dst_depth = (rast_dst[..., 2][:, None] * mask_dst).contiguous()
    # src_T_dst: X_src = F R_s R_dᵀ (F X_dst - t) + F t
    T = torch.eye(4).repeat(batch, 1, 1)
    R_sd = R_src @ R_dst.transpose(1, 2)
    T[:, :3, :3] = _FLIP @ R_sd @ _FLIP
    T[:, :3, 3] = (_FLIP @ (t - R_sd @ t).unsqueeze(-1)).squeeze(-1)
    points = interpolate(v_src, rast_dst, faces).contiguous()
    n_cam = vertex_normals(v_dst, faces)
    normals = interpolate(n_cam, rast_dst, faces).permute(0, 3, 1, 2)
    normals = torch.nn.functional.normalize(normals, dim=1).contiguous()
    albedo = (interpolate(colour, rast_dst, faces).permute(0, 3, 1, 2)).contiguous()
    sh = torch.zeros(batch, 9, 3)
    sh[:, 0] = 0.8
    sh[:, 1:] = 0.2 * torch.randn(batch, 8, 3, generator=gen)
    return Scene(
        size=size,
        batch=batch,
        faces=faces,
        K=K,
        verts_dst=v_dst,
        colour=colour,
        rast_dst=rast_dst,
        src_img=src_img,
        src_depth=src_depth,
        dst_depth=dst_depth,
        src_T_dst=T.contiguous(),
        points=points,
        valid=mask_dst.contiguous(),
        normals=normals,
        albedo=albedo,
        sh=sh,
        mask=mask_dst.contiguous(),
    )


def features(scene: Scene, channels: int) -> torch.Tensor:
    """Smooth-ish random feature maps [B,channels,H,W] masked like the source render."""
    gen = torch.Generator().manual_seed(channels)
    low = torch.rand(scene.batch, channels, 16, 16, generator=gen)
    up = torch.nn.functional.interpolate(low, size=(scene.size, scene.size), mode="bilinear")
    return (up * (scene.src_depth > 0)).contiguous()


# ---- timing -----------------------------------------------------------------------------------


@dataclass
class Case:
    op: str
    config: str
    kernel: Callable[..., Any]
    reference: Callable[..., Any] | None
    args: Sequence[Any]
    grad_args: tuple[int, ...]
    grad_outputs: tuple[int, ...] | None  # indices into a tuple output; None: a single tensor
    work: float  # relative amount of work, for estimating reference times


def _outputs(out: Any, picks: tuple[int, ...] | None) -> list[torch.Tensor]:
    return [out] if picks is None else [out[i] for i in picks]


def timed(
    fn: Callable[[], Any], warmup: int, iters: int, min_time: float
) -> tuple[float, float, float]:
    """(median, best, CPU median) seconds of fn over the runs of common.median_time.

    The best run shows what the code does when the shared machine leaves it alone; the tables
    and targets use the median. The CPU median is the calling thread's CPU time per call
    (time.thread_time; all of it with one torch thread), which waiting for a core on a loaded
    machine does not inflate.
    """
    samples: list[float] = []
    cpu: list[float] = []

    def run() -> None:
        c0 = time.thread_time()
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)

    med = median_time(run, warmup=warmup, iters=iters, min_time=min_time)
    return med, min(samples[warmup:]), statistics.median(cpu[warmup:])


Timing = tuple[float, float, float]  # (median, best, CPU median) seconds


def time_impl(
    case: Case, fn: Callable[..., Any], iters: int, min_time: float
) -> tuple[Timing, Timing]:
    """(forward, backward) timings of fn on the case's inputs."""
    args = list(case.args)

    def fwd() -> None:
        with torch.no_grad():
            fn(*args)

    t_fwd = timed(fwd, warmup=1, iters=iters, min_time=min_time)
    gargs = list(args)
    for i in case.grad_args:
        gargs[i] = args[i].detach().clone().requires_grad_()
    outs = _outputs(fn(*gargs), case.grad_outputs)
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in outs]
    inputs = [gargs[i] for i in case.grad_args]

    def bwd() -> None:
        torch.autograd.grad(outs, inputs, grads, retain_graph=True)

    t_bwd = timed(bwd, warmup=1, iters=iters, min_time=min_time)
    return t_fwd, t_bwd


def time_runs(case: Case, runs: int) -> tuple[Timing, Timing]:
    """The kernel's (forward, backward) timings over `runs` separate runs of time_impl: the
    median of the run medians, the best of the best runs and the median CPU median."""
    res = [time_impl(case, case.kernel, iters=10, min_time=0.3) for _ in range(runs)]

    def pick(k: int) -> Timing:
        return (
            statistics.median(r[k][0] for r in res),
            min(r[k][1] for r in res),
            statistics.median(r[k][2] for r in res),
        )

    return pick(0), pick(1)


def cases_for(scene: Scene, feature_maps: torch.Tensor | None) -> list[Case]:
    from jr2net.ops import correspondence_warp, depth_warp, interpolate, rasterize, sh_shading
    from jr2net.ops import reference as ref

    S, B = scene.size, scene.batch
    cfg = f"{S}² b{B}"
    work = S * S * B
    cases = [
        Case("rasterize", cfg, rasterize, ref.rasterize_ref,
             (scene.verts_dst, scene.faces, scene.K, (S, S), True), (0,), None, work),
        Case("interpolate", cfg, interpolate, ref.interpolate_ref,
             (scene.colour, scene.rast_dst, scene.faces), (0, 1), None, work),
        Case("sh_shading", cfg, sh_shading, ref.sh_shading_ref,
             (scene.normals, scene.albedo, scene.sh, scene.mask), (0, 1, 2), (0, 1), work),
        Case("depth_warp", cfg + " 3ch", depth_warp, ref.depth_warp_ref,
             (scene.src_img, scene.dst_depth, scene.K, scene.K, scene.src_T_dst, scene.src_depth,
              0.02), (0, 1), (0,), work * 3),
        Case("correspondence_warp", cfg + " 3ch", correspondence_warp, ref.correspondence_warp_ref,
             (scene.src_img, scene.points, scene.valid, scene.K, scene.src_depth, 0.02),
             (0, 1), (0,), work * 3),
    ]  # fmt: skip
    if feature_maps is not None:
        C = feature_maps.shape[1]
        cases += [
            Case("depth_warp", cfg + f" {C}ch", depth_warp, ref.depth_warp_ref,
                 (feature_maps, scene.dst_depth, scene.K, scene.K, scene.src_T_dst,
                  scene.src_depth, 0.02), (0, 1), (0,), work * C),
            Case("correspondence_warp", cfg + f" {C}ch", correspondence_warp,
                 ref.correspondence_warp_ref,
                 (feature_maps, scene.points, scene.valid, scene.K, scene.src_depth, 0.02),
                 (0, 1), (0,), work * C),
        ]  # fmt: skip
    return cases


# ---- peers ------------------------------------------------------------------------------------


def kornia_peer(scene: Scene, feats: torch.Tensor) -> dict[str, Any]:
    """kornia.geometry.depth.warp_frame_depth vs depth_warp (no occlusion test, like kornia)."""
    try:
        from kornia.geometry.depth import warp_frame_depth
    except ImportError:
        return {
            "peer": "kornia",
            "note": "kornia not installed (pip install -r requirements-bench.txt)",
        }
    from jr2net.ops import depth_warp

    args = (feats, scene.dst_depth, scene.src_T_dst, scene.K)

    def run_kornia() -> None:
        with torch.no_grad():
            warp_frame_depth(*args)

    def run_ours() -> None:
        with torch.no_grad():
            depth_warp(feats, scene.dst_depth, scene.K, scene.K, scene.src_T_dst)

    t_k, t_k_best, _ = timed(run_kornia, warmup=1, iters=10, min_time=0.5)
    t_o, t_o_best, _ = timed(run_ours, warmup=1, iters=10, min_time=0.5)
    import kornia

    return {
        "peer": f"kornia {kornia.__version__} warp_frame_depth",
        "config": f"{scene.size}² b{scene.batch} {feats.shape[1]}ch fwd",
        "peer_ms": t_k * 1e3,
        "ours_ms": t_o * 1e3,
        "speedup": t_k / t_o,
        "best_speedup": t_k_best / t_o_best,
    }


_GL_VS = """
#version 330
uniform vec4 intr;   // fx, fy, cx, cy
uniform vec3 size_nf; // W, H, unused
in vec3 in_pos;      // camera frame (OpenCV)
out float v_z;
void main() {
    float z = in_pos.z;
    float x = (intr.x * in_pos.x / z + intr.z + 0.5) / size_nf.x * 2.0 - 1.0;
    float y = (intr.y * in_pos.y / z + intr.w + 0.5) / size_nf.y * 2.0 - 1.0;
    float n = 1.0, f = 10000.0;
    gl_Position = vec4(x * z, y * z, (z * (f + n) - 2.0 * f * n) / (f - n), z);
    v_z = z;
}
"""
_GL_FS = """
#version 330
in float v_z;
out vec4 f_out;
void main() { f_out = vec4(v_z, float(gl_PrimitiveID + 1), 0.0, 0.0); }
"""


def moderngl_peer(scene: Scene) -> dict[str, Any]:
    """moderngl (EGL) draws the same mesh into a float RGBA target + depth buffer and reads it back."""
    try:
        import moderngl
    except ImportError:
        return {
            "peer": "moderngl",
            "note": "moderngl not installed (pip install -r requirements-bench.txt)",
        }
    try:
        ctx = moderngl.create_standalone_context(backend="egl")
    except Exception as exc:  # noqa: BLE001 - any EGL failure means "peer unavailable"
        return {
            "peer": "moderngl",
            "note": f"no EGL context ({exc}); install libegl1 libgl1-mesa-dri "
            "(apt-get install -y libegl1 libgl1-mesa-dri)",
        }
    from jr2net.ops import rasterize

    S = scene.size
    K = scene.K[0]
    prog = ctx.program(vertex_shader=_GL_VS, fragment_shader=_GL_FS)
    prog["intr"].value = (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
    prog["size_nf"].value = (float(S), float(S), 0.0)
    verts = scene.verts_dst[0].numpy().astype("f4")
    vbo = ctx.buffer(reserve=verts.nbytes)
    ibo = ctx.buffer(scene.faces.numpy().astype("i4").tobytes())
    vao = ctx.vertex_array(prog, [(vbo, "3f", "in_pos")], index_buffer=ibo, index_element_size=4)
    fbo = ctx.framebuffer(
        color_attachments=[ctx.texture((S, S), 4, dtype="f4")],
        depth_attachment=ctx.depth_renderbuffer((S, S)),
    )
    ctx.enable(moderngl.DEPTH_TEST)

    def run_gl() -> None:
        vbo.write(verts.tobytes())
        fbo.use()
        fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        vao.render(moderngl.TRIANGLES)
        np.frombuffer(fbo.read(components=4, dtype="f4"), dtype="f4")

    run_gl()
    gl_img = np.frombuffer(fbo.read(components=4, dtype="f4"), dtype="f4").reshape(S, S, 4)
    ours = rasterize(scene.verts_dst[:1], scene.faces, scene.K[:1], (S, S))
    agree = float(((gl_img[..., 1] > 0) == (ours[0, ..., 3] > 0).numpy()).mean())

    def run_ours() -> None:
        with torch.no_grad():
            rasterize(scene.verts_dst[:1], scene.faces, scene.K[:1], (S, S))

    t_gl, t_gl_best, _ = timed(run_gl, warmup=2, iters=20, min_time=0.5)
    t_o, t_o_best, _ = timed(run_ours, warmup=2, iters=20, min_time=0.5)
    renderer = ctx.info.get("GL_RENDERER", "?")
    ctx.release()
    return {
        "peer": f"moderngl {moderngl.__version__} EGL ({renderer})",
        "config": f"{S}² b1 fwd + readback",
        "peer_ms": t_gl * 1e3,
        "ours_ms": t_o * 1e3,
        "speedup": t_gl / t_o,
        "best_speedup": t_gl_best / t_o_best,
        "coverage_agreement": agree,
    }


# ---- main -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256² batch 1 only")
    parser.add_argument("--no-reference", action="store_true", help="time the kernels only")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads, always set explicitly (default 1: on a shared machine multi-threaded "
        "timings mostly measure how soon the scheduler runs the second thread)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=3,
        help="separate timing runs per case; tables show the median of their medians",
    )
    parser.add_argument(
        "--name",
        default="kernels",
        help="results file benchmarks/results/NAME.json (default kernels; e.g. "
        "kernels_avx2 for a JR2NET_SIMD=avx2 run)",
    )
    parser.add_argument(
        "--also-simd",
        default="auto",
        help="comma-separated lower SIMD levels (avx2, baseline) also timed, each in a child run "
        "with JR2NET_SIMD=LEVEL --quick --no-reference; their rows and warp target land in this "
        "JSON under simd_levels (auto: avx2 when the CPU runs avx512; '' for none)",
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    torch.set_num_threads(args.threads)
    load_start = _loadavg()
    from jr2net import _C

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average {_fmt_load(load_start)} (1/5/15 min) on {os.cpu_count()} CPUs, "
        f"{cpu_model()}, SIMD {_C.simd_level()} (CPU's best {_C.cpu_simd_level()}; JR2NET_SIMD lowers it)"
    )

    verts, faces = _load_ict()
    sizes = (256,) if args.quick else (256, 512)
    batches = (1,) if args.quick else (1, 8)
    rows: list[dict[str, Any]] = []
    ref_rate: dict[str, float] = {}  # op+channels -> reference seconds per unit of work
    peers: list[dict[str, Any]] = []
    for size in sizes:
        for batch in batches:
            scene = make_scene(verts, faces, size, batch)
            feats = features(scene, FEATURE_CHANNELS) if (size == 256 and batch == 1) else None
            for case in cases_for(scene, feats):
                t0 = time.perf_counter()
                (k_fwd, k_fwd_best, c_fwd), (k_bwd, k_bwd_best, c_bwd) = time_runs(case, args.runs)
                row: dict[str, Any] = {
                    "op": case.op,
                    "config": case.config,
                    "kernel_fwd_ms": k_fwd * 1e3,
                    "kernel_bwd_ms": k_bwd * 1e3,
                    "bwd/fwd": k_bwd / k_fwd,
                    "best_fwd_ms": k_fwd_best * 1e3,
                    "best_bwd_ms": k_bwd_best * 1e3,
                    "best bwd/fwd": k_bwd_best / k_fwd_best,
                    "cpu_fwd_ms": c_fwd * 1e3,
                    "cpu_bwd_ms": c_bwd * 1e3,
                }
                key = case.op + case.config.split(" ")[-1]
                estimate = ref_rate.get(key, 0.0) * case.work
                if args.no_reference or case.reference is None:
                    row["ref"] = "not run"
                elif estimate > REF_SKIP_S:
                    row["ref"] = f"skipped (est. {estimate:.0f} s/call)"
                    print(
                        f"  {case.op} {case.config}: reference skipped, estimated {estimate:.0f} s per call"
                    )
                else:
                    (r_fwd, *_), (r_bwd, *_) = time_impl(
                        case, case.reference, iters=2, min_time=0.0
                    )
                    ref_rate[key] = max(ref_rate.get(key, 0.0), max(r_fwd, r_bwd) / case.work)
                    row.update(
                        ref_fwd_ms=r_fwd * 1e3,
                        ref_bwd_ms=r_bwd * 1e3,
                        fwd_speedup=r_fwd / k_fwd,
                        bwd_speedup=r_bwd / k_bwd,
                    )
                rows.append(row)
                print(
                    f"  {case.op:20s} {case.config:14s} done in {time.perf_counter() - t0:5.1f} s"
                )
            if size == 256 and batch == 1:
                peers.append(kornia_peer(scene, feats))
            if batch == 1:
                peers.append(moderngl_peer(scene))

    load_end = _loadavg()
    header = (
        f"SIMD {_C.simd_level()}, {torch.get_num_threads()} threads, load average {_fmt_load(load_start)} at start, "
        f"{_fmt_load(load_end)} at end (1/5/15 min, {os.cpu_count()} CPUs)"
    )
    print_table(
        rows,
        ["op", "config", "kernel_fwd_ms", "ref_fwd_ms", "fwd_speedup", "kernel_bwd_ms",
         "ref_bwd_ms", "bwd_speedup", "bwd/fwd", "best_fwd_ms", "best bwd/fwd", "cpu_fwd_ms",
         "cpu_bwd_ms", "ref"],
        title="Kernels vs pure-PyTorch references (median ms; best_*: the kernel's best run); "
        + header,
    )  # fmt: skip
    print_table(
        peers,
        ["peer", "config", "peer_ms", "ours_ms", "speedup", "best_speedup", "note"],
        title=f"Peers (median ms); {header}",
    )

    targets = _targets(rows, peers)
    simd_levels = {}
    levels = args.also_simd
    if levels == "auto":
        levels = "avx2" if _C.simd_level() == "avx512" else ""
    for level in [v.strip() for v in levels.split(",") if v.strip()]:
        simd_levels[level] = _child_level_run(level, args.runs, args.threads)
        c = _find(simd_levels[level]["rows"], "correspondence_warp", f"256² b1 {FEATURE_CHANNELS}ch")
        if c:
            med, best, cpu = c["kernel_fwd_ms"], c["best_fwd_ms"], c["cpu_fwd_ms"]
            targets.append({
                "target": f"correspondence_warp {FEATURE_CHANNELS}ch 256² fwd <= 3 ms "
                          f"(JR2NET_SIMD={level})",
                "measured": f"{med:.2f} ms", "status": "met" if med <= 3 else "missed",
                "best": f"{best:.2f} ms", "status_best": "met" if best <= 3 else "missed",
                "cpu": f"{cpu:.2f} ms", "status_cpu": "met" if cpu <= 3 else "missed",
            })  # fmt: skip
    print_table(
        targets,
        ["target", "measured", "status", "best", "status_best", "cpu", "status_cpu"],
        title=f"Targets (median; best run in the last two columns); {header}",
    )
    write_results(
        args.name,
        {"threads": torch.get_num_threads(), "runs": args.runs, "simd_level": _C.simd_level(),
         "load_average": load_start[0],
         "load_average_start": list(load_start), "load_average_end": list(load_end),
         "rows": rows, "peers": peers, "targets": targets, "simd_levels": simd_levels},
    )  # fmt: skip
    return 0


def _child_level_run(level: str, runs: int, threads: int) -> dict[str, Any]:
    """Time the 256² batch-1 kernels at a lower SIMD level in a child process (the level is
    chosen once per process, from JR2NET_SIMD); returns its rows, SIMD level and load."""
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "child"  # write_results joins an absolute name as-is
        env = {**os.environ, "JR2NET_SIMD": level}
        subprocess.run(
            [sys.executable, "-m", "benchmarks.kernels", "--quick", "--no-reference",
             "--also-simd", "", "--runs", str(runs), "--threads", str(threads), "--name", str(out)],
            check=True, env=env,
        )  # fmt: skip
        data = json.loads(out.with_suffix(".json").read_text())
    return {"simd_level": data["simd_level"], "load_average_start": data["load_average_start"],
            "load_average_end": data["load_average_end"], "rows": data["rows"]}  # fmt: skip


def _loadavg() -> tuple[float, float, float]:
    """The 1/5/15-minute load averages (NaN where the OS has none), to judge timing noise."""
    if hasattr(os, "getloadavg"):
        return os.getloadavg()
    return (float("nan"),) * 3


def _fmt_load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{v:.2f}" for v in load)


def _find(rows: list[dict[str, Any]], op: str, config: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["op"] == op and r["config"] == config), None)


def _targets(rows: list[dict[str, Any]], peers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target judged on the median (status) and, for reference, on the best run and (time
    targets) on the median CPU time per call."""
    out: list[dict[str, Any]] = []

    def add(target: str, med: float | None, best: float | None, ok: Callable[[float], bool],
            fmt: str, cpu: float | None = None) -> None:  # fmt: skip
        out.append(
            {
                "target": target,
                "measured": "n/a" if med is None else fmt.format(med),
                "status": "n/a" if med is None else ("met" if ok(med) else "missed"),
                "best": "n/a" if best is None else fmt.format(best),
                "status_best": "n/a" if best is None else ("met" if ok(best) else "missed"),
                "cpu": "n/a" if cpu is None else fmt.format(cpu),
                "status_cpu": "n/a" if cpu is None else ("met" if ok(cpu) else "missed"),
            }
        )

    r = _find(rows, "rasterize", "256² b1")
    add("rasterize fwd 256² b1 <= 1.5 ms", r and r["kernel_fwd_ms"], r and r["best_fwd_ms"],
        lambda v: v <= 1.5, "{:.2f} ms", r and r["cpu_fwd_ms"])  # fmt: skip
    sp = r.get("fwd_speedup") if r else None
    best_sp = sp and r["ref_fwd_ms"] / r["best_fwd_ms"]
    add("rasterize fwd 256² b1 >= 20x reference", sp, best_sp, lambda v: v >= 20, "{:.0f}x")
    for op in ("rasterize", "interpolate", "sh_shading", "depth_warp", "correspondence_warp"):
        mine = [x for x in rows if x["op"] == op]
        if mine:
            worst = max(mine, key=lambda x: x["bwd/fwd"])
            worst_best = max(x["best bwd/fwd"] for x in mine)
            add(f"{op} backward <= 2.5x forward (worst: {worst['config']})", worst["bwd/fwd"],
                worst_best, lambda v: v <= 2.5, "{:.2f}x")  # fmt: skip
    c = _find(rows, "correspondence_warp", f"256² b1 {FEATURE_CHANNELS}ch")
    add(f"correspondence_warp {FEATURE_CHANNELS}ch 256² fwd <= 3 ms", c and c["kernel_fwd_ms"],
        c and c["best_fwd_ms"], lambda v: v <= 3, "{:.2f} ms", c and c["cpu_fwd_ms"])  # fmt: skip
    k = next((p for p in peers if p.get("peer", "").startswith("kornia") and "speedup" in p), None)
    add(f"depth_warp >= 5x kornia ({FEATURE_CHANNELS}ch 256²)", k and k["speedup"],
        k and k["best_speedup"], lambda v: v >= 5, "{:.1f}x")  # fmt: skip
    return out


if __name__ == "__main__":
    raise SystemExit(main())
