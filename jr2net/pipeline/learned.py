"""The learned reenactment path (DESIGN §1): RecNet (or the fitter) + DCNet, served like geometric.

Per session the source is fitted once (RecNet, or the fitter when no RecNet is given) and its side
of DCNet's conditions is rendered in a face crop framed as DCNet's training crops
(``face_crop_box`` of the detected landmarks, at the network's crop size S). Per driving frame:
track the face and fit it (RecNet on the tracked crop, or the fitter), recombine it with the
source (``recombine.Recombiner``: the same driving reference, pose and expression modes as the
geometric path), build the conditions in the target face crop (``conditions.build_conditions``),
run DCNet (its face pixels the source does not see that reach the face mask's rim, mostly hair
the mesh overlaps after a head turn, are left to the background: ``rim_trimmed_mask``), paste
the driving frame's mouth interior and gaze into its face crop
(``transfer.DrivingTransfers``, as the geometric path does; not for motion-capture frames, which
have no driving image), and composite the crop into the warped source frame with the geometric
path's ``composite.Compositor`` (the same feathered face mask). Per-stage timings: ``track``,
``fit``, ``recombine``, ``conditions``, ``dcnet``, ``mouth``, ``gaze``, ``composite``, ``total``.

``options.extra``: ``light`` (default: the light the DCNet checkpoint was trained with, its
``model_spec['light']``; ``driving``: the driving frame's fitted SH light on the recombined
face; ``source``: the source's, as the geometric path keeps it; a generator served with a light
it was not trained under tints the face), ``mouth`` (``transfer``, default: the driving frame's
own mouth interior, colour-matched, over the crop's mouth-socket pixels; ``synthetic``:
DCNet's own generated mouth, no driving pixels in the output), ``gaze`` (``1``,
default, or ``0``: the driving frame's irises, ``jr2net.pipeline.gaze``), ``expression``
(transfer mode and tracker: ``etnet`` tracks with the ETNet of ``--etnet``, timing ``etnet``),
``feather`` and ``background_warp`` as in the geometric path. The face crop size is the
network's; ``SessionOptions.crop_size`` is validated but not used. No-face frames give the
geometric path's fallbacks.

Checkpoints (``learned_checkpoints``, re-exported here): ``load_dcnet`` refuses a DCNet
checkpoint of another stage or face model with a ``CheckpointError``. The mode registers itself
as ``learned``; without checkpoints its factory raises ValueError saying how to enable it.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from jr2net.face.camera import crop_intrinsics
from jr2net.face.camera import project as project_points
from jr2net.face.model import FaceModel
from jr2net.io.images import check_image
from jr2net.models.recnet import face_crop_box
from jr2net.pipeline import stages as st
from jr2net.pipeline.base import FrameResult, SessionOptions
from jr2net.pipeline.composite import Compositor
from jr2net.pipeline.conditions import REL_EPS, build_conditions, render_source
from jr2net.pipeline.dcnet_runtime import DCNetRunner
from jr2net.pipeline.etnet_tracker import move_etnet_timing, parse_expression, with_tracker
from jr2net.pipeline.geometric import RENDER_BOX_SCALE, GeometricReenactor
from jr2net.pipeline.learned_checkpoints import (  # noqa: F401  (re-exported)
    DCNET_KIND,
    HOW_TO_ENABLE,
    ModeNotConfigured,
    build_dcnet,
    dcnet_spec,
    load_dcnet,
    resolve_checkpoints,
)
from jr2net.pipeline.recombine import Recombiner, is_finite
from jr2net.pipeline.registry import ReenactorSettings, register_mode
from jr2net.pipeline.transfer import DrivingTransfers

STAGES = (
    "track", "fit", "recombine", "conditions", "dcnet", "mouth", "gaze", "composite", "total"
)
LIGHT_MODES = ("source", "driving")


def _now() -> float:
    return time.perf_counter()


@dataclass
class LearnedAnalysis:
    """What ``LearnedSession.analyse`` hands to ``synthesise``."""

    target: Any  # recombine.Recombined, or None: no face -> the documented fallback
    box: tuple[int, int, int] | None  # square face crop (x0, y0, side) in output pixels
    light: Tensor | None  # [1,9,3] SH light of the target face
    timings: dict[str, float]
    seconds: float
    driving: tuple | None = None  # (driving frame, its 68 landmarks): mouth / gaze transfer


def rim_trimmed_mask(mask: Tensor, covisible: Tensor, steps: int) -> Tensor:
    """``mask`` ``[1,1,S,S]`` without its hidden (not co-visible) pixels connected to the
    outside within ``steps`` pixels: at the rim such pixels are mostly hair or background the
    mesh overlaps after a head turn (the forehead's edge), which DCNet's generated image paints
    as a pale smear; the background (the warped source frame) shows there instead. Hidden pixels inside
    the face (the mouth, a nostril) stay."""
    import cv2

    m = mask[0, 0].numpy() > 0.5
    open_ = (~m | (covisible[0, 0].numpy() < 0.5)).astype(np.uint8)
    reach = (~m).astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    for _ in range(steps):  # geodesic dilation of the outside through the hidden pixels
        reach = cv2.dilate(reach, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0) & open_
    return mask * torch.from_numpy(1 - reach).to(mask.dtype)[None, None]


class LearnedSession:
    """One source face driven by DCNet; a ``StagedSession`` (see pipeline.base).

    Stage 1 (``analyse``): track the driving face, fit it (RecNet, or the fitter), recombine it
    with the source (``Recombiner``, shared with the geometric path). Stage 2 (``synthesise``):
    DCNet's conditions in the face crop, DCNet, and the geometric path's ``Compositor``.
    """

    def __init__(self, reenactor: LearnedReenactor, source: np.ndarray, options: SessionOptions):
        from jr2net.pipeline.geometric import _check_options

        t0 = _now()
        source = check_image(source, "source")
        _check_options(options)
        extra = dict(options.extra or {})
        self.light_mode = extra.get("light", reenactor.dcnet_spec.get("light", "driving"))
        has_etnet = reenactor.etnet is not None
        expression_mode, tracker = parse_expression(extra.get("expression"), has_etnet)
        if self.light_mode not in LIGHT_MODES:
            raise ValueError(
                f"options.extra['light'] must be one of {LIGHT_MODES}, got {self.light_mode!r}"
            )
        self.options = options
        self.reenactor = reenactor
        self.S = reenactor.crop_size
        fit = reenactor.fit_source(source)  # NoFaceError propagates
        self.source_fit = fit
        Hs, Ws = source.shape[:2]
        self.out_hw = (int(options.output_height) or Hs, int(options.output_width) or Ws)
        feather = int(extra.get("feather", max(1, self.S // 64)))
        background_warp = extra.get("background_warp", "1") not in ("0", "false", "no")
        with torch.inference_mode():
            self._setup(source, fit, expression_mode, feather, background_warp)
        # mouth=synthetic: no mouth transfer, DCNet's own generated mouth stays.
        self.transfers = DrivingTransfers(
            reenactor.render_mesh, reenactor.model, source, fit.detection.landmarks, extra
        )
        self._driving = reenactor.make_driving_fitter(tracker)
        self._last_output: np.ndarray | None = None
        self.setup_seconds = _now() - t0

    def _setup(self, source, fit, expression_mode: str, feather: int, bg_warp: bool) -> None:
        from jr2net.training.data.sample import crop_image

        rn = self.reenactor
        Hs, Ws = source.shape[:2]
        Ho, Wo = self.out_hw
        src_t = st.image_to_tensor(source)
        bg = src_t if (Ho, Wo) == (Hs, Ws) else F.interpolate(
            src_t, size=(Ho, Wo), mode="bilinear", align_corners=False, antialias=True
        ).clamp_(0, 1)
        K_full = fit.K.float().reshape(1, 3, 3)
        self.K_out = crop_intrinsics(K_full, (0.0, 0.0, float(Ws), float(Hs)), (Ho, Wo))[0]
        self.recombiner = Recombiner(
            rn.model, rn.render_mesh, fit, self.K_out, self.out_hw,
            self.options.pose_mode, expression_mode,
        )  # fmt: skip
        src = self.recombiner.source()
        self.albedo = rn.mesh.albedo.colors(fit.coeffs.albedo.float())  # [1,V,3]
        self.light_src = fit.coeffs.light.float()
        # DCNet's source crop, framed as its training crops (face_crop_box of the landmarks).
        lm = np.asarray(fit.detection.landmarks, dtype=np.float64) * np.array([Wo / Ws, Ho / Hs])
        box = face_crop_box(lm)
        bg_u8 = (bg[0].permute(1, 2, 0) * 255).round_().to(torch.uint8).numpy()
        crop = torch.from_numpy(crop_image(bg_u8, box, self.S).copy()).permute(2, 0, 1)[None]
        K_crop = crop_intrinsics(self.K_out[None], box, self.S)
        self.source_view = render_source(
            rn.mesh, crop.float() / 255.0, K_crop, verts_cam=src.verts_cam,
            normals_cam=src.normals_cam[None], light=self.light_src, albedo=self.albedo,
        )  # fmt: skip
        p_src = project_points(src.verts_cam, self.K_out[None])[0]
        src_box = st.square_box(p_src, RENDER_BOX_SCALE, self.out_hw)
        self.source_features = rn.encode_source(self.source_view)
        self.compositor = Compositor(
            bg, self.K_out, self.S, feather, bg_warp, src_box, (src.R, src.t)
        )
        self.bg_u8 = self.compositor.bg_u8

    # ---- per frame ------------------------------------------------------------------------------

    def process(self, frame: np.ndarray) -> FrameResult:
        """Reenact one driving frame (uint8 ``[H,W,3]``); no face: the documented fallback."""
        return self.synthesise(self.analyse(frame))

    def analyse(self, frame: np.ndarray) -> LearnedAnalysis:
        """Stage 1: track and fit the driving frame, recombine it with the source."""
        t_start = _now()
        frame = check_image(frame, "frame")
        timings = dict.fromkeys(STAGES, 0.0)
        with torch.inference_mode():
            fit = self._driving.fit(frame)
            t1 = _now()
            ft = (getattr(fit, "timings", {}) or {}) if fit is not None else {}
            track = min(sum(v for k, v in ft.items() if k in ("track", "detect")), t1 - t_start)
            timings["track"] = track if fit is not None else t1 - t_start
            timings["fit"] = (t1 - t_start) - timings["track"]
            move_etnet_timing(timings, fit)
            if fit is None or not is_finite(fit.coeffs):
                return LearnedAnalysis(None, None, None, timings, _now() - t_start)
        return self.analyse_fit(fit, timings, t_start, (frame, fit.detection.landmarks))

    def analyse_fit(
        self, fit, timings: dict[str, float], t_start: float, driving: tuple | None = None
    ) -> LearnedAnalysis:
        """The rest of stage 1 for a driving fit (a tracked frame's, or a motion-capture frame's:
        ``jr2net.pipeline.mocap``): recombine it with the source and frame DCNet's crop.
        ``driving``: the driving (frame, 68 landmarks) for the mouth and gaze transfer (None for
        motion-capture frames: no transfer)."""
        t1 = _now()
        with torch.inference_mode():
            target = self.recombiner.recombine(fit)
            lm68 = target.verts_cam[:, self.reenactor.mesh.landmarks68]
            lm = project_points(lm68, self.K_out[None])
            x0, y0, x1, _ = face_crop_box(lm[0].double().numpy())
            box = (int(round(x0)), int(round(y0)), max(1, int(round(x1 - x0))))
            light = fit.coeffs.light.float() if self.light_mode == "driving" else self.light_src
            timings["recombine"] = _now() - t1
        return LearnedAnalysis(target, box, light, timings, _now() - t_start, driving)

    def synthesise(self, analysis: LearnedAnalysis) -> FrameResult:
        """Stage 2: DCNet's conditions in the face crop, DCNet, composite (or fall back)."""
        t_start = _now() - analysis.seconds
        timings = analysis.timings
        if analysis.target is None or analysis.box is None:
            return self._fallback(timings, t_start)
        with torch.inference_mode():
            image = self._render(analysis, timings)
        self._last_output = image
        timings["total"] = _now() - t_start
        return FrameResult(image=image, timings=timings, face_found=True, fallback="")

    def _render(self, analysis: LearnedAnalysis, timings: dict[str, float]) -> np.ndarray:
        Ho, Wo = self.out_hw
        x0, y0, side = analysis.box
        if side > 2 * max(Ho, Wo) or x0 >= Wo or y0 >= Ho or x0 + side <= 0 or y0 + side <= 0:
            return self.bg_u8.copy()  # the head is out of the frame, or fills it many times over
        t0 = _now()
        target = analysis.target
        K_crop = crop_intrinsics(self.K_out[None], (x0, y0, x0 + side, y0 + side), self.S)
        cond = build_conditions(
            self.reenactor.mesh, self.source_view, None, K_crop, self.S,
            verts_cam=target.verts_cam, normals_cam=target.normals_cam[None],
            light=analysis.light, albedo=self.albedo,
        )  # fmt: skip
        t1 = _now()
        timings["conditions"] = t1 - t0
        face = self.reenactor.generate(cond, self.source_features)
        t2 = _now()
        timings["dcnet"] = t2 - t1
        face = self.transfers.apply(
            face, cond.rast, target.verts_cam, K_crop, analysis.driving, timings
        )
        t2 = _now()
        # The face mask fades out at the crop border too (the crop may cut the forehead), and
        # leaves out the face pixels the source does not see that reach the mask's rim.
        valid = rim_trimmed_mask(cond.mask, cond.covisible, max(1, self.S // 16))
        m = self.compositor.feather_radius
        valid[..., :m, :] = 0
        valid[..., -m:, :] = 0
        valid[..., :, :m] = 0
        valid[..., :, -m:] = 0
        image = self.compositor.composite(
            face, valid, cond.points, cond.depth[:, 0], analysis.box, (target.R, target.t)
        )
        timings["composite"] = _now() - t2
        return image

    def _fallback(self, timings: dict[str, float], t_start: float) -> FrameResult:
        if self._last_output is not None:
            image, name = self._last_output, "last_output"
        else:
            image, name = self.bg_u8, "source"
        timings["total"] = _now() - t_start
        return FrameResult(image=image.copy(), timings=timings, face_found=False, fallback=name)

    def close(self) -> None:
        """Release per-session state."""
        self._last_output = None
        self.recombiner.reset()


class _RecNetDrivingFitter:
    """Per-frame driving fit with RecNet: the landmark tracker, then one RecNet pass."""

    def __init__(self, reenactor: LearnedReenactor) -> None:
        from jr2net.face.landmarks import LandmarkTracker

        self.reenactor = reenactor
        self.tracker = LandmarkTracker()

    def fit(self, frame: np.ndarray):
        t0 = _now()
        det = self.tracker.update(frame)
        if det is None:
            return None
        fit = self.reenactor.recnet_fit(frame, det)
        fit.timings = {**(fit.timings or {}), "track": _now() - t0 - fit.timings.get("total", 0.0)}
        return fit


class LearnedReenactor(GeometricReenactor):
    """RecNet (or the fitter) + DCNet; creates ``LearnedSession``s; safe to share across threads.

    ``dcnet``: a DCNet checkpoint (required); ``recnet``: a RecNet checkpoint, else the fitter
    fits the source and each driving frame. Checkpoints are loaded (and refused: corrupt, another
    stage, another face model) here, when the server starts, never at the first frame.
    ``runtime``: DCNet in PyTorch ``eager``, ``onnxruntime`` or ``auto`` (see ``dcnet_runtime``).
    """

    name = "learned"

    def __init__(
        self,
        face_model: FaceModel | str | None = None,
        *,
        dcnet: str | Path,
        recnet: str | Path | None = None,
        device: str = "cpu",
        runtime: str = "auto",
        etnet: str | Path | None = None,
    ) -> None:
        self.device = torch.device(device)
        super().__init__(face_model, etnet=etnet)  # etnet: the driving expression tracker
        from jr2net.pipeline.conditions import ConditionMesh

        self.mesh = ConditionMesh(self.model)
        self.render_mesh = self.render_model
        if not (
            torch.equal(self.mesh.index, self.render_mesh.index)
            and torch.equal(self.mesh.faces, self.render_mesh.faces)
        ):
            raise RuntimeError("the conditions mesh and the recombined mesh differ")
        self.dcnet, self.dcnet_spec = load_dcnet(dcnet, self.model, device=self.device)
        self.crop_size = int(self.dcnet.config.crop_size)
        self.runner = DCNetRunner(self.dcnet, runtime if self.device.type == "cpu" else "eager")
        self.recnet = None
        if recnet is not None:
            from jr2net.models.checkpoint import load_recnet

            self.recnet = load_recnet(recnet, self.model, device=self.device)
        self._recnet_lock = threading.Lock()
        self.checkpoints = {"dcnet": str(dcnet), **({"recnet": str(recnet)} if recnet else {})}

    def encode_source(self, view) -> list[Tensor]:
        """DCNet's texture features of a session's source crop (``conditions.SourceView``)."""
        return self.runner.encode(*(self._dev(t) for t in (view.image, view.light, view.normals)))

    def generate(self, cond, source_features: list[Tensor] | None = None) -> Tensor:
        """DCNet's face crop ``[1,3,S,S]`` (CPU) for the conditions and the cached features.
        The conditions' warp is DCNet's view synthesis (same inputs and occlusion test), so it
        is reused rather than run twice."""
        inputs = cond.dcnet_inputs()
        view = None
        if self.dcnet.config.rel_eps == REL_EPS and self.device.type == "cpu":
            view = (cond.warped, cond.covisible)
        if self.device.type != "cpu":
            inputs = dataclasses.replace(
                inputs, **{f.name: self._dev(getattr(inputs, f.name))
                           for f in dataclasses.fields(inputs)}
            )  # fmt: skip
        return self.runner.generate(inputs, source_features, view).float().cpu()

    def _dev(self, t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(self.device)

    def recnet_fit(self, image: np.ndarray, detection=None):
        """RecNet's ``FitResult`` of one image (the fitter's format); NoFaceError without a face."""
        assert self.recnet is not None
        with self._recnet_lock:
            return self.recnet.fit(image, detection)

    def fit_source(self, image: np.ndarray):
        if self.recnet is None:
            return super().fit_source(image)
        return self.recnet_fit(image)

    def make_driving_fitter(self, tracker: str = "fitter"):
        if self.recnet is None:
            return super().make_driving_fitter(tracker)
        return with_tracker(_RecNetDrivingFitter(self), self.etnet, tracker, self.device)

    def start_session(
        self, source: np.ndarray, options: SessionOptions | None = None
    ) -> LearnedSession:
        """Fit the source once and render its side of DCNet's conditions (< 2 s)."""
        return LearnedSession(self, source, options if options is not None else SessionOptions())


def create_learned(settings: ReenactorSettings) -> LearnedReenactor:
    """The registry's factory: ValueError saying how to enable the mode without checkpoints.
    Without a face model in the settings, the one the DCNet checkpoint was trained with."""
    found = resolve_checkpoints(settings.checkpoints)
    face_model = settings.face_model
    if face_model is None:  # none chosen: the face model the DCNet was trained with
        from jr2net.training.checkpoints import load_checkpoint

        config = load_checkpoint(found["dcnet"]).get("config") or {}
        face_model = (config.get("run") or {}).get("face_model") or None
    return LearnedReenactor(
        face_model, dcnet=found["dcnet"], recnet=found.get("recnet"),
        device=settings.device, runtime=str((settings.extra or {}).get("dcnet_runtime", "auto")),
        etnet=settings.etnet,
    )  # fmt: skip


register_mode("learned", create_learned)
