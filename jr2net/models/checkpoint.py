"""Load trained networks for inference; fit photos with RecNet (``jr2net fit --recnet``).

A RecNet checkpoint is a ``jr2net-checkpoint/1`` file of stage ``recnet`` (training/checkpoints.py)
whose ``model_spec`` (``recnet_spec``) rebuilds the network and whose ``face_model.sha256`` must be
the face model's in use: another model's checkpoint is refused, naming both hashes.

``RecNetFitter.fit`` is the learned counterpart of ``jr2net.face.fitting.SourceFitter.fit`` and
returns the same ``FitResult``: detect the 68 landmarks (dlib) -> ``face_crop_box`` -> crop to
``S``² (``training.data.sample.crop_image``, as the training crops) -> one RecNet forward pass -> ``to_image_camera`` (coefficients in the full image's
``default_intrinsics`` camera, as the fitter's) -> landmarks projected as the fitter matches them
(jaw on the occluding contour). ``refine_iterations > 0`` then runs the fitter's landmark solver
(``LandmarkSolver.solve``) warm-started from RecNet's pose and shape, with a proximal pull towards
RecNet's face surface (``surface_metric``, as the fitter's final pass), so the landmarks are met
while the regressed shape is kept where they do not contradict it; albedo and light stay RecNet's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from jr2net.face.camera import crop_intrinsics, default_intrinsics, euler_to_matrix, matrix_to_euler
from jr2net.face.coeffs import FaceCoefficients
from jr2net.face.fitting import FitResult, LandmarkParams, surface_metric
from jr2net.face.landmarks import FaceDetection, interocular_distance
from jr2net.face.model import FaceModel
from jr2net.models.recnet import RecNet, face_crop_box
from jr2net.training.data.sample import crop_image

RECNET_STAGES = ("recnet", "recaugnet", "baseline", "reccopynet", "recdatanet")
SPEC_KEYS = ("backbone", "width", "crop_size", "n_identity", "n_albedo", "n_expression")


def recnet_spec(net: RecNet) -> dict[str, Any]:
    """What rebuilds ``net`` (the checkpoint's ``model_spec``)."""
    return {
        "kind": "recnet",
        "backbone": net.backbone.name,
        "width": float(net.backbone.width),
        "crop_size": int(net.crop_size),
        "n_identity": int(net.n_identity),
        "n_albedo": int(net.n_albedo),
        "n_expression": int(net.n_expression),
    }


def build_recnet(model: FaceModel, spec: dict[str, Any]) -> RecNet:
    """A RecNet for ``model`` with the architecture ``spec`` describes (untrained weights)."""
    missing = [k for k in SPEC_KEYS if k not in spec]
    if missing:
        raise ValueError(f"RecNet model_spec lacks {missing}")
    if int(spec["n_expression"]) != model.n_expression:
        raise ValueError(
            f"RecNet predicts {spec['n_expression']} expressions; face model {model.name!r} "
            f"has {model.n_expression}"
        )
    return RecNet.from_face_model(
        model,
        backbone=str(spec["backbone"]),
        crop_size=int(spec["crop_size"]),
        n_identity=int(spec["n_identity"]),
        n_albedo=int(spec["n_albedo"]),
        width=float(spec["width"]),
    )


class RecNetFitter:
    """A trained RecNet wrapped to fit photos; see the module docstring. Not thread-safe."""

    def __init__(
        self,
        net: RecNet,
        model: FaceModel,
        *,
        path: str | Path | None = None,
        step: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        from jr2net.training.model_landmarks import ModelLandmarks

        # channels_last: ~25 % faster CPU inference of the convolutions (same results).
        self.net = net.eval().to(device, memory_format=torch.channels_last)
        self.model = model
        self.path = None if path is None else Path(path)
        self.step = step
        self.device = torch.device(device)
        self.landmarks = ModelLandmarks(model, net.n_identity)
        self._metric: np.ndarray | None = None

    @property
    def crop_size(self) -> int:
        return int(self.net.crop_size)

    @torch.inference_mode()
    def predict(self, crops: Tensor, K_crop: Tensor) -> FaceCoefficients:
        """Coefficients in the camera ``K_crop [B,3,3]`` of crops ``[B,3,S,S]`` in [0,1]."""
        coeffs = self.net(crops.to(self.device, memory_format=torch.channels_last))
        return self.net.to_image_camera(coeffs, K_crop.to(self.device)).to("cpu")

    def fit(
        self,
        image: np.ndarray,
        detection: FaceDetection | None = None,
        *,
        refine_iterations: int = 0,
    ) -> FitResult:
        """Fit the largest face of ``image`` (uint8 HWC RGB); NoFaceError when there is none."""
        from jr2net.face.landmarks import detect_largest_face
        from jr2net.io.images import check_image

        image = check_image(image)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        if detection is None:
            detection = detect_largest_face(image)
        t1 = time.perf_counter()
        timings["detect"] = t1 - t0
        H, W = image.shape[:2]
        K = default_intrinsics((H, W))
        target = np.asarray(detection.landmarks, dtype=np.float64)
        box = face_crop_box(target)
        S = self.crop_size
        crop = torch.from_numpy(crop_image(image, box, S).copy()).permute(2, 0, 1)[None] / 255.0
        K_crop = crop_intrinsics(K, box, S)
        t2 = time.perf_counter()
        timings["crop"] = t2 - t1
        coeffs = self.predict(crop, K_crop)
        t3 = time.perf_counter()
        timings["recnet"] = t3 - t2
        if refine_iterations > 0:
            coeffs = self._refine(coeffs, target, K, refine_iterations)
            timings["refine"] = time.perf_counter() - t3
        vid = self.landmarks.vertex_ids(coeffs, K)[0].numpy()
        lm_fit = self.landmarks.project(coeffs, K)[0].double().numpy()
        res = float(np.linalg.norm(lm_fit - target, axis=1).mean())
        timings["total"] = sum(timings.values())
        return FitResult(
            coeffs=coeffs.detach(),
            K=K,
            image_size=(H, W),
            detection=detection,
            landmarks_fit=lm_fit,
            residual_px=res,
            residual_iod=res / max(interocular_distance(target), 1e-6),
            timings=timings,
            landmark_vertices=vid,
        )

    def _refine(
        self, coeffs: FaceCoefficients, target: np.ndarray, K: Tensor, iterations: int
    ) -> FaceCoefficients:
        """A few landmark-solver steps from RecNet's result (see the module docstring)."""
        solver = self.landmarks.solver
        if self._metric is None:
            G = surface_metric(self.model, solver.n_identity)
            self._metric = G + 0.1 * np.eye(len(G))
        alpha = np.zeros(solver.n_identity)
        k = min(coeffs.identity.shape[1], solver.n_identity)
        alpha[:k] = coeffs.identity[0, :k].double().numpy()
        p0 = LandmarkParams(
            euler_to_matrix(coeffs.angles[0].double().numpy()),
            coeffs.translation[0].double().numpy(),
            alpha,
            coeffs.expression[0].double().numpy(),
        )
        x0 = np.concatenate([p0.alpha, p0.beta])
        p, _ = solver.solve(
            target,
            K[0].double().numpy(),
            p0,
            iterations=iterations,
            pose_iterations=2,
            w_identity=2e-4,
            w_expression=1e-5,
            w_expression_l1=3e-3,
            shape_ref=x0,
            shape_metric=self._metric,
            w_shape_ref=REFINE_PROXIMAL_WEIGHT,
        )
        return coeffs.replace(
            identity=torch.as_tensor(p.alpha[: coeffs.identity.shape[1]], dtype=torch.float32)[None],
            expression=torch.as_tensor(p.beta, dtype=torch.float32)[None],
            angles=torch.as_tensor(matrix_to_euler(p.R), dtype=torch.float32)[None],
            translation=torch.as_tensor(p.t, dtype=torch.float32)[None],
        )


# Weight of the pull towards RecNet's surface in the refinement (squared-IOD landmark units per
# mm^2 of mean surface displacement). The fitter's final pass starts at 48 x a good detection's
# noise variance (0.017) and relaxes it; from an untrained RecNet on the shared photos 0.017
# stops at ~6 % IOD, 2e-3 at ~3-4 %, 0 (no pull) at ~2.4 %: 2e-3 meets the landmarks and keeps
# most of the regressed shape.
REFINE_PROXIMAL_WEIGHT = 2e-3


def load_recnet(
    path: str | Path,
    face_model: FaceModel | None = None,
    *,
    device: torch.device | str = "cpu",
) -> RecNetFitter:
    """A ``RecNetFitter`` from a RecNet checkpoint.

    ``face_model`` None loads the model the checkpoint's config names (``run.face_model``, else
    the lookup). Raises FileNotFoundError (no file), ``CheckpointError`` (corrupt file, another
    stage, another face model: both hashes named) or ValueError (a spec that does not fit).
    """
    from jr2net.face.model import load_face_model
    from jr2net.training.checkpoints import CheckpointError, check_face_model, load_checkpoint

    try:
        ckpt = load_checkpoint(path)
    except FileNotFoundError:
        raise
    except OSError as exc:  # torch's zip reader: a truncated file is EINVAL
        raise CheckpointError(f"not a JR2Net checkpoint: {path} ({exc})") from None
    if ckpt["stage"] not in RECNET_STAGES:
        raise CheckpointError(
            f"{path} is a {ckpt['stage']!r} checkpoint, not a RecNet one (stage 'recnet', "
            "'recaugnet' or an ablation)"
        )
    if face_model is None:
        spec = ((ckpt.get("config") or {}).get("run") or {}).get("face_model") or None
        face_model = load_face_model(spec)
    check_face_model(ckpt, face_model.sha256, path)
    spec = ckpt["model_spec"]
    if isinstance(spec, dict) and spec.get("kind") == "recaugnet":  # RecNet + ETNet
        from jr2net.training.stages.recaugnet import load_cascade_net

        net = load_cascade_net(path, face_model)
        return RecNetFitter(net, face_model, path=path, step=int(ckpt["step"]), device=device)
    if not isinstance(spec, dict) or spec.get("kind", "recnet") != "recnet":
        raise CheckpointError(f"{path}: model_spec is not a RecNet spec: {spec!r}")
    state = (ckpt.get("models") or {}).get("recnet")
    if state is None:
        raise CheckpointError(f"{path}: no 'recnet' weights in the checkpoint")
    try:
        net = build_recnet(face_model, spec)
        net.load_state_dict(state)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: RecNet weights do not fit the spec ({first})") from None
    return RecNetFitter(net, face_model, path=path, step=int(ckpt["step"]), device=device)
