"""The geometric reenactment path (DESIGN §1): fit, recombine, render, warp, relight, fill, composite.

No learned weights. Per session the source photo is fitted once (``SourceFitter``); per driving
frame the face is tracked and fitted (``DrivingFitter``: pose + expression), the source identity is
recombined with the driving expression and pose, the recombined face is rasterised in a square crop
of the output frame, and the source pixels are moved there by ``correspondence_warp`` (each target
pixel knows its 3D point on the source-posed mesh, so expressions move pixels, not only the head).
The rendered mesh is the model's face, mouth socket and eyeballs, without the neck below the jaw
(the neck stays with the background).

Stages and their documented behaviour:

- **pose** (``SessionOptions.pose_mode``): ``relative`` (default, cross-identity) moves the source
  head by the driving head's rotation/translation since the driving's first face frame (x/y
  translation scaled by the source/driving 3D head-size ratio, depth scaled so the face grows or
  shrinks by the same factor); ``absolute`` uses the driving pose itself (translation scaled by the
  same head-size ratio, so the source head projects like the driving head), re-expressed so the
  head keeps its relative position and size in the output frame (for same-identity driving).
- **expression** (``options.extra["expression"]``): ``absolute`` (default) takes the driving
  expression coefficients as they are; ``relative`` adds the driving's change since its first face
  frame to the source's own expression (cancels per-person fitting bias; exaggerates an already
  expressive source).
- **relight** (``options.extra["light"]``): ``source`` (default) keeps the source's SH light, so the
  face is relit for its new orientation under the light of the scene it is composited into:
  ratio = E_θs(n_target) / E_θs(n_source) per vertex (SH irradiance of the recombined vs the
  source-posed normals), interpolated per pixel with the warp's points. ``none``: no relighting.
  A per-frame estimate of the driving frame's light (least squares on visible vertices with the
  source's albedo) was tried and dropped: the source and driving SH fits disagree in their
  higher bands, and the ratio of the two gave colour casts, not better images.
- **fill**: target face pixels not co-visible in the source (mouth interior, disoccluded cheek)
  take per-vertex colours sampled from the source photo at session start; vertices hidden in the
  source get a harmonic fill of their visible neighbours' colours, the hidden mouth socket a
  synthetic mouth (teeth-like bands by the lip line, a dark cavity behind). They are relit by the
  same ratio (except the synthetic mouth) and blended over a soft co-visibility edge.
- **composite**: the source photo is the background, itself warped over a box covering 1.6x the
  face crop and the source's own face: by the head's rigid motion (extrapolated from the face,
  its mean far from it, so hair, ears, neck and the old head position follow the head) plus the
  non-rigid face motion close to the face (the skin under a dropping jaw follows it), fading to
  zero at the box border; the face layer goes on top with a feathered mask. Large head motions
  stretch the shoulders/background near the head (no inpainting).
- **no face** in a driving frame (or a fit that diverged to non-finite values): the last reenacted
  output is repeated (``fallback="last_output"``) or, before the first one, the source image at
  output size (``fallback="source"``); ``face_found`` is False. Never an exception. Bad arrays
  raise TypeError / ValueError. A target head far outside the frame (or filling it many times
  over) is drawn as the plain background.

``options.extra`` also accepts ``feather`` (mask feather radius in crop pixels, default crop/64)
and ``background_warp`` (``1``/``0``).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from jr2net.errors import NoFaceError
from jr2net.face.camera import (
    camera_to_model,
    crop_intrinsics,
    euler_rotation,
    pose_points,
    rotate_to_camera,
)
from jr2net.face.camera import project as project_points
from jr2net.face.mesh import fast_vertex_normals, normal_operator, vertex_adjacency
from jr2net.face.model import FaceModel, load_face_model
from jr2net.face.sh import irradiance
from jr2net.io.images import check_image
from jr2net.ops import correspondence_warp, interpolate, rasterize
from jr2net.pipeline import stages as st
from jr2net.pipeline.base import FrameResult, Reconstruction, SessionOptions
from jr2net.pipeline.registry import ReenactorSettings, register_mode

RENDER_REGIONS = ("face", "mouth_socket", "eyeball_left", "eyeball_right")
"""Model regions rendered per frame (those the model has): skin, mouth interior, eyes."""

LIGHT_MODES = ("source", "none")
STAGES = ("track", "fit", "recombine", "rasterize", "warp", "relight", "fill", "composite", "total")
RENDER_BOX_SCALE = 1.12  # render crop side / projected face extent
BACKGROUND_BOX_SCALE = 1.6  # background-warp box side / render crop side
FIELD_GRID = 32  # cells across the background-warp box (the motion field is smooth)
REL_EPS = 0.01  # depth test tolerance (relative) of the correspondence warp
RATIO_RANGE = (0.67, 1.5)  # relighting ratio limits
RATIO_SMOOTHING = 3  # neighbour-averaging passes over the per-vertex relighting ratio


def _now() -> float:
    return time.perf_counter()


def _pose_matrix(coeffs) -> tuple[Tensor, Tensor]:
    """(R [3,3], t [3]) of batch-1 coefficients (model rotation before the OpenCV flip)."""
    return euler_rotation(coeffs.angles.float())[0], coeffs.translation.float()[0]


def _finite(coeffs) -> bool:
    """Whether a fit's pose and expression are usable (a diverged fit counts as no face)."""
    return bool(
        torch.isfinite(coeffs.expression).all()
        and torch.isfinite(coeffs.angles).all()
        and torch.isfinite(coeffs.translation).all()
    )


