"""The generic template's base head surface and facial-feature displacements (closed form)."""

from __future__ import annotations

import functools

import numpy as np
from scipy.interpolate import PchipInterpolator

from jr2net.face.generic.tables import (
    _A_MAX,
    _BACK_RADIUS,
    _C,
    _CORONAL,
    _DOMAIN_R,
    _E_MAX,
    _E_MIN,
    _EYE_INNER,
    _EYE_LOW,
    _EYE_N,
    _EYE_OUTER,
    _EYE_UP,
    _GLOBE_R,
    _GLOBE_RX,
    _LID_T,
    _MOUTH_DROOP,
    _MOUTH_HALF,
    _MOUTH_Y,
    _SAGITTAL,
    _SUPER_N,
)


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
