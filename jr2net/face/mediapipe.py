"""MediaPipe face detection (BlazeFace short range) and the 468-point face mesh, run with LiteRT.

Models: ``face_detection_short_range.tflite`` and ``face_landmark.tflite`` (Apache-2.0), extracted
from the ``mediapipe==0.10.21`` wheel into the user cache (:mod:`jr2net.face.mediapipe_assets`),
run with ``ai-edge-litert``'s interpreter on one thread. The graph around them follows MediaPipe's
own (``face_detection_short_range_cpu``, ``face_landmark_front_cpu``):

* detector: the frame letterboxed to 128², values in [-1, 1]; 896 SSD anchors (strides 8, 16, 16,
  16; fixed unit size); box and 6 keypoints decoded relative to the anchors, sigmoid scores
  >= ``min_score`` (0.5), weighted non-maximum suppression (IoU 0.3);
* region of interest: the detection box (or, while tracking, the previous frame's mesh bounding
  box), squared on its long side and scaled 1.5x, rotated so the eyes are level (detector
  keypoints 0-1, mesh points 33-263);
* mesh: the ROI warped to 192², values in [0, 1]; 468 points (x, y in crop pixels, z in the same
  units, camera-facing negative) mapped back through the ROI; a face-presence score (sigmoid).

Coordinates out are pixels with the DESIGN §3 convention (pixel (i, j) has its centre at x=j,
y=i). ``FaceDetection.landmarks`` holds 68 iBUG-order points derived from the mesh by the fixed
linear map of :mod:`jr2net.face.mediapipe_map`; ``MeshFaceDetection.dense`` the 468 points [x, y, z].
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

from jr2net.face.landmarks import Box, FaceDetection, _iou, box_from_landmarks
from jr2net.io.images import check_image

DETECTOR_NAME = "mediapipe"
DETECTOR_LICENCE = "Apache-2.0 (MediaPipe face detector + face mesh, mediapipe 0.10.21 wheel)"
DET_SIZE = 128
MESH_SIZE = 192
N_MESH = 468
ROI_SCALE = 1.5
# Mesh points whose line defines the ROI rotation while tracking (outer eye corners).
_EYE_R, _EYE_L = 33, 263


class MediaPipeModelError(RuntimeError):
    """A MediaPipe .tflite file cannot be loaded (corrupt, truncated, wrong model)."""


@dataclass
class MeshFaceDetection(FaceDetection):
    """A :class:`FaceDetection` with the 468 mesh points ``dense`` ``[468, 3]`` (x, y px; z)."""

    dense: np.ndarray | None = None
    presence: float = 1.0


# ---------------------------------------------------------------------------------------------
# Interpreters (one set per thread: LiteRT interpreters are not thread-safe)

_local = threading.local()


def _load_interpreter(path, inputs: tuple[int, ...], outputs: int):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:  # pragma: no cover - dependency missing
        raise ModuleNotFoundError(
            "the 'ai-edge-litert' package is not installed; pip install ai-edge-litert "
            "(it runs the MediaPipe face models)"
        ) from exc
    try:
        it = Interpreter(model_path=str(path), num_threads=1)
        it.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise MediaPipeModelError(
            f"cannot load MediaPipe model {path}: {exc}; delete it and run `jr2net assets mediapipe`"
        ) from exc
    ins, outs = it.get_input_details(), it.get_output_details()
    if len(ins) != 1 or tuple(ins[0]["shape"]) != inputs or len(outs) != outputs:
        raise MediaPipeModelError(
            f"{path} is not the expected model (input {list(ins[0]['shape'])}, "
            f"{len(outs)} outputs; expected {list(inputs)}, {outputs})"
        )
    return it


class _Runtime:
    """The detector and mesh interpreters of one thread."""

    def __init__(self, detector_path=None, mesh_path=None) -> None:
        from jr2net.face.mediapipe_assets import model_path

        self.det = _load_interpreter(
            detector_path or model_path("face_detection_short_range.tflite"),
            (1, DET_SIZE, DET_SIZE, 3),
            2,
        )
        self.mesh = _load_interpreter(
            mesh_path or model_path("face_landmark.tflite"), (1, MESH_SIZE, MESH_SIZE, 3), 2
        )
        self._det_in = self.det.get_input_details()[0]["index"]
        outs = {tuple(d["shape"])[-1]: d["index"] for d in self.det.get_output_details()}
        self._det_reg, self._det_cls = outs[16], outs[1]
        self._mesh_in = self.mesh.get_input_details()[0]["index"]
        outs = {int(np.prod(d["shape"])): d["index"] for d in self.mesh.get_output_details()}
        self._mesh_pts, self._mesh_flag = outs[N_MESH * 3], outs[1]

    def detect(self, tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.det.set_tensor(self._det_in, tensor[None])
        self.det.invoke()
        reg = self.det.get_tensor(self._det_reg)[0]
        cls = self.det.get_tensor(self._det_cls)[0, :, 0]
        return reg, cls

    def mesh_points(self, tensor: np.ndarray) -> tuple[np.ndarray, float]:
        self.mesh.set_tensor(self._mesh_in, tensor[None])
        self.mesh.invoke()
        pts = self.mesh.get_tensor(self._mesh_pts).reshape(N_MESH, 3)
        flag = float(self.mesh.get_tensor(self._mesh_flag).ravel()[0])
        return pts.astype(np.float64), 1.0 / (1.0 + math.exp(-flag))


def runtime() -> _Runtime:
    """This thread's interpreters (created on first use; fetches the models if needed)."""
    rt = getattr(_local, "runtime", None)
    if rt is None:
        rt = _local.runtime = _Runtime()
    return rt


