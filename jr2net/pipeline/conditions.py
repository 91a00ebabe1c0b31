"""DCNet's dense pixel-level conditions (DESIGN §1) from source and target face coefficients.

The target face is the recombined one (source identity and albedo, driving expression, pose and
light). Per target pixel of an ``S×S`` crop camera it gives: the recombined face's camera-frame
normal map and SH light (irradiance) map, its shaded render (the Ours-R input), the source image
warped into the target view by the view-synthesis module (``correspondence_warp``: each target
pixel carries its 3D point on the *source-posed* mesh, interpolated with the *target*
rasterisation, so expressions move pixels, not only the head pose), the co-visible mask C, and
the mouth region, and the target crop's rasterisation (``Conditions.rast``: the serving path's
mouth transfer finds the mouth socket's pixels with it). On the source side: the source's own
normal and light maps, its coverage and depth (the warp's occlusion test). Training (batches of
pairs) and serving (one session) share these functions; serving renders the source side once per
session (``render_source``).

The mesh is the part of the face model the geometric path renders too (skin, mouth socket,
eyeballs, without the neck below the jaw: it stays with the background), so a learned face crop
composites into the frame with the same mask. Rendering calls the kernels directly rather than
``FaceRenderer``, which renders whole models: same maths, on a vertex subset.
Everything is batched and differentiable w.r.t. the source image and the coefficients (through
the kernels' gradients); covisibility and coverage masks are not.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from jr2net.face.camera import model_to_camera, project, rotate_normals
from jr2net.face.coeffs import FaceCoefficients
from jr2net.face.mesh import vertex_normals
from jr2net.face.model import FaceModel
from jr2net.ops import correspondence_warp, interpolate, rasterize, sh_shading

RENDER_REGIONS = ("face", "mouth_socket", "eyeball_left", "eyeball_right")
"""Regions the conditions render (as the geometric path): skin, mouth interior, eyes."""
REL_EPS = 0.01  # depth-test tolerance (relative) of the warp's occlusion test
MOUTH_LANDMARKS = slice(48, 68)  # iBUG outer + inner lip landmarks


class ConditionMesh:
    """The rendered vertex subset of a face model, with its bases, albedo and landmark indices."""

    def __init__(self, model: FaceModel, regions: tuple[str, ...] = RENDER_REGIONS) -> None:
        from jr2net.pipeline.stages import render_vertex_mask

        if not isinstance(model, FaceModel):
            raise TypeError(f"model must be a FaceModel, got {type(model).__name__}")
        keep = render_vertex_mask(model, regions).to(model.device)
        self.model = model
        self.index = torch.nonzero(keep).squeeze(1)
        remap = torch.full((model.n_vertices,), -1, dtype=torch.long, device=model.device)
        remap[self.index] = torch.arange(self.index.numel(), device=model.device)
        faces = model.faces.long()
        self.faces = remap[faces[keep[faces].all(dim=1)]].to(torch.int32).contiguous()
        self.faces_long = self.faces.long()
        V = self.n_vertices = int(self.index.numel())
        self.vertices = model.vertices[self.index].contiguous()
        self.identity_basis = model.identity_basis[:, self.index].reshape(-1, V * 3).contiguous()
        self.expression_basis = model.expression_basis[:, self.index].reshape(-1, V * 3)
        self.albedo = model.albedo.subset(self.index)
        lm = remap[model.landmarks68.long()]
        # A landmark outside the subset (none in the project's models) falls back to vertex 0.
        self.landmarks68 = lm.clamp_min(0)
        mouth = torch.zeros(V, device=model.device)
        if model.region is not None and "mouth_socket" in model.region_names:
            mouth = (model.region[self.index] == model.region_index("mouth_socket")).float()
        self.mouth_indicator = mouth

    def shape(self, identity: Tensor, expression: Tensor) -> Tensor:
        """Model-space vertices ``[B,V,3]`` of the subset (first k identity modes)."""
        k = identity.shape[1]
        out = self.vertices.unsqueeze(0) + (identity @ self.identity_basis[:k]).view(
            -1, self.n_vertices, 3
        )
        return out + (expression @ self.expression_basis).view(-1, self.n_vertices, 3)

    def geometry(self, coeffs: FaceCoefficients) -> tuple[Tensor, Tensor]:
        """Camera-frame vertices and unit vertex normals ``[B,V,3]`` of batched coefficients."""
        verts = self.shape(coeffs.identity, coeffs.expression)
        normals = vertex_normals(verts, self.faces_long)
        return (
            model_to_camera(verts, coeffs.angles, coeffs.translation),
            rotate_normals(normals, coeffs.angles),
        )


@dataclass
class SourceView:
    """The source side of the conditions (fixed per session): image and its renders, ``[B,…]``."""

    image: Tensor  # [B,3,Hs,Ws] source crop in [0,1]
    K: Tensor  # [B,3,3] its intrinsics
    verts_cam: Tensor  # [B,V,3] source-posed mesh in the source camera
    depth: Tensor  # [B,1,Hs,Ws] z-buffer (0 off the mesh): the warp's occlusion test
    normals: Tensor  # [B,3,Hs,Ws] camera-frame normal map (0 off the mesh)
    light: Tensor  # [B,3,Hs,Ws] SH irradiance map under the source light
    mask: Tensor  # [B,1,Hs,Ws] mesh coverage


@dataclass
class Conditions:
    """DCNet's per-pixel inputs for ``S×S`` target crops (all ``[B,…]``, zero off the face)."""

    source: Tensor  # [B,3,Hs,Ws] source crop
    source_normals: Tensor  # [B,3,Hs,Ws]
    source_light: Tensor  # [B,3,Hs,Ws]
    source_mask: Tensor  # [B,1,Hs,Ws]
    warped: Tensor  # [B,3,S,S] source warped into the target view (0 where not co-visible)
    covisible: Tensor  # [B,1,S,S] C: target face pixels seen in the source
    mask: Tensor  # [B,1,S,S] target face coverage
    normals: Tensor  # [B,3,S,S] recombined face normal map (camera frame)
    light: Tensor  # [B,3,S,S] recombined face SH light (irradiance) map
    rendered: Tensor  # [B,3,S,S] albedo ⊙ irradiance of the recombined face
    mouth: Tensor  # [B,1,S,S] mouth region (box around the lip landmarks, on the face)
    depth: Tensor  # [B,1,S,S] target camera z (mm), 0 off the face
    points: Tensor  # [B,S,S,3] source-camera point of each target pixel (0 off the face)
    K_source: Tensor  # [B,3,3]
    source_depth: Tensor  # [B,1,Hs,Ws]
    landmarks: Tensor  # [B,68,2] target landmark pixels in the crop
    rast: Tensor  # [B,S,S,4] the target crop's rasterisation (mesh faces' ids; the mouth transfer)

    @property
    def size(self) -> int:
        return int(self.mask.shape[-1])

    def dcnet_inputs(self):  # -> jr2net.models.dcnet.DCNetInputs
        """These conditions as DCNet's inputs (source side at the target crop size ``S``)."""
        from jr2net.models.dcnet import DCNetInputs

        return DCNetInputs(
            source_image=self.source,
            source_light=self.source_light,
            source_normal=self.source_normals,
            points_src=self.points,
            valid=self.mask,
            K_src=self.K_source,
            driving_light=self.light,
            driving_normal=self.normals,
            source_depth=self.source_depth,
            rendered=self.rendered,
        )

    def detach(self) -> Conditions:
        return Conditions(**{f.name: getattr(self, f.name).detach() for f in fields(self)})


