"""The generic template's mesh: prioritised point sets, the Delaunay triangulation, regions."""

from __future__ import annotations

import numpy as np
from scipy.spatial import Delaunay, cKDTree

from jr2net.face.generic.shape import (
    _background_ae,
    _base_point,
    _eye_base_z,
    _eye_center,
    _eye_contour,
    _face_dz,
    _globe_z,
    _invert_xy,
    _lip_borders,
    _rings,
    _slit_y,
    _smoothstep,
)
from jr2net.face.generic.tables import (
    _A_MAX,
    _DOMAIN_R,
    _E_MAX,
    _E_MIN,
    _GLOBE_R,
    _GLOBE_RX,
    _MOUTH_HALF,
    _MOUTH_STEP,
)


class _Builder:
    """Collects prioritised point sets in frontal (x, y) or domain (a, e) coordinates."""

    def __init__(self) -> None:
        self.a: list[np.ndarray] = []
        self.e: list[np.ndarray] = []
        self.r: list[np.ndarray] = []
        self.tags: dict[str, np.ndarray] = {}
        self.n = 0

    def add_ae(self, a: np.ndarray, e: np.ndarray, radius, tag: str | None = None) -> None:
        a, e = np.asarray(a, float).ravel(), np.asarray(e, float).ravel()
        self.a.append(a)
        self.e.append(e)
        self.r.append(np.broadcast_to(np.asarray(radius, float), a.shape).copy())
        if tag is not None:
            self.tags[tag] = np.arange(self.n, self.n + a.size)
        self.n += a.size

    def add_xy(self, xy: np.ndarray, radius, tag: str | None = None) -> None:
        a, e = _invert_xy(np.asarray(xy, float).reshape(-1, 2))
        self.add_ae(a, e, radius, tag)

    def merge(self) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Drop points within their own radius of an earlier (higher-priority) point."""
        a, e, r = np.concatenate(self.a), np.concatenate(self.e), np.concatenate(self.r)
        uw = _DOMAIN_R * np.stack([a, e], 1)
        keep = np.ones(a.size, bool)
        start = 0
        for block in self.a:
            stop = start + block.size
            if start > 0:
                prev = np.nonzero(keep[:start])[0]
                tree = cKDTree(uw[prev])
                d, _ = tree.query(uw[start:stop])
                keep[start:stop] = d >= r[start:stop]
            start = stop
        new_index = np.cumsum(keep) - 1
        kept = np.nonzero(keep)[0]
        tree = cKDTree(uw[kept])
        tags = {}
        for k, idx in self.tags.items():
            if not keep[idx].all() and not k.startswith("jaw_"):
                raise AssertionError(f"generic model: tagged points {k} were dropped")
            # Jawline candidates may coincide with jaw landmarks (as in ICT): snap to them.
            tags[k] = kept[tree.query(uw[idx])[1]]
            tags[k] = new_index[tags[k]]
        return a[keep], e[keep], tags


def _point_in_polygon(p: np.ndarray, poly: np.ndarray) -> np.ndarray:
    x, y = p[:, 0], p[:, 1]
    inside = np.zeros(len(p), bool)
    n = len(poly)
    for i in range(n):
        x0, y0 = poly[i]
        x1, y1 = poly[(i + 1) % n]
        cond = (y0 > y) != (y1 > y)
        xint = x0 + (y - y0) * (x1 - x0) / np.where(y1 != y0, y1 - y0, 1.0)
        inside ^= cond & (x < xint)
    return inside


def _grid_faces(nr: int, nc: int, offset: int) -> np.ndarray:
    """Two triangles per cell of an nr x nc row-major vertex grid, CCW in (col, row)."""
    i, j = np.meshgrid(np.arange(nr - 1), np.arange(nc - 1), indexing="ij")
    v00 = (i * nc + j).ravel() + offset
    v01, v10, v11 = v00 + 1, v00 + nc, v00 + nc + 1
    return np.concatenate([np.stack([v00, v01, v11], 1), np.stack([v00, v11, v10], 1)], 0)


def _landmark_points() -> dict[int, tuple[float, float]]:
    """Frontal (x, y) positions of the landmarks placed directly (jaw, brows, nose, outer lips)."""
    lm_xy = {}
    jaw_y = np.array([37.0, 15.0, -5.0, -24.0, -43.0, -58.0, -68.0, -73.5, -76.0])
    jaw_x = np.array([74.5, 74.0, 71.0, 66.0, 57.5, 46.0, 32.0, 16.0, 0.0])
    for k in range(17):
        j = 8 - abs(k - 8)
        lm_xy[k] = (jaw_x[j] * (1 if k > 8 else -1), jaw_y[j])
    brow_x = [56.0, 47.0, 37.0, 25.5, 13.5]
    brow_y = [50.0, 56.5, 59.5, 59.5, 57.0]
    for i in range(5):
        lm_xy[17 + i] = (-brow_x[i], brow_y[i])
        lm_xy[26 - i] = (brow_x[i], brow_y[i])
    for i, yy in enumerate([35.0, 24.5, 14.0, 3.5]):
        lm_xy[27 + i] = (0.0, yy)
    for i, xx in enumerate([-12.0, -6.0, 0.0, 6.0, 12.0]):
        lm_xy[31 + i] = (xx, -10.0 if xx else -12.0)
    ub_x = np.array([-17.0, -7.5, 0.0, 7.5, 17.0])
    lb_x = np.array([17.0, 10.0, 0.0, -10.0, -17.0])
    ub_y = _lip_borders(ub_x)[0]
    lb_y = _lip_borders(lb_x)[1]
    lm_xy[48] = (-_MOUTH_HALF - 2.5, _slit_y(np.array(_MOUTH_HALF)) - 0.5)
    lm_xy[54] = (_MOUTH_HALF + 2.5, _slit_y(np.array(_MOUTH_HALF)) - 0.5)
    for i in range(5):
        lm_xy[49 + i] = (ub_x[i], ub_y[i])
        lm_xy[55 + i] = (lb_x[i], lb_y[i])
    return lm_xy


def _collect_points(b: _Builder, lm_xy: dict[int, tuple[float, float]]) -> list[int]:
    """Add every point set to ``b`` in priority order: landmarks, eye contours and rings, the mouth
    slit and rows beside it, the nose patch, the jaw contour candidates, the background. Returns
    the landmark ids of the ``lm_misc`` tag, in order."""
    pts = np.array([lm_xy[k] for k in sorted(lm_xy)])
    b.add_xy(pts, 0.8, "lm_misc")
    lm_misc_ids = sorted(lm_xy)

    # Eye contours (corners shared), rings around them.
    eyes = {}
    for side, name in ((1.0, "L"), (-1.0, "R")):
        upper, lower, _ = _eye_contour(side)
        b.add_xy(upper, 0.9, f"eye_up_{name}")
        b.add_xy(lower[1:-1], 0.9, f"eye_low_{name}")
        eyes[name] = (upper, lower)
    for side, name in ((1.0, "L"), (-1.0, "R")):
        upper, lower = eyes[name]
        c = _eye_center(side)
        b.add_xy(_rings(c, upper, lower, [1.18, 1.42, 1.75, 2.15], 28), 1.2)

    # Mouth slit (duplicated later), rows of points parallel to it.
    sx = np.arange(-_MOUTH_HALF, _MOUTH_HALF + 1e-6, _MOUTH_STEP)
    b.add_xy(np.stack([sx, _slit_y(sx)], 1), 1.0, "slit")
    rows = []
    for off in (1.6, 3.6, 6.2, 9.5, -1.6, -3.6, -6.2, -9.5, -13.0):
        half = _MOUTH_HALF + 0.9 * abs(off) + 1.0
        rx = np.linspace(-half, half, int(2 * half / _MOUTH_STEP) + 1)
        taper = np.sqrt(np.clip(1 - (rx / half) ** 2, 0, 1))
        ry = _slit_y(np.clip(rx, -_MOUTH_HALF, _MOUTH_HALF)) + off * taper
        ok = np.abs(ry - _slit_y(np.clip(rx, -_MOUTH_HALF, _MOUTH_HALF))) > 0.8
        rows.append(np.stack([rx, ry], 1)[ok])
    b.add_xy(np.concatenate(rows), 1.1)

    # Dense nose patch.
    nx, ny = np.meshgrid(np.linspace(-19.2, 19.2, 17), np.arange(-15.0, 44.0, 2.4))
    b.add_xy(np.stack([nx.ravel(), ny.ravel()], 1), 1.5)

    # Jawline contour candidates: the jaw landmark curve pushed back (larger |a|) toward the ear.
    jl = np.array([lm_xy[k] for k in range(8, 17)])
    ja, je = _invert_xy(jl)
    arc = np.concatenate([[0], np.cumsum(np.hypot(np.diff(ja), np.diff(je)))])
    ts = np.linspace(0.03, 1.0, 17)
    ca = np.interp(ts * arc[-1], arc, ja) + np.deg2rad(9.0) * ts**1.5
    ce = np.interp(ts * arc[-1], arc, je) + np.deg2rad(2.0) * ts
    b.add_ae(ca, ce, 0.8, "jaw_L")
    b.add_ae(-ca[::-1], ce[::-1], 0.8, "jaw_R")

    ga, ge, gsp = _background_ae()
    b.add_ae(ga, ge, 0.62 * gsp)
    return lm_misc_ids


def _triangulate(
    a: np.ndarray, e: np.ndarray, tags: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Delaunay mesh of the (a, e) domain without hull slivers and eye holes; unused points are
    dropped (``tags`` remapped in place). Returns (tri, a, e, base points)."""
    # Triangulate the domain.
    uw = _DOMAIN_R * np.stack([a, e], 1)
    tri = Delaunay(uw).simplices.astype(np.int64)
    p2 = uw[tri]
    area = (p2[:, 1, 0] - p2[:, 0, 0]) * (p2[:, 2, 1] - p2[:, 0, 1]) - (
        p2[:, 1, 1] - p2[:, 0, 1]
    ) * (p2[:, 2, 0] - p2[:, 0, 0])
    tri[area < 0] = tri[area < 0][:, [0, 2, 1]]

    base = _base_point(a, e)
    # Remove slivers along the domain's convex hull (nearly collinear boundary points).
    q = _tri_quality(uw, tri)
    tri = tri[q > 0.05]

    # Eye holes.
    for name in ("L", "R"):
        up = tags[f"eye_up_{name}"]
        lo = tags[f"eye_low_{name}"]
        loop = np.concatenate([up, lo[::-1]])
        poly = base[loop, :2]
        cen = base[tri, :2].mean(1)
        inside = _point_in_polygon(cen, poly)
        tri = tri[~inside]

    # Drop vertices no triangle uses (inside the eye holes, hull slivers).
    used = np.zeros(len(a), bool)
    used[tri.ravel()] = True
    remap = np.cumsum(used) - 1
    for k, idx in tags.items():
        if not used[idx].all():
            raise AssertionError(f"generic model: tagged points {k} lost their triangles")
        tags[k] = remap[idx]
    tri, a, e, base = remap[tri], a[used], e[used], base[used]

    return tri, a, e, base


