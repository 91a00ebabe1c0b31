"""Differentiable face renderer: coefficients -> shaded image, depth, normals, masks, landmarks.

Pipeline (all batched, differentiable w.r.t. every coefficient): shape (α, β) -> model→camera
(pose) -> rasterize (our kernel; gradients reach the vertices through the barycentrics u, v and
z) -> interpolate camera-frame vertex normals, albedo (γ) and a face-region indicator in one
pass -> SH shading (θ) with our kernel. See DESIGN §3-§4.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from jr2net.face.camera import model_to_camera, project, rotate_normals
from jr2net.face.coeffs import FaceCoefficients
from jr2net.face.model import FaceModel
from jr2net.ops import interpolate, rasterize, sh_shading


@dataclass
class RenderOutput:
    """What ``FaceRenderer.render`` produces (images ``[B,C,H,W]``, zero off the mesh)."""

    image: Tensor  # [B,3,H,W] albedo ⊙ irradiance
    depth: Tensor  # [B,1,H,W] camera z (mm), 0 off-mesh
    normals: Tensor  # [B,3,H,W] camera-frame unit normals (n_z < 0 facing the camera)
    irradiance: Tensor  # [B,3,H,W]
    albedo: Tensor  # [B,3,H,W]
    mask: Tensor  # [B,1,H,W] 1 where the mesh covers the pixel
    face_mask: Tensor  # [B,1,H,W] covered by the 'face' region (= mask if the model has none)
    landmarks2d: Tensor  # [B,68,2] pixel (x, y) of the 68 landmark vertices (not occlusion-tested)
    rast: Tensor  # [B,H,W,4] (u, v, z, face_id+1)
    verts_cam: Tensor  # [B,V,3] camera-frame vertices (mm)
    vertex_normals_cam: Tensor  # [B,V,3] camera-frame unit vertex normals


class FaceRenderer:
    """Renders a ``FaceModel`` for ``FaceCoefficients`` under pinhole intrinsics ``K``."""

    def __init__(self, model: FaceModel) -> None:
        if not isinstance(model, FaceModel):
            raise TypeError(f"model must be a FaceModel, got {type(model).__name__}")
        self.model = model
        self._per_device: dict[torch.device, tuple[FaceModel, Tensor | None]] = {}

    def _model_on(self, device: torch.device) -> tuple[FaceModel, Tensor | None]:
        entry = self._per_device.get(device)
        if entry is None:
            model = self.model.to(device)
            face_ind = None
            if model.region is not None and "face" in model.region_names:
                face_ind = (model.region == model.region_index("face")).to(torch.float32)
            entry = (model, face_ind)
            self._per_device[device] = entry
        return entry

    def geometry(self, coeffs: FaceCoefficients) -> tuple[Tensor, Tensor, Tensor]:
        """Model-space vertices, camera-frame vertices and camera-frame vertex normals."""
        model, _ = self._model_on(coeffs.device)
        verts = model.shape(coeffs.identity, coeffs.expression)
        verts_cam = model_to_camera(verts, coeffs.angles, coeffs.translation)
        normals_cam = rotate_normals(model.vertex_normals(verts), coeffs.angles)
        return verts, verts_cam, normals_cam

    def render(
        self,
        coeffs: FaceCoefficients,
        K: Tensor,
        size: tuple[int, int],
        *,
        cull_backfaces: bool = True,
    ) -> RenderOutput:
        """Render a batch; ``size`` is (H, W), ``K`` is ``[B,3,3]`` (or one ``[3,3]``/``[1,3,3]``)."""
        if not isinstance(coeffs, FaceCoefficients):
            raise TypeError(f"coeffs must be FaceCoefficients, got {type(coeffs).__name__}")
        if not isinstance(K, Tensor):
            raise TypeError(f"K must be a torch.Tensor, got {type(K).__name__}")
        B = coeffs.batch_size
        if K.dim() == 2:
            K = K.unsqueeze(0)
        if K.dim() != 3 or K.shape[1:] != (3, 3) or K.shape[0] not in (1, B):
            raise ValueError(f"K must be [{B},3,3] or [3,3], got {tuple(K.shape)}")
        K = K.to(device=coeffs.device, dtype=torch.float32).expand(B, 3, 3)
        model, face_ind = self._model_on(coeffs.device)

        verts, verts_cam, normals_cam = self.geometry(coeffs)
        colors = model.albedo.colors(coeffs.albedo)
        rast = rasterize(verts_cam, model.faces, K, size, cull_backfaces=cull_backfaces)

        parts = [normals_cam, colors]
        if face_ind is not None:
            parts.append(face_ind.view(1, -1, 1).expand(B, -1, 1))
        attrs = interpolate(torch.cat(parts, dim=-1), rast, model.faces).permute(0, 3, 1, 2)
        mask = (rast[..., 3:4] > 0).permute(0, 3, 1, 2).to(attrs.dtype)
        normals = F.normalize(attrs[:, 0:3], dim=1, eps=1e-8) * mask
        albedo = attrs[:, 3:6]
        face_mask = (attrs[:, 6:7] > 0.5).to(mask.dtype) * mask if face_ind is not None else mask
        image, irradiance = sh_shading(normals, albedo, coeffs.light, mask)
        depth = rast[..., 2:3].permute(0, 3, 1, 2) * mask
        landmarks2d = project(verts_cam[:, model.landmarks68], K)
        return RenderOutput(
            image=image,
            depth=depth,
            normals=normals,
            irradiance=irradiance,
            albedo=albedo,
            mask=mask,
            face_mask=face_mask,
            landmarks2d=landmarks2d,
            rast=rast,
            verts_cam=verts_cam,
            vertex_normals_cam=normals_cam,
        )