# ---------------------------------------------------------------------------------------------
# Detector: anchors, decoding, weighted NMS


def ssd_anchors() -> np.ndarray:
    """The short-range detector's 896 anchor centres ``[896, 2]`` (normalised x, y)."""
    out = []
    for stride, per_cell in ((8, 2), (16, 6)):
        n = DET_SIZE // stride
        ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        c = np.stack([(xs + 0.5) / n, (ys + 0.5) / n], axis=-1).reshape(-1, 1, 2)
        out.append(np.repeat(c, per_cell, axis=1).reshape(-1, 2))
    return np.concatenate(out)


_ANCHORS = ssd_anchors()


def decode_detections(
    reg: np.ndarray, logits: np.ndarray, min_score: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes ``[N, 4]`` (x0, y0, x1, y1), keypoints ``[N, 6, 2]`` (normalised) and scores above
    ``min_score``, before suppression."""
    scores = 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -100.0, 100.0)))
    keep = np.flatnonzero(scores >= min_score)
    r = reg[keep].astype(np.float64) / DET_SIZE
    a = _ANCHORS[keep]
    cx, cy = r[:, 0] + a[:, 0], r[:, 1] + a[:, 1]
    w, h = r[:, 2], r[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    kps = r[:, 4:16].reshape(-1, 6, 2) + a[:, None, :]
    return boxes, kps, scores[keep]


def weighted_nms(
    boxes: np.ndarray, kps: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.3
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """MediaPipe's weighted suppression: each cluster (IoU > threshold with its best box) becomes
    the score-weighted mean of its boxes and keypoints, with the best score."""
    order = list(np.argsort(-scores))
    out = []
    while order:
        best = order[0]
        cluster = [i for i in order if _iou(tuple(boxes[best]), tuple(boxes[i])) > iou_threshold]
        cluster = cluster or [best]
        w = scores[cluster][:, None]
        box = (boxes[cluster] * w).sum(0) / w.sum()
        kp = (kps[cluster] * w[:, :, None]).sum(0) / w.sum()
        out.append((box, kp, float(scores[best])))
        order = [i for i in order if i not in cluster and i != best]
    return out


# ---------------------------------------------------------------------------------------------
# Image preparation


def _letterbox(image: np.ndarray) -> tuple[np.ndarray, float, float, int, int]:
    """The image fitted into DET_SIZE² (aspect kept, zero border) in [-1, 1]; the x / y scale
    factors (letterbox px per image px) and the left / top padding."""
    h, w = image.shape[:2]
    s = DET_SIZE / max(h, w)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    small = np.asarray(
        Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=2.0)
    )
    canvas = np.zeros((DET_SIZE, DET_SIZE, 3), np.float32)
    px, py = (DET_SIZE - nw) // 2, (DET_SIZE - nh) // 2
    canvas[py : py + nh, px : px + nw] = small
    return canvas / 127.5 - 1.0, nw / w, nh / h, px, py


@dataclass
class Roi:
    """A rotated square region: centre (continuous pixel coordinates), side (px), angle (rad)."""

    cx: float
    cy: float
    side: float
    angle: float

    def to_image(self, pts: np.ndarray) -> np.ndarray:
        """Crop-tensor coordinates (``MESH_SIZE`` px, continuous) to continuous image coordinates."""
        s = self.side / MESH_SIZE
        c, n = math.cos(self.angle), math.sin(self.angle)
        x = (pts[:, 0] - MESH_SIZE / 2) * s
        y = (pts[:, 1] - MESH_SIZE / 2) * s
        return np.stack([c * x - n * y + self.cx, n * x + c * y + self.cy], axis=1)


def roi_from_points(pts: np.ndarray, start: np.ndarray, end: np.ndarray) -> Roi:
    """MediaPipe's ROI: bounding box of ``pts`` (continuous px), square on the long side x1.5,
    rotated so the ``start -> end`` line (eye to eye) is horizontal."""
    x0, y0 = pts.min(0)
    x1, y1 = pts.max(0)
    angle = -math.atan2(-(end[1] - start[1]), end[0] - start[0])
    angle = (angle + math.pi) % (2 * math.pi) - math.pi
    return Roi((x0 + x1) / 2, (y0 + y1) / 2, ROI_SCALE * max(x1 - x0, y1 - y0), angle)


def crop_roi(image: np.ndarray, roi: Roi) -> np.ndarray:
    """The ROI warped to ``MESH_SIZE``² float32 RGB in [0, 1] (edge pixels replicated outside)."""
    h, w = image.shape[:2]
    half = roi.side * 0.75  # covers the rotated square (side * sqrt(2) / 2)
    bx0, by0 = max(0, int(roi.cx - half) - 1), max(0, int(roi.cy - half) - 1)
    bx1, by1 = min(w, int(roi.cx + half) + 2), min(h, int(roi.cy + half) + 2)
    if bx1 <= bx0 or by1 <= by0:  # ROI entirely outside the frame
        return np.zeros((MESH_SIZE, MESH_SIZE, 3), np.float32)
    sub = image[by0:by1, bx0:bx1]
    # Pad by replication so the warp never samples outside (MediaPipe's BORDER_REPLICATE).
    pl, pt = max(0, -int(roi.cx - half) + bx0), max(0, -int(roi.cy - half) + by0)
    pr = max(0, int(roi.cx + half) + 2 - bx1)
    pb = max(0, int(roi.cy + half) + 2 - by1)
    if pl or pt or pr or pb:
        sub = np.pad(sub, ((pt, pb), (pl, pr), (0, 0)), mode="edge")
    ox, oy = bx0 - pl, by0 - pt  # continuous coordinate of sub's left/top edge
    src = Image.fromarray(np.ascontiguousarray(sub))
    s = roi.side / MESH_SIZE
    step = 1
    if s > 2.0:  # pre-shrink large crops so bilinear sampling does not alias
        step = int(s // 1.5)
        src = src.reduce(step)
    c, n = math.cos(roi.angle), math.sin(roi.angle)
    # Output (u, v) continuous -> image continuous: p = centre + R * s * ((u, v) - MESH/2).
    a, b = c * s / step, -n * s / step
    d, e = n * s / step, c * s / step
    tx = (roi.cx - ox) / step - (a + b) * MESH_SIZE / 2
    ty = (roi.cy - oy) / step - (d + e) * MESH_SIZE / 2
    out = src.transform(
        (MESH_SIZE, MESH_SIZE),
        Image.Transform.AFFINE,
        (a, b, tx, d, e, ty),
        Image.Resampling.BILINEAR,
    )
    return np.asarray(out, dtype=np.float32) / 255.0


# ---------------------------------------------------------------------------------------------
# Public API


def run_detector(image: np.ndarray, min_score: float = 0.5) -> list[tuple[Box, np.ndarray, float]]:
    """Face boxes (continuous px), 6 keypoints ``[6, 2]`` (continuous px) and scores, best first."""
    tensor, sx, sy, px, py = _letterbox(image)
    reg, logits = runtime().detect(tensor)
    boxes, kps, scores = decode_detections(reg, logits, min_score)
    out = []
    for box, kp, score in weighted_nms(boxes, kps, scores):
        # Normalised letterbox coordinates -> continuous image pixels.
        x = (np.r_[box[[0, 2]], kp[:, 0]] * DET_SIZE - px) / sx
        y = (np.r_[box[[1, 3]], kp[:, 1]] * DET_SIZE - py) / sy
        b = (float(x[0]), float(y[0]), float(x[1]), float(y[1]))
        out.append((b, np.stack([x[2:], y[2:]], axis=1), score))
    return out


def mesh_on_roi(image: np.ndarray, roi: Roi) -> tuple[np.ndarray, float]:
    """The 468 mesh points ``[468, 3]`` (x, y continuous image px; z in px) and presence score."""
    pts, presence = runtime().mesh_points(crop_roi(image, roi))
    xy = roi.to_image(pts)
    z = pts[:, 2] * roi.side / MESH_SIZE
    return np.concatenate([xy, z[:, None]], axis=1), presence


def roi_from_mesh(dense: np.ndarray) -> Roi:
    """The tracking ROI of a mesh (continuous px): its bounding box, eyes 33 -> 263 level."""
    return roi_from_points(dense[:, :2], dense[_EYE_R, :2], dense[_EYE_L, :2])


def make_detection(dense_cont: np.ndarray, score: float, presence: float) -> MeshFaceDetection:
    """A detection from mesh points in continuous coordinates (converted to pixel centres)."""
    from jr2net.face.mediapipe_map import landmarks68_from_mesh

    dense = dense_cont.copy()
    dense[:, :2] -= 0.5
    lm = landmarks68_from_mesh(dense[:, :2]).astype(np.float32)
    return MeshFaceDetection(box_from_landmarks(lm), lm, score, dense.astype(np.float32), presence)


def detect_faces(
    image: np.ndarray, min_score: float = 0.5, refine: bool = True, min_presence: float = 0.5
) -> list[MeshFaceDetection]:
    """All faces in a uint8 ``[H, W, 3]`` RGB image, largest first, each with its 468-point mesh.

    ``refine`` runs the mesh a second time on the ROI of its own first result (what the tracker
    does on the next frame), which places the crop as the mesh network was trained on.
    """
    image = check_image(image)
    if not 0.0 < min_score < 1.0:
        raise ValueError(f"min_score must be in (0, 1), got {min_score!r}")
    dets = []
    for box, kp, score in run_detector(image, min_score):
        roi = roi_from_points(np.array([box[:2], box[2:]]), kp[0], kp[1])
        dense, presence = mesh_on_roi(image, roi)
        if refine and presence >= min_presence:
            dense, presence = mesh_on_roi(image, roi_from_mesh(dense))
        if presence < min_presence:
            continue
        dets.append(make_detection(dense, score, presence))
    dets.sort(key=lambda d: d.size, reverse=True)
    return dets


class MeshTracker:
    """Per-video mesh tracker: the detector runs only when the face is lost (MediaPipe's scheme).

    Each frame runs the mesh on the ROI of the previous frame's mesh; the face is lost when the
    presence score falls below ``min_presence`` or the mesh leaves the frame, and then the
    detector searches the whole frame (every ``redetect_every`` frames while lost). Same interface
    and counters as :class:`jr2net.face.landmarks.LandmarkTracker` (``frames``, ``detections``,
    ``losses``). Not thread-safe: one tracker per stream.
    """

    def __init__(
        self, redetect_every: int = 1, min_presence: float = 0.5, min_score: float = 0.5
    ) -> None:
        if redetect_every < 1:
            raise ValueError("redetect_every must be >= 1")
        self.redetect_every = redetect_every
        self.min_presence = min_presence
        self.min_score = min_score
        self.reset()

    def reset(self) -> None:
        """Forget the tracked face (the next frame runs the detector)."""
        self._last: np.ndarray | None = None
        self._score = 0.0
        self._since_detect_try = 0
        self.frames = 0
        self.detections = 0
        self.verifications = 0
        self.losses = 0

    @property
    def tracking(self) -> bool:
        """True while a face is being followed."""
        return self._last is not None

    def update(self, frame: np.ndarray) -> MeshFaceDetection | None:
        """The tracked face in ``frame`` (uint8 ``[H, W, 3]`` RGB), or None."""
        frame = check_image(frame, "frame")
        self.frames += 1
        if self._last is not None:
            dense, presence = mesh_on_roi(frame, roi_from_mesh(self._last))
            h, w = frame.shape[:2]
            cx, cy = dense[:, :2].mean(0)
            if presence >= self.min_presence and 0 <= cx < w and 0 <= cy < h:
                self._last = dense
                return make_detection(dense, self._score, presence)
            self.losses += 1
            self._last = None
            self._since_detect_try = self.redetect_every - 1  # search this very frame
        self._since_detect_try += 1
        if self._since_detect_try < self.redetect_every and self.frames > 1:
            return None
        self._since_detect_try = 0
        self.detections += 1
        dets = detect_faces(frame, self.min_score, refine=False, min_presence=self.min_presence)
        if not dets:
            return None
        det = dets[0]
        self._last = det.dense.astype(np.float64).copy()
        self._last[:, :2] += 0.5
        self._score = det.score
        return det
