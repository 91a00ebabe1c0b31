"""The mode-independent half of a reenactment session: source identity + driving motion.

Both paths (geometric and learned) drive the source face the same way, so this is shared:

- the **driving reference**: the driving's first face frame (pose, expression, and the head-size
  ratio source / driving from the two identities' inter-ocular distances), set once per session;
- the **target pose** (``pose_mode``): ``relative`` (default, cross-identity) moves the source
  head by the driving head's rotation/translation since the reference (x/y translation scaled by
  the head-size ratio, depth scaled so the face grows or shrinks by the same factor);
  ``absolute`` uses the driving pose itself (translation scaled by the head-size ratio, so the
  source head projects like the driving head), re-expressed so the head keeps its relative
  position and size in the output frame (for same-identity driving);
- the **target expression** (``expression_mode``): ``absolute`` (default) takes the driving
  expression coefficients as they are; ``relative`` adds the driving's change since the reference
  to the source's own expression (cancels per-person fitting bias; exaggerates an already
  expressive source);
- the **recombination**: the source identity's shape with the target expression, posed in the
  output camera, with camera-frame vertex normals (``Recombiner.recombine``), on any vertex subset
  of the model (a ``RenderMesh``);
- the **relighting ratio** (``Relighter``): per vertex, E_θs(n_target) / E_θs(n_source) under the
  source's SH light, floored, clamped to ``RATIO_RANGE`` and smoothed over the mesh.

Everything works on batch-1 CPU tensors in the camera conventions of DESIGN §3; fits are the
``jr2net.face.fitting.FitResult`` of the source (once) and of each driving frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from jr2net.face.camera import euler_rotation, flip, pose_points, rotate_to_camera
from jr2net.face.mesh import MeshOperators
from jr2net.face.model import FaceModel
from jr2net.face.sh import irradiance

POSE_MODES = ("relative", "absolute")
EXPRESSION_MODES = ("absolute", "relative")
RATIO_RANGE = (0.67, 1.5)  # relighting ratio limits
RATIO_SMOOTHING = 3  # neighbour-averaging passes over the per-vertex relighting ratio


def pose_of(coeffs) -> tuple[Tensor, Tensor]:
    """(R [3,3], t [3]) of batch-1 coefficients (model rotation before the OpenCV flip)."""
    return euler_rotation(coeffs.angles.float())[0], coeffs.translation.float()[0]


def is_finite(coeffs) -> bool:
    """Whether a fit's pose and expression are usable (a diverged fit counts as no face)."""
    return bool(
        torch.isfinite(coeffs.expression).all()
        and torch.isfinite(coeffs.angles).all()
        and torch.isfinite(coeffs.translation).all()
    )


def head_iod(model: FaceModel, identity: Tensor) -> float:
    """3D inter-ocular distance (mm, outer eye corners) of an identity: the head-size measure."""
    lm = model.landmarks68
    shape = model.shape(identity=identity.float())[0]
    return float((shape[lm[45]] - shape[lm[36]]).norm())


def relative_pose(
    R_src: Tensor,
    t_src: Tensor,
    R_drv: Tensor,
    t_drv: Tensor,
    R_ref: Tensor,
    t_ref: Tensor,
    size_ratio: float,
) -> tuple[Tensor, Tensor]:
    """The source head moved by the driving head's motion since its reference (first) frame.

    Rotation: ``R = (R_drv R_ref^T) R_src``. Translation: x/y move by the driving displacement
    times ``size_ratio`` (source / driving head size, so the motion is the same fraction of the
    face); depth scales by ``z_drv / z_ref`` so the face grows or shrinks by the same factor.
    """
    R = (R_drv @ R_ref.T) @ R_src
    t = t_src.clone()
    t[:2] = t_src[:2] + (t_drv[:2] - t_ref[:2]) * size_ratio
    t[2] = t_src[2] * (t_drv[2] / t_ref[2])
    return R, t


