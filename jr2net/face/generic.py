"""The embedded ``generic`` face model: a head template generated deterministically by code.

A fresh offline machine has no ICT-FaceKit, so JR2Net builds this template instead (DESIGN §5).
It uses the same npz key format and conventions as the imported ICT model: millimetres, y up,
z out of the face, +x the subject's left, ICT's 53 expression names, dlib's 68-landmark order.

Construction, all closed-form (no data, no randomness):
  * a star-shaped base head: radius about a centre ``_C`` as a function of azimuth ``a`` and
    elevation ``e``, from a sagittal profile (face), a coronal profile (sides) and a
    superellipse blend between them;
  * facial features as z-displacements over the frontal (x, y) plane (nose, brows, cheekbones,
    lips, chin, eye sockets whose lids hug the eyeballs);
  * a Delaunay mesh of the (a, e) domain, denser on the face, with points inserted exactly at
    the landmarks, eye contours (holes, closed by eyeBlink) and a lip slit whose vertices are
    duplicated so the jaw can open the mouth; eyeball caps and a mouth-socket wall behind;
  * identity modes (semantic, local ones plus smooth low-order fields, Löwdin-orthogonalised)
    and 53 expression fields built from the same frontal coordinates.
The build takes ~0.5 s and is cached per process; ``preview_png`` renders a contact sheet.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.spatial import Delaunay, cKDTree

SOURCE = "jr2net generic template (procedural)"
REGION_NAMES = ("face", "head_neck", "mouth_socket", "eyeball_left", "eyeball_right")
EXPRESSION_NAMES = (
    "browDown_L", "browDown_R", "browInnerUp_L", "browInnerUp_R", "browOuterUp_L",
    "browOuterUp_R", "cheekPuff_L", "cheekPuff_R", "cheekSquint_L", "cheekSquint_R",
    "eyeBlink_L", "eyeBlink_R", "eyeLookDown_L", "eyeLookDown_R", "eyeLookIn_L", "eyeLookIn_R",
    "eyeLookOut_L", "eyeLookOut_R", "eyeLookUp_L", "eyeLookUp_R", "eyeSquint_L", "eyeSquint_R",
    "eyeWide_L", "eyeWide_R", "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose",
    "mouthDimple_L", "mouthDimple_R", "mouthFrown_L", "mouthFrown_R", "mouthFunnel", "mouthLeft",
    "mouthLowerDown_L", "mouthLowerDown_R", "mouthPress_L", "mouthPress_R", "mouthPucker",
    "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthSmile_L", "mouthSmile_R", "mouthStretch_L", "mouthStretch_R", "mouthUpperUp_L",
    "mouthUpperUp_R", "noseSneer_L", "noseSneer_R",
)  # fmt: skip

# ---------------------------------------------------------------------------------------------
# Base head: radius about _C from profiles (absolute model coordinates, mm).
_C = np.array([0.0, 10.0, 10.0])
# Sagittal front profile (y, z) of the face *without* nose/lips/chin features.
_SAGITTAL = np.array([
    (-108, 20), (-104, 45), (-96, 68), (-86, 86), (-74, 97), (-60, 102), (-45, 105), (-30, 108),
    (-15, 108), (0, 106), (15, 103), (30, 103), (45, 105), (60, 105), (80, 100), (100, 90),
    (120, 72), (135, 52), (146, 28),
], dtype=np.float64)  # fmt: skip
# Coronal side profile (x, y) of the head in the plane z = _C[2].
_CORONAL = np.array([
    (40, -110), (45, -100), (50, -85), (57, -65), (66, -40), (73, -15), (77, 10), (78, 35),
    (77, 60), (73, 85), (64, 108), (52, 125), (38, 138),
], dtype=np.float64)  # fmt: skip
_BACK_RADIUS = 95.0  # horizontal radius straight back (only |a| > 90° uses it)
_SUPER_N = 2.4  # superellipse exponent of horizontal cross-sections (flat face, round sides)
_A_MAX = np.deg2rad(100.0)
_E_MIN, _E_MAX = np.deg2rad(-74.0), np.deg2rad(62.0)
_DOMAIN_R = 90.0  # mm per radian in the (U, W) Delaunay domain

# Eyes (left eye, +x; the right one mirrors): contour from inner to outer canthus.
_EYE_INNER = (18.5, 33.0)
_EYE_OUTER = (44.0, 34.5)
_EYE_UP, _EYE_LOW = 5.8, 3.0  # lid heights above / below the canthal line
_EYE_N = 18  # contour intervals (multiple of 3: landmarks sit at 1/3 and 2/3)
_GLOBE_R = 13.0  # eyeball depth / vertical semi-axis
_GLOBE_RX = 14.5  # horizontal semi-axis: wider than a real globe so it backs both canthi
_LID_T = 1.5  # lid thickness in front of the globe
# Mouth: slit y(x) = _MOUTH_Y - droop (x / half-width)^2, corners at ±_MOUTH_HALF.
_MOUTH_Y, _MOUTH_DROOP, _MOUTH_HALF, _MOUTH_STEP = -33.0, 2.0, 25.0, 2.5


def _pchip_polar(points: np.ndarray, plane: str) -> PchipInterpolator:
    """Radius about _C as a smooth function of elevation, from profile points in one plane."""
    if plane == "sagittal":
        dy, dh = points[:, 0] - _C[1], points[:, 1] - _C[2]
    else:
        dy, dh = points[:, 1] - _C[1], points[:, 0]
    e = np.arctan2(dy, dh)
    order = np.argsort(e)
    return PchipInterpolator(e[order], np.hypot(dy, dh)[order], extrapolate=True)


_R_FRONT = _pchip_polar(_SAGITTAL, "sagittal")
_R_SIDE = _pchip_polar(_CORONAL, "coronal")


def _base_radius(a: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Radius of the featureless head along direction (a, e): superellipse blend front/side/back."""
    rf = _R_FRONT(e)
    rs = _R_SIDE(e)
    rb = np.maximum(rf, _BACK_RADIUS)
    ca, sa = np.cos(a), np.abs(np.sin(a))
    rfb = np.where(ca >= 0, rf, rb)
    n = _SUPER_N
    return 1.0 / ((sa / rs) ** n + (np.abs(ca) / rfb) ** n) ** (1.0 / n)


