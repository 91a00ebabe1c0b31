"""Pure-PyTorch references of every kernel in ``jr2net.ops`` (same signatures, autograd for free).

They define the semantics the C++/CUDA kernels must reproduce; tests compare the two. This module
is the test oracle: only tests and benchmarks import it (production code uses the kernels and
``jr2net.face.sh``).
"""

from __future__ import annotations

import torch

from jr2net.face.sh import SH_C0, SH_C1, SH_C2, SH_C3, SH_C4

# ---- rasterize / interpolate ------------------------------------------------------------------

RASTER_NEAR_Z = 1e-3
"""Vertices with camera z <= this (scene units) invalidate their triangles, which are dropped."""

_RASTER_CHUNK_ELEMS = 1 << 21  # pixels evaluated per vectorised chunk of triangles


def _raster_edge(ax, ay, bx, by, s):
    """Canonically ordered edge a->b (see csrc/ops/rasterize.h make_edge): exact shared edges."""
    a_lo = (ax < bx) | ((ax == bx) & (ay < by))
    lx = torch.where(a_lo, ax, bx)
    ly = torch.where(a_lo, ay, by)
    dx = torch.where(a_lo, bx - ax, ax - bx)
    dy = torch.where(a_lo, by - ay, ay - by)
    sgn = torch.where(a_lo, 1.0, -1.0).to(ax.dtype)
    nx = -(by - ay) * s
    ny = (bx - ax) * s
    tie = (ny > 0) | ((ny == 0) & (nx > 0))
    return lx, ly, dx, dy, sgn, tie


def _raster_zbuffer(
    verts_cam: torch.Tensor,
    faces: torch.Tensor,
    K: torch.Tensor,
    H: int,
    W: int,
    cull_backfaces: bool,
    near_z: float,
) -> torch.Tensor:
    """Packed (float32 depth bits << 32 | face id) key of the nearest face per pixel, [B*H*W]."""
    B, V = verts_cam.shape[:2]
    F = faces.shape[0]
    dev = verts_cam.device
    empty = torch.iinfo(torch.int64).max
    zbuf = torch.full((B * H * W,), empty, dtype=torch.int64, device=dev)
    if F == 0:
        return zbuf
    v = verts_cam.detach().double()
    Kd = K.detach().double()
    X, Y, Z = v.unbind(-1)
    xn = X / Z
    yn = Y / Z
    x = Kd[:, 0, 0, None] * xn + Kd[:, 0, 1, None] * yn + Kd[:, 0, 2, None]
    y = Kd[:, 1, 0, None] * xn + Kd[:, 1, 1, None] * yn + Kd[:, 1, 2, None]
    ok = (Z > near_z) & torch.isfinite(x) & torch.isfinite(y)
    iz = 1.0 / Z

    fl = faces.long()
    px = x[:, fl]  # [B,F,3]
    py = y[:, fl]
    pz = iz[:, fl]
    x0, x1, x2 = px.unbind(-1)
    y0, y1, y2 = py.unbind(-1)
    z0, z1, z2 = pz.unbind(-1)
    A = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
    xmin, xmax = px.amin(-1), px.amax(-1)
    ymin, ymax = py.amin(-1), py.amax(-1)
    keep = ok[:, fl].all(-1) & (A != 0) & torch.isfinite(A)
    if cull_backfaces:
        keep &= A <= 0  # y down: counter-clockwise on screen (A < 0) is front-facing
    keep &= (xmax >= 0) & (ymax >= 0) & (xmin <= W - 1) & (ymin <= H - 1)
    bi, fi = keep.nonzero(as_tuple=True)
    if bi.numel() == 0:
        return zbuf

    def sel(t):
        return t[bi, fi]

    x0, x1, x2, y0, y1, y2 = map(sel, (x0, x1, x2, y0, y1, y2))
    z0, z1, z2, A = map(sel, (z0, z1, z2, A))
    xmin, xmax, ymin, ymax = map(sel, (xmin, xmax, ymin, ymax))
    j0 = torch.where(xmin <= 0, 0.0, torch.ceil(xmin.clamp(max=W))).long()
    j1 = torch.where(xmax >= W - 1, float(W - 1), torch.floor(xmax.clamp(min=0))).long()
    i0 = torch.where(ymin <= 0, 0.0, torch.ceil(ymin.clamp(max=H))).long()
    i1 = torch.where(ymax >= H - 1, float(H - 1), torch.floor(ymax.clamp(min=0))).long()
    s = torch.where(A > 0, 1.0, -1.0).double()
    edges = [
        _raster_edge(x1, y1, x2, y2, s),
        _raster_edge(x2, y2, x0, y0, s),
        _raster_edge(x0, y0, x1, y1, s),
    ]
    inv_a = 1.0 / A
    c = [z0 * inv_a, z1 * inv_a, z2 * inv_a]  # z_k here is 1/Z_k

    bw = (j1 - j0 + 1).clamp(min=0)
    bh = (i1 - i0 + 1).clamp(min=0)
    side = torch.maximum(bw, bh)
    order = torch.argsort(side)
    side_sorted = side[order]
    n = order.numel()
    start = 0
    while start < n:
        rest = side_sorted[start:]
        cost = (torch.arange(rest.numel(), device=dev) + 1) * rest * rest
        end = start + max(1, int((cost <= _RASTER_CHUNK_ELEMS).sum()))
        idx = order[start:end]
        mh = int(bh[idx].max())
        mw = int(bw[idx].max())
        start = end
        if mh == 0 or mw == 0:
            continue
        oy = torch.arange(mh, device=dev).repeat_interleave(mw)
        ox = torch.arange(mw, device=dev).repeat(mh)
        pj = j0[idx, None] + ox
        pi = i0[idx, None] + oy
        inside = (pj <= j1[idx, None]) & (pi <= i1[idx, None])
        qx = pj.double()
        qy = pi.double()
        q = None
        for (lx, ly, dx, dy, sgn, tie), ci in zip(edges, c, strict=True):
            lx, ly, dx, dy, sgn, tie, ci = (t[idx, None] for t in (lx, ly, dx, dy, sgn, tie, ci))
            E = sgn * (dx * (qy - ly) - dy * (qx - lx))
            inside &= (s[idx, None] * E > 0) | ((E == 0) & tie)
            q = E * ci if q is None else q + E * ci
        z = (1.0 / q).float()
        inside &= (z > 0) & torch.isfinite(z)
        key = (z.view(torch.int32).long() << 32) | fi[idx, None]
        pix = bi[idx, None] * (H * W) + pi * W + pj
        zbuf.scatter_reduce_(0, pix[inside], key[inside], reduce="amin")
    return zbuf


