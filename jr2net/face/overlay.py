"""Drawing a fitted face over its photo: visible mesh wireframe plus detected and fitted landmarks."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

# Colours (RGB): wireframe, detected landmarks, fitted landmarks, the error segment between them.
WIRE = (80, 220, 255)
DETECTED = (60, 255, 90)
FITTED = (255, 60, 60)
ERROR = (255, 230, 60)


def mesh_edges(faces: np.ndarray) -> np.ndarray:
    """Unique undirected edges ``[M,2]`` of triangles ``[F,3]``."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], axis=0)
    e = np.sort(e, axis=1)
    return np.unique(e, axis=0)


def draw_fit_overlay(
    image: np.ndarray,
    verts2d: np.ndarray | None = None,
    faces: np.ndarray | None = None,
    *,
    detected: np.ndarray | None = None,
    fitted: np.ndarray | None = None,
    wire_opacity: float = 0.45,
    supersample: int = 2,
) -> np.ndarray:
    """Return ``image`` (uint8 HWC RGB) with the wireframe of ``faces`` (only the visible ones: pass
    them already culled) at ``verts2d [V,2]`` and the 68 detected / fitted landmarks drawn on top.

    Lines are drawn on a supersampled layer and downsampled, so the wireframe is anti-aliased.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 [H,W,3], got {image.dtype} {image.shape}")
    H, W = image.shape[:2]
    s = max(1, int(supersample))
    base = Image.fromarray(image).convert("RGBA")
    layer = Image.new("RGBA", (W * s, H * s), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    scale = max(H, W) / 512.0
    if verts2d is not None and faces is not None and len(faces):
        edges = mesh_edges(np.asarray(faces, dtype=np.int64))
        p = np.asarray(verts2d, dtype=np.float64) * s + (s - 1) / 2.0
        seg = p[edges].reshape(-1, 4)
        alpha = int(255 * wire_opacity)
        width = max(1, int(round(0.5 * s * scale)))
        for x0, y0, x1, y1 in seg.tolist():
            draw.line((x0, y0, x1, y1), fill=(*WIRE, alpha), width=width)
    r = max(1.5, 2.2 * scale) * s
    if detected is not None and fitted is not None:
        d = np.asarray(detected, dtype=np.float64) * s + (s - 1) / 2.0
        f = np.asarray(fitted, dtype=np.float64) * s + (s - 1) / 2.0
        for (x0, y0), (x1, y1) in zip(d.tolist(), f.tolist(), strict=True):
            draw.line((x0, y0, x1, y1), fill=(*ERROR, 230), width=max(1, int(s * scale)))
    for pts, colour, rr in ((detected, DETECTED, r), (fitted, FITTED, 0.75 * r)):
        if pts is None:
            continue
        q = np.asarray(pts, dtype=np.float64) * s + (s - 1) / 2.0
        for x, y in q.tolist():
            draw.ellipse(
                (x - rr, y - rr, x + rr, y + rr), fill=(*colour, 255), outline=(0, 0, 0, 160)
            )
    if s > 1:
        layer = layer.resize((W, H), Image.LANCZOS)
    return np.asarray(Image.alpha_composite(base, layer).convert("RGB"))


def visible_faces(
    verts_cam: np.ndarray,
    faces: np.ndarray,
    depth: np.ndarray,
    K: np.ndarray,
    rel_tol: float = 0.01,
) -> np.ndarray:
    """Boolean ``[F]``: front-facing triangles whose three vertices pass the depth test.

    ``depth [h,w]`` is a z-buffer of the same mesh rendered with intrinsics ``K`` (0 = empty); a vertex
    is visible when its z is within ``rel_tol`` of the depth at its pixel.
    """
    h, w = depth.shape
    uvw = verts_cam @ K.T
    z = verts_cam[:, 2]
    u = np.round(uvw[:, 0] / np.maximum(uvw[:, 2], 1e-6)).astype(np.int64)
    v = np.round(uvw[:, 1] / np.maximum(uvw[:, 2], 1e-6)).astype(np.int64)
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h) & (z > 0)
    d = np.zeros_like(z)
    d[inside] = depth[v[inside], u[inside]]
    vis = inside & (d > 0) & (z <= d * (1 + rel_tol) + 0.5)
    tri = verts_cam[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    front = np.einsum("ij,ij->i", n, tri[:, 0]) < 0  # normal towards the camera
    return front & vis[faces].all(axis=1)


def render_fit_overlay(image: np.ndarray, result, model, *, max_side: int = 768) -> np.ndarray:
    """The picture a person checks: ``image`` with the fitted mesh's visible wireframe (face region)
    and the detected (green) / fitted (red) landmarks joined by yellow error segments.

    ``result`` is a :class:`jr2net.face.fitting.FitResult`, ``model`` the FaceModel it was fitted with.
    """
    import torch

    from jr2net.face.camera import crop_intrinsics, model_to_camera, project
    from jr2net.face.renderer import FaceRenderer

    sub = (
        model.subset(["face"])
        if model.region is not None and "face" in model.region_names
        else model
    )
    c = result.coeffs
    H, W = image.shape[:2]
    with torch.inference_mode():
        verts = sub.shape(c.identity, c.expression)
        vc = model_to_camera(verts, c.angles, c.translation)
        uv = project(vc, result.K)[0].numpy()
        # Visibility from a z-buffer at a reduced size (the depth test tolerates the resampling).
        s = min(1.0, max_side / max(H, W))
        h, w = max(1, round(H * s)), max(1, round(W * s))
        Ks = crop_intrinsics(result.K, (0.0, 0.0, float(W), float(H)), (h, w))
        out = FaceRenderer(sub).render(c, Ks, (h, w))
        depth = out.depth[0, 0].numpy()
    faces = sub.faces.cpu().numpy().astype(np.int64)
    vis = visible_faces(vc[0].numpy(), faces, depth, Ks[0].numpy())
    return draw_fit_overlay(
        image,
        uv,
        faces[vis],
        detected=np.asarray(result.detection.landmarks),
        fitted=np.asarray(result.landmarks_fit),
        supersample=2 if max(H, W) <= 1400 else 1,
    )
