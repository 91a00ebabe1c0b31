"""Synthetic faces rendered from the face model with known coefficients (ground truth).

Used by the fitting benchmark (``benchmarks/fitting.py``) and the synthetic training set
(``jr2net.training.data.synthetic``). The pieces:

* :func:`random_coeffs`: identity alpha ~ N(0,1) over all modes, a sparse ARKit-style expression
  (3-7 random blendshapes at 0.3-1, jawOpen half the time, blinks capped at 0.6), albedo mostly
  in the low-frequency modes, yaw within +-``yaw_max_deg``, pitch +-15, roll +-10 degrees, random
  SH light brighter from the camera side, 600-720 mm away.
* :func:`large_expression`: the large-expression prior (sparse symmetric and asymmetric
  combinations at extreme values) and :func:`track_expression` (rows of fitted video tracks).
* :func:`render_model`: the model with irises, brows and lips painted into the albedo mean (an
  untextured head has none of the contrasts dlib relies on), optionally with photo textures
  appended to the albedo basis (see below).
* :func:`background_pool` / :func:`backgrounds`: heavily blurred patches of the shared photos,
  taken away from their faces; :func:`render_composite` renders and composites over one.
* :func:`unwrap_texture`: per-vertex albedo sampled from a fitted photo.

Photo textures. A fitted photo (coefficients and intrinsics from ``SourceFitter``) is rendered;
each face-region vertex in a visible triangle whose normal faces the camera and whose projection
falls inside the landmark skin outline (jaw + brows lifted onto the forehead, eyes and mouth
included) samples the photo bilinearly at its projection, and the sample is divided by the
fitted SH irradiance at its normal, giving albedo. Confidence = facing cosine ramp; vertices
with low confidence take their left/right mirror vertex's sample when that one is confident,
else the fitter's albedo (``mean + B gamma``). Because every identity shares the mesh topology,
a per-vertex albedo transfers unchanged to any random identity and expression. In
:func:`render_model` texture ``k`` is stored as an extra albedo basis row ``tex_k - mean``, so a
one-hot coefficient after the model's ``G`` coefficients selects it (:func:`render_albedo`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

if TYPE_CHECKING:
    from jr2net.face.coeffs import FaceCoefficients
    from jr2net.face.model import FaceModel
    from jr2net.face.renderer import FaceRenderer

SIZE = 256
YAW_MAX_DEG = 35.0
_PAINTED_REGIONS = ("eyeball_left", "eyeball_right", "mouth_socket")


# ---- backgrounds ------------------------------------------------------------------------------


def background_pool(
    rng: np.random.Generator, size: int = SIZE, blur: float = 6.0, per_photo: int = 12
) -> list[np.ndarray]:
    """Blurred ``size``² uint8 patches of the shared photos, taken from the borders (away from the
    faces): up to ``per_photo`` random squares per photo, those overlapping a face dropped."""
    from jr2net.face.landmarks import detect_faces
    from jr2net.io.images import load_image
    from jr2net.paths import shared_path

    pool = []
    for path in sorted(shared_path("data", "images").iterdir()):
        img = load_image(path)
        H, W = img.shape[:2]
        boxes = [d.box for d in detect_faces(img)]
        side = max(64, min(H, W) // 3)
        for _ in range(per_photo):
            x0 = int(rng.integers(0, W - side + 1))
            y0 = int(rng.integers(0, H - side + 1))
            if any(
                x0 < b[2] and x0 + side > b[0] and y0 < b[3] and y0 + side > b[1] for b in boxes
            ):
                continue
            patch = Image.fromarray(img[y0 : y0 + side, x0 : x0 + side]).resize((size, size))
            pool.append(np.asarray(patch.filter(ImageFilter.GaussianBlur(blur))))
    return pool


def backgrounds(rng: np.random.Generator, n: int, size: int = SIZE) -> list[np.ndarray]:
    """``n`` backgrounds drawn (with replacement) from :func:`background_pool`."""
    pool = background_pool(rng, size)
    return [pool[int(rng.integers(len(pool)))] for _ in range(n)]


# ---- coefficients -----------------------------------------------------------------------------


def random_coeffs(
    model: FaceModel, rng: np.random.Generator, yaw_max_deg: float = YAW_MAX_DEG
) -> FaceCoefficients:
    """Random coefficients (batch 1) as described in the module docstring."""
    from jr2net.face.coeffs import FaceCoefficients

    c = FaceCoefficients.zeros(model, n_albedo=model.n_albedo)
    c.identity = torch.as_tensor(rng.normal(size=(1, model.n_identity)), dtype=torch.float32)
    beta = np.zeros(model.n_expression)
    names = model.expression_names
    k = int(rng.integers(3, 8))
    on = rng.choice(model.n_expression, k, replace=False)
    beta[on] = rng.uniform(0.3, 1.0, size=k)
    if rng.random() < 0.5:
        beta[names.index("jawOpen")] = rng.uniform(0.3, 0.8)
    # Gaze and blink shapes do not change the face's shape much; keep them but not extreme blinks.
    for nm in ("eyeBlink_L", "eyeBlink_R"):
        beta[names.index(nm)] = min(beta[names.index(nm)], 0.6)
    c.expression = torch.as_tensor(beta[None], dtype=torch.float32)
    # Albedo: mostly the low-frequency modes (skin tone, gradients), mild detail.
    scale = 0.35 / np.sqrt(1.0 + np.arange(model.n_albedo) // 3)
    c.albedo = torch.as_tensor(rng.normal(size=(1, model.n_albedo)) * scale, dtype=torch.float32)
    angles = np.radians(
        [rng.uniform(-15, 15), rng.uniform(-yaw_max_deg, yaw_max_deg), rng.uniform(-10, 10)]
    )
    c.angles = torch.as_tensor(angles[None], dtype=torch.float32)
    c.translation = torch.as_tensor(
        [[rng.uniform(-10, 10), rng.uniform(-10, 10) + 10.0, -rng.uniform(600, 720)]],
        dtype=torch.float32,
    )
    light = np.zeros((9, 3))
    light[0] = rng.uniform(0.9, 1.2) + rng.normal(size=3) * 0.03
    light[1:4] = rng.normal(size=(3, 1)) * 0.3 + rng.normal(size=(3, 3)) * 0.02
    light[2] -= 0.3  # more light from the camera side (n_z < 0 faces the camera)
    light[4:] = rng.normal(size=(5, 1)) * 0.08
    c.light = torch.as_tensor(light[None], dtype=torch.float32)
    return c


def _side_pairs(names: Sequence[str]) -> tuple[list[tuple[int, int]], list[int]]:
    """(left, right) index pairs of the ``*_L``/``*_R`` shapes, and the unpaired shapes."""
    idx = {n: i for i, n in enumerate(names)}
    pairs, single = [], []
    for n, i in idx.items():
        if n.endswith("_L") and n[:-2] + "_R" in idx:
            pairs.append((i, idx[n[:-2] + "_R"]))
        elif not (n.endswith("_R") and n[:-2] + "_L" in idx):
            single.append(i)
    return pairs, single


def large_expression(names: Sequence[str], rng: np.random.Generator) -> np.ndarray:
    """A large expression ``[E]``: 1-3 shape groups at extreme values (0.7-1, a third exactly 1),
    each group symmetric (both sides equal), asymmetric (one side only, or the two sides far
    apart) or unpaired; jawOpen at 0.5-1 half the time. The issue-11 test prior."""
    pairs, single = _side_pairs(names)
    beta = np.zeros(len(names))
    n_groups = int(rng.integers(1, 4))
    for _ in range(n_groups):
        value = 1.0 if rng.random() < 1 / 3 else float(rng.uniform(0.7, 1.0))
        kind = rng.random()
        if kind < 0.4:  # symmetric pair
            left, right = pairs[int(rng.integers(len(pairs)))]
            beta[left] = beta[right] = value
        elif kind < 0.75:  # asymmetric pair: one side, or both at very different values
            pair = pairs[int(rng.integers(len(pairs)))]
            side = int(rng.integers(2))
            beta[pair[side]] = value
            if rng.random() < 0.5:
                beta[pair[1 - side]] = float(rng.uniform(0.0, 0.3))
        else:
            beta[single[int(rng.integers(len(single)))]] = value
    if "jawOpen" in names and rng.random() < 0.5:
        beta[list(names).index("jawOpen")] = float(rng.uniform(0.5, 1.0))
    return beta


def track_expression(bank: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One row ``[E]`` of ``bank [N,E]`` (expressions fitted on video frames), clipped to [0,1]."""
    bank = np.asarray(bank)
    if bank.ndim != 2 or len(bank) == 0:
        raise ValueError(f"expression bank must be a non-empty [N, E] array, got {bank.shape}")
    return np.clip(bank[int(rng.integers(len(bank)))], 0.0, 1.0)