def _eyeball(
    side: float, reg: int, u0: float, offset: int, zg: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple]:
    """One eyeball cap with its flange: vertices, faces (ids from ``offset``), regions, uvs and the
    (vertex ids, centre, globe vertex ids) entry of ``eyeball``."""
    c = _eye_center(side)
    centre = np.array([c[0], c[1], zg])
    # Globe front (ellipsoid cap down to its equator), then a flat flange around the equator
    # that backs the lid opening, so no line of sight passes beside the eyeball.
    nr, ns = 9, 28
    psi = np.deg2rad(np.linspace(0.0, 90.0, nr))[1:]
    phi = np.linspace(0, 2 * np.pi, ns, endpoint=False)
    P, F = np.meshgrid(psi, phi, indexing="ij")
    dirs = np.stack([np.sin(P) * np.cos(F), np.sin(P) * np.sin(F), np.cos(P)], -1).reshape(-1, 3)
    dirs = np.concatenate([[[0.0, 0.0, 1.0]], dirs], 0)
    # It reaches further toward the nose (whose skin is far in front) than toward the temple.
    reach = 1.5 - 0.25 * side * np.cos(phi)[:, None]
    flange = np.concatenate([dirs[-ns:] * (1.0 + t * (reach - 1.0)) for t in (0.4, 1.0)], 0)
    flange[:, 2] = -2.5 / _GLOBE_R
    n_globe = len(dirs)
    dirs = np.concatenate([dirs, flange], 0)
    v = centre + np.array([_GLOBE_RX, _GLOBE_R, _GLOBE_R]) * dirs
    f = []
    for j in range(ns):  # pole fan
        f.append([0, 1 + j, 1 + (j + 1) % ns])
    n_rings = (len(dirs) - 1) // ns
    for i in range(n_rings - 1):
        for j in range(ns):
            p00 = 1 + i * ns + j
            p01 = 1 + i * ns + (j + 1) % ns
            p10, p11 = p00 + ns, p01 + ns
            f += [[p00, p10, p11], [p00, p11, p01]]  # outward on the globe, +z on the flange
    f = np.array(f) + offset
    uv_d = dirs[:, :2] / 1.75
    uv = np.stack([u0 + 0.1 + 0.09 * uv_d[:, 0], 0.9 + 0.09 * uv_d[:, 1]], 1)
    entry = (
        np.arange(offset, offset + len(v)),
        centre,
        np.arange(offset, offset + n_globe),
    )
    return v, f, np.full(len(v), reg, np.uint8), uv, entry