def _option_int(extra: dict[str, str], key: str, default: int) -> int:
    try:
        return int(extra.get(key, default))
    except (TypeError, ValueError):
        raise ValueError(
            f"options.extra[{key!r}] must be an integer, got {extra.get(key)!r}"
        ) from None


@dataclass
class _Reference:
    """The driving's first face frame: pose, expression, head-size ratio source / driving."""

    R: Tensor
    t: Tensor
    size_ratio: float
    beta: Tensor


@dataclass
class RecombinedFace:
    """The recombined face in the output camera: what stage 2 renders."""

    verts_cam: Tensor  # [1,V,3] camera-space vertices
    R: Tensor
    t: Tensor
    box: tuple[int, int, int]  # square render crop (x0, y0, side) in output pixels
    ratio: Tensor | None = None  # [V,3] per-vertex relighting ratio; None when light="none"


@dataclass
class FrameAnalysis:
    """What ``GeometricSession.analyse`` hands to ``synthesise``."""

    target: RecombinedFace | None  # None: no face (or a diverged fit) -> the documented fallback
    timings: dict[str, float]
    seconds: float  # wall time of the analysis (counted in the frame's "total")


class GeometricSession:
    """One source face driven by a stream of frames; a ``StagedSession`` (see pipeline.base)."""

    def __init__(self, reenactor: GeometricReenactor, source: np.ndarray, options: SessionOptions):
        t0 = _now()
        source = check_image(source, "source")
        _check_options(options)
        self.options = options
        self.reenactor = reenactor
        model = reenactor.model
        pm = reenactor.render_model
        self.crop = int(options.crop_size)
        extra = dict(options.extra or {})
        self.light_mode = extra.get("light", "source")
        if self.light_mode not in LIGHT_MODES:
            raise ValueError(
                f"options.extra['light'] must be one of {LIGHT_MODES}, got {self.light_mode!r}"
            )
        self.feather_radius = _option_int(extra, "feather", max(1, self.crop // 64))
        self.expression_mode = extra.get("expression", "absolute")
        if self.expression_mode not in ("relative", "absolute"):
            raise ValueError(
                f"options.extra['expression'] must be 'relative' or 'absolute', got {self.expression_mode!r}"
            )
        self.background_warp = extra.get("background_warp", "1") not in ("0", "false", "no")

        # NoFaceError propagates. The photometric fit needs autograd: no inference_mode here.
        fit = reenactor.fit_source(source)
        self.source_fit = fit
        Hs, Ws = source.shape[:2]
        Ho = int(options.output_height) or Hs
        Wo = int(options.output_width) or Ws
        self.out_hw = (Ho, Wo)

        with torch.inference_mode():
            self._setup(source, fit, model, pm)
        self._driving = reenactor.make_driving_fitter()
        self._reference: _Reference | None = None
        self._last_output: np.ndarray | None = None
        self.setup_seconds = _now() - t0

    # ---- session start ------------------------------------------------------------------------

    def _setup(self, source: np.ndarray, fit, model: FaceModel, pm: st.RenderMesh) -> None:
        Hs, Ws = source.shape[:2]
        Ho, Wo = self.out_hw
        S = self.crop
        src_t = st.image_to_tensor(source)
        if (Ho, Wo) != (Hs, Ws):
            self.bg = F.interpolate(
                src_t, size=(Ho, Wo), mode="bilinear", align_corners=False, antialias=True
            ).clamp_(0, 1)
        else:
            self.bg = src_t
        self.bg_u8 = np.ascontiguousarray(
            (self.bg[0].permute(1, 2, 0) * 255).round_().to(torch.uint8).numpy()
        )
        K_full = fit.K.float().reshape(1, 3, 3)
        self.K_out = crop_intrinsics(K_full, (0.0, 0.0, float(Ws), float(Hs)), (Ho, Wo))[0]

        # Per-vertex model parts of the render subset: identity fixed, expression per frame.
        coeffs = fit.coeffs
        self.faces = pm.faces
        identity = coeffs.identity.float()
        self.id_shape = pm.identity_shape(identity)  # [V,3]
        V = self.id_shape.shape[0]
        self.expr_basis = pm.expression_basis.reshape(pm.n_expression, V * 3).contiguous()
        self.beta_src = coeffs.expression.float().clone()
        src_verts = self.id_shape + (self.beta_src @ self.expr_basis).view(V, 3)
        self.R_src, self.t_src = _pose_matrix(coeffs)
        self.src_verts_cam = pose_points(src_verts, self.R_src, self.t_src)  # [1,V,3]
        n_src = fast_vertex_normals(
            src_verts, self.reenactor.faces_long, self.reenactor.normal_op
        )
        self.n_src_cam = rotate_to_camera(n_src, self.R_src)
        self.light_src = coeffs.light.float()[0]  # [9,3]
        # Irradiance ratios are stabilised by a floor of a quarter of the mean irradiance, so
        # surfaces the light barely reaches (nostrils, under the chin) are not blown up.
        e_src = irradiance(self.n_src_cam, self.light_src).clamp_min(0.0)
        self.E_floor = 0.25 * float(e_src.mean())
        self.E_src = e_src + self.E_floor
        lm = model.landmarks68
        self.src_iod = float(
            (
                model.shape(identity=identity)[0, lm[45]]
                - model.shape(identity=identity)[0, lm[36]]
            ).norm()
        )

        # Source crop around the face at the output's resolution (at most 2x the render crop, so
        # the warp samples the photo once, sharply), and its render (depth for the occlusion test).
        p_src = project_points(self.src_verts_cam, self.K_out[None])[0]
        self.src_box = st.square_box(p_src, RENDER_BOX_SCALE, (Ho, Wo))
        x0, y0, side = self.src_box
        Sc = self.src_crop_size = min(side, 2 * S)
        self.src_crop = st.crop_resample(self.bg, self.src_box, Sc).contiguous()
        self.K_src_crop = crop_intrinsics(self.K_out[None], (x0, y0, x0 + side, y0 + side), Sc)
        rast = rasterize(
            self.src_verts_cam, self.faces, self.K_src_crop, (Sc, Sc), cull_backfaces=True
        )
        self.src_depth = rast[..., 2].unsqueeze(1).contiguous()

        # Per-vertex colours seen in the source (fill layer).
        colors, visible = self._sample_vertex_colors()
        known = visible.clone()
        self.unlit = torch.zeros(V, dtype=torch.bool)
        socket = pm.region_mask("mouth_socket")
        # Mouth-socket vertices the photo does not show get a synthetic mouth inside.
        if socket.any():
            hidden_socket = socket & ~visible
            skin = colors[visible].mean(0) if visible.any() else torch.full((3,), 0.6)
            lm = self.reenactor.model.vertices[self.reenactor.model.landmarks68]
            centre = (lm[62] + lm[66]) / 2
            half_width = float((lm[54, 0] - lm[48, 0]).abs()) / 2
            mouth = st.mouth_colors(
                pm.vertices[:, 1] - float(centre[1]),
                (pm.vertices[:, 0] - float(centre[0])) / max(half_width, 1.0),
                float(skin.mean()),
            )
            colors[hidden_socket] = mouth[hidden_socket]
            known |= hidden_socket
            self.unlit = hidden_socket  # synthetic colours: not relit
        self.vertex_colors = st.diffuse_colors(colors, known, self.reenactor.adjacency)
        self.src_visible = visible

        # Per-vertex attributes interpolated per frame: source points, fill colour, relight ratio.
        self.attr = torch.empty(1, V, 9)
        self.attr[0, :, 0:3] = self.src_verts_cam[0]
        self.attr[0, :, 3:6] = self.vertex_colors
        self.attr[0, :, 6:9] = 1.0
        # Background-warp field: face cells (the render crop in field_inner² cells, as fine as the
        # FIELD_GRID² grid over a box BACKGROUND_BOX_SCALE times the crop) resampled per frame
        # onto the grid of the actual background box.
        inner = int(round(FIELD_GRID / BACKGROUND_BOX_SCALE))
        self.field_factor = S / inner
        self.field_inner = inner
        self.window = st.border_window(FIELD_GRID, 0.22)
        j = (torch.arange(inner, dtype=torch.float32) + 0.5) / inner
        self._cell_unit = torch.stack(torch.meshgrid(j, j, indexing="xy"), dim=-1)  # [n,n,2] (x,y)
        # Normalised grid_sample coordinates of every output pixel (align_corners=False), as
        # [2,Ho,Wo] planes (the upsampled field adds to them without a transpose).
        gx = ((2 * torch.arange(Wo, dtype=torch.float32) + 1) / Wo - 1).expand(Ho, Wo)
        gy = ((2 * torch.arange(Ho, dtype=torch.float32) + 1) / Ho - 1)[:, None].expand(Ho, Wo)
        self._grid = torch.stack([gx, gy], dim=0)  # [2,Ho,Wo]
        self._px_to_grid = torch.tensor([2.0 / Wo, 2.0 / Ho]).view(2, 1, 1)
        self._field_upsampler: dict[int, Tensor] = {}  # box side -> [side, FIELD_GRID] matrix
        # The background in uint8 units plus 0.5: warped and blended in these units, the output
        # is one truncating cast (bilinear weights sum to 1, so the offset survives sampling).
        self.bg255 = (self.bg * 255.0).add_(0.5).contiguous()
        self._K_out_inv = torch.linalg.inv(self.K_out)

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
                track = min(sum(v for k, v in ft.items() if k in ("track", "landmarks", "detect")),
                            t1 - t_start)
                timings["track"] = track
                timings["fit"] = (t1 - t_start) - track
            else:
                timings["track"] = t1 - t_start
            target = None
            if fit is not None and _finite(fit.coeffs):
                target, normals = self._recombine(fit)
                t2 = _now()
                timings["recombine"] = t2 - t1
                target.ratio = self._relight_ratio(normals)  # per vertex, so it belongs here
                timings["relight"] = _now() - t2
        return FrameAnalysis(target, timings, _now() - t_start)

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

    def _reference_for(self, fit) -> _Reference:
        """The driving's first face frame (set once per session)."""
        if self._reference is None:
            R_d, t_d = _pose_matrix(fit.coeffs)
            model = self.reenactor.model
            lm = model.landmarks68
            drv = model.shape(identity=fit.coeffs.identity.float())[0]
            drv_iod = float((drv[lm[45]] - drv[lm[36]]).norm())
            self._reference = _Reference(
                R_d.clone(),
                t_d.clone(),
                self.src_iod / max(drv_iod, 1e-6),
                fit.coeffs.expression.float().clone(),
            )
        return self._reference

    def target_pose(self, fit) -> tuple[Tensor, Tensor]:
        """Pose (R, t) of the recombined head in the output camera (see the module doc)."""
        R_d, t_d = _pose_matrix(fit.coeffs)
        ref = self._reference_for(fit)
        if self.options.pose_mode == "absolute":
            # The source head is ref.size_ratio times the driving's: that much further away, it
            # projects like the driving head did.
            K_d = fit.K.float().reshape(3, 3)
            return st.absolute_pose(
                R_d, t_d * ref.size_ratio, K_d, tuple(fit.image_size), self.K_out, self.out_hw
            )
        return st.relative_pose(self.R_src, self.t_src, R_d, t_d, ref.R, ref.t, ref.size_ratio)

    def target_expression(self, fit) -> Tensor:
        """Expression ``[1,E]`` of the recombined face (see ``expression`` in the module doc)."""
        beta = fit.coeffs.expression.float()
        if self.expression_mode == "absolute":
            return beta
        ref = self._reference_for(fit)
        return (self.beta_src + beta - ref.beta).clamp_(0.0, 1.0)

    def _recombine(self, fit) -> tuple[RecombinedFace, Tensor]:
        """Source identity + driving expression, posed per pose_mode, its square render box, and
        its camera-space vertex normals."""
        V = self.id_shape.shape[0]
        verts = self.id_shape + (self.target_expression(fit) @ self.expr_basis).view(V, 3)
        R, t = self.target_pose(fit)
        verts_cam = pose_points(verts, R, t)
        normals = fast_vertex_normals(verts, self.reenactor.faces_long, self.reenactor.normal_op)
        normals = rotate_to_camera(normals, R)
        p = project_points(verts_cam[:, self.reenactor.box_vertices], self.K_out[None])[0]
        box = st.square_box(p, RENDER_BOX_SCALE, self.out_hw)
        return RecombinedFace(verts_cam, R, t, box), normals

    def _relight_ratio(self, normals: Tensor) -> Tensor | None:
        """Per-vertex relighting ratio (goes through the same interpolation as the warp points)."""
        if self.light_mode == "none":
            return None
        ratio = irradiance(normals, self.light_src).clamp_min(0.0).add_(self.E_floor)
        ratio.div_(self.E_src).clamp_(RATIO_RANGE[0], RATIO_RANGE[1])
        for _ in range(RATIO_SMOOTHING):  # the model's small folds (nostrils) are not the photo's
            ratio = self.reenactor.adjacency @ ratio
        ratio[self.unlit] = 1.0
        return ratio

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

        # -- relight
        planes = interp[..., 3:9].permute(0, 3, 1, 2).contiguous()  # fill colour, ratio
        ratio_map = planes[:, 3:6]
        relit = warped * ratio_map
        t5 = _now()
        timings["relight"] += (t5 - t4) + (t3 - t2)

        # -- fill the non-covisible face pixels
        fill = planes[:, 0:3] * ratio_map
        cov_soft = st.box_blur3(covisible).mul_(covisible)
        face = fill + cov_soft * (relit - fill)
        t6 = _now()
        timings["fill"] = t6 - t5

        # -- composite into the (warped) source frame
        image = self._composite(face, valid, points, rast[..., 2], box, (R, t))
        timings["composite"] = _now() - t6
        return image

    def _composite(
        self,
        face: Tensor,
        valid: Tensor,
        points: Tensor,
        depth: Tensor,
        box: tuple[int, int, int],
        pose: tuple[Tensor, Tensor],
    ) -> np.ndarray:
        """Paste the face crop (feathered) over the source background warped by the head motion.

        The background moves with the head's rigid motion (extrapolated over the whole box, so hair,
        ears and neck follow it) plus the non-rigid face motion near the face only (so the jaw
        drags the skin just below it, not the collar).
        """
        S = self.crop
        Ho, Wo = self.out_hw
        x0, y0, side = box
        alpha = st.feather(valid, self.feather_radius)

        # Background box: the render box grown BACKGROUND_BOX_SCALE times, grown further to also
        # cover the source's face, so a head that moved away does not leave its old self behind.
        half = side * BACKGROUND_BOX_SCALE / 2
        cx, cy = x0 + side / 2, y0 + side / 2
        sx0, sy0, sside = self.src_box
        lo_x, hi_x = min(cx - half, sx0 - 0.3 * sside), max(cx + half, sx0 + 1.3 * sside)
        lo_y, hi_y = min(cy - half, sy0 - 0.3 * sside), max(cy + half, sy0 + 1.3 * sside)
        bside = int(math.ceil(max(hi_x - lo_x, hi_y - lo_y)))
        bx0 = int(math.floor((lo_x + hi_x - bside) / 2))
        by0 = int(math.floor((lo_y + hi_y - bside) / 2))
        # Visible part of the background box in the frame.
        fx0, fy0 = max(bx0, 0), max(by0, 0)
        fx1, fy1 = min(bx0 + bside, Wo), min(by0 + bside, Ho)
        out = self.bg_u8.copy()  # a fresh array per frame: callers may keep returned frames
        if fx1 <= fx0 or fy1 <= fy0:
            return out

        # region: the warped background box in uint8 units + 0.5 (see bg255).
        if self.background_warp:
            field = self._background_field(valid, points, depth, box, (bx0, by0, bside), pose)
            grid = self._sample_grid(
                field[0] * self._px_to_grid, bside, (bx0, by0), (fx0, fy0, fx1, fy1)
            )
            region = F.grid_sample(
                self.bg255, grid[None], mode="bilinear", padding_mode="border", align_corners=False
            )
        else:
            region = self.bg255[:, :, fy0:fy1, fx0:fx1].clone()

        # Face layer (crop resampled to its box in the output frame), clipped to the region.
        layer = torch.cat([face, alpha], dim=1)
        if side != S:
            layer = F.interpolate(
                layer,
                size=(side, side),
                mode="bilinear",
                align_corners=False,
                antialias=side < 0.6 * S,
            )
        lx0, ly0 = max(x0, fx0), max(y0, fy0)
        lx1, ly1 = min(x0 + side, fx1), min(y0 + side, fy1)
        if lx1 > lx0 and ly1 > ly0:
            part = layer[0, :, ly0 - y0 : ly1 - y0, lx0 - x0 : lx1 - x0]
            rgb = part[:3].mul(255.0).add_(0.5).clamp_(0.5, 255.5)  # uint8 units, as region
            a = part[3:4].clamp(0.0, 1.0)
            sub = region[0, :, ly0 - fy0 : ly1 - fy0, lx0 - fx0 : lx1 - fx0]
            sub.add_(rgb.sub_(sub).mul_(a))
        # Values lie in [0.5, 255.5] (convex blends of such): truncation rounds to nearest.
        # numpy's cast and per-channel strided stores are ~3x faster than torch's here.
        planes = region[0].numpy().astype(np.uint8)
        dst = out[fy0:fy1, fx0:fx1]
        for c in range(3):
            dst[..., c] = planes[c]
        return out

    def _sample_grid(
        self, field: Tensor, bside: int, origin: tuple[int, int], window: tuple[int, int, int, int]
    ) -> Tensor:
        """grid_sample grid ``[h,w,2]`` over ``window`` of the frame: identity plus ``field``
        (``[2,n,n]``, grid units, over the box of side ``bside`` at ``origin``) upsampled bilinearly.

        Same values as ``F.interpolate(align_corners=False)`` then adding the identity grid, as two
        small matrix products that write the grid's [h,w,2] layout directly (cheaper on CPU)."""
        bx0, by0 = origin
        fx0, fy0, fx1, fy1 = window
        A = self._field_upsampler.get(bside)
        if A is None:
            if len(self._field_upsampler) > 16:
                self._field_upsampler.clear()
            A = self._field_upsampler[bside] = st.bilinear_matrix(field.shape[-1], bside)
        Ay, Ax = A[fy0 - by0 : fy1 - by0], A[fx0 - bx0 : fx1 - bx0]
        n, h, w = field.shape[-1], fy1 - fy0, fx1 - fx0
        g = torch.empty(n + 1, w, 2)
        g[:n] = (field @ Ax.T).permute(1, 2, 0)  # columns upsampled
        g[:n, :, 0] += self._grid[0, 0, fx0:fx1]  # rows of Ay sum to 1: x identity per column
        g[n, :, 0] = 0.0
        g[n, :, 1] = 1.0  # picks the y identity from Ay's extra column
        Ay = torch.cat([Ay, self._grid[1, fy0:fy1, :1]], 1)  # [h, n+1]
        return (Ay @ g.view(n + 1, w * 2)).view(h, w, 2)

    def _background_field(
        self,
        valid: Tensor,
        points: Tensor,
        depth: Tensor,
        box: tuple[int, int, int],
        bbox: tuple[int, int, int],
        pose: tuple[Tensor, Tensor],
    ) -> Tensor:
        """Background displacement ``[1,2,n,n]`` (output px, target -> source) over ``bbox``.

        Per face cell: the full (non-rigid) displacement from the warp's source points and the
        rigid one (the target point moved by the head pose only). Both are resampled onto the
        background box's coarse grid; the rigid one is extrapolated over the whole box and faded out
        at its border, the non-rigid remainder only near the face.
        """
        x0, y0, side = box
        inner = self.field_inner
        # rasterize and interpolate give zeros off the mesh (DESIGN §4): no premultiplying.
        cells = F.adaptive_avg_pool2d(
            torch.cat([valid, points.permute(0, 3, 1, 2), depth.unsqueeze(1)], 1), inner
        )
        w_cell = cells[:, :1]
        cells = cells[:, 1:] / w_cell.clamp_min(1e-6)
        p_src = project_points(cells[:, :3].permute(0, 2, 3, 1).reshape(1, -1, 3), self.K_out[None])
        p_tgt = self._cell_unit * side + torch.tensor([x0 - 0.5, y0 - 0.5])  # [n,n,2]
        rays = (
            torch.cat([p_tgt, torch.ones(inner, inner, 1)], -1).reshape(-1, 3) @ self._K_out_inv.T
        )
        R, t = pose
        X_m = camera_to_model(rays * cells[0, 3].reshape(-1, 1), R, t)  # target point, model space
        p_rig = project_points(pose_points(X_m, self.R_src, self.t_src), self.K_out[None])
        full = p_src[0].view(inner, inner, 2) - p_tgt
        rigid = p_rig[0].view(inner, inner, 2) - p_tgt
        w_cell = (w_cell > 0.5).float()  # cells mostly on the face only
        face = torch.cat([rigid.permute(2, 0, 1), (full - rigid).permute(2, 0, 1)], 0)[None]
        face = torch.cat([face * w_cell, w_cell], 1)  # [1,5,n,n], displacements premultiplied
        # Resample onto the background grid: cell centres of bbox in face-crop grid units.
        bx0, by0, bside = bbox
        c = (torch.arange(FIELD_GRID, dtype=torch.float32) + 0.5) * (bside / FIELD_GRID) - 0.5
        gx = (2 * (c + bx0 - x0) + 1) / side - 1
        gy = (2 * (c + by0 - y0) + 1) / side - 1
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None]
        big = F.grid_sample(face, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        w = big[:, 4:5]
        ext, support = st.extend_field(big[:, :4] / w.clamp_min(1e-6), w, 1, 2)
        # Far from the face the head's mean rigid motion (the old head position follows it).
        mean_rigid = (face[:, 0:2].sum((2, 3)) / w_cell.sum().clamp_min(1.0))[:, :, None, None]
        rigid_ext = mean_rigid + support * (ext[:, :2] - mean_rigid)
        return rigid_ext * self.window + ext[:, 2:4] * support.pow(4)

    def close(self) -> None:
        """Release per-session state (buffers, tracker)."""
        self._last_output = None
        self._reference = None


def _check_options(options: SessionOptions) -> None:
    if not isinstance(options, SessionOptions):
        raise TypeError(f"options must be a SessionOptions, got {type(options).__name__}")
    if options.pose_mode not in ("relative", "absolute"):
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

    def __init__(self, face_model: FaceModel | str | None = None) -> None:
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
        pm = self.render_model
        self.faces_long = pm.faces_long
        self.normal_op = normal_operator(pm.faces, pm.n_vertices)
        self.adjacency = vertex_adjacency(pm.faces, pm.n_vertices)
        # Vertices whose projection bounds the face (the render crop): a subsample of all.
        self.box_vertices = torch.arange(0, pm.n_vertices, 7)

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

    def make_driving_fitter(self):
        return self._driving_fitter_cls(self.model)

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
    return GeometricReenactor(face_model=settings.face_model)


register_mode("geometric", _create)