# ---- render model and textures ----------------------------------------------------------------


def painted_albedo(model: FaceModel) -> np.ndarray:
    """The model's albedo mean ``[V,3]`` with irises/pupils, brows and lips painted in."""
    v = model.vertices.detach().cpu().numpy()
    region = model.region.cpu().numpy()
    mean = model.albedo.mean.cpu().numpy().copy()
    for name in ("eyeball_left", "eyeball_right"):
        ids = np.flatnonzero(region == model.region_names.index(name))
        front = v[ids, 2].max()
        depth = front - v[ids, 2]
        mean[ids[depth < 4.0]] = (0.22, 0.13, 0.07)  # iris
        mean[ids[depth < 1.2]] = (0.02, 0.02, 0.02)  # pupil
    # Brows and lips painted near the landmark polylines (dlib locates them by their contrast).
    lm = v[model.landmarks68.cpu().numpy()]
    face = region == model.region_names.index("face")

    def near(points: np.ndarray, radius: float, closed: bool = False) -> np.ndarray:
        segs = list(zip(points[:-1], points[1:], strict=True))
        if closed:
            segs.append((points[-1], points[0]))
        d = np.full(len(v), np.inf)
        for a, b in segs:
            t = np.clip(((v - a) @ (b - a)) / max(float((b - a) @ (b - a)), 1e-9), 0, 1)
            d = np.minimum(d, np.linalg.norm(v - (a + t[:, None] * (b - a)), axis=1))
        return face & (d < radius)

    for brow in (lm[17:22], lm[22:27]):
        mean[near(brow, 3.0)] = (0.22, 0.15, 0.11)
    lips = near(lm[48:60], 3.5, closed=True) | near(lm[60:68], 2.5, closed=True)
    mean[lips] = (0.55, 0.27, 0.27)
    return mean


