"""The one sample format every RecNet dataset returns, and its ``collate``.

A sample is a dict:

* ``"image"``: float32 ``[3,S,S]`` in [0,1], RGB, the face crop;
* ``"K"``: float32 ``[3,3]`` intrinsics of that crop (``crop_intrinsics`` of the full image's K
  for the crop box, so rendering the coefficients under it lands on the crop);
* ``"landmarks"``: float32 ``[68,2]`` crop pixels (x, y), iBUG order: dlib's detections (or the
  dataset's annotation) for real data, the true projected landmarks for synthetic data (jaw on
  the silhouette, the points dlib aims for);
* ``"landmark_weight"``: float32 ``[68]``, 0 where a point is unknown;
* ``"mask"``: float32 ``[1,S,S]`` in {0,1}, face skin: the fitter's rendered ``face_mask`` of the
  pseudo-label (or the landmark skin polygon) for real data, the true ``face_mask`` for synthetic;
* ``"coeffs"``: dict of ``FaceCoefficients`` field tensors without the batch dimension, in the
  crop camera ``K``: identity ``[K_id]`` and albedo ``[G]`` zero-padded to the face model's full
  counts, expression ``[E]``, angles ``[3]``, translation ``[3]``, light ``[9,3]``. Real data:
  the fitter's pseudo-labels (video frames carry the albedo and light of their video's source
  fit); synthetic: the ground truth (albedo: the least-squares basis fit of a photo texture when
  one was used);
* ``"has_gt"``: float32 scalar, 1 for exact ground truth (synthetic), else 0;
* ``"source"``: str, the dataset / shard it came from; ``"identity"``: str, the video, person
  or photo name (same identity = same person, for pairs).

The crop box is ``face_crop_box(landmarks68)`` in full-image pixels (``jr2net.models.recnet``).
Pose coefficients do not depend on the crop (the camera frame is the same); only K does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from jr2net.face.coeffs import FIELDS
from jr2net.models.recnet import face_crop_box as _face_crop_box

SAMPLE_KEYS = (
    "image",
    "K",
    "landmarks",
    "landmark_weight",
    "mask",
    "coeffs",
    "has_gt",
    "source",
    "identity",
)


def face_crop_box(landmarks68: np.ndarray) -> tuple[float, float, float, float]:
    """The square crop box ``(x0, y0, x1, y1)`` (full-image pixels, ``crop_intrinsics``
    convention) RecNet sees for 68 landmarks: ``jr2net.models.recnet.face_crop_box``."""
    lm = np.asarray(landmarks68)
    if lm.shape != (68, 2):
        raise ValueError(f"landmarks68 must have shape [68, 2], got {list(lm.shape)}")
    return tuple(float(v) for v in _face_crop_box(lm.astype(np.float64)))  # type: ignore[return-value]


def crop_image(image: np.ndarray, box: Sequence[float], size: int) -> np.ndarray:
    """``image[y0:y1, x0:x1]`` resized to ``size``² (uint8 HWC in and out), black outside the image.

    ``box`` is in the ``jr2net.face.camera.crop_intrinsics`` convention (pixel edges: ``(0, 0, W,
    H)`` is the whole image), which is PIL's resize box; PIL's antialiased bilinear filter.
    """
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"image must be uint8 [H,W,C], got {image.dtype} {image.shape}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box must have x1 > x0 and y1 > y0, got {box}")
    H, W = image.shape[:2]
    pl, pt = max(0, int(np.ceil(-x0))), max(0, int(np.ceil(-y0)))
    pr, pb = max(0, int(np.ceil(x1 - W))), max(0, int(np.ceil(y1 - H)))
    if pl or pt or pr or pb:
        image = np.pad(image, ((pt, pb), (pl, pr), (0, 0)))
    im = Image.fromarray(image)
    out = im.resize(
        (size, size), Image.Resampling.BILINEAR, box=(x0 + pl, y0 + pt, x1 + pl, y1 + pt)
    )
    return np.asarray(out)


def crop_points(points: np.ndarray, box: Sequence[float], size: int) -> np.ndarray:
    """Full-image pixel points ``[N,2]`` in the crop's pixels (the ``crop_intrinsics`` map)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    p = np.asarray(points, dtype=np.float64)
    s = np.array([size / (x1 - x0), size / (y1 - y0)])
    return ((p - np.array([x0, y0]) + 0.5) * s - 0.5).astype(np.float32)


