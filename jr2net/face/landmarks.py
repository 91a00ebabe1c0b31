"""Face detection, 68-point landmarks, tracking and 128-D identity embeddings (dlib).

Models: dlib's HOG frontal-face detector (built into ``dlib``), and the 68-point shape predictor
and ResNet face-recognition model shipped by the ``face-recognition-models`` package. The model
files are located with ``importlib`` (that package's ``__init__`` needs ``pkg_resources``, so it
is never imported) and loaded lazily, once per process, behind a lock. The detector is read from
its binary form in the user cache (``dlib/``, written on first use: ~2 ms instead of ~0.5 s).

Coordinates are pixels with the DESIGN §3 convention: pixel (row i, col j) has its centre at
(x=j, y=i). Landmarks are in the iBUG / Multi-PIE 68-point order (dlib's), whole pixels (dlib
rounds its shape points).

Detection runs the HOG detector on a grayscale copy downscaled to ``max_side`` (default 400)
pixels on its longest side, then the shape predictor on the full-resolution grayscale image. The
HOG window is 80 px, so one pass at ``upsample=0`` finds faces whose box is >= ~20 % of the
longest side; when it finds nothing, a second pass with ``upsample=1`` (>= ~10 %) runs. On
short_hamilton_clip.mp4 (640x360, the singer's face ~60-120 px) the cascade finds a face on 117
of the 121 frames 90-210 (the single ``upsample=0`` pass: 73); the misses are motion-blurred or
turned heads, which the tracker bridges. Cost on a 512x512 frame: one pass ~5-10 ms, the
68-point predictor ~1.5 ms (CPU, one core).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from jr2net.errors import NoFaceError
from jr2net.io.images import check_image

log = logging.getLogger("jr2net.face")

Box = tuple[float, float, float, float]

SHAPE_PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
FACE_RECOGNITION_FILE = "dlib_face_recognition_resnet_model_v1.dat"

# Rigid landmarks (nose bridge/base + both eyes): their centre and RMS spread define the box
# the tracker hands to the shape predictor, independent of how wide the mouth is open.
_RIGID = np.r_[27:48]
# Mean relation between dlib's HOG box and the rigid landmarks, measured on 144 detections
# (shared videos + photos): box centre = rigid centre + (0, 0.5) * spread, side = 4.7 * spread.
_BOX_DY = 0.5
_BOX_SIDE = 4.7
# Outer-eye-corner distance / rigid spread: 2.5-2.9 on real faces (p5-p95); far outside means the
# predictor has collapsed onto something that is not a face.
_IOD_RATIO_RANGE = (1.9, 3.5)


@dataclass
class FaceDetection:
    """One face: box (x0, y0, x1, y1) in pixels, 68 landmarks ``[68, 2]`` (x, y), detector score."""

    box: Box
    landmarks: np.ndarray  # float32 [68, 2]
    score: float

    @property
    def size(self) -> float:
        """Geometric mean of the box's width and height (pixels)."""
        x0, y0, x1, y1 = self.box
        return float(np.sqrt(max(x1 - x0, 0.0) * max(y1 - y0, 0.0)))


# ---------------------------------------------------------------------------------------------
# Model loading (lazy, once per process, thread-safe)

_lock = threading.Lock()
_models: dict[str, object] = {}


