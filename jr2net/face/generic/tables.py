"""Data tables of the generic template: names, head profiles, feature positions (mm)."""

from __future__ import annotations

import numpy as np

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
_JAW_PIVOT = np.array([0.0, 22.0, 5.0])