def _resolve_uvz(v0, v1, v2, K, px, py):
    """Perspective-correct (u, v, z) at pixel centres (same formula as csrc resolve_uvz_proj)."""

    def proj(X):
        xn = X[:, 0] / X[:, 2]
        yn = X[:, 1] / X[:, 2]
        return (
            K[:, 0, 0] * xn + K[:, 0, 1] * yn + K[:, 0, 2],
            K[:, 1, 0] * xn + K[:, 1, 1] * yn + K[:, 1, 2],
            1.0 / X[:, 2],
        )

    (x0, y0, w0), (x1, y1, w1), (x2, y2, w2) = proj(v0), proj(v1), proj(v2)
    E0 = (x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)
    E1 = (x0 - x2) * (py - y2) - (y0 - y2) * (px - x2)
    E2 = (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)
    r0, r1, r2 = E0 * w0, E1 * w1, E2 * w2
    inv_s = 1.0 / (r0 + r1 + r2)
    return r0 * inv_s, r1 * inv_s, (E0 + E1 + E2) * inv_s


def rasterize_ref(
    verts_cam: torch.Tensor,
    faces: torch.Tensor,
    K: torch.Tensor,
    size: tuple[int, int],
    cull_backfaces: bool = False,
    near_z: float = RASTER_NEAR_Z,
) -> torch.Tensor:
    """Reference rasteriser: rast [B,H,W,4] = (u, v, z, face_id+1), zeros where no face.

    Pixel centres (x=j, y=i); coverage and depth in float64 with watertight canonical edges and a
    top-left tie rule; nearest float32 depth wins, ties go to the lower face id. Triangles with a
    vertex at z <= near_z are dropped. (u, v, z) are differentiable w.r.t. verts_cam (autograd).
    """
    H, W = int(size[0]), int(size[1])
    B = verts_cam.shape[0]
    if K.dim() == 2:
        K = K.expand(B, 3, 3)
    K = K.to(verts_cam.dtype)
    faces = faces.to(torch.int64)
    zbuf = _raster_zbuffer(verts_cam, faces, K, H, W, cull_backfaces, near_z)
    covered = (zbuf != torch.iinfo(torch.int64).max).nonzero(as_tuple=True)[0]
    rast = verts_cam.new_zeros(B * H * W, 4)
    if covered.numel() == 0:
        return rast.view(B, H, W, 4)
    fid = zbuf[covered] & 0xFFFFFFFF
    b = covered // (H * W)
    rem = covered % (H * W)
    py = (rem // W).double()
    px = (rem % W).double()
    tri = faces[fid]
    vd = verts_cam.double()  # resolved in float64, like the kernels, then cast back
    v0 = vd[b, tri[:, 0]]
    v1 = vd[b, tri[:, 1]]
    v2 = vd[b, tri[:, 2]]
    u, v, z = _resolve_uvz(v0, v1, v2, K.double()[b], px, py)
    vals = torch.stack([u, v, z, (fid + 1).double()], dim=-1).to(verts_cam.dtype)
    rast = rast.index_put((covered,), vals)
    return rast.view(B, H, W, 4)


def interpolate_ref(attr: torch.Tensor, rast: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Reference barycentric interpolation: [B,H,W,C] = u*a0 + v*a1 + (1-u-v)*a2, 0 off-mesh.

    attr is [B,V,C] or [V,C] (shared by the batch); differentiable w.r.t. attr and rast u, v.
    """
    B, H, W, _ = rast.shape
    if attr.dim() == 2:
        attr = attr.unsqueeze(0)
    C = attr.shape[-1]
    flat = rast.reshape(B * H * W, 4)
    fid = flat[:, 3].detach().long() - 1
    covered = (fid >= 0).nonzero(as_tuple=True)[0]
    out = attr.new_zeros(B * H * W, C)
    if covered.numel() == 0:
        return out.view(B, H, W, C)
    tri = faces.long()[fid[covered]]
    b = covered // (H * W) if attr.shape[0] > 1 else torch.zeros_like(covered)
    a0, a1, a2 = attr[b, tri[:, 0]], attr[b, tri[:, 1]], attr[b, tri[:, 2]]
    u = flat[covered, 0, None]
    v = flat[covered, 1, None]
    vals = u * a0 + v * a1 + (1 - u - v) * a2
    return out.index_put((covered,), vals).view(B, H, W, C)


# ---- sh_shading / depth_warp / correspondence_warp -------------------------------------------

# SH irradiance constants (DESIGN §3 order 1, y, z, x, xy, yz, 3z²-1, xz, x²-y²) live in
# jr2net.face.sh; the oracle below re-derives the basis from them independently of sh_basis.


def sh_basis_ref(normals: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """The 9 SH irradiance basis values (DESIGN §3 order and constants) of camera-frame normals.

    ``normals`` holds (x, y, z) along ``dim`` ([B,3,H,W] -> [B,9,H,W] by default; ``dim=-1`` for
    [..., 3] -> [..., 9]).
    """
    x, y, z = normals.unbind(dim)
    basis = [
        torch.full_like(x, SH_C0),
        SH_C1 * y,
        SH_C1 * z,
        SH_C1 * x,
        SH_C2 * x * y,
        SH_C2 * y * z,
        SH_C3 * (3 * z * z - 1),
        SH_C2 * x * z,
        SH_C4 * (x * x - y * y),
    ]
    return torch.stack(basis, dim=dim)


def sh_shading_ref(
    normals: torch.Tensor,
    albedo: torch.Tensor,
    sh: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, irradiance): irradiance = mask · Σ_b sh[:,b] H_b(normals), image = albedo ⊙ irradiance.

    Normals are used as given (callers normalise); the mask multiplies, so a 0/1 mask zeroes the
    outside and a soft mask scales it.
    """
    irradiance = torch.einsum("bkhw,bkc->bchw", sh_basis_ref(normals), sh)
    if mask is not None:
        irradiance = irradiance * mask
    return albedo * irradiance, irradiance


# Slack (pixels) of the "inside the source image" test, so rounding cannot drop border pixels
# (the identity warp keeps its last column); the bilinear weights extrapolate by at most this.
WARP_EDGE_TOL = 1e-3


def _warp_sample_ref(
    src: torch.Tensor,
    points: torch.Tensor,
    target_ok: torch.Tensor,
    K_src: torch.Tensor,
    src_depth: torch.Tensor | None,
    rel_eps: float,
    out_hw: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project source-frame points [B,N,3] with K_src and bilinearly sample src (see csrc/ops/warp.h)."""
    B, C, Hs, Ws = src.shape
    X, Y, Z = points[..., 0], points[..., 1], points[..., 2]
    k = K_src
    q0 = k[:, 0, 0, None] * X + k[:, 0, 1, None] * Y + k[:, 0, 2, None] * Z
    q1 = k[:, 1, 0, None] * X + k[:, 1, 1, None] * Y + k[:, 1, 2, None] * Z
    q2 = k[:, 2, 0, None] * X + k[:, 2, 1, None] * Y + k[:, 2, 2, None] * Z
    front = q2 > 0
    q2s = torch.where(front, q2, torch.ones_like(q2))  # keeps gradients finite behind the camera
    x, y = q0 / q2s, q1 / q2s
    tol = WARP_EDGE_TOL
    inside = front & (x >= -tol) & (x <= Ws - 1 + tol) & (y >= -tol) & (y <= Hs - 1 + tol)
    xs = torch.where(inside, x, torch.zeros_like(x))
    ys = torch.where(inside, y, torch.zeros_like(y))
    x0 = torch.clamp(torch.floor(xs.detach()), min=0, max=max(Ws - 2, 0))
    y0 = torch.clamp(torch.floor(ys.detach()), min=0, max=max(Hs - 2, 0))
    fx, fy = xs - x0, ys - y0
    dx, dy = (1 if Ws > 1 else 0), (Ws if Hs > 1 else 0)
    i00 = (y0 * Ws + x0).long()
    taps = [i00, i00 + dx, i00 + dy, i00 + dy + dx]
    weights = [(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy]
    covisible = target_ok & inside
    if src_depth is not None:
        flat_d = src_depth.reshape(B, Hs * Ws)
        d00, d01, d10, d11 = (torch.gather(flat_d, 1, t) for t in taps)
        top = d00 + fx * (d01 - d00)
        bot = d10 + fx * (d11 - d10)
        ds = top + fy * (bot - top)
        holes = (d00 > 0) & (d01 > 0) & (d10 > 0) & (d11 > 0)
        covisible = covisible & holes & ((Z - ds).abs() <= rel_eps * Z)
    flat = src.reshape(B, C, Hs * Ws)
    warped = sum(
        w[:, None, :] * torch.gather(flat, 2, t[:, None, :].expand(B, C, t.shape[1]))
        for w, t in zip(weights, taps, strict=True)
    )
    warped = torch.where(covisible[:, None, :], warped, torch.zeros_like(warped))
    Ht, Wt = out_hw
    return warped.reshape(B, C, Ht, Wt), covisible.to(src.dtype).reshape(B, 1, Ht, Wt)


def depth_warp_ref(
    src: torch.Tensor,
    dst_depth: torch.Tensor,
    K_src: torch.Tensor,
    K_dst: torch.Tensor,
    src_T_dst: torch.Tensor,
    src_depth: torch.Tensor | None = None,
    rel_eps: float = 0.02,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(warped, covisible): seed Eq. 2, p_s ~ K_src · src_T_dst · D_t(p_t) · K_dst⁻¹ · p_t, bilinear.

    D_t is the camera-frame z of the target pixel (dst_depth > 0 marks valid pixels).
    """
    B, _, Ht, Wt = dst_depth.shape
    M = src_T_dst[:, :3, :3] @ torch.linalg.inv(K_dst)  # pixel -> source-frame ray at z_dst = 1
    t = src_T_dst[:, :3, 3]
    ii, jj = torch.meshgrid(
        torch.arange(Ht, dtype=src.dtype, device=src.device),
        torch.arange(Wt, dtype=src.dtype, device=src.device),
        indexing="ij",
    )
    pix = torch.stack([jj.reshape(-1), ii.reshape(-1), torch.ones_like(ii).reshape(-1)], -1)
    rays = torch.einsum("bkl,nl->bnk", M, pix)
    d = dst_depth.reshape(B, Ht * Wt, 1)
    points = d * rays + t[:, None, :]
    return _warp_sample_ref(src, points, d[..., 0] > 0, K_src, src_depth, rel_eps, (Ht, Wt))


def correspondence_warp_ref(
    src: torch.Tensor,
    points_src: torch.Tensor,
    valid: torch.Tensor,
    K_src: torch.Tensor,
    src_depth: torch.Tensor | None = None,
    rel_eps: float = 0.02,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(warped, covisible): sample src at the projection of each target pixel's source-frame point.

    valid [B,1,Ht,Wt] > 0.5 marks target pixels that have a point.
    """
    B, Ht, Wt, _ = points_src.shape
    points = points_src.reshape(B, Ht * Wt, 3)
    ok = valid.reshape(B, Ht * Wt) > 0.5
    return _warp_sample_ref(src, points, ok, K_src, src_depth, rel_eps, (Ht, Wt))
