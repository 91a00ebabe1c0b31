"""The generic template's identity and expression bases, built from its neutral mesh."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from jr2net.face.generic.shape import (
    _eye_contour,
    _gauss,
    _globe_q2,
    _nose_dz,
    _slit_y,
    _smoothstep,
)
from jr2net.face.generic.tables import (
    _GLOBE_R,
    _JAW_PIVOT,
    _LID_T,
    _MOUTH_HALF,
    EXPRESSION_NAMES,
)
from jr2net.face.mesh import vertex_normals_np


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
        self.normals = vertex_normals_np(v, info["faces"])
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