def _mouth_socket(
    verts: np.ndarray, slit: np.ndarray, offset: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The mouth-socket wall behind the lips: vertices, faces (ids from ``offset``), regions, uvs."""
    # Mouth socket: a curved wall ~14 mm behind the lips.
    # It curves forward at the sides, staying 3.5 mm inside the skin, so that an open mouth seen
    # from an angle shows the socket rather than the back of the cheeks.
    gx, gy = np.linspace(-33.0, 33.0, 23), np.linspace(-50.0, -20.0, 11)
    SX, SY = np.meshgrid(gx, gy, indexing="xy")
    zlip = float(verts[slit[len(slit) // 2], 2])
    sa, se = _invert_xy(np.stack([SX.ravel(), SY.ravel()], 1))
    sb = _base_point(sa, se)
    skin_z = (sb[:, 2] + _face_dz(sb[:, 0], sb[:, 1], sb[:, 2])).reshape(SX.shape)
    SZ = np.minimum(zlip - 16.0 + 0.01 * SX**2 - 0.01 * (SY + 34.0) ** 2, skin_z - 3.5)
    sv = np.stack([SX, SY, SZ], -1).reshape(-1, 3)
    sf = _grid_faces(len(gy), len(gx), offset)
    uv = np.stack(
        [
            0.5 + 0.5 * (sv[:, 0] - gx[0]) / (gx[-1] - gx[0]),
            0.82 + 0.16 * (sv[:, 1] - gy[0]) / (gy[-1] - gy[0]),
        ],
        1,
    )
    return sv, sf, np.full(len(sv), 2, np.uint8), uv


def _landmark_indices(
    lm_misc_ids: list[int], tags: dict[str, np.ndarray], slit: np.ndarray, slit_lower: np.ndarray
) -> np.ndarray:
    """Vertex ids of the 68 iBUG landmarks."""
    # Landmark indices.
    lm = np.zeros(68, np.int64)
    for i, k in enumerate(lm_misc_ids):
        lm[k] = tags["lm_misc"][i]
    for name, (outer, inner_c, up_ids, low_ids) in {
        "R": (36, 39, (37, 38), (41, 40)),
        "L": (45, 42, (44, 43), (46, 47)),
    }.items():
        up = tags[f"eye_up_{name}"]
        lo = tags[f"eye_low_{name}"]
        lm[inner_c], lm[outer] = up[0], up[-1]
        lm[up_ids[0]], lm[up_ids[1]] = up[12], up[6]
        lm[low_ids[0]], lm[low_ids[1]] = lo[11], lo[5]
    mid = len(slit) // 2
    lm[60], lm[64] = slit[0], slit[-1]
    lm[61], lm[62], lm[63] = slit[mid - 4], slit[mid], slit[mid + 4]
    lm[65], lm[66], lm[67] = slit_lower[mid + 4], slit_lower[mid], slit_lower[mid - 4]

    return lm


def _build() -> dict[str, np.ndarray]:
    b = _Builder()
    # Landmarks first (exact vertices), then contours, rings, the dense nose patch, background.
    lm_xy = _landmark_points()
    lm_misc_ids = _collect_points(b, lm_xy)
    a, e, tags = b.merge()
    tri, a, e, base = _triangulate(a, e, tags)

    # Frontal features.
    front = _smoothstep((np.cos(a) - 0.05) / 0.45)
    verts = base.copy()
    verts[:, 2] += front * _face_dz(base[:, 0], base[:, 1], base[:, 2])

    # Duplicate the interior slit vertices; faces below the slit use the copies.
    slit = tags["slit"]
    inner = slit[1:-1]
    n0 = len(verts)
    lower_copy = np.full(n0, -1)
    lower_copy[inner] = n0 + np.arange(inner.size)
    cen = base[tri, :2].mean(1)
    below = cen[:, 1] < _slit_y(np.clip(cen[:, 0], -_MOUTH_HALF, _MOUTH_HALF))
    uses = np.isin(tri, inner)
    sel = below[:, None] & uses
    tri[sel] = lower_copy[tri[sel]]
    verts = np.concatenate([verts, verts[inner]], 0)
    a = np.concatenate([a, a[inner]])
    e = np.concatenate([e, e[inner]])
    slit_lower = np.concatenate([[slit[0]], lower_copy[inner], [slit[-1]]])
    n_skin = len(verts)

    # Regions of the skin.
    region = np.zeros(n_skin, np.uint8)
    bx = np.concatenate([base, base[inner]], 0)
    head_neck = (np.abs(a) > np.deg2rad(82.0)) | ((bx[:, 1] < -88.0) & (bx[:, 2] < 75.0))
    region[head_neck] = 1

    # Eyeball caps and the mouth-socket wall.
    parts_v = [verts]
    parts_f = [tri]
    parts_r = [region]
    uv_skin = np.stack([(a / _A_MAX + 1) / 2, 0.8 * (e - _E_MIN) / (_E_MAX - _E_MIN)], 1)
    parts_uv = [uv_skin]
    eyeball = {}
    offset = n_skin
    zg = _globe_z(_eye_base_z())
    for side, name, reg, u0 in ((1.0, "L", 3, 0.0), (-1.0, "R", 4, 0.25)):
        v, f, r, uv, eyeball[name] = _eyeball(side, reg, u0, offset, zg)
        parts_v.append(v)
        parts_f.append(f)
        parts_r.append(r)
        parts_uv.append(uv)
        offset += len(v)
    sv, sf, r, uv = _mouth_socket(verts, slit, offset)
    parts_v.append(sv)
    parts_f.append(sf)
    parts_r.append(r)
    parts_uv.append(uv)

    V = np.concatenate(parts_v, 0)
    F = np.concatenate(parts_f, 0)
    region = np.concatenate(parts_r)
    uvs = np.concatenate(parts_uv, 0)

    lm = _landmark_indices(lm_misc_ids, tags, slit, slit_lower)
    info = dict(
        verts=V,
        faces=F,
        region=region,
        uvs=uvs,
        landmarks68=lm,
        slit=slit,
        slit_lower=slit_lower,
        eyeball=eyeball,
        jaw_L=tags["jaw_L"],
        jaw_R=tags["jaw_R"],
    )
    return info


def _tri_quality(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """2·sqrt(3)·area / (sum of squared edge lengths): 1 for equilateral, 0 for degenerate."""
    q = p[tri]
    if q.shape[-1] == 2:
        q = np.concatenate([q, np.zeros(q.shape[:-1] + (1,))], -1)
    e0, e1, e2 = q[:, 1] - q[:, 0], q[:, 2] - q[:, 1], q[:, 0] - q[:, 2]
    area = 0.5 * np.linalg.norm(np.cross(e0, -e2), axis=1)
    s = (e0**2).sum(1) + (e1**2).sum(1) + (e2**2).sum(1)
    return 4.0 * np.sqrt(3.0) * area / np.maximum(s, 1e-12)