def recombine(source: FaceCoefficients, driving: FaceCoefficients, light: str = "driving"):
    """Same-batch recombination: source identity and albedo with the driving expression and
    pose, and the driving (``light="driving"``) or source (``"source"``) SH light."""
    if light not in ("driving", "source"):
        raise ValueError(f"light must be 'driving' or 'source', got {light!r}")
    return source.replace(
        expression=driving.expression,
        angles=driving.angles,
        translation=driving.translation,
        light=driving.light if light == "driving" else source.light,
    )


def _check_batch(name: str, t: Tensor, batch: int, tail: tuple[int, ...]) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() == len(tail) and batch == 1:
        t = t.unsqueeze(0)
    if t.dim() != len(tail) + 1 or t.shape[0] != batch or any(
        s != -1 and d != s for d, s in zip(t.shape[1:], tail, strict=True)
    ):
        want = ",".join(map(str, tail))
        raise ValueError(f"{name} must be [{batch},{want}], got {list(t.shape)}")
    return t


def _shade(
    mesh: ConditionMesh,
    verts_cam: Tensor,
    normals_cam: Tensor,
    albedo: Tensor,
    light: Tensor,
    K: Tensor,
    size: tuple[int, int],
    extra: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """Rasterise and shade: (rast, mask, normals, rendered, irradiance, extra attributes)."""
    rast = rasterize(verts_cam, mesh.faces, K, size, cull_backfaces=True)
    parts = [normals_cam, albedo] + ([extra] if extra is not None else [])
    attrs = interpolate(torch.cat(parts, dim=-1), rast, mesh.faces)
    mask = (rast[..., 3:4] > 0).permute(0, 3, 1, 2).to(verts_cam.dtype)
    planes = attrs[..., :6].permute(0, 3, 1, 2)
    normals = F.normalize(planes[:, 0:3], dim=1, eps=1e-8) * mask
    rendered, irr = sh_shading(normals.contiguous(), planes[:, 3:6].contiguous(), light, mask)
    rest = attrs[..., 6:] if extra is not None else None
    return rast, mask, normals, rendered, irr, rest


def render_source(
    mesh: ConditionMesh,
    image: Tensor,
    K: Tensor,
    coeffs: FaceCoefficients | None = None,
    *,
    verts_cam: Tensor | None = None,
    normals_cam: Tensor | None = None,
    light: Tensor | None = None,
    albedo: Tensor | None = None,
) -> SourceView:
    """Render the source side: from ``coeffs`` (batched), or from posed vertices, normals, light
    and per-vertex albedo given directly (one session's fit)."""
    if not isinstance(image, Tensor) or image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be a [B,3,H,W] tensor, got {getattr(image, 'shape', image)}")
    B, _, Hs, Ws = image.shape
    K = _check_batch("K", K, B, (3, 3)).to(image.dtype)
    if coeffs is not None:
        if coeffs.batch_size != B:
            raise ValueError(f"coeffs batch {coeffs.batch_size} != image batch {B}")
        verts_cam, normals_cam = mesh.geometry(coeffs)
        light, albedo = coeffs.light, mesh.albedo.colors(coeffs.albedo)
    if verts_cam is None or normals_cam is None or light is None or albedo is None:
        raise ValueError("render_source needs coeffs, or verts_cam, normals_cam, light and albedo")
    V = mesh.n_vertices
    verts_cam = _check_batch("verts_cam", verts_cam, B, (V, 3))
    normals_cam = _check_batch("normals_cam", normals_cam, B, (V, 3))
    light = _check_batch("light", light, B, (9, 3))
    albedo = _check_batch("albedo", albedo, B, (V, 3)).expand(B, V, 3)
    rast, mask, normals, _, irr, _ = _shade(
        mesh, verts_cam, normals_cam, albedo, light, K, (Hs, Ws)
    )
    depth = rast[..., 2:3].permute(0, 3, 1, 2).contiguous().detach()
    return SourceView(image, K, verts_cam, depth, normals, irr, mask)


def build_conditions(
    mesh: ConditionMesh,
    source: SourceView,
    target: FaceCoefficients | None,
    K_target: Tensor,
    size: int,
    *,
    verts_cam: Tensor | None = None,
    normals_cam: Tensor | None = None,
    light: Tensor | None = None,
    albedo: Tensor | None = None,
) -> Conditions:
    """DCNet's conditions for target crops ``size×size`` with intrinsics ``K_target [B,3,3]``.

    The target face comes from ``target`` (the recombined coefficients, see ``recombine``) or
    from its posed vertices, normals, SH light and per-vertex albedo given directly; it must
    share the source's identity (same mesh topology, vertex for vertex)."""
    B = source.image.shape[0]
    if not isinstance(size, int) or not 16 <= size <= 2048:
        raise ValueError(f"size must be an int in [16, 2048], got {size!r}")
    K_target = _check_batch("K_target", K_target, B, (3, 3)).to(source.image.dtype)
    if target is not None:
        if target.batch_size != B:
            raise ValueError(f"target batch {target.batch_size} != source batch {B}")
        verts_cam, normals_cam = mesh.geometry(target)
        light, albedo = target.light, mesh.albedo.colors(target.albedo)
    if verts_cam is None or normals_cam is None or light is None or albedo is None:
        raise ValueError("build_conditions needs target, or verts_cam, normals_cam, light, albedo")
    V = mesh.n_vertices
    verts_cam = _check_batch("verts_cam", verts_cam, B, (V, 3))
    normals_cam = _check_batch("normals_cam", normals_cam, B, (V, 3))
    light = _check_batch("light", light, B, (9, 3))
    albedo = _check_batch("albedo", albedo, B, (V, 3)).expand(B, V, 3)

    extra = torch.cat(
        [source.verts_cam, mesh.mouth_indicator.view(1, V, 1).expand(B, V, 1)], dim=-1
    )
    rast, mask, normals, rendered, irr, attrs = _shade(
        mesh, verts_cam, normals_cam, albedo, light, K_target, (size, size), extra
    )
    assert attrs is not None
    points = attrs[..., 0:3].contiguous()
    warped, covisible = correspondence_warp(
        source.image.contiguous(), points, mask, source.K, source.depth, REL_EPS
    )
    landmarks = project(verts_cam[:, mesh.landmarks68], K_target)
    mouth = mouth_mask(landmarks, size) * mask
    mouth = torch.maximum(mouth, (attrs[..., 3:4].permute(0, 3, 1, 2) > 0.5).to(mask.dtype))
    depth = rast[..., 2:3].permute(0, 3, 1, 2) * mask
    return Conditions(
        source=source.image,
        source_normals=source.normals,
        source_light=source.light,
        source_mask=source.mask,
        warped=warped,
        covisible=covisible,
        mask=mask,
        normals=normals,
        light=irr,
        rendered=rendered,
        mouth=mouth,
        depth=depth,
        points=points,
        K_source=source.K,
        source_depth=source.depth,
        landmarks=landmarks,
        rast=rast,
    )


def mouth_mask(landmarks: Tensor, size: int, margin: float = 0.25) -> Tensor:
    """``[B,1,S,S]`` box around the lip landmarks (48-67) grown by ``margin`` of its size."""
    lips = landmarks[:, MOUTH_LANDMARKS].detach()
    lo, hi = lips.amin(1), lips.amax(1)  # [B,2]
    pad = (hi - lo) * margin
    lo, hi = lo - pad, hi + pad
    c = torch.arange(size, dtype=landmarks.dtype, device=landmarks.device)
    inside_x = (c[None] >= lo[:, :1]) & (c[None] <= hi[:, :1])  # [B,S]
    inside_y = (c[None] >= lo[:, 1:]) & (c[None] <= hi[:, 1:])
    return (inside_y[:, :, None] & inside_x[:, None, :]).unsqueeze(1).to(landmarks.dtype)


def conditions_from_coefficients(
    mesh: ConditionMesh,
    source_image: Tensor,
    K_source: Tensor,
    source_coeffs: FaceCoefficients,
    driving_coeffs: FaceCoefficients,
    K_target: Tensor,
    size: int,
    light: str = "driving",
) -> Conditions:
    """Training pairs: conditions of ``recombine(source, driving)`` in the driving crop camera."""
    view = render_source(mesh, source_image, K_source, source_coeffs)
    target = recombine(source_coeffs, driving_coeffs, light)
    return build_conditions(mesh, view, target, K_target, size)