def absolute_pose(
    R_drv: Tensor,
    t_drv: Tensor,
    K_drv: Tensor,
    hw_drv: tuple[int, int],
    K_out: Tensor,
    hw_out: tuple[int, int],
) -> tuple[Tensor, Tensor]:
    """The driving head's own pose, re-expressed for the output camera.

    The head keeps its relative image position (origin projects to the same fraction of the frame)
    and its size relative to the frame height.
    """
    Hd, Wd = hw_drv
    Ho, Wo = hw_out
    t_cam = flip(t_drv)  # model origin in the driving camera frame
    z = float(t_cam[2])
    u = (float(K_drv[0, 0]) * float(t_cam[0]) / z + float(K_drv[0, 2]) + 0.5) / Wd
    v = (float(K_drv[1, 1]) * float(t_cam[1]) / z + float(K_drv[1, 2]) + 0.5) / Hd
    # Pixel size of 1 mm at the origin, as a fraction of the frame height, is preserved.
    z_out = z * (float(K_out[1, 1]) / Ho) / (float(K_drv[1, 1]) / Hd)
    x_out = (u * Wo - 0.5 - float(K_out[0, 2])) * z_out / float(K_out[0, 0])
    y_out = (v * Ho - 0.5 - float(K_out[1, 2])) * z_out / float(K_out[1, 1])
    t_out = flip(torch.tensor([x_out, y_out, z_out], dtype=t_drv.dtype))
    return R_drv.clone(), t_out


@dataclass
class DrivingReference:
    """The driving's first face frame: pose, expression, head-size ratio source / driving."""

    R: Tensor
    t: Tensor
    size_ratio: float
    beta: Tensor


@dataclass
class Recombined:
    """The recombined face in the output camera (on the recombiner's vertex subset)."""

    verts: Tensor  # [V,3] model space
    verts_cam: Tensor  # [1,V,3] camera space
    normals_cam: Tensor  # [V,3] camera-frame unit vertex normals
    R: Tensor  # [3,3] model rotation
    t: Tensor  # [3] translation (model axes)
    expression: Tensor  # [1,E]