def models_dir() -> Path:
    """Folder holding the ``face-recognition-models`` .dat files (found without importing it)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the 'face-recognition-models' package is not installed; "
            "pip install face-recognition-models (it ships dlib's landmark and embedding models)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def _get(name: str):
    model = _models.get(name)
    if model is not None:
        return model
    with _lock:
        model = _models.get(name)
        if model is None:
            import dlib

            if name == "detector":
                model = _frontal_face_detector(dlib)
            else:
                file = SHAPE_PREDICTOR_FILE if name == "predictor" else FACE_RECOGNITION_FILE
                path = models_dir() / file
                if not path.is_file():
                    raise FileNotFoundError(f"dlib model file missing: {path}")
                if name == "predictor":
                    model = dlib.shape_predictor(str(path))
                else:
                    model = dlib.face_recognition_model_v1(str(path))
            _models[name] = model
    return model


def preload_in_background() -> threading.Thread:
    """Load the HOG detector and the 68-point predictor in a daemon thread, so a process that
    will need them (a ``jr2net serve`` child) pays dlib's ~0.6 s predictor parse while it is
    otherwise waiting; a failure is left for the first real use to raise."""

    def load() -> None:
        try:
            _get("detector")
            _get("predictor")
        except Exception:  # noqa: BLE001 - the first detection raises it with context
            log.debug("landmark model preload failed", exc_info=True)

    thread = threading.Thread(target=load, name="jr2net-landmarks-preload", daemon=True)
    thread.start()
    return thread


def _frontal_face_detector(dlib):
    """dlib's HOG detector. ``get_frontal_face_detector()`` rebuilds it from a text form built
    into dlib (~0.4-1 s of CPU); its binary form, saved once in the user cache
    (``dlib/frontal_face_detector_<dlib version>.svm``, ~150 kB), loads in ~2 ms. An unreadable or
    unwritable cache only means building it the slow way."""
    from jr2net.paths import cache_dir

    version = getattr(dlib, "__version__", "unknown")
    path = cache_dir() / "dlib" / f"frontal_face_detector_{version}.svm"
    if path.is_file():
        try:
            return dlib.fhog_object_detector(str(path))
        except RuntimeError as exc:  # corrupt or foreign file: rebuild it below
            log.debug("cached dlib detector unreadable (%s): rebuilding", exc)
    detector = dlib.get_frontal_face_detector()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        detector.save(str(tmp))
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        log.debug("dlib detector not cached (%s)", exc)
    return detector


# ---------------------------------------------------------------------------------------------
# Helpers


def _gray(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image).convert("L")


def _downscaled(gray: Image.Image, max_side: int) -> tuple[np.ndarray, float, float]:
    """Grayscale copy with longest side <= max_side, and its x/y scale factors."""
    w, h = gray.size
    s = min(1.0, max_side / max(w, h))
    if s >= 1.0:
        return np.asarray(gray), 1.0, 1.0
    size = (max(1, round(w * s)), max(1, round(h * s)))
    small = gray.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(small), size[0] / w, size[1] / h


def _landmarks_array(shape) -> np.ndarray:
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def _dlib_rect(box: Box):
    import dlib

    x0, y0, x1, y1 = box
    return dlib.rectangle(int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1)))


def _predict(gray: np.ndarray, box: Box) -> np.ndarray:
    return _landmarks_array(_get("predictor")(gray, _dlib_rect(box)))


def _predict_in_crop(frame: np.ndarray, box: Box) -> np.ndarray:
    """``_predict`` on the grayscale of a crop around ``box`` (half a box side of margin each way)
    instead of the whole frame: the same landmarks (the predictor samples pixels near its box
    only, outside the image it reads 0 either way, and the crop's origin is even so Python's
    half-to-even rounding of the shifted box gives the shifted rectangle), at a fraction of the
    grayscale cost on big frames (Pillow's RGB->L of 1920x1080: ~10 ms; of the crop: ~0.2)."""
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = box
    m = 0.5 * max(x1 - x0, y1 - y0, 2.0)
    cx0 = max(0, int(np.floor(x0 - m))) & ~1
    cy0 = max(0, int(np.floor(y0 - m))) & ~1
    cx1 = min(w, int(np.ceil(x1 + m)) + 1)
    cy1 = min(h, int(np.ceil(y1 + m)) + 1)
    if cx1 - cx0 < 2 or cy1 - cy0 < 2:
        return _predict(np.asarray(_gray(frame)), box)
    gray = np.asarray(_gray(np.ascontiguousarray(frame[cy0:cy1, cx0:cx1])))
    lm = _predict(gray, (x0 - cx0, y0 - cy0, x1 - cx0, y1 - cy0))
    return lm + np.array([cx0, cy0], dtype=lm.dtype)


def _rigid_frame(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    pts = landmarks[_RIGID].astype(np.float64)
    c = pts.mean(0)
    return c, float(np.sqrt(((pts - c) ** 2).sum(1).mean()))


def _shape_change(a: np.ndarray, b: np.ndarray) -> float:
    """RMS residual of the rigid landmarks of ``a`` after similarity-aligning them onto ``b``,
    relative to ``b``'s spread (0 = same shape up to translation, rotation and scale)."""
    pa = a[_RIGID].astype(np.float64)
    pb = b[_RIGID].astype(np.float64)
    pa -= pa.mean(0)
    pb -= pb.mean(0)
    u, sv, vt = np.linalg.svd(pb.T @ pa)
    d = np.sign(np.linalg.det(u @ vt))
    rot = u @ np.diag([1.0, d]) @ vt
    scale = (sv[0] + d * sv[1]) / max((pa**2).sum(), 1e-12)
    res = scale * pa @ rot.T - pb
    return float(np.sqrt((res**2).sum(1).mean() / max((pb**2).sum(1).mean(), 1e-12)))


def box_from_landmarks(landmarks: np.ndarray) -> Box:
    """A detector-like box for ``landmarks`` (what the shape predictor expects as its start)."""
    c, spread = _rigid_frame(landmarks)
    cx, cy = c[0], c[1] + _BOX_DY * spread
    half = 0.5 * _BOX_SIDE * spread
    return (cx - half, cy - half, cx + half, cy + half)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def interocular_distance(landmarks68: np.ndarray) -> float:
    """Distance between the outer eye corners (points 36 and 45, 0-based): the usual normaliser
    for landmark errors (300-W "inter-ocular")."""
    lm = np.asarray(landmarks68)
    if lm.shape != (68, 2):
        raise ValueError(f"landmarks68 must have shape [68, 2], got {list(lm.shape)}")
    return float(np.linalg.norm(lm[45].astype(np.float64) - lm[36]))


# ---------------------------------------------------------------------------------------------
# Detection


def _run_detector(
    gray: Image.Image, max_side: int, upsample: int, threshold: float = 0.0
) -> list[tuple[Box, float]]:
    small, sx, sy = _downscaled(gray, max_side)
    rects, scores, _ = _get("detector").run(small, upsample, threshold)
    out = []
    for r, sc in zip(rects, scores, strict=True):
        # Pixel centres: x_full = (x_small + 0.5) / s - 0.5.
        box = (
            (r.left() + 0.5) / sx - 0.5,
            (r.top() + 0.5) / sy - 0.5,
            (r.right() + 0.5) / sx - 0.5,
            (r.bottom() + 0.5) / sy - 0.5,
        )
        out.append((box, float(sc)))
    return out


def _find(gray: Image.Image, max_side: int, upsample: int | None) -> list[tuple[Box, float]]:
    """Detector boxes and scores: one pass, or the 0-then-1 upsample cascade when None."""
    found: list[tuple[Box, float]] = []
    for up in [0, 1] if upsample is None else [upsample]:
        found = _run_detector(gray, max_side, up)
        if found:
            break
    return found


def detect_faces(
    image: np.ndarray, upsample: int | None = None, max_side: int = 400
) -> list[FaceDetection]:
    """All faces in a uint8 ``[H, W, 3]`` RGB image, largest (by landmark extent) first.

    ``upsample=None`` runs the cascade described in the module docstring (0, then 1 if nothing
    was found); an int runs a single pass with that many HOG upsamplings.
    """
    image = check_image(image)
    if upsample is not None and (not isinstance(upsample, int) or not 0 <= upsample <= 3):
        raise ValueError(f"upsample must be None or an int in [0, 3], got {upsample!r}")
    if not isinstance(max_side, int) or max_side < 32:
        raise ValueError(f"max_side must be an int >= 32, got {max_side!r}")
    gray_im = _gray(image)
    found = _find(gray_im, max_side, upsample)
    gray = np.asarray(gray_im)
    dets = [FaceDetection(box, _predict(gray, box), score) for box, score in found]
    # Largest by landmark spread: HOG boxes come in coarse pyramid steps, landmarks do not.
    dets.sort(key=lambda d: _rigid_frame(d.landmarks)[1], reverse=True)
    return dets


def detect_largest_face(image: np.ndarray, **kwargs) -> FaceDetection:
    """The largest face; raises NoFaceError when there is none, logs when there are several."""
    dets = detect_faces(image, **kwargs)
    if not dets:
        raise NoFaceError("no face found in the image")
    if len(dets) > 1:
        log.warning("several faces (%d): the largest is used", len(dets))
    return dets[0]


def face_embedding(image: np.ndarray, detection: FaceDetection, num_jitters: int = 0) -> np.ndarray:
    """dlib's 128-D identity embedding (float32 ``[128]``) of the face at ``detection``.

    Same identity: Euclidean distance < ~0.6 (dlib's threshold, 99.4 % on LFW).
    """
    import dlib

    image = check_image(image)
    lm = np.asarray(detection.landmarks)
    if lm.shape != (68, 2):
        raise ValueError(f"detection.landmarks must have shape [68, 2], got {list(lm.shape)}")
    parts = [dlib.point(int(round(x)), int(round(y))) for x, y in lm]
    shape = dlib.full_object_detection(_dlib_rect(detection.box), parts)
    desc = _get("recognizer").compute_face_descriptor(image, shape, num_jitters)
    return np.asarray(desc, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Tracking


class LandmarkTracker:
    """Per-video 68-point tracker that re-runs the face detector only when the face is lost.

    While tracking, each frame runs only the shape predictor, started from a box derived from the
    previous frame's rigid landmarks (``box_from_landmarks``). Cheap per-frame checks: rigid
    centre inside the frame, box >= ``min_size`` px, spread changed by < ``max_scale_change`` x,
    rigid landmarks (eyes, nose) changed shape by < ``max_shape_change`` after similarity
    alignment to the previous frame (what the predictor shows when the face jumped away from its
    start box), plausible eye distance. When one fails, and anyway every ``verify_every``
    frames, the HOG detector runs on a small crop around the box (~3 ms). If it finds the face
    there but its box overlaps the tracked box by < ``reanchor_iou``, the predictor is re-run
    from the detector's box. If it does not, the face is lost: the whole frame is searched
    (``detect_faces``' cascade) and, failing that, the frame returns None. While lost, detection
    is tried every ``redetect_every`` frames (1 = every frame; frames in between return None).
    Counters: ``frames``, ``detections`` (full-frame searches), ``verifications``, ``losses``.
    Not thread-safe: one tracker per stream.
    """

    def __init__(
        self,
        verify_every: int = 10,
        redetect_every: int = 1,
        max_side: int = 400,
        min_size: float = 24.0,
        max_scale_change: float = 1.35,
        max_shape_change: float = 0.06,
        verify_threshold: float = 0.0,
        reanchor_iou: float = 0.75,
    ) -> None:
        if verify_every < 1 or redetect_every < 1:
            raise ValueError("verify_every and redetect_every must be >= 1")
        self.verify_every = verify_every
        self.redetect_every = redetect_every
        self.max_side = max_side
        self.min_size = min_size
        self.max_scale_change = max_scale_change
        self.max_shape_change = max_shape_change
        self.verify_threshold = verify_threshold
        self.reanchor_iou = reanchor_iou
        self.reset()

    def reset(self) -> None:
        """Forget the tracked face (the next frame runs the detector)."""
        self._last: FaceDetection | None = None
        self._since_verify = 0
        self._since_detect_try = 0
        self.frames = 0
        self.detections = 0  # full-frame detector runs
        self.verifications = 0  # crop detector runs
        self.losses = 0

    @property
    def tracking(self) -> bool:
        """True while a face is being followed."""
        return self._last is not None

    def update(self, frame: np.ndarray) -> FaceDetection | None:
        """Landmarks of the tracked face in ``frame`` (uint8 ``[H, W, 3]`` RGB), or None."""
        frame = check_image(frame, "frame")
        self.frames += 1
        if self._last is None:
            self._since_detect_try += 1
            if self._since_detect_try < self.redetect_every and self.frames > 1:
                return None
            self._since_detect_try = 0
            gray_im = _gray(frame)
            return self._detect(frame, gray_im, np.asarray(gray_im))

        # While tracking only crops around the face are converted to grayscale (the whole
        # frame's conversion was most of the tracker's time on 1920x1080 frames).
        prev = self._last
        box = box_from_landmarks(prev.landmarks)
        lm = _predict_in_crop(frame, box)
        new = FaceDetection(box_from_landmarks(lm), lm, prev.score)
        self._since_verify += 1
        if self._since_verify >= self.verify_every or not self._plausible(prev, new, frame.shape):
            found = self._verify(frame, new)
            if found is None:
                self.losses += 1
                self._last = None
                gray_im = _gray(frame)
                return self._detect(frame, gray_im, np.asarray(gray_im), near=new.box)
            det_box, score = found
            new.score = score
            if _iou(det_box, new.box) < self.reanchor_iou:
                # The face moved away from where the predictor started: restart it from the
                # detector's box (the predictor only refines locally).
                lm = _predict_in_crop(frame, det_box)
                new = FaceDetection(box_from_landmarks(lm), lm, score)
        self._last = new
        return new

    def _plausible(self, prev: FaceDetection, new: FaceDetection, shape: tuple[int, ...]) -> bool:
        h, w = shape[:2]
        c, spread = _rigid_frame(new.landmarks)
        _, prev_spread = _rigid_frame(prev.landmarks)
        if not (0 <= c[0] < w and 0 <= c[1] < h):
            return False
        if _BOX_SIDE * spread < self.min_size:
            return False
        ratio = spread / max(prev_spread, 1e-6)
        if not (1 / self.max_scale_change <= ratio <= self.max_scale_change):
            return False
        if _shape_change(new.landmarks, prev.landmarks) > self.max_shape_change:
            return False
        iod_ratio = interocular_distance(new.landmarks) / max(spread, 1e-6)
        return _IOD_RATIO_RANGE[0] <= iod_ratio <= _IOD_RATIO_RANGE[1]

    def _verify(self, frame: np.ndarray, det: FaceDetection) -> tuple[Box, float] | None:
        """HOG detector on a crop twice the box's size, scaled so the box is ~100 px: the
        best-overlapping detector box and score, or None when no face overlaps the box."""
        self.verifications += 1
        self._since_verify = 0
        x0, y0, x1, y1 = det.box
        side = max(x1 - x0, y1 - y0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        crop_box = (
            max(0, int(cx - side)),
            max(0, int(cy - side)),
            min(frame.shape[1], int(cx + side) + 1),
            min(frame.shape[0], int(cy + side) + 1),
        )
        if crop_box[2] - crop_box[0] < 8 or crop_box[3] - crop_box[1] < 8:
            return None
        s = 100.0 / max(side, 1.0)
        x0c, y0c, x1c, y1c = crop_box  # the grayscale of the crop = the crop of the grayscale
        crop = _gray(np.ascontiguousarray(frame[y0c:y1c, x0c:x1c]))
        size = (max(1, round(crop.width * s)), max(1, round(crop.height * s)))
        crop = crop.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        sx, sy = crop.width / (crop_box[2] - crop_box[0]), crop.height / (crop_box[3] - crop_box[1])
        rects, scores, _ = _get("detector").run(np.asarray(crop), 0, self.verify_threshold)
        best: tuple[Box, float] | None = None
        best_iou = 0.3  # minimum overlap to count as the same face
        for r, sc in zip(rects, scores, strict=True):
            b = (
                crop_box[0] + (r.left() + 0.5) / sx - 0.5,
                crop_box[1] + (r.top() + 0.5) / sy - 0.5,
                crop_box[0] + (r.right() + 0.5) / sx - 0.5,
                crop_box[1] + (r.bottom() + 0.5) / sy - 0.5,
            )
            iou = _iou(b, det.box)
            if iou >= best_iou:
                best, best_iou = (b, float(sc)), iou
        return best

    def _detect(
        self,
        frame: np.ndarray,
        gray_im: Image.Image,
        gray: np.ndarray,
        near: Box | None = None,
    ) -> FaceDetection | None:
        self.detections += 1
        found = _find(gray_im, self.max_side, None)
        if not found:
            return None
        if near is not None and any(_iou(b, near) > 0.2 for b, _ in found):
            box, score = max(found, key=lambda f: _iou(f[0], near))
        else:
            box, score = max(found, key=lambda f: (f[0][2] - f[0][0]) * (f[0][3] - f[0][1]))
        lm = _predict(gray, box)
        # Track from the landmark-derived box from now on so the next frame starts consistently.
        det = FaceDetection(box_from_landmarks(lm), lm, score)
        self._last = det
        self._since_verify = 0
        return det


# ---------------------------------------------------------------------------------------------
# Detector choice: dlib (this module) or MediaPipe (jr2net.face.mediapipe)

DETECTORS = ("mediapipe", "dlib")
# dlib stays the default while MediaPipe takes two of the shared dog photos (s25, s31) for faces:
# its fits are better otherwise (benchmarks/fitting.py), but "no face" must stay "no face".
DEFAULT_DETECTOR = "dlib"
DETECTOR_ENV_VAR = "JR2NET_DETECTOR"
DETECTOR_LICENCES = {
    "mediapipe": "MediaPipe face detector + 468-point face mesh, Apache-2.0",
    "dlib": "dlib HOG detector + 68-point predictor trained on iBUG 300-W: non-commercial use only",
}


def resolve_detector(name: str | None = None) -> str:
    """The detector to use: ``name``, else ``$JR2NET_DETECTOR``, else ``DEFAULT_DETECTOR``."""
    choice = (name or os.environ.get(DETECTOR_ENV_VAR, "").strip() or DEFAULT_DETECTOR).lower()
    if choice not in DETECTORS:
        raise ValueError(f"unknown face detector {choice!r}; choose one of {', '.join(DETECTORS)}")
    return choice


def detector_description(name: str | None = None) -> str:
    """One line naming the detector in use and its licence (printed by the CLI and server)."""
    d = resolve_detector(name)
    return f"face detector: {d} ({DETECTOR_LICENCES[d]})"


def find_faces(image: np.ndarray, detector: str | None = None) -> list[FaceDetection]:
    """All faces, largest first, with the chosen detector (MediaPipe's carry a ``dense`` mesh)."""
    if resolve_detector(detector) == "mediapipe":
        from jr2net.face import mediapipe

        return list(mediapipe.detect_faces(image))
    return detect_faces(image)


def find_largest_face(image: np.ndarray, detector: str | None = None) -> FaceDetection:
    """The largest face with the chosen detector; raises NoFaceError when there is none."""
    dets = find_faces(image, detector)
    if not dets:
        raise NoFaceError("no face found in the image")
    if len(dets) > 1:
        log.warning("several faces (%d): the largest is used", len(dets))
    return dets[0]


def make_tracker(detector: str | None = None):
    """A per-video tracker for the chosen detector (``LandmarkTracker`` or ``MeshTracker``)."""
    if resolve_detector(detector) == "mediapipe":
        from jr2net.face.mediapipe import MeshTracker

        return MeshTracker()
    return LandmarkTracker()
