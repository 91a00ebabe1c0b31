"""Drawing a fitted face over its photo: visible mesh wireframe plus detected and fitted landmarks."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

# Colours (RGB): wireframe, detected landmarks, fitted landmarks, the error segment between them.
WIRE = (40, 200, 255)
DETECTED = (60, 255, 90)
FITTED = (255, 60, 60)
ERROR = (255, 230, 60)


def mesh_edges(faces: np.ndarray, verts: np.ndarray | None = None) -> np.ndarray:
    """Unique undirected edges ``[M,2]`` of triangles ``[F,3]``.

    With ``verts [V,2|3]``, each triangle's longest edge is left out: on a triangulated quad mesh
    (ICT) that is the quad diagonal, so the drawing shows the lighter quad grid.
    """
    e = np.stack([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], axis=1)  # [F,3,2]
    if verts is not None:
        v = np.asarray(verts, dtype=np.float64)
        length = np.linalg.norm(v[e[..., 0]] - v[e[..., 1]], axis=-1)  # [F,3]
        keep = np.ones(length.shape, dtype=bool)
        keep[np.arange(len(faces)), np.argmax(length, axis=1)] = False
        e = e[keep]
    e = np.sort(e.reshape(-1, 2), axis=1)
    return np.unique(e, axis=0)


def draw_fit_overlay(
    image: np.ndarray,
    verts2d: np.ndarray | None = None,
    faces: np.ndarray | None = None,
    *,
    detected: np.ndarray | None = None,
    fitted: np.ndarray | None = None,
    verts3d: np.ndarray | None = None,
    wire_opacity: float = 0.5,
    supersample: int = 2,
) -> np.ndarray:
    """Return ``image`` (uint8 HWC RGB) with the wireframe of ``faces`` (only the visible ones: pass
    them already culled) at ``verts2d [V,2]`` and the 68 detected / fitted landmarks drawn on top.
    ``verts3d [V,3]`` (model space) lets quad diagonals be dropped for a lighter grid.

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
        faces = np.asarray(faces, dtype=np.int64)
        edges = mesh_edges(faces, verts3d)
        p = np.asarray(verts2d, dtype=np.float64) * s + (s - 1) / 2.0
        seg = p[edges].reshape(-1, 4)
        alpha = int(255 * wire_opacity)
        width = max(1, int(round(0.5 * s * scale)))
        for x0, y0, x1, y1 in seg.tolist():
            draw.line((x0, y0, x1, y1), fill=(*WIRE, alpha), width=width)
    r = max(2.0, 2.6 * scale) * s
    if detected is not None and fitted is not None:
        d = np.asarray(detected, dtype=np.float64) * s + (s - 1) / 2.0
        f = np.asarray(fitted, dtype=np.float64) * s + (s - 1) / 2.0
        for (x0, y0), (x1, y1) in zip(d.tolist(), f.tolist(), strict=True):
            draw.line((x0, y0, x1, y1), fill=(*ERROR, 255), width=max(1, int(s * scale)))
    if detected is not None:  # detected: green rings
        q = np.asarray(detected, dtype=np.float64) * s + (s - 1) / 2.0
        ring = max(1, int(round(0.8 * s * scale)))
        for x, y in q.tolist():
            draw.ellipse((x - r, y - r, x + r, y + r), outline=(*DETECTED, 255), width=ring)
    if fitted is not None:  # fitted: red dots
        q = np.asarray(fitted, dtype=np.float64) * s + (s - 1) / 2.0
        rr = 0.55 * r
        for x, y in q.tolist():
            draw.ellipse((x - rr, y - rr, x + rr, y + rr), fill=(*FITTED, 255))
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


def render_fit_overlay(
    image: np.ndarray, result, model, *, crop: bool = True, out_size: int = 640
) -> np.ndarray:
    """The picture a person checks: the fitted mesh's visible wireframe (face region) and the
    detected (green) / fitted (red) landmarks, joined by yellow error segments, over the photo.

    ``crop=True`` zooms on the face (a square 2.2x the landmark extent, resized to ``out_size``) so
    the fit can be judged; ``crop=False`` draws on the full image. ``result`` is a
    :class:`jr2net.face.fitting.FitResult`, ``model`` the FaceModel it was fitted with.
    """
    import torch

    from jr2net.face.camera import crop_intrinsics, model_to_camera, project
    from jr2net.face.renderer import FaceRenderer

    use_face = model.region is not None and "face" in model.region_names
    sub = model.subset(["face"]) if use_face else model
    c = result.coeffs
    H, W = image.shape[:2]
    detected = np.asarray(result.detection.landmarks, dtype=np.float64)
    fitted = np.asarray(result.landmarks_fit, dtype=np.float64)
    with torch.inference_mode():
        verts = sub.shape(c.identity, c.expression)
        vc = model_to_camera(verts, c.angles, c.translation)
        uv = project(vc, result.K)[0].double().numpy()
        # Visibility from a z-buffer at a reduced size (the depth test tolerates the resampling).
        s = min(1.0, 768 / max(H, W))
        h, w = max(1, round(H * s)), max(1, round(W * s))
        Ks = crop_intrinsics(result.K, (0.0, 0.0, float(W), float(H)), (h, w))
        depth = FaceRenderer(sub).render(c, Ks, (h, w)).depth[0, 0].numpy()
    faces = sub.faces.cpu().numpy().astype(np.int64)
    vis = visible_faces(vc[0].double().numpy(), faces, depth, Ks[0].double().numpy())
    if crop:
        lo, hi = detected.min(axis=0), detected.max(axis=0)
        side = 2.2 * float(max(hi - lo))
        cx, cy = (lo + hi) / 2.0
        x0, y0 = cx - side / 2.0, cy - side / 2.0
        box = (x0 - 0.5, y0 - 0.5, x0 + side - 0.5, y0 + side - 0.5)  # pixel edges
        pil = Image.fromarray(image).crop(tuple(round(v) for v in box))
        rbox = tuple(round(v) for v in box)
        image = np.asarray(pil.resize((out_size, out_size), Image.LANCZOS))
        k = out_size / (rbox[2] - rbox[0])
        off = np.array([rbox[0], rbox[1]], dtype=np.float64)

        def tf(p: np.ndarray) -> np.ndarray:
            return (p - off + 0.5) * k - 0.5

        uv, detected, fitted = tf(uv), tf(detected), tf(fitted)
    big = max(image.shape[:2]) > 1400
    return draw_fit_overlay(
        image,
        uv,
        faces[vis],
        verts3d=sub.vertices.cpu().numpy(),
        detected=detected,
        fitted=fitted,
        supersample=1 if big else 2,
    )