class Recombiner:
    """Source identity + driving expression and motion (see the module doc), for one session.

    ``mesh`` is the vertex subset to recombine (a ``RenderMesh``: ``identity_shape``,
    ``expression_basis``, ``ops``); ``K_out`` / ``out_hw`` the output camera (absolute pose).
    """

    def __init__(
        self,
        model: FaceModel,
        mesh,
        source_fit,
        K_out: Tensor,
        out_hw: tuple[int, int],
        pose_mode: str = "relative",
        expression_mode: str = "absolute",
    ) -> None:
        if pose_mode not in POSE_MODES:
            raise ValueError(f"pose_mode must be one of {POSE_MODES}, got {pose_mode!r}")
        if expression_mode not in EXPRESSION_MODES:
            raise ValueError(
                f"options.extra['expression'] must be 'relative' or 'absolute', got {expression_mode!r}"
            )
        self.model = model
        self.mesh = mesh
        self.ops: MeshOperators = mesh.ops
        self.K_out = K_out
        self.out_hw = out_hw
        self.pose_mode = pose_mode
        self.expression_mode = expression_mode
        coeffs = source_fit.coeffs
        identity = coeffs.identity.float()
        self.id_shape = mesh.identity_shape(identity)  # [V,3]
        V = self.id_shape.shape[0]
        self.expr_basis = mesh.expression_basis.reshape(mesh.n_expression, V * 3).contiguous()
        self.beta_src = coeffs.expression.float().clone()
        self.R_src, self.t_src = pose_of(coeffs)
        self.src_iod = head_iod(model, identity)
        self.reference: DrivingReference | None = None

    def shape(self, expression: Tensor) -> Tensor:
        """Model-space vertices ``[V,3]`` of the source identity with ``expression [1,E]``."""
        V = self.id_shape.shape[0]
        return self.id_shape + (expression @ self.expr_basis).view(V, 3)

    def source(self) -> Recombined:
        """The source face as fitted (its own expression and pose)."""
        verts = self.shape(self.beta_src)
        verts_cam = pose_points(verts, self.R_src, self.t_src)
        normals = rotate_to_camera(self.ops.normals(verts), self.R_src)
        return Recombined(verts, verts_cam, normals, self.R_src, self.t_src, self.beta_src)

    def reference_for(self, fit) -> DrivingReference:
        """The driving's first face frame (set once per session, by the first fit given)."""
        if self.reference is None:
            R_d, t_d = pose_of(fit.coeffs)
            drv_iod = head_iod(self.model, fit.coeffs.identity)
            self.reference = DrivingReference(
                R_d.clone(),
                t_d.clone(),
                self.src_iod / max(drv_iod, 1e-6),
                fit.coeffs.expression.float().clone(),
            )
        return self.reference

    def target_pose(self, fit) -> tuple[Tensor, Tensor]:
        """Pose (R, t) of the recombined head in the output camera (see the module doc)."""
        R_d, t_d = pose_of(fit.coeffs)
        ref = self.reference_for(fit)
        if self.pose_mode == "absolute":
            # The source head is ref.size_ratio times the driving's: that much further away, it
            # projects like the driving head did.
            K_d = fit.K.float().reshape(3, 3)
            return absolute_pose(
                R_d, t_d * ref.size_ratio, K_d, tuple(fit.image_size), self.K_out, self.out_hw
            )
        return relative_pose(self.R_src, self.t_src, R_d, t_d, ref.R, ref.t, ref.size_ratio)

    def target_expression(self, fit) -> Tensor:
        """Expression ``[1,E]`` of the recombined face (see ``expression_mode``)."""
        beta = fit.coeffs.expression.float()
        if self.expression_mode == "absolute":
            return beta
        ref = self.reference_for(fit)
        return (self.beta_src + beta - ref.beta).clamp_(0.0, 1.0)

    def recombine(self, fit) -> Recombined:
        """Source identity + the target expression, posed per ``pose_mode``, with its normals."""
        expression = self.target_expression(fit)
        verts = self.shape(expression)
        R, t = self.target_pose(fit)
        verts_cam = pose_points(verts, R, t)
        normals = rotate_to_camera(self.ops.normals(verts), R)
        return Recombined(verts, verts_cam, normals, R, t, expression)

    def reset(self) -> None:
        """Forget the driving reference (a new driving clip starts)."""
        self.reference = None


class Relighter:
    """Per-vertex relighting ratio under the source's SH light (see the module doc).

    Irradiance ratios are stabilised by a floor of a quarter of the source's mean irradiance, so
    surfaces the light barely reaches (nostrils, under the chin) are not blown up. Vertices in
    ``unlit`` (synthetic colours) keep ratio 1.
    """

    def __init__(self, normals_src_cam: Tensor, light_src: Tensor, ops: MeshOperators) -> None:
        self.light = light_src  # [9,3]
        self.ops = ops
        e_src = irradiance(normals_src_cam, light_src).clamp_min(0.0)
        self.floor = 0.25 * float(e_src.mean())
        self.E_src = e_src + self.floor
        self.unlit = torch.zeros(normals_src_cam.shape[0], dtype=torch.bool)

    def ratio(self, normals_cam: Tensor) -> Tensor:
        """Ratio ``[V,3]`` for the target's camera-frame normals ``[V,3]``."""
        ratio = irradiance(normals_cam, self.light).clamp_min(0.0).add_(self.floor)
        ratio.div_(self.E_src).clamp_(RATIO_RANGE[0], RATIO_RANGE[1])
        # The model's small folds (nostrils) are not the photo's.
        ratio = self.ops.smooth(ratio, RATIO_SMOOTHING)
        ratio[self.unlit] = 1.0
        return ratio
