"""The geometric reenactment path (DESIGN §1): fit, recombine, render, warp, relight, fill, composite.

No learned weights. Per session the source photo is fitted once (``SourceFitter``); per driving
frame the face is tracked and fitted (``DrivingFitter``: pose + expression), the source identity is
recombined with the driving expression and pose, the recombined face is rasterised in a square crop
of the output frame, and the source pixels are moved there by ``correspondence_warp`` (each target
pixel knows its 3D point on the source-posed mesh, so expressions move pixels, not only the head).
The rendered mesh is the model's face, mouth socket and eyeballs, without the neck below the jaw
(the neck stays with the background).

The mode-independent half (driving reference, target pose and expression, recombination,
relighting ratio) is ``jr2net.pipeline.recombine``; compositing is ``jr2net.pipeline.composite``;
the small stage functions are ``jr2net.pipeline.stages``. Stages and their documented behaviour:

- **pose** (``SessionOptions.pose_mode``: ``relative``, default, cross-identity; ``absolute``,
  same-identity) and **expression** (``options.extra["expression"]``: ``absolute``, default, or
  ``relative``: ``jr2net.pipeline.recombine``; ``etnet``/``fitter``: the driving expression
  tracker, ``jr2net.pipeline.etnet_tracker``).
- **relight** (``options.extra["light"]``): ``source`` (default) keeps the source's SH light, so the
  face is relit for its new orientation under the light of the scene it is composited into:
  ratio = E_θs(n_target) / E_θs(n_source) per vertex (SH irradiance of the recombined vs the
  source-posed normals), interpolated per pixel with the warp's points. ``none``: no relighting.
  (A per-frame driving-light estimate gave colour casts; dropped.)
- **fill**: target face pixels not co-visible in the source (mouth interior, disoccluded cheek)
  take per-vertex colours sampled from the source photo at session start; vertices hidden in the
  source get a harmonic fill of their visible neighbours' colours, the hidden mouth socket a
  synthetic mouth (teeth-like bands by the lip line, a dark cavity behind). They are relit by the
  same ratio (except the synthetic mouth) and blended over a soft co-visibility edge.
- **mouth** (the driving frame's own interior, by default) and **gaze**: ``jr2net.pipeline.transfer``.
- **composite**: the face layer, feathered, over the source photo warped by the head's motion
  (``jr2net.pipeline.composite``); the neck and shoulders move as the driving frame's body does
  (tracked below its face, ``background.BodyTracker``; inpainting there too).
  By default (``options.extra["full_res_face"]``: ``1``) the face layer samples the full-size
  source once through the warp field upsampled to the face box (sharp; a still head returns the
  photo itself); ``0`` composites the crop-resolution warp.
- **no face** in a driving frame (or a fit that diverged to non-finite values): the last reenacted
  output is repeated (``fallback="last_output"``) or, before the first one, the source image at
  output size (``fallback="source"``); ``face_found`` is False. Never an exception. Bad arrays
  raise TypeError / ValueError. A target head far outside the frame (or filling it many times
  over) is drawn as the plain background.

- **temporal filter** (``options.extra["temporal_filter"]``: ``1``, default, or ``0``): the
  driving fit's angles, translation and expression go through a One-Euro filter
  (``jr2net.pipeline.filters``, settings documented there) before recombination, so a still
  driving head gives a still output; a lost face resets it.

``options.extra`` also accepts ``feather`` (mask feather radius in crop pixels, default crop/64), ``still_threshold``
(the stillness gate's landmark threshold, default 0.025 IOD; 0 disables the gate)
and ``background_warp`` (``1``/``0``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from jr2net.errors import NoFaceError
from jr2net.face.camera import crop_intrinsics
from jr2net.face.camera import project as project_points
from jr2net.face.model import FaceModel, load_face_model
from jr2net.io.images import check_image
from jr2net.ops import correspondence_warp, interpolate, rasterize
from jr2net.pipeline import etnet_tracker as et
from jr2net.pipeline import stages as st
from jr2net.pipeline.background import BodyTracker
from jr2net.pipeline.base import FrameResult, Reconstruction, SessionOptions
from jr2net.pipeline.composite import Compositor
from jr2net.pipeline.filters import PoseExpressionFilter
from jr2net.pipeline.mouth import synthetic_socket, warm_up_colour_tables
from jr2net.pipeline.recombine import POSE_MODES, Recombiner, Relighter, is_finite
from jr2net.pipeline.registry import ReenactorSettings, register_mode
from jr2net.pipeline.transfer import DrivingTransfers

RENDER_REGIONS = ("face", "mouth_socket", "eyeball_left", "eyeball_right")
"""Model regions rendered per frame (those the model has): skin, mouth interior, eyes."""

LIGHT_MODES = ("source", "none")
STAGES = ("track", "fit", "recombine", "rasterize", "warp", "relight", "fill", "mouth", "gaze",
          "composite", "total")  # fmt: skip
RENDER_BOX_SCALE = 1.12  # render crop side / projected face extent
REL_EPS = 0.01  # depth test tolerance (relative) of the correspondence warp


def _now() -> float:
    return time.perf_counter()


@dataclass
class RecombinedFace:
    """The recombined face in the output camera: what stage 2 renders."""

    verts_cam: Tensor  # [1,V,3] camera-space vertices
    R: Tensor
    t: Tensor
    box: tuple[int, int, int]  # square render crop (x0, y0, side) in output pixels
    ratio: Tensor | None = None  # [V,3] per-vertex relighting ratio; None when light="none"
    driving: tuple | None = None  # (frame, its 68 landmarks): mouth and gaze transfer
    body_shift: Tensor | None = None  # [2] output px, target -> source: the measured body motion


@dataclass
class FrameAnalysis:
    """What ``GeometricSession.analyse`` hands to ``synthesise``."""

    target: RecombinedFace | None  # None: no face (or a diverged fit) -> the documented fallback
    timings: dict[str, float]
    seconds: float  # wall time of the analysis (counted in the frame's "total")


class GeometricSession:
    """One source face driven by a stream of frames; a ``StagedSession`` (see pipeline.base).

    Everything it needs per frame (render mesh and its operators, fitters) is taken from the
    reenactor once, at the start.
    """

    def __init__(self, reenactor: GeometricReenactor, source: np.ndarray, options: SessionOptions):
        t0 = _now()
        source = check_image(source, "source")
        _check_options(options)
        self.options = options
        self.crop = int(options.crop_size)
        extra = dict(options.extra or {})
        self.light_mode = extra.get("light", "source")
        if self.light_mode not in LIGHT_MODES:
            raise ValueError(
                f"options.extra['light'] must be one of {LIGHT_MODES}, got {self.light_mode!r}"
            )
        self.feather_radius = st.option_int(extra, "feather", max(1, self.crop // 64))
        self.expression_mode, self.tracker = et.parse_expression(
            extra.get("expression"), getattr(reenactor, "etnet", None) is not None
        )
        self.background_warp = extra.get("background_warp", "1") not in ("0", "false", "no")
        self.full_res = extra.get("full_res_face", "1") not in ("0", "false", "no")
        on = extra.get("temporal_filter", "1") not in ("0", "false", "no")
        gate = st.option_float(extra, "still_threshold", 0.025)
        self.pose_filter = PoseExpressionFilter(still_threshold=gate) if on else None
        self.model = reenactor.model
        self.mesh: st.RenderMesh = reenactor.render_model
        self.faces = self.mesh.faces

        # NoFaceError propagates. The photometric fit needs autograd: no inference_mode here.
        fit = reenactor.fit_source(source)
        self.source_fit = fit
        Hs, Ws = source.shape[:2]
        Ho = int(options.output_height) or Hs
        Wo = int(options.output_width) or Ws
        self.out_hw = (Ho, Wo)

        with torch.inference_mode():
            self._setup(source, fit)
        self.transfers = DrivingTransfers(
            self.mesh, self.model, source, fit.detection.landmarks, extra
        )
        self._driving = reenactor.make_driving_fitter(self.tracker)
        self.body_tracker = BodyTracker()
        lm = np.asarray(fit.detection.landmarks, np.float64)
        self._src_iod_out = float(np.linalg.norm(lm[45] - lm[36])) * Wo / Ws
        self._last_output: np.ndarray | None = None
        self.setup_seconds = _now() - t0

    # ---- session start ------------------------------------------------------------------------

    def _setup(self, source: np.ndarray, fit) -> None:
        """Precompute everything per session: background, source geometry and crop, fill colours."""
        self._setup_background(source, fit)
        self.recombiner = Recombiner(
            self.model, self.mesh, fit, self.K_out, self.out_hw,
            self.options.pose_mode, self.expression_mode,
        )  # fmt: skip
        src = self.recombiner.source()
        self.R_src, self.t_src = src.R, src.t
        self.src_verts_cam = src.verts_cam  # [1,V,3]
        self.n_src_cam = src.normals_cam
        self.relighter = Relighter(self.n_src_cam, fit.coeffs.light.float()[0], self.mesh.ops)
        self._setup_source_crop()
        self._setup_fill()
        self.compositor = Compositor(
            self.bg, self.K_out, self.crop, self.feather_radius, self.background_warp,
            self.src_box, (self.R_src, self.t_src),
        )  # fmt: skip
        self.bg_u8 = self.compositor.bg_u8

    def _setup_background(self, source: np.ndarray, fit) -> None:
        """The source at output size (the background) and the output camera."""
        Hs, Ws = source.shape[:2]
        Ho, Wo = self.out_hw
        src_t = st.image_to_tensor(source)
        if (Ho, Wo) != (Hs, Ws):
            self.bg = F.interpolate(
                src_t, size=(Ho, Wo), mode="bilinear", align_corners=False, antialias=True
            ).clamp_(0, 1)
        else:
            self.bg = src_t
        K_full = fit.K.float().reshape(1, 3, 3)
        self.K_out = crop_intrinsics(K_full, (0.0, 0.0, float(Ws), float(Hs)), (Ho, Wo))[0]

    def _setup_source_crop(self) -> None:
        """Source crop around the face at the output's resolution (at most 2x the render crop, so
        the warp samples the photo once, sharply), and its render (depth for the occlusion test)."""
        Ho, Wo = self.out_hw
        p_src = project_points(self.src_verts_cam, self.K_out[None])[0]
        self.src_box = st.square_box(p_src, RENDER_BOX_SCALE, (Ho, Wo))
        x0, y0, side = self.src_box
        Sc = self.src_crop_size = min(side, 2 * self.crop)
        self.src_crop = st.crop_resample(self.bg, self.src_box, Sc).contiguous()
        self.K_src_crop = crop_intrinsics(self.K_out[None], (x0, y0, x0 + side, y0 + side), Sc)
        rast = rasterize(
            self.src_verts_cam, self.faces, self.K_src_crop, (Sc, Sc), cull_backfaces=True
        )
        self.src_depth = rast[..., 2].unsqueeze(1).contiguous()

    def _setup_fill(self) -> None:
        """Per-vertex colours seen in the source (fill layer), a synthetic mouth where the photo
        shows none, and the per-vertex attributes interpolated per frame."""
        pm = self.mesh
        V = pm.n_vertices
        colors, visible = self._sample_vertex_colors()
        # Mouth-socket vertices the photo does not show get a synthetic mouth inside (not relit).
        hidden_socket = synthetic_socket(pm, self.model, colors, visible)
        known = visible | hidden_socket
        if pm.region_mask("mouth_socket").any():
            self.relighter.unlit = hidden_socket
        self.vertex_colors = st.diffuse_colors(colors, known, pm.ops.adjacency)
        self.src_visible = visible

        # Per-vertex attributes interpolated per frame: source points, fill colour, relight ratio.
        self.attr = torch.empty(1, V, 9)
        self.attr[0, :, 0:3] = self.src_verts_cam[0]
        self.attr[0, :, 3:6] = self.vertex_colors
        self.attr[0, :, 6:9] = 1.0

    def _sample_vertex_colors(self) -> tuple[Tensor, Tensor]:
        """Colours ``[V,3]`` of the source crop at each vertex, and which vertices it shows."""
        S = self.src_crop_size
        verts = self.src_verts_cam
        p = project_points(verts, self.K_src_crop)  # [1,V,2]
        grid = (2 * p + 1) / S - 1
        colors = F.grid_sample(self.src_crop, grid[:, None], mode="bilinear", align_corners=False)
        colors = colors[0, :, 0].T.contiguous()  # [V,3]
        depth = F.grid_sample(self.src_depth, grid[:, None], mode="nearest", align_corners=False)
        depth = depth[0, 0, 0]
        z = verts[0, :, 2]
        inside = (grid.abs() <= 1).all(-1)[0]
        visible = (
            inside & (depth > 0) & ((z - depth).abs() <= 0.01 * z) & (self.n_src_cam[:, 2] < -0.05)
        )
        return colors, visible

    # ---- per frame ------------------------------------------------------------------------------

    def process(self, frame: np.ndarray) -> FrameResult:
        """Reenact one driving frame (uint8 ``[H,W,3]``); no-face frames give the documented fallback."""
        return self.synthesise(self.analyse(frame))

    def analyse(self, frame: np.ndarray) -> FrameAnalysis:
        """Stage 1 of ``process``: track and fit the driving frame, recombine it with the source."""
        t_start = _now()
        frame = check_image(frame, "frame")
        timings = dict.fromkeys(STAGES, 0.0)
        with torch.inference_mode():
            fit = self._driving.fit(frame)
            t1 = _now()
            if fit is not None:
                ft = getattr(fit, "timings", {}) or {}
                track = min(
                    sum(v for k, v in ft.items() if k in ("track", "landmarks", "detect")),
                    t1 - t_start,
                )
                timings["track"] = track
                timings["fit"] = (t1 - t_start) - track
                et.move_etnet_timing(timings, fit)
            else:
                timings["track"] = t1 - t_start
            target = None
            if self.pose_filter is not None:
                if fit is None or not is_finite(fit.coeffs):
                    self.pose_filter.reset()
                else:
                    fit = self.pose_filter(fit)
            if fit is not None and is_finite(fit.coeffs):
                target, normals = self._recombine(fit)
                t2 = _now()
                timings["recombine"] = t2 - t1
                target.ratio = self._relight_ratio(normals)  # per vertex, so it belongs here
                target.driving = (frame, fit.detection.landmarks)
                t3 = _now()
                timings["relight"] = t3 - t2
                target.body_shift = self._body_shift(frame, fit.detection.landmarks)
                timings["track"] += _now() - t3  # the body tracker is part of tracking
        return FrameAnalysis(target, timings, _now() - t_start)

    def _body_shift(self, frame: np.ndarray, landmarks: np.ndarray) -> Tensor | None:
        """The driving body's motion since the session's first driving face frame, in output px
        (target -> source, scaled by the source / driving face size); None when untracked."""
        shift = self.body_tracker(frame, landmarks)
        if not self.body_tracker.active or self.body_tracker.ref_iod <= 1.0:
            return None
        scale = self._src_iod_out / self.body_tracker.ref_iod
        return torch.from_numpy(-scale * shift).float()

    def synthesise(self, analysis: FrameAnalysis) -> FrameResult:
        """Stage 2 of ``process``: render, warp, relight, fill and composite (or fall back)."""
        t_start = _now() - analysis.seconds
        timings = analysis.timings
        if analysis.target is None:
            return self._fallback(timings, t_start)
        with torch.inference_mode():
            image = self._render(analysis.target, timings)
        self._last_output = image
        timings["total"] = _now() - t_start
        return FrameResult(image=image, timings=timings, face_found=True, fallback="")

    def _fallback(self, timings: dict[str, float], t_start: float) -> FrameResult:
        if self._last_output is not None:
            image, name = self._last_output, "last_output"
        else:
            image, name = self.bg_u8, "source"
        timings["total"] = _now() - t_start
        return FrameResult(image=image.copy(), timings=timings, face_found=False, fallback=name)

    def _recombine(self, fit) -> tuple[RecombinedFace, Tensor]:
        """The recombined face (``Recombiner.recombine``), its square render box, and its
        camera-space vertex normals."""
        r = self.recombiner.recombine(fit)
        p = project_points(r.verts_cam[:, self.mesh.box_vertices], self.K_out[None])[0]
        box = st.square_box(p, RENDER_BOX_SCALE, self.out_hw)
        return RecombinedFace(r.verts_cam, r.R, r.t, box), r.normals_cam

    def _relight_ratio(self, normals: Tensor) -> Tensor | None:
        """Per-vertex relighting ratio (goes through the same interpolation as the warp points)."""
        if self.light_mode == "none":
            return None
        return self.relighter.ratio(normals)

    def _render(self, target: RecombinedFace, timings: dict[str, float]) -> np.ndarray:
        """Rasterise the recombined face, warp the source into it, relight, fill and composite."""
        S = self.crop
        Ho, Wo = self.out_hw
        verts_cam, R, t, box = target.verts_cam, target.R, target.t, target.box
        x0, y0, side = box
        t1 = _now()
        if side > 2 * max(Ho, Wo) or x0 >= Wo or y0 >= Ho or x0 + side <= 0 or y0 + side <= 0:
            # Degenerate target (head out of the frame, or filling it many times over): nothing
            # sensible to draw; keep the background rather than allocating huge buffers.
            return self.bg_u8.copy()
        K_crop = crop_intrinsics(self.K_out[None], (x0, y0, x0 + side, y0 + side), S)

        # -- rasterize the driving view in the output crop
        rast = rasterize(verts_cam, self.faces, K_crop, (S, S), cull_backfaces=True)
        t2 = _now()
        timings["rasterize"] = t2 - t1

        if target.ratio is not None:
            self.attr[0, :, 6:9] = target.ratio
        t3 = _now()

        # -- warp: source pixels moved to the target pixels (non-rigid correspondences)
        interp = interpolate(self.attr, rast, self.faces)  # [1,S,S,9]
        points = interp[..., 0:3].contiguous()
        valid = (rast[..., 3] > 0).unsqueeze(1).float()
        warped, covisible = correspondence_warp(
            self.src_crop, points, valid, self.K_src_crop, self.src_depth, REL_EPS
        )
        t4 = _now()
        timings["warp"] = t4 - t3

        planes = interp[..., 3:9].permute(0, 3, 1, 2).contiguous()  # fill colour, ratio
        ratio_map = planes[:, 3:6]
        relit = warped * ratio_map
        t5 = _now()
        timings["relight"] += (t5 - t4) + (t3 - t2)

        fill = planes[:, 0:3] * ratio_map
        cov_soft = st.box_blur3(covisible).mul_(covisible)
        if self.full_res:
            face = st.full_res_face(
                self.bg, self.K_out, points, valid, torch.cat([fill, ratio_map, cov_soft], 1), box
            )
        else:
            face = fill + cov_soft * (relit - fill)
        t6 = _now()
        timings["fill"] = t6 - t5
        face = self.transfers.apply(face, rast, verts_cam, K_crop, target.driving, timings)
        t6 = _now()

        # -- composite into the (warped) source frame
        image = self.compositor.composite(
            face, valid, points, rast[..., 2], box, (R, t), target.body_shift
        )
        timings["composite"] = _now() - t6
        return image

    def close(self) -> None:
        """Release per-session state (buffers, tracker)."""
        self._last_output = None
        self.recombiner.reset()


def _check_options(options: SessionOptions) -> None:
    if not isinstance(options, SessionOptions):
        raise TypeError(f"options must be a SessionOptions, got {type(options).__name__}")
    if options.pose_mode not in POSE_MODES:
        raise ValueError(
            f"options.pose_mode must be 'relative' or 'absolute', got {options.pose_mode!r}"
        )
    if not isinstance(options.crop_size, int) or not 64 <= options.crop_size <= 1024:
        raise ValueError(
            f"options.crop_size must be an int in [64, 1024], got {options.crop_size!r}"
        )
    for name in ("output_width", "output_height"):
        v = getattr(options, name)
        if not isinstance(v, int) or v < 0 or v > 8192 or (0 < v < 16):
            raise ValueError(
                f"options.{name} must be 0 (source size) or an int in [16, 8192], got {v!r}"
            )


class GeometricReenactor:
    """The default, weight-free reenactor: creates ``GeometricSession``s; safe to share across threads."""

    name = "geometric"

    def __init__(self, face_model: FaceModel | str | None = None, etnet: str | None = None) -> None:
        """``etnet``: an etnet/recaugnet checkpoint, the sessions' default expression tracker."""
        from jr2net.face.fitting import DrivingFitter, SourceFitter

        if face_model is None or isinstance(face_model, str):
            face_model = load_face_model(face_model)
        if not isinstance(face_model, FaceModel):
            raise TypeError(
                f"face_model must be a FaceModel, a spec string or None, got {type(face_model).__name__}"
            )
        self.model = face_model
        self.render_model = st.RenderMesh(
            face_model, st.render_vertex_mask(face_model, RENDER_REGIONS)
        )
        self._source_fitter_cls = SourceFitter
        self._driving_fitter_cls = DrivingFitter
        self._source_fitter = SourceFitter(face_model)
        self._lock = threading.Lock()
        self.etnet = et.load_tracker_etnet(etnet, face_model)  # refused here, at server start
        # One-time set-up, in threads while the first session detects its source face (dlib's
        # predictor load holds the GIL, the metric's BLAS and OpenCV's tables do not).
        threading.Thread(
            target=self._prepare_fitter, name="jr2net-fit-prepare", daemon=True
        ).start()
        warm_up_colour_tables()  # the mouth transfer's

    def _prepare_fitter(self) -> None:
        try:
            self._source_fitter.prepare()
        except Exception:  # the first fit builds it again, and raises
            pass

    def warm_up(self) -> bool:
        """Run one session on a face rendered from the model, so one-time costs (landmark model
        files, first-call allocations) are not paid by the first real session; True if it ran."""
        from jr2net.pipeline.synthetic import SIZE, render_face

        ident = torch.zeros(1, min(self.model.n_identity, 10))
        expr = torch.zeros(1, self.model.n_expression)
        backdrop = torch.full((1, 3, SIZE, SIZE), 0.45)
        image = render_face(self.model, ident, expr, torch.zeros(1, 3), backdrop, (1.0, 0.85, 0.75))
        try:
            session = self.start_session(image, SessionOptions())
        except NoFaceError:
            return False
        try:
            for _ in range(2):
                session.process(image)
        finally:
            session.close()
        return True

    def fit_source(self, image: np.ndarray):
        """Fit the source photo (``FitResult``); raises NoFaceError."""
        with self._lock:
            return self._source_fitter.fit(image)

    def make_driving_fitter(self, tracker: str = "fitter"):
        base = self._driving_fitter_cls(self.model)
        return et.with_tracker(base, self.etnet, tracker, getattr(self, "device", "cpu"))

    def start_session(
        self, source: np.ndarray, options: SessionOptions | None = None
    ) -> GeometricSession:
        """Fit the source once and precompute its crop, render and vertex colours (< 2 s)."""
        return GeometricSession(self, source, options if options is not None else SessionOptions())

    def reconstruct(self, image: np.ndarray, with_mesh: bool = False) -> Reconstruction:
        """Coefficients (and optionally the model-space mesh) of the face in ``image``."""
        image = check_image(image, "image")
        t0 = _now()
        fit = self.fit_source(image)
        coeffs = fit.coeffs
        with torch.inference_mode():
            vertices = faces = None
            if with_mesh:
                verts = self.model.shape(
                    identity=coeffs.identity.float(), expression=coeffs.expression.float()
                )
                vertices = verts[0].numpy().astype(np.float32)
                faces = self.model.faces.numpy().astype(np.int32)
        d = coeffs.to_dict(self.model.expression_names)
        d["K"] = fit.K.reshape(3, 3).tolist()
        d["image_size"] = list(fit.image_size)
        timings = dict(getattr(fit, "timings", {}) or {})
        timings["total"] = _now() - t0
        return Reconstruction(
            coefficients=d,
            landmarks=np.asarray(fit.detection.landmarks, dtype=np.float32),
            vertices=vertices,
            faces=faces,
            timings=timings,
        )


def _create(settings: ReenactorSettings) -> GeometricReenactor:
    """The registry's factory: the geometric path needs only the face model (CPU, no weights)."""
    return GeometricReenactor(face_model=settings.face_model, etnet=settings.etnet)


register_mode("geometric", _create)