def _direction(a: np.ndarray, e: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(e) * np.sin(a), np.sin(e), np.cos(e) * np.cos(a)], axis=-1)


def _base_point(a: np.ndarray, e: np.ndarray) -> np.ndarray:
    return _C + _base_radius(a, e)[..., None] * _direction(a, e)


def _invert_xy(xy: np.ndarray, iters: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Domain angles (a, e) of the front-facing base point with these (x, y); fixed-point solve."""
    x, y = xy[:, 0], xy[:, 1]
    a = np.zeros_like(x)
    e = np.zeros_like(x)
    for _ in range(iters):
        r = _base_radius(a, e)
        e = np.arcsin(np.clip((y - _C[1]) / r, -0.999, 0.999))
        a = np.arcsin(np.clip(x / (r * np.cos(e)), -0.999, 0.999))
    return a, e


# ---------------------------------------------------------------------------------------------
# Small field helpers (all vectorised over vertices).
def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _gauss(x: np.ndarray, y: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def _smax(p: np.ndarray, q: np.ndarray, k: float) -> np.ndarray:
    """Smooth maximum (k = blend width in mm)."""
    return 0.5 * (p + q + np.sqrt((p - q) ** 2 + k * k))


def _eye_contour(side: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upper and lower lid contours [N+1,2] (inner→outer, shared corners) and t samples."""
    t = np.linspace(0.0, 1.0, _EYE_N + 1)
    x = _EYE_INNER[0] + (_EYE_OUTER[0] - _EYE_INNER[0]) * t
    ymid = _EYE_INNER[1] + (_EYE_OUTER[1] - _EYE_INNER[1]) * t
    s = np.sin(np.pi * t)
    # Upper lid peaks a little toward the inner side, as on real eyes.
    up = ymid + _EYE_UP * np.sin(np.pi * t**0.9) ** 0.8
    low = ymid - _EYE_LOW * s**0.9
    upper = np.stack([side * x, up], 1)
    lower = np.stack([side * x, low], 1)
    return upper, lower, t


def _eye_center(side: float) -> np.ndarray:
    return np.array([side * 0.5 * (_EYE_INNER[0] + _EYE_OUTER[0]), 33.9])


def _slit_y(x: np.ndarray) -> np.ndarray:
    return _MOUTH_Y - _MOUTH_DROOP * (np.clip(np.abs(x) / _MOUTH_HALF, 0, 1)) ** 2


def _lip_borders(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """y of the upper and lower vermilion borders (outer lip line) above/below the slit."""
    u = np.clip(np.abs(x) / (_MOUTH_HALF + 3.0), 0, 1)
    bow = 0.9 * np.exp(-0.5 * ((np.abs(x) - 6.0) / 3.0) ** 2) - 0.6 * np.exp(-0.5 * (x / 2.0) ** 2)
    upper = _slit_y(x) + (8.5 + bow) * (1 - u**2) ** 0.7
    lower = _slit_y(x) - 10.0 * (1 - u**2) ** 0.6
    return upper, lower


# ---------------------------------------------------------------------------------------------
# Facial features: z displacement over the frontal (x, y) plane.
def _nose_dz(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    ys = [-17.0, -12.0, -6.0, 0.0, 3.5, 10.0, 20.0, 30.0, 38.0, 48.0]
    hs = [0.0, 1.5, 12.0, 21.0, 23.0, 20.0, 14.5, 9.0, 5.0, 1.0]
    ws = [9.0, 9.0, 8.5, 7.5, 7.0, 6.0, 5.5, 6.0, 8.0, 11.0]
    yc = np.clip(y, ys[0], ys[-1])
    h = PchipInterpolator(ys, hs)(yc) * (y > ys[0]) * (y < ys[-1])
    w = PchipInterpolator(ys, ws)(yc)
    ridge = h * np.exp(-0.5 * (np.abs(x) / w) ** 2.4)
    alae = 7.5 * (_gauss(x, y, 12.0, -6.5, 4.5, 4.5) + _gauss(x, y, -12.0, -6.5, 4.5, 4.5))
    nostril = -2.0 * (_gauss(x, y, 6.0, -10.0, 2.5, 1.8) + _gauss(x, y, -6.0, -10.0, 2.5, 1.8))
    return ridge + alae + nostril


def _face_dz(x: np.ndarray, y: np.ndarray, zbase: np.ndarray) -> np.ndarray:
    """Total frontal z displacement of the skin at (x, y) over a base surface at zbase."""
    ax = np.abs(x)
    dz = _nose_dz(x, y)
    # Brow ridge along an arc, glabella, cheekbones, temples.
    brow_y = 50.0 + 4.0 * np.exp(-0.5 * ((ax - 30.0) / 14.0) ** 2)
    dz += 4.0 * np.exp(-0.5 * ((y - brow_y) / 6.0) ** 2) * np.exp(-0.5 * ((ax - 26.0) / 20.0) ** 2)
    dz += 3.0 * _gauss(x, y, 0.0, 42.0, 9.0, 8.0)
    dz += 5.5 * _gauss(ax, y, 50.0, 12.0, 13.0, 10.0)
    dz -= 4.0 * _gauss(ax, y, 63.0, 48.0, 9.0, 14.0)
    # Lips: vermilion bulges, mouth following the dental arch, chin, mentolabial groove.
    ub, lb = _lip_borders(x)
    lat = np.exp(-((x / (_MOUTH_HALF + 2.0)) ** 4))
    sy = _slit_y(x)
    dz += 5.0 * lat * np.exp(-0.5 * ((y - (0.45 * sy + 0.55 * ub)) / 3.6) ** 2)
    dz += 5.5 * lat * np.exp(-0.5 * ((y - (0.5 * sy + 0.5 * lb)) / 4.2) ** 2)
    dz -= 0.009 * x**2 * _gauss(x, y, 0.0, -34.0, 40.0, 16.0)
    dz -= 3.0 * _gauss(x, y, 0.0, -52.0, 14.0, 3.5)
    dz += 5.0 * _gauss(x, y, 0.0, -66.0, 13.0, 8.0)
    dz -= 1.5 * _gauss(x, y, 0.0, -18.0, 3.0, 4.0)  # philtrum
    dz += 2.0 * _gauss(ax, y, 22.0, -20.0, 8.0, 8.0)  # nasolabial bulge
    # Eye sockets, then lids hugging the eyeballs (smooth max of socket and globe + lid).
    # Evaluated at |x| with the left eye, so both sides are exact mirror images.
    z = zbase + dz
    c = _eye_center(1.0)
    z = z - 11.0 * _gauss(ax, y, c[0], c[1] + 1.0, 13.0, 9.5)
    zg = _globe_z(_eye_base_z())
    q2 = _globe_q2(ax - c[0], y - c[1])
    inside = _GLOBE_R * np.sqrt(np.maximum(1.0 - q2, 0.0))
    outside = _GLOBE_R * np.maximum(np.sqrt(q2) - 1.0, 0.0)
    globe = zg + inside + _LID_T - 3.0 * outside
    z = _smax(z, globe, 2.5)
    return z - zbase


def _globe_q2(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Squared normalised radius of (dx, dy) on the eyeball's frontal ellipse (<1: in front)."""
    return (dx / _GLOBE_RX) ** 2 + (dy / _GLOBE_R) ** 2


@functools.lru_cache(maxsize=1)
def _eye_base_z() -> float:
    c = _eye_center(1.0)
    a, e = _invert_xy(c[None])
    return float(_base_point(a, e)[0, 2])


def _globe_z(zbase_center: float) -> float:
    """z of the eyeball centre: behind the socket floor so the lid apex sits ~2 mm in front."""
    return zbase_center - 11.0 - _GLOBE_R + 4.5


# ---------------------------------------------------------------------------------------------
# Point sets and mesh.
def _warp(s: np.ndarray, k: float) -> np.ndarray:
    return (s + k * s**3) / (1 + k)


def _background_ae() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Background grid in (a, e), denser at the face centre; returns a, e, local spacing (mm)."""
    na, ne, k = 67, 65, 1.1
    s = np.linspace(-1, 1, na)
    a = _A_MAX * _warp(s, k)
    t = np.linspace(-1, 1, ne)
    e0 = np.deg2rad(2.0)
    wt = _warp(t, k)
    e = np.where(wt >= 0, e0 + (_E_MAX - e0) * wt, e0 + (e0 - _E_MIN) * wt)
    A, E = np.meshgrid(a, e, indexing="xy")
    da = np.gradient(a)[None, :] * np.ones_like(A)
    de = np.gradient(e)[:, None] * np.ones_like(E)
    spacing = _DOMAIN_R * np.minimum(np.abs(da), np.abs(de))
    return A.ravel(), E.ravel(), spacing.ravel()


def _rings(center: np.ndarray, upper: np.ndarray, lower: np.ndarray, scales, n: int) -> np.ndarray:
    """Scaled copies of the eye contour about its centre, n points each."""
    loop = np.concatenate([upper, lower[::-1][1:-1]], 0)
    rel = loop - center
    ang = np.arctan2(rel[:, 1], rel[:, 0])
    order = np.argsort(ang)
    ang, rad = ang[order], np.hypot(rel[:, 0], rel[:, 1])[order]
    q = np.linspace(-np.pi, np.pi, n, endpoint=False) + np.pi / n
    rq = np.interp(q, ang, rad, period=2 * np.pi)
    out = []
    for sc in scales:
        out.append(center + sc * np.stack([rq * np.cos(q), rq * np.sin(q)], 1))
    return np.concatenate(out, 0)


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


def _build() -> dict[str, np.ndarray]:
    b = _Builder()
    # Landmarks first (exact vertices), then contours, rings, the dense nose patch, background.
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
    a, e, tags = b.merge()

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
        c = _eye_center(side)
        centre = np.array([c[0], c[1], zg])
        # Globe front (ellipsoid cap down to its equator), then a flat flange around the equator
        # that backs the lid opening, so no line of sight passes beside the eyeball.
        nr, ns = 9, 28
        psi = np.deg2rad(np.linspace(0.0, 90.0, nr))[1:]
        phi = np.linspace(0, 2 * np.pi, ns, endpoint=False)
        P, F = np.meshgrid(psi, phi, indexing="ij")
        dirs = np.stack([np.sin(P) * np.cos(F), np.sin(P) * np.sin(F), np.cos(P)], -1).reshape(
            -1, 3
        )
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
        parts_v.append(v)
        parts_f.append(f)
        parts_r.append(np.full(len(v), reg, np.uint8))
        uv_d = dirs[:, :2] / 1.75
        parts_uv.append(np.stack([u0 + 0.1 + 0.09 * uv_d[:, 0], 0.9 + 0.09 * uv_d[:, 1]], 1))
        eyeball[name] = (
            np.arange(offset, offset + len(v)),
            centre,
            np.arange(offset, offset + n_globe),
        )
        offset += len(v)
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
    parts_v.append(sv)
    parts_f.append(sf)
    parts_r.append(np.full(len(sv), 2, np.uint8))
    parts_uv.append(
        np.stack(
            [
                0.5 + 0.5 * (sv[:, 0] - gx[0]) / (gx[-1] - gx[0]),
                0.82 + 0.16 * (sv[:, 1] - gy[0]) / (gy[-1] - gy[0]),
            ],
            1,
        )
    )

    V = np.concatenate(parts_v, 0)
    F = np.concatenate(parts_f, 0)
    region = np.concatenate(parts_r)
    uvs = np.concatenate(parts_uv, 0)

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


# ---------------------------------------------------------------------------------------------
# Per-vertex context shared by the identity and expression fields.
class _Ctx:
    """Neutral positions, normals and masks of every vertex (skin, eyeballs, socket)."""

    def __init__(self, info: dict) -> None:
        v = info["verts"]
        self.v = v
        self.n_v = len(v)
        self.x, self.y, self.z = v[:, 0], v[:, 1], v[:, 2]
        self.region = info["region"]
        self.skin = self.region <= 1
        self.socket = self.region == 2
        self.eye = {"L": self.region == 3, "R": self.region == 4}
        self.eyeball = info["eyeball"]
        self.normals = _vertex_normals(v, info["faces"])
        self.normals[~self.skin] = (0.0, 0.0, 1.0)
        # The two copies of a slit vertex share one normal, so identity fields keep lips closed.
        up, low = info["slit"][1:-1], info["slit_lower"][1:-1]
        mean = self.normals[up] + self.normals[low]
        mean /= np.linalg.norm(mean, axis=1, keepdims=True)
        self.normals[up] = self.normals[low] = mean
        # Signed height above the lip line (the slit, continued up toward the jaw joints), and
        # which side of the slit a vertex is on: +1 upper, -1 lower, 0 at the corners.
        line = _slit_y(np.clip(self.x, -_MOUTH_HALF, _MOUTH_HALF))
        d = self.y - (line + 1.1 * np.maximum(np.abs(self.x) - _MOUTH_HALF, 0.0))
        band = 0.8 + 10.0 * _smoothstep((np.abs(self.x) - 23.0) / 14.0)
        side = np.tanh(d / band)
        slit, slit_lower = info["slit"], info["slit_lower"]
        side[slit[1:-1]] = 1.0
        side[slit_lower[1:-1]] = -1.0
        side[[slit[0], slit[-1]]] = 0.0
        self.lip_up = 0.5 * (1 + side)
        self.lip_low = 0.5 * (1 - side)
        self.info = info
        self.d_slit = d
        self.side_L = _smoothstep((self.x + 6.0) / 12.0)
        self.side_R = 1.0 - self.side_L

    def gauss(self, cx, cy, sx, sy, mirror: bool = False) -> np.ndarray:
        x = np.abs(self.x) if mirror else self.x
        return _gauss(x, self.y, cx, cy, sx, sy)

    def lip_band(self, upper: bool, reach: float) -> np.ndarray:
        """Weight of the upper or lower lip: 1 at the slit, fading over `reach` mm, 0 laterally."""
        lat = np.exp(-((self.x / (_MOUTH_HALF + 4.0)) ** 4))
        w = self.lip_up if upper else self.lip_low
        return w * lat * np.exp(-0.5 * (self.d_slit / reach) ** 2) * self.skin


def _vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, f[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def _stack(*cols: np.ndarray) -> np.ndarray:
    return np.stack(np.broadcast_arrays(*cols), -1).astype(np.float64)


def _eyes_follow_lids(ctx: _Ctx, disp: np.ndarray, fn: Callable) -> None:
    """Eyeball vertices take the field of the lid skin in front of them (same x, y; at the depth
    of the globe's front pole), so lids and eyeball move alike and the globe never pokes out."""
    for name in ("L", "R"):
        ids, centre, _ = ctx.eyeball[name]
        p = ctx.v[ids].copy()
        p[:, 2] = centre[2] + _GLOBE_R
        disp[ids] = fn(p, np.tile([0.0, 0.0, 1.0], (len(ids), 1)))


# ---------------------------------------------------------------------------------------------
# Identity modes.
def _identity_fields(ctx: _Ctx) -> list[Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    """Displacement fields f(points [N,3], normals [N,3]) -> [N,3] (1-sigma, mm)."""

    def g(p, cx, cy, sx, sy, mirror=False):
        x = np.abs(p[:, 0]) if mirror else p[:, 0]
        return _gauss(x, p[:, 1], cx, cy, sx, sy)

    def sgn(p):
        return np.tanh(p[:, 0] / 4.0)

    zero = lambda p: np.zeros(len(p))  # noqa: E731
    fields = [
        lambda p, n: _stack(zero(p), zero(p), 0.035 * (p[:, 2] - 10.0)),  # head depth
        lambda p, n: _stack(0.06 * p[:, 0] * _smoothstep((-10.0 - p[:, 1]) / 40.0), 0, 0),  # jaw
        lambda p, n: _stack(0, -3.5 * _smoothstep((-40.0 - p[:, 1]) / 30.0), 0),  # chin length
        lambda p, n: _stack(0, 0, 3.5 * g(p, 0, -70, 20, 12)),  # chin protrusion
        lambda p, n: _stack(
            0, -2.5 * g(p, 0, 10, 12, 22) * np.clip((35 - p[:, 1]) / 32, 0, 1.2), 0
        ),
        lambda p, n: _stack(0.16 * p[:, 0] * g(p, 0, -3, 16, 10), 0, 0),  # nose width
        lambda p, n: _stack(0, 0, 0.13 * _nose_dz(p[:, 0], p[:, 1])),  # nose projection
        lambda p, n: _stack(0, 0, 2.0 * g(p, 0, 22, 7, 10)),  # nose bridge
        lambda p, n: _stack(2.0 * sgn(p) * g(p, 31, 34, 14, 10, True), 0, 0),  # eye spacing
        lambda p, n: _stack(  # eye size
            0.09 * (np.abs(p[:, 0]) - 31.25) * sgn(p) * g(p, 31, 34, 12, 8, True),
            0.09 * (p[:, 1] - 33.9) * g(p, 31, 34, 12, 8, True),
            0,
        ),
        lambda p, n: _stack(0, 2.0 * g(p, 31, 34, 16, 11, True), 0),  # eye height
        lambda p, n: _stack(0, 3.0 * g(p, 32, 55, 22, 8, True), 0),  # brow height
        lambda p, n: _stack(0, 0, 2.5 * g(p, 28, 52, 20, 7, True)),  # brow ridge
        lambda p, n: _stack(0.09 * p[:, 0] * g(p, 0, -34, 30, 10), 0, 0),  # mouth width
        lambda p, n: _stack(0, 0, 2.0 * g(p, 0, -27, 22, 4)),  # upper lip thickness
        lambda p, n: _stack(0, 0, 2.2 * g(p, 0, -40, 22, 5)),  # lower lip thickness
        lambda p, n: _stack(0, 2.5 * g(p, 0, -34, 26, 12), 0),  # mouth height
        lambda p, n: 3.5 * n * g(p, 45, -25, 16, 16, True)[:, None],  # cheek fullness
        lambda p, n: 3.0 * n * g(p, 50, 12, 14, 10, True)[:, None],  # cheekbones
        lambda p, n: _stack(0, 0, -0.06 * (p[:, 1] - 55) * _smoothstep((p[:, 1] - 55) / 30)),
        lambda p, n: _stack(0, 0.05 * (p[:, 1] - 55) * _smoothstep((p[:, 1] - 55) / 10), 0),
        lambda p, n: _stack(2.5 * sgn(p) * g(p, 65, 50, 12, 18, True), 0, 0),  # temples
        lambda p, n: _stack(0, 0, -2.0 * g(p, 31, 34, 14, 10, True)),  # eye depth
        lambda p, n: 3.0 * n * g(p, 60, -10, 18, 30, True)[:, None],  # face roundness
        lambda p, n: _stack(0, 0, 3.0 * g(p, 0, -15, 25, 14)),  # midface protrusion
        lambda p, n: _stack(0, 0.1 * (np.abs(p[:, 0]) - 31) * g(p, 31, 34, 14, 8, True), 0),  # tilt
        lambda p, n: _stack(0, 0.08 * (np.abs(p[:, 0]) - 32) * g(p, 32, 56, 20, 8, True), 0),
        lambda p, n: _stack(2.0 * sgn(p) * g(p, 30, 56, 20, 8, True), 0, 0),  # brow spacing
        lambda p, n: _stack(0, 2.0 * g(p, 25, -35, 8, 8, True), 0),  # mouth-corner height
        lambda p, n: _stack(0, 0.15 * (p[:, 1] + 33) * g(p, 0, -33, 25, 9), 0),  # lip heights
        lambda p, n: _stack(0.12 * p[:, 0] * g(p, 0, -9, 14, 4), 0, 0),  # nostril width
        lambda p, n: _stack(0, 2.0 * g(p, 0, 2, 10, 8), 0),  # nose tip height
    ]
    # Smooth low-order fields: Legendre products in normalised (x, y), per axis.
    leg = [lambda t: np.ones_like(t), lambda t: t, lambda t: 1.5 * t**2 - 0.5,
           lambda t: 2.5 * t**3 - 1.5 * t]  # fmt: skip
    for axis in range(3):
        for i in range(4):
            for j in range(4):
                if not 1 <= i + j <= 3 or (axis, i, j) in ((0, 1, 0), (1, 0, 1)):
                    continue

                def f(p, n, i=i, j=j, axis=axis):
                    u, w = p[:, 0] / 80.0, (p[:, 1] - 20.0) / 120.0
                    out = np.zeros((len(p), 3))
                    out[:, axis] = 2.5 / (i + j) * leg[i](u) * leg[j](w)
                    return out

                fields.append(f)
    # Face width and height (the two low-order fields skipped above), as plain scalings.
    fields.append(lambda p, n: _stack(0.045 * p[:, 0], 0, 0))
    fields.append(lambda p, n: _stack(0, 0.035 * p[:, 1], 0))
    return fields


def _identity_basis(ctx: _Ctx) -> np.ndarray:
    modes = []
    for fn in _identity_fields(ctx):
        d = np.zeros((ctx.n_v, 3))
        d[:] = fn(ctx.v, ctx.normals)
        _eyes_follow_lids(ctx, d, fn)
        modes.append(d.ravel())
    m = np.stack(modes)
    rms = np.sqrt((m**2).mean(1))
    # Löwdin orthogonalisation: the orthogonal set nearest to the semantic modes.
    s = m @ m.T
    w, q = np.linalg.eigh(s)
    m = (q @ np.diag(w**-0.5) @ q.T) @ m
    m *= (rms / np.sqrt((m**2).mean(1)))[:, None]
    # One sigma moves the most-affected vertex by a few millimetres, never a negligible amount.
    peak = np.linalg.norm(m.reshape(len(m), ctx.n_v, 3), axis=2).max(1)
    m *= (np.clip(peak, 1.5, 5.0) / peak)[:, None]
    order = np.argsort(-np.sqrt((m**2).mean(1)), kind="stable")
    return m[order].reshape(len(m), ctx.n_v, 3)


# ---------------------------------------------------------------------------------------------
# Expressions.
def _jaw_weight(ctx: _Ctx) -> np.ndarray:
    """How much each vertex follows the mandible: 1 below the lip line, 0 above, 1/2 on the line
    beyond the mouth corners; along the slit the gap tapers to the corners (lens-shaped mouth)."""
    ax = np.abs(ctx.x)
    taper = _smoothstep((_MOUTH_HALF - ax) / 12.0)
    c_low, c_up = 0.5 + 0.5 * taper, 0.5 - 0.5 * taper
    sigma = 6.0 + 14.0 * _smoothstep((ax - 20.0) / 40.0)
    g = np.exp(-0.5 * (ctx.d_slit / sigma) ** 2)
    s = ctx.lip_low
    w = s * (1.0 - (1.0 - c_low) * g) + (1.0 - s) * c_up * g
    w *= _smoothstep((ctx.z - 25.0) / 75.0)  # fade gently under the chin: no folds at the neck
    corner_y = float(_slit_y(np.array(_MOUTH_HALF)))
    w[ctx.socket] = 0.5 * (1.0 - np.tanh((ctx.y[ctx.socket] - corner_y) / 5.0))
    for m in ctx.eye.values():
        w[m] = 0.0
    return w


def _rot_x(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])


def _rot_y(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])


_JAW_PIVOT = np.array([0.0, 22.0, 5.0])


def _lid_profiles(side: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    upper, lower, _ = _eye_contour(side)
    xs = np.abs(upper[:, 0])
    return xs, upper[:, 1], lower[:, 1]


def _lid_motion(
    ctx: _Ctx,
    name: str,
    up_frac: float,
    low_frac: float,
    up_mm: float = 0.0,
    low_mm: float = 0.0,
    up_reach: float = 7.0,
    low_reach: float = 5.0,
) -> np.ndarray:
    """Lid displacement: upper lid moves by up_frac·opening + up_mm, lower by low_frac·opening
    + low_mm (positive = up), fading away from the lid edge; z keeps lids on the eyeball."""
    side = 1.0 if name == "L" else -1.0
    xs, yu, yl = _lid_profiles(side)
    ax = side * ctx.x
    in_x = (ax > xs[0]) & (ax < xs[-1])
    u = np.interp(ax, xs, yu)
    lo = np.interp(ax, xs, yl)
    opening = (u - lo) * in_x
    shape = opening / max(opening.max(), 1e-9)
    up_zone = ctx.skin & (ctx.y >= u - 1e-6) & (ax > xs[0] - 8) & (ax < xs[-1] + 8)
    low_zone = ctx.skin & (ctx.y <= lo + 1e-6) & (ax > xs[0] - 8) & (ax < xs[-1] + 8)
    f_up = (1.0 - _smoothstep((ctx.y - u) / up_reach)) * up_zone
    f_low = (1.0 - _smoothstep((lo - ctx.y) / low_reach)) * low_zone
    # Fixed mm offsets fade out past the canthi so the corners stay put.
    corner_fade = _smoothstep(np.minimum(ax - xs[0], xs[-1] - ax) / 4.0 + 0.5)
    dy = f_up * (up_frac * opening + up_mm * np.sqrt(shape) * corner_fade)
    dy += f_low * (low_frac * opening + low_mm * np.sqrt(shape) * corner_fade)
    disp = np.zeros((ctx.n_v, 3))
    disp[:, 1] = dy
    # Slide over the globe: push z out to the lid surface of the eyeball where needed.
    centre = ctx.eyeball[name][1]
    moved = ctx.v + disp
    q2 = _globe_q2(moved[:, 0] - centre[0], moved[:, 1] - centre[1])
    zs = centre[2] + _GLOBE_R * np.sqrt(np.maximum(1.0 - q2, 0.0)) + _LID_T
    push = (q2 < 1.0) & (np.abs(dy) > 0)
    disp[push, 2] = np.maximum(zs[push] - ctx.z[push], 0.0)
    return disp


def _eye_rotation(ctx: _Ctx, name: str, rot: np.ndarray) -> np.ndarray:
    disp = np.zeros((ctx.n_v, 3))
    _, centre, ids = ctx.eyeball[name]  # the flange stays put
    p = ctx.v[ids] - centre
    disp[ids] = p @ rot.T - p
    return disp


def _expression_basis(ctx: _Ctx) -> np.ndarray:
    v, x = ctx.v, ctx.x
    skin = ctx.skin.astype(float)
    out: dict[str, np.ndarray] = {}
    wj = _jaw_weight(ctx)
    # jaw
    jaw_rot = (v - _JAW_PIVOT) @ _rot_x(16.0).T + _JAW_PIVOT - v
    out["jawOpen"] = wj[:, None] * jaw_rot
    out["jawForward"] = wj[:, None] * np.array([0.0, 0.0, 7.0])
    out["jawLeft"] = wj[:, None] * np.array([7.0, 0.0, 0.0])
    out["jawRight"] = wj[:, None] * np.array([-7.0, 0.0, 0.0])
    up_band, low_band = ctx.lip_band(True, 9.0), ctx.lip_band(False, 11.0)
    # mouthClose undoes jawOpen's lip gap: both lips meet half-way (ICT's corrective shape).
    lip_zone = np.exp(-0.5 * (ctx.d_slit / 9.0) ** 2) * np.exp(-((x / (_MOUTH_HALF + 4.0)) ** 4))
    out["mouthClose"] = (lip_zone * (0.5 - wj) * ctx.skin)[:, None] * jaw_rot
    lips = up_band + low_band
    for s, name in ((1.0, "L"), (-1.0, "R")):
        sm = ctx.side_L if s > 0 else ctx.side_R
        corner = ctx.gauss(s * (_MOUTH_HALF + 1.0), -35.0, 12.0, 10.0) * skin
        corner_wide = ctx.gauss(s * 30.0, -36.0, 17.0, 14.0) * skin
        cheek = ctx.gauss(s * 38.0, -10.0, 14.0, 12.0) * skin
        out[f"mouthSmile_{name}"] = corner[:, None] * [5.0 * s, 8.0, -4.0] + cheek[:, None] * [
            1.0 * s,
            3.0,
            1.5,
        ]
        out[f"mouthFrown_{name}"] = corner[:, None] * [1.0 * s, -5.0, -1.5]
        out[f"mouthStretch_{name}"] = corner_wide[:, None] * [6.0 * s, -3.0, -4.0]
        out[f"mouthDimple_{name}"] = corner[:, None] * [2.5 * s, 1.0, -4.0]
        out[f"mouthLowerDown_{name}"] = (low_band * sm)[:, None] * [0.0, -4.5, 0.8]
        out[f"mouthUpperUp_{name}"] = (up_band * sm)[:, None] * [0.0, 4.5, 0.8]
        frac_u = np.clip(ctx.d_slit / 8.0, 0, 1) * up_band * sm
        frac_l = np.clip(-ctx.d_slit / 10.0, 0, 1) * low_band * sm
        out[f"mouthPress_{name}"] = frac_u[:, None] * [0.0, -2.0, -1.0] + frac_l[:, None] * [
            0.0,
            2.0,
            -1.0,
        ]
        cheek_puff = ctx.gauss(s * 42.0, -25.0, 16.0, 16.0) * skin
        out[f"cheekPuff_{name}"] = 9.0 * cheek_puff[:, None] * ctx.normals
        cheek_sq = ctx.gauss(s * 38.0, 15.0, 15.0, 9.0) * skin
        out[f"cheekSquint_{name}"] = cheek_sq[:, None] * [0.0, 3.5, 1.0]
        sneer = ctx.gauss(s * 11.0, 2.0, 7.0, 9.0) * skin
        brow_in = ctx.gauss(s * 14.0, 52.0, 9.0, 7.0) * skin
        out[f"noseSneer_{name}"] = sneer[:, None] * [0.5 * s, 4.0, 0.5] + brow_in[:, None] * [
            -0.5 * s,
            -1.5,
            0.0,
        ]
        brow = ctx.gauss(s * 24.0, 55.0, 17.0, 9.0) * skin
        out[f"browDown_{name}"] = brow[:, None] * [-1.0 * s, -4.5, -1.0]
        inner = ctx.gauss(s * 12.0, 57.0, 10.0, 12.0) * skin * (ctx.side_L if s > 0 else ctx.side_R)
        out[f"browInnerUp_{name}"] = inner[:, None] * [0.0, 6.0, 0.5]
        outer = ctx.gauss(s * 43.0, 54.0, 12.0, 11.0) * skin
        out[f"browOuterUp_{name}"] = outer[:, None] * [0.0, 7.0, 0.0]
        # eyes
        out[f"eyeBlink_{name}"] = _lid_motion(ctx, name, -0.78, 0.22)
        out[f"eyeWide_{name}"] = _lid_motion(ctx, name, 0.0, 0.0, up_mm=2.5, low_mm=-0.8)
        sq = _lid_motion(ctx, name, -0.12, 0.30)
        out[f"eyeSquint_{name}"] = sq + (ctx.gauss(s * 31.0, 24.0, 12.0, 6.0) * skin)[:, None] * [
            0.0,
            2.0,
            0.5,
        ]
        yaw_in = -20.0 * s  # "in" turns the cornea toward the nose
        look_h = _lid_motion(ctx, name, 0.0, 0.0, up_mm=0.3, low_mm=0.3)
        out[f"eyeLookIn_{name}"] = _eye_rotation(ctx, name, _rot_y(yaw_in)) + look_h
        out[f"eyeLookOut_{name}"] = _eye_rotation(ctx, name, _rot_y(-yaw_in)) + look_h
        out[f"eyeLookUp_{name}"] = _eye_rotation(ctx, name, _rot_x(-20.0)) + _lid_motion(
            ctx, name, 0.0, 0.0, up_mm=1.8, low_mm=0.8
        )
        out[f"eyeLookDown_{name}"] = _eye_rotation(ctx, name, _rot_x(20.0)) + _lid_motion(
            ctx, name, -0.3, 0.0, low_mm=-0.8
        )
    # Whole-mouth shapes.
    xin = -x * np.exp(-((x / 34.0) ** 4))
    out["mouthFunnel"] = _stack(0.25 * xin * lips, 2.0 * up_band - 2.5 * low_band, 7.0 * lips)
    out["mouthPucker"] = _stack(0.35 * xin * lips, 1.0 * lips, 9.0 * lips)
    mouth_area = ctx.gauss(0.0, -36.0, 30.0, 17.0) * skin
    out["mouthLeft"] = mouth_area[:, None] * [10.0, 1.0, 0.0]
    out["mouthRight"] = mouth_area[:, None] * [-10.0, 1.0, 0.0]
    out["mouthRollLower"] = low_band[:, None] * [0.0, 2.0, -5.0]
    out["mouthRollUpper"] = up_band[:, None] * [0.0, -1.5, -4.0]
    chin = ctx.gauss(0.0, -55.0, 22.0, 14.0) * skin * wj
    out["mouthShrugLower"] = chin[:, None] * [0.0, 5.0, 1.5]
    out["mouthShrugUpper"] = up_band[:, None] * [0.0, 3.0, 1.0]
    return np.stack([out[n] for n in EXPRESSION_NAMES])


# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _cached() -> dict[str, np.ndarray]:
    info = _build()
    ctx = _Ctx(info)
    ident = _identity_basis(ctx)
    expr = _expression_basis(ctx)
    arrays = {
        "vertices": info["verts"].astype(np.float32),
        "faces": info["faces"].astype(np.int32),
        "identity_basis": ident.astype(np.float32),
        "expression_basis": expr.astype(np.float32),
        "expression_names": np.array(EXPRESSION_NAMES, dtype=str),
        "landmarks68": info["landmarks68"].astype(np.int32),
        "jawline_left": info["jaw_L"].astype(np.int32),
        "jawline_right": info["jaw_R"].astype(np.int32),
        "region": info["region"].astype(np.uint8),
        "region_names": np.array(REGION_NAMES, dtype=str),
        "uvs": info["uvs"].astype(np.float32),
        "faces_uv": info["faces"].astype(np.int32),
        "units": np.array("millimetre"),
        "source": np.array(SOURCE),
    }
    for arr in arrays.values():
        arr.setflags(write=False)
    return arrays


def generic_face_model() -> dict[str, np.ndarray]:
    """The procedural template face model as npz-format arrays (fresh copies; cached build)."""
    return {k: v.copy() for k, v in _cached().items()}


# ---------------------------------------------------------------------------------------------
def _render(verts: np.ndarray, faces: np.ndarray, yaw_deg: float, size: int) -> np.ndarray:
    """Orthographic Lambert render by dense z-buffered splats (numpy only); uint8 [size,size,3]."""
    r = _rot_y(yaw_deg)
    p = verts.astype(np.float64) @ r.T
    n = np.cross(p[faces[:, 1]] - p[faces[:, 0]], p[faces[:, 2]] - p[faces[:, 0]])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    light = np.array([0.3, 0.4, 1.0]) / np.linalg.norm([0.3, 0.4, 1.0])
    shade = 0.15 + 0.85 * np.clip(n @ light, 0.0, 1.0)
    scale = size / 250.0
    s = np.stack([p[:, 0] * scale + size / 2, (20.0 - p[:, 1]) * scale + size / 2, p[:, 2]], 1)
    tri = s[faces]
    ext = np.linalg.norm(tri[:, [1, 2, 0], :2] - tri[:, :, :2], axis=2).max(1)
    ks = np.clip(np.ceil(ext * 1.5), 1, 200).astype(int)
    pts, col = [], []
    for k in np.unique(ks):
        sel = ks == k
        i, j = np.meshgrid(np.arange(k + 1), np.arange(k + 1), indexing="ij")
        m = i + j <= k
        w = np.stack([i[m], j[m], k - i[m] - j[m]], 1) / k
        pts.append(np.einsum("sk,fkc->fsc", w, tri[sel]).reshape(-1, 3))
        col.append(np.repeat(shade[sel] * (n[sel, 2] > 0), len(w)))
    q, c = np.concatenate(pts), np.concatenate(col)
    px, py = q[:, 0].round().astype(int), q[:, 1].round().astype(int)
    ok = (px >= 0) & (px < size) & (py >= 0) & (py < size)
    idx, z, c = py[ok] * size + px[ok], q[ok, 2], c[ok]
    order = np.lexsort((-z, idx))
    idx, c = idx[order], c[order]
    first = np.ones(len(idx), bool)
    first[1:] = idx[1:] != idx[:-1]
    img = np.full(size * size, 0.25)
    img[idx[first]] = c[first]
    return np.repeat((img.reshape(size, size, 1) * 255).astype(np.uint8), 3, axis=2)


def preview_png(path: str | Path, size: int = 256) -> Path:
    """Save a contact sheet (front / 3-4 / side) of neutral, jawOpen, eyeBlink_L, mouthSmile_L and
    a fixed random identity, to eyeball that the template looks like a face."""
    from PIL import Image

    m = _cached()
    v, f, names = m["vertices"], m["faces"], list(m["expression_names"])
    alpha = np.random.default_rng(0).standard_normal(len(m["identity_basis"]))
    shapes = [v] + [
        v + m["expression_basis"][names.index(k)] for k in ("jawOpen", "eyeBlink_L", "mouthSmile_L")
    ]
    shapes.append(v + np.tensordot(alpha, m["identity_basis"], 1))
    rows = [np.concatenate([_render(s, f, yaw, size) for s in shapes], 1) for yaw in (0, -35, -90)]
    out = Path(path)
    Image.fromarray(np.concatenate(rows, 0)).save(out)
    return out