def render_model(model: FaceModel, textures: np.ndarray | None = None) -> FaceModel:
    """The model with a painted albedo mean, for rendering only; ``textures [T,V,3]`` (per-vertex
    albedo, e.g. from :func:`unwrap_texture`) become extra albedo basis rows after the model's
    (on every region but the eyeballs and mouth socket, which keep their painted albedo)."""
    from jr2net.face.model import FaceModel

    if model.region is None or "face" not in model.region_names:
        raise ValueError(f"face model {model.name!r} has no 'face'/'eyeball_*' regions to paint")
    arrays = model.to_arrays()
    mean = painted_albedo(model)
    basis = model.albedo.basis.cpu().numpy()
    if textures is not None:
        textures = np.asarray(textures, dtype=np.float32)
        if textures.ndim != 3 or textures.shape[1:] != mean.shape:
            raise ValueError(f"textures must be [T,{mean.shape[0]},3], got {textures.shape}")
        delta = textures - mean[None]
        # Eyeballs and the mouth socket keep the painted albedo (irises, pupils, mouth interior).
        region = model.region.cpu().numpy()
        keep = [model.region_names.index(n) for n in _PAINTED_REGIONS if n in model.region_names]
        delta[:, np.isin(region, keep)] = 0.0
        basis = np.concatenate([basis, delta], axis=0)
    arrays["albedo_mean"] = mean
    arrays["albedo_basis"] = basis
    return FaceModel.from_arrays(arrays, name="ict-render")