def coeff_tensors(
    coeffs: Mapping[str, Any] | Any, n_identity: int, n_albedo: int
) -> dict[str, Tensor]:
    """Per-sample coefficient dict (no batch dim) from FaceCoefficients (batch 1) or a mapping,
    identity and albedo zero-padded (or cut) to ``n_identity`` / ``n_albedo``."""
    d = coeffs.tensors() if hasattr(coeffs, "tensors") else coeffs
    out = {}
    for k in FIELDS:
        if k not in d:
            raise ValueError(f"coefficients are missing {k!r}")
        t = torch.as_tensor(np.asarray(d[k]) if not isinstance(d[k], Tensor) else d[k])
        t = t.detach().float().cpu()
        want = 2 if k == "light" else 1
        while t.dim() > want:
            t = t[0]
        if k in ("identity", "albedo"):
            n = n_identity if k == "identity" else n_albedo
            t = torch.nn.functional.pad(t[:n], (0, max(0, n - t.shape[0])))
        out[k] = t.contiguous()
    return out


def make_sample(
    image: np.ndarray | Tensor,
    K: np.ndarray | Tensor,
    landmarks: np.ndarray | Tensor,
    mask: np.ndarray | Tensor,
    coeffs: dict[str, Tensor],
    *,
    has_gt: bool,
    source: str,
    identity: str,
    landmark_weight: np.ndarray | Tensor | None = None,
) -> dict[str, Any]:
    """Build and check one sample. ``image``: uint8 ``[S,S,3]`` or float ``[3,S,S]``; ``mask``:
    ``[S,S]`` (bool/uint8/float) or ``[1,S,S]``."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be uint8 [S,S,3], got {image.dtype} {image.shape}")
        arr = image if image.flags.writeable else image.copy()
        img = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float() / 255.0
    else:
        img = image.float()
    if img.dim() != 3 or img.shape[0] != 3 or img.shape[1] != img.shape[2]:
        raise ValueError(f"image must be [3,S,S], got {tuple(img.shape)}")
    S = img.shape[1]
    m = torch.as_tensor(np.array(mask, np.float32)) if isinstance(mask, np.ndarray) else mask.float()
    if m.max() > 1.0:
        m = m / 255.0
    m = m.reshape(1, S, S)
    lm = torch.as_tensor(np.asarray(landmarks, dtype=np.float32)).reshape(68, 2)
    w = (
        torch.ones(68)
        if landmark_weight is None
        else torch.as_tensor(np.asarray(landmark_weight, dtype=np.float32)).reshape(68)
    )
    return {
        "image": img.contiguous(),
        "K": torch.as_tensor(np.asarray(K, dtype=np.float32)).reshape(3, 3),
        "landmarks": lm,
        "landmark_weight": w,
        "mask": (m > 0.5).float(),
        "coeffs": coeffs,
        "has_gt": torch.tensor(1.0 if has_gt else 0.0),
        "source": str(source),
        "identity": str(identity),
    }


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of samples (any dict of tensors / nested dicts / strings) into a batch:
    tensors gain a leading batch dim, dicts are collated per key, strings become lists."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    first = samples[0]
    out: dict[str, Any] = {}
    for key, value in first.items():
        items = [s[key] for s in samples]
        if isinstance(value, Tensor):
            shapes = {tuple(t.shape) for t in items}
            if len(shapes) > 1:
                raise ValueError(f"collate: {key!r} has different shapes {sorted(shapes)}")
            out[key] = torch.stack(items)
        elif isinstance(value, Mapping):
            out[key] = collate(items)
        else:
            out[key] = list(items)
    return out
