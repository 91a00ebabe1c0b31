"""The geometric reenactment pipeline's stages, each a plain function that can be tested and timed alone.

Everything here works on batch-1 CPU tensors in the camera conventions of DESIGN §3. The session in
``jr2net.pipeline.geometric`` strings them together with the mode-independent half
(``jr2net.pipeline.recombine``): recombine -> rasterize -> warp -> relight -> fill -> composite
(``jr2net.pipeline.composite``).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from jr2net.face.camera import project_planes
from jr2net.face.mesh import MeshOperators


def image_to_tensor(img: np.ndarray) -> Tensor:
    """uint8 ``[H, W, 3]`` -> float32 ``[1, 3, H, W]`` in [0, 1]."""
    return (
        torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    )


def square_box(
    points2d: Tensor, scale: float, hw: tuple[int, int], min_side: int = 32
) -> tuple[int, int, int]:
    """Integer square box ``(x0, y0, side)`` around 2D points, ``scale`` times their extent.

    The box may extend past the image; callers pad or clip.
    """
    lo = points2d.min(dim=0).values
    hi = points2d.max(dim=0).values
    c = (lo + hi) / 2
    side = float((hi - lo).max()) * scale
    side = int(math.ceil(min(max(side, min_side), 4 * max(hw))))
    x0 = int(math.floor(float(c[0]) - side / 2))
    y0 = int(math.floor(float(c[1]) - side / 2))
    return x0, y0, side


def crop_resample(image: Tensor, box: tuple[int, int, int], size: int) -> Tensor:
    """The square ``box`` of ``image [1,C,H,W]`` resampled (antialiased) to ``size``²; zeros outside."""
    x0, y0, side = box
    _, _, H, W = image.shape
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x0 + side, W), min(y0 + side, H)
    region = image.new_zeros(image.shape[0], image.shape[1], side, side)
    if cx1 > cx0 and cy1 > cy0:
        region[:, :, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = image[:, :, cy0:cy1, cx0:cx1]
    if side == size:
        return region
    return F.interpolate(
        region, size=(size, size), mode="bilinear", align_corners=False, antialias=side > size
    )


def diffuse_colors(colors: Tensor, known: Tensor, adjacency: Tensor, iters: int = 60) -> Tensor:
    """Fill unknown per-vertex colours ``[V,3]`` by repeated neighbour averaging (harmonic fill)."""
    out = colors.clone()
    if bool(known.all()):
        return out
    if known.any():
        out[~known] = colors[known].mean(0)
    for _ in range(iters):
        out = torch.where(known[:, None], colors, adjacency @ out)
    return out


def mouth_colors(height_mm: Tensor, across: Tensor, brightness: float) -> Tensor:
    """Colours ``[N,3]`` for mouth-socket vertices hidden in the source photo.

    ``height_mm`` is each vertex's model-space y relative to the closed lips' line (mean shape),
    ``across`` its x relative to the mouth centre as a fraction of the half mouth width: a band of
    teeth-like ivory just above and below the line, narrower than the mouth (what an opening
    mouth shows first), fading to a dark red cavity, scaled to the skin ``brightness`` (0..1).
    """
    teeth = torch.tensor([0.95, 0.92, 0.86])
    cavity = torch.tensor([0.28, 0.11, 0.10])
    upper = ((height_mm + 1.0) / 3.0).clamp(0, 1) * ((24.0 - height_mm) / 6.0).clamp(0, 1)
    lower = ((-height_mm - 2.0) / 3.0).clamp(0, 1) * ((height_mm + 22.0) / 6.0).clamp(0, 1)
    side = ((0.8 - across.abs()) / 0.25).clamp(0, 1)  # no teeth in the mouth corners
    s = ((upper + 0.7 * lower).clamp(0, 1) * side)[:, None]
    scale = min(1.0, 1.6 * brightness)
    return (cavity + s * (teeth - cavity)) * scale


def box_blur3(x: Tensor) -> Tensor:
    """3x3 box filter of ``[B,C,H,W]`` (zero padding), from shifted sums: ~7x faster on CPU than
    ``avg_pool2d`` at these sizes."""
    p = F.pad(x, (1, 1, 1, 1))
    h = p[..., :, :-2] + p[..., :, 1:-1] + p[..., :, 2:]
    return (h[..., :-2, :] + h[..., 1:-1, :] + h[..., 2:, :]).mul_(1.0 / 9.0)


def feather(mask: Tensor, radius: int) -> Tensor:
    """A soft version of a binary mask ``[1,1,H,W]`` that is 0 outside and ramps up inside.

    Computed at 1/``radius`` resolution (coverage, erode one cell, blur twice, upsample), so the
    ramp is ~2·radius pixels wide and the cost does not grow with the radius.
    """
    if radius <= 1:
        return mask
    H, W = mask.shape[-2:]
    small = F.avg_pool2d(mask, radius, ceil_mode=True)
    small = -F.max_pool2d(-small, 3, stride=1, padding=1)
    small = F.avg_pool2d(small, 3, stride=1, padding=1, count_include_pad=False)
    small = F.avg_pool2d(small, 3, stride=1, padding=1, count_include_pad=False)
    soft = F.interpolate(small, size=(H, W), mode="bilinear", align_corners=False)
    return soft * mask


@functools.lru_cache(maxsize=16)
def _box_blur_matrix(n: int, radius: int, passes: int) -> Tensor:
    """``[n,n]`` matrix of ``passes`` 1-D box blurs of ``radius`` (edge windows averaged over their
    inside part, as ``avg_pool2d(count_include_pad=False)``): separable, so 2-D is ``M @ x @ M.T``."""
    i = torch.arange(n, dtype=torch.float64)
    step = ((i[:, None] - i[None, :]).abs() <= radius).double()
    step /= step.sum(1, keepdim=True)
    return torch.linalg.matrix_power(step, passes).float()


def extend_field(field: Tensor, weight: Tensor, passes: int, radius: int) -> tuple[Tensor, Tensor]:
    """Extrapolate a field ``[1,C,H,W]`` known where ``weight`` > 0 (normalised convolution).

    ``passes`` box blurs of ``radius`` spread the known values outwards; returns the smooth field
    and its support (0..1: how much known data is nearby). Known cells keep their own values.
    """
    n_pass = max(1, passes) + 2
    H, W = field.shape[-2:]
    Mh, Mw = _box_blur_matrix(H, radius, n_pass), _box_blur_matrix(W, radius, n_pass)
    C = field.shape[1]
    fw = Mh @ torch.cat([field * weight, weight], 1) @ Mw.T
    fw, w = fw[:, :C], fw[:, C:]
    smooth = fw / w.clamp_min(1e-6)
    smooth = weight * field + (1 - weight) * smooth
    support = (w * 6).clamp(max=1.0)
    support = torch.maximum(support, weight)
    return smooth, support


def bilinear_matrix(n_in: int, n_out: int) -> Tensor:
    """``[n_out,n_in]`` matrix of 1-D bilinear resampling as ``F.interpolate(align_corners=False)``
    does it (edge-clamped): ``M @ x`` upsamples ``x`` along its first axis; rows sum to 1."""
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp_min(0)
    i0 = src.floor().long().clamp_max(n_in - 1)
    i1 = (i0 + 1).clamp_max(n_in - 1)
    lam = src - i0
    rows = torch.arange(n_out)
    M = torch.zeros(n_out, n_in, dtype=torch.float64)
    M.index_put_((rows, i0), 1 - lam, accumulate=True)
    M.index_put_((rows, i1), lam, accumulate=True)
    return M.float()


def border_window(size: int, margin: float) -> Tensor:
    """``[1,1,size,size]`` window that is 1 inside and falls smoothly to 0 over the outer ``margin``."""
    x = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    edge = torch.minimum(x, 1 - x) / margin
    ramp = edge.clamp(0, 1)
    ramp = ramp * ramp * (3 - 2 * ramp)  # smoothstep
    return (ramp[:, None] * ramp[None, :])[None, None]


def option_int(extra: dict[str, str], key: str, default: int) -> int:
    """``extra[key]`` as an int (``default`` when absent); ValueError naming the key."""
    try:
        return int(extra.get(key, default))
    except (TypeError, ValueError):
        raise ValueError(
            f"options.extra[{key!r}] must be an integer, got {extra.get(key)!r}"
        ) from None


def option_float(extra: dict[str, str], key: str, default: float) -> float:
    """``extra[key]`` as a float (``default`` when absent); ValueError naming the key."""
    try:
        return float(extra.get(key, default))
    except (TypeError, ValueError):
        raise ValueError(
            f"options.extra[{key!r}] must be a number, got {extra.get(key)!r}"
        ) from None


def full_res_face(
    photo: Tensor,
    K_out: Tensor,
    points: Tensor,
    valid: Tensor,
    planes: Tensor,
    box: tuple[int, int, int],
) -> Tensor:
    """The face layer at its box's size ``[1,3,side,side]``: the warp's source points
    ``[1,S,S,3]``, projected into the source ``photo`` ``[1,3,Ho,Wo]`` (camera ``K_out``) and
    upsampled (a smooth field), sample the full-size photo once, so the face keeps its sharpness
    and a still head returns the photo itself. ``planes`` ``[1,7,S,S]``: fill colour (3), relight
    ratio (3), soft co-visibility (1), upsampled from the crop. Beyond the bounding box of the
    mask ``valid`` (where the compositor's mask is 0) the layer is the fill colour."""
    S = points.shape[1]
    Ho, Wo = photo.shape[-2:]
    x0, y0, side = box
    m = valid[0, 0] > 0
    px, py = project_planes(points.view(-1, 3), K_out)
    # Off the mesh: the target pixel itself (the mask hides it; keeps the field smooth).
    u = (torch.arange(S, dtype=torch.float32) + 0.5) * (side / S) - 0.5
    gx = torch.where(m, px.view(S, S), (u + x0)[None, :])
    gy = torch.where(m, py.view(S, S), (u + y0)[:, None])
    grid = torch.stack([(2 * gx + 1) / Wo - 1, (2 * gy + 1) / Ho - 1], 0)
    planes = resample(torch.cat([grid[None], planes], 1), side)
    face = planes[:, 2:5].clone()  # the fill colour where the mask (so the layer) is 0
    # The photo is sampled only over the mask's bounding box (one crop pixel wider, what the
    # bilinear upsampling of the mask can reach): the compositor's feathered mask is 0 beyond.
    rows, cols = torch.nonzero(m.any(1)), torch.nonzero(m.any(0))
    if rows.numel() == 0:
        return face
    k = side / S
    r0, r1 = max(0, math.floor((int(rows[0]) - 1) * k)), min(side, math.ceil((int(rows[-1]) + 2) * k))
    c0, c1 = max(0, math.floor((int(cols[0]) - 1) * k)), min(side, math.ceil((int(cols[-1]) + 2) * k))
    sub = planes[:, :, r0:r1, c0:c1]
    sampled = F.grid_sample(
        photo, sub[:, 0:2].permute(0, 2, 3, 1), mode="bilinear",
        padding_mode="border", align_corners=False,
    )  # fmt: skip
    fill, ratio, cov = sub[:, 2:5], sub[:, 5:8], sub[:, 8:9]
    # fill + cov (sampled ratio - fill)
    face[:, :, r0:r1, c0:c1] = sampled.mul_(ratio).sub_(fill).mul_(cov).add_(fill)
    return face


def resample(x: Tensor, size: int, antialias: bool = True) -> Tensor:
    """``x`` ``[1,C,h,w]`` resampled to ``size``² as ``F.interpolate(mode="bilinear",
    align_corners=False)`` does, antialiased below 0.6 times its side (unless ``antialias`` is
    False); otherwise one ``cv2.resize`` per channel plane (~4x faster on CPU, same values to
    ~1e-5)."""
    h, w = x.shape[-2:]
    if h == w == size:
        return x
    if antialias and size < 0.6 * max(h, w):
        return F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    import cv2

    src = x[0].float().contiguous().numpy()
    out = np.empty((src.shape[0], size, size), np.float32)
    for c in range(src.shape[0]):
        cv2.resize(src[c], (size, size), dst=out[c], interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(out)[None]


class RenderMesh:
    """The part of a face model rendered per frame: a vertex subset with its bases and faces.

    Like ``FaceModel.subset`` but cut by geometry too (the neck below the jaw is dropped, so it
    stays with the background instead of turning with the head). Carries the mesh operators a
    session uses every frame (``ops``) and the vertices that bound its render crop.
    """

    def __init__(self, model, keep: Tensor) -> None:
        keep_idx = torch.nonzero(keep).squeeze(1)
        remap = torch.full((keep.numel(),), -1, dtype=torch.long)
        remap[keep_idx] = torch.arange(keep_idx.numel())
        faces = model.faces.long()
        fkeep = keep[faces].all(dim=1)
        self.model = model
        self.index = keep_idx
        self.faces = remap[faces[fkeep]].to(torch.int32).contiguous()
        self.faces_long = self.faces.long()
        self.vertices = model.vertices[keep_idx].contiguous()
        self.identity_basis = model.identity_basis[:, keep_idx].contiguous()
        self.expression_basis = model.expression_basis[:, keep_idx].contiguous()
        self.region = None if model.region is None else model.region[keep_idx]
        self.region_names = list(model.region_names)
        self.ops = MeshOperators(self.faces, self.n_vertices)  # normals, smoothing per frame
        # Vertices whose projection bounds the face (the render crop): a subsample of all.
        self.box_vertices = torch.arange(0, self.n_vertices, 7)

    @property
    def n_vertices(self) -> int:
        return int(self.index.numel())

    @property
    def n_expression(self) -> int:
        return int(self.expression_basis.shape[0])

    def region_mask(self, name: str) -> Tensor:
        """Vertices of a named region (all False when the model has no such region)."""
        if self.region is None or name not in self.region_names:
            return torch.zeros(self.n_vertices, dtype=torch.bool)
        return self.region == self.region_names.index(name)

    def identity_shape(self, identity: Tensor) -> Tensor:
        """Mean + identity offsets ``[V,3]`` for ``identity [1,k]`` (first k modes)."""
        k = identity.shape[1]
        V = self.n_vertices
        basis = self.identity_basis[:k].reshape(k, V * 3)
        return self.vertices + (identity.float() @ basis).view(V, 3)


def render_vertex_mask(model, regions: tuple[str, ...], neck_margin_mm: float = 10.0) -> Tensor:
    """Vertices to render per frame: the listed regions, minus the neck below the jaw line.

    The jaw line is the model's jaw landmarks 2-14 in the frontal (x, y) plane of the mean
    shape; face vertices more than ``neck_margin_mm`` below it are dropped.
    """
    V = model.n_vertices
    if model.region is None or not model.region_names:
        keep = torch.ones(V, dtype=torch.bool)
        face = keep.clone()
    else:
        keep = torch.zeros(V, dtype=torch.bool)
        for name in regions:
            if name in model.region_names:
                keep |= model.region == model.region_names.index(name)
        face = (
            model.region == model.region_names.index("face")
            if "face" in model.region_names
            else keep
        )
    verts = model.vertices.float()
    jaw = verts[model.landmarks68[2:15].long()]
    order = torch.argsort(jaw[:, 0])
    jx = jaw[order, 0].numpy()
    jy = jaw[order, 1].numpy()
    line = torch.from_numpy(np.interp(verts[:, 0].numpy(), jx, jy)).float()
    neck = face & (verts[:, 1] < line - neck_margin_mm)
    return keep & ~neck