def render_albedo(coeffs_albedo: torch.Tensor, n_textures: int, texture: int | None) -> torch.Tensor:
    """Albedo coefficients for a :func:`render_model` with ``n_textures`` textures: the model's
    coefficients (zeroed when a texture is used), then a one-hot selecting ``texture``."""
    extra = coeffs_albedo.new_zeros(coeffs_albedo.shape[0], n_textures)
    if texture is None:
        return torch.cat([coeffs_albedo, extra], dim=1)
    extra[:, texture] = 1.0
    return torch.cat([torch.zeros_like(coeffs_albedo), extra], dim=1)


def render_composite(
    renderer: FaceRenderer, c: FaceCoefficients, K: torch.Tensor, background: np.ndarray
) -> np.ndarray:
    """Render ``c`` under ``K`` at the background's size and composite over it: uint8 HWC."""
    H, W = background.shape[:2]
    with torch.inference_mode():
        out = renderer.render(c, K, (H, W))
        img = out.image[0].clamp(0, 1)
        mask = out.mask[0]
        bg = torch.from_numpy(np.array(background)).permute(2, 0, 1).float() / 255.0
        comp = img * mask + bg * (1 - mask)
    return (comp.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def skin_outline(landmarks68: np.ndarray) -> np.ndarray:
    """Face-skin outline ``[27,2]`` from 68 landmarks: the jaw, then the brows lifted onto the
    forehead by 0.18 x the chin-to-nose-bridge vector."""
    lm = np.asarray(landmarks68, dtype=np.float64)
    brows = lm[17:27][::-1].copy() + 0.18 * (lm[27] - lm[8])
    return np.concatenate([lm[0:17], brows], axis=0)


def polygon_mask(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Boolean ``[H,W]`` mask of the filled polygon ``points [N,2]`` (pixel centres)."""
    H, W = size
    im = Image.new("L", (W, H), 0)
    ImageDraw.Draw(im).polygon([(float(x) + 0.5, float(y) + 0.5) for x, y in points], fill=1)
    return np.asarray(im, dtype=bool)


def mirror_index(vertices: np.ndarray) -> np.ndarray:
    """For each vertex the nearest vertex to its mirror image across the model's x = 0 plane."""
    from scipy.spatial import cKDTree

    v = np.asarray(vertices, dtype=np.float64)
    return cKDTree(v).query(v * np.array([-1.0, 1.0, 1.0]))[1]


def unwrap_texture(
    model: FaceModel,
    image: np.ndarray,
    coeffs: FaceCoefficients,
    K: torch.Tensor,
    landmarks68: np.ndarray,
    min_cos: float = 0.25,
    mirror: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex albedo ``[V,3]`` of the whole model from a fitted photo, and the per-vertex
    confidence ``[V]`` in [0,1] (0 where the fitter's albedo was used); see the module docstring.

    ``image`` uint8 HWC, ``coeffs``/``K`` the fit in that image's camera (batch 1),
    ``landmarks68`` the detected landmarks (skin outline). Only face-region vertices are sampled.
    """
    import torch.nn.functional as F

    from jr2net.face.camera import project
    from jr2net.face.renderer import FaceRenderer
    from jr2net.face.sh import irradiance

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 [H,W,3], got {image.dtype} {image.shape}")
    H, W = image.shape[:2]
    V = model.n_vertices
    face = model.subset(["face"])
    keep = face.parent_vertex_index.cpu().numpy()
    c = coeffs.detach()
    albedo_c = c.albedo[:, : model.n_albedo]
    fallback = model.albedo.colors(albedo_c)[0].detach().cpu().numpy()
    with torch.inference_mode():
        out = FaceRenderer(face).render(c.replace(albedo=albedo_c), K, (H, W))
        fid = out.rast[0, ..., 3].long().flatten()
        tri = face.faces.long()[fid[fid > 0].unique() - 1]
        visible = np.zeros(len(keep), dtype=bool)
        visible[tri.flatten().cpu().numpy()] = True
        X = out.verts_cam[0]
        n = out.vertex_normals_cam[0]
        cos = (-(n * F.normalize(X, dim=1)).sum(1)).cpu().numpy()
        uv = project(X[None], K.reshape(1, 3, 3).float())[0]
        grid = torch.stack([(uv[:, 0] + 0.5) / W * 2 - 1, (uv[:, 1] + 0.5) / H * 2 - 1], dim=1)
        img_t = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255.0
        col = F.grid_sample(img_t, grid.view(1, 1, -1, 2), align_corners=False)[0, :, 0].T
        irr = irradiance(n, c.light[0]).clamp(min=0.05)
        sampled = (col / irr).clamp(0, 1).cpu().numpy()
    uvn = uv.cpu().numpy()
    inside = polygon_mask(skin_outline(landmarks68), (H, W))
    px = np.clip(np.round(uvn).astype(int), 0, [W - 1, H - 1])
    in_poly = inside[px[:, 1], px[:, 0]]
    in_img = (uvn[:, 0] >= 0) & (uvn[:, 0] <= W - 1) & (uvn[:, 1] >= 0) & (uvn[:, 1] <= H - 1)
    conf_face = np.clip((cos - min_cos) / (1 - min_cos), 0, 1) * visible * in_poly * in_img
    conf = np.zeros(V)
    conf[keep] = conf_face
    samples = fallback.copy()
    samples[keep] = sampled
    mirror = mirror_index(model.vertices.cpu().numpy()) if mirror is None else mirror
    use_mirror = (conf[mirror] > conf) & np.isin(np.arange(V), keep)
    src = np.where(use_mirror, mirror, np.arange(V))
    w = conf[src][:, None]
    texture = w * samples[src] + (1 - w) * fallback
    return texture.astype(np.float32), conf[src].astype(np.float32)


def project_albedo(model: FaceModel, texture: np.ndarray, ridge: float = 1e-3) -> np.ndarray:
    """Least-squares albedo coefficients ``[G]`` whose ``mean + B gamma`` best matches a per-vertex
    ``texture [V,3]`` on the face region (the approximate ground truth of a textured render)."""
    face = model.region.cpu().numpy() == model.region_names.index("face")
    B = model.albedo.basis.cpu().numpy()[:, face].reshape(model.n_albedo, -1).astype(np.float64)
    r = (np.asarray(texture)[face] - model.albedo.mean.cpu().numpy()[face]).reshape(-1)
    A = B @ B.T + ridge * np.eye(len(B)) * np.trace(B @ B.T) / len(B)
    return np.linalg.solve(A, B @ r).astype(np.float32)


def true_landmarks(solver, model: FaceModel, c: FaceCoefficients, K: torch.Tensor) -> np.ndarray:
    """The 68 ground-truth 2D landmarks ``[68,2]`` of coefficients ``c`` (batch 1) under ``K``:
    the landmark vertices projected, the jaw (0-16) on the silhouette as the fitter's
    ``LandmarkSolver.select_contour`` picks it (where a 2D annotator or dlib puts it)."""
    from jr2net.face.camera import model_to_camera, project
    from jr2net.face.fitting import LandmarkParams, euler_to_matrix

    gt_verts = model.shape(c.identity, c.expression)[0].numpy()
    p = LandmarkParams(
        euler_to_matrix(c.angles[0].double().numpy()),
        c.translation[0].double().numpy(),
        c.identity[0, : solver.n_identity].double().numpy(),
        c.expression[0].double().numpy(),
    )
    vid = solver.rows[solver.select_contour(p, K[0].double().numpy())]
    X = torch.as_tensor(gt_verts[vid][None])
    return project(model_to_camera(X, c.angles, c.translation), K)[0].double().numpy()
