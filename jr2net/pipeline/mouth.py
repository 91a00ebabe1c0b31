"""Mouth interior transfer for the geometric path (Face2Face-style): the driving frame's own mouth.

The source photo rarely shows the inside of the mouth, and a synthetic interior (teeth-like bands
over a dark cavity, ``stages.mouth_colors``) looks like a grey oval once the mouth opens. Instead,
per frame, the pixels where the rendered face shows its mouth socket (the opening between the
lips) take the driving frame's mouth interior:

- **geometry**: a least-squares 2D affine map from the output's 20 lip landmarks (the recombined
  mesh's landmark vertices 48-67, projected) to the driving frame's detected ones (inner lips
  weighted ``INNER_WEIGHT`` times) samples the driving frame (``cv2.warpAffine``) over the socket's
  bounding box only;
- **colour**: the sample is matched to the source in CIE Lab: per channel, mean and standard
  deviation of the perioral skin ring (outer-lip polygon scaled ``RING_SCALE`` times, minus the
  lips) of the warped driving frame are moved towards the same ring of the output face layer
  (the source's skin, relit): ``MATCH_STRENGTH`` of the mean shift, the standard-deviation ratio
  clamped to ``STD_RATIO``. For the same person this is close to the identity; across
  identities it carries part of the source's tone and white balance onto the driving's teeth
  and tongue (all of it would dye the teeth with the skin: skin albedo is not illumination);
- **blend**: over the socket pixels, feathered by a small blur, so the lips drawn from the source
  stay as they are.

``options.extra["mouth"]``: ``transfer`` (default) or ``synthetic`` (the older synthetic interior
alone, e.g. when the driving frames must not appear in the output).
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch import Tensor

from jr2net.face.camera import project as project_points

MOUTH_MODES = ("transfer", "synthetic")
LIPS = slice(48, 68)  # 68-point lip landmarks: outer 48-59, inner 60-67
INNER_WEIGHT = 2.0  # least-squares weight of the inner-lip points in the affine fit
RING_SCALE = 1.5  # perioral colour ring: outer-lip polygon scaled about its centre
STD_RATIO = (0.8, 1.25)  # clamp of the per-channel standard-deviation ratio
MATCH_STRENGTH = 0.5  # fraction of the skin-ring mean shift applied (teeth are not skin)
MIN_PIXELS = 6  # socket pixels (crop resolution) below which the mouth counts as closed


def lip_affine(out_pts: np.ndarray, drv_pts: np.ndarray) -> np.ndarray:
    """``[2,3]`` affine ``A`` with ``A @ [x, y, 1]`` ≈ the driving point of each output point
    (weighted least squares over the 20 lip points; inner lips ``INNER_WEIGHT``)."""
    out_pts = np.asarray(out_pts, np.float64)
    drv_pts = np.asarray(drv_pts, np.float64)
    if out_pts.shape != (20, 2) or drv_pts.shape != (20, 2):
        raise ValueError(f"lip points must be [20,2], got {out_pts.shape} and {drv_pts.shape}")
    w = np.sqrt(np.r_[np.ones(12), np.full(8, INNER_WEIGHT)])[:, None]
    X = np.c_[out_pts, np.ones(20)] * w
    A, *_ = np.linalg.lstsq(X, drv_pts * w, rcond=None)
    return A.T


_lab_warm_up: threading.Thread | None = None
_lab_warm_up_lock = threading.Lock()


def warm_up_colour_tables() -> None:
    """Start building OpenCV's float RGB->Lab tables in a thread (its first conversion takes
    ~60 ms of CPU; OpenCV releases the GIL meanwhile, so this overlaps e.g. a source fit). Once
    per process; :func:`match_colours` waits for it, so the tables are never built twice at once."""
    global _lab_warm_up
    with _lab_warm_up_lock:
        if _lab_warm_up is not None:
            return

        def build() -> None:
            import cv2

            cv2.cvtColor(np.zeros((1, 1, 3), np.float32), cv2.COLOR_RGB2LAB)

        _lab_warm_up = threading.Thread(target=build, name="jr2net-lab-tables", daemon=True)
        _lab_warm_up.start()


def match_colours(patch: np.ndarray, ref_from: np.ndarray, ref_to: np.ndarray) -> np.ndarray:
    """``patch`` (float32 RGB in [0,1], ``[h,w,3]``) with the Lab statistics that take the pixels
    ``ref_from`` ``[n,3]`` towards ``ref_to`` ``[m,3]`` (per channel: clamped std ratio,
    ``MATCH_STRENGTH`` of the mean shift)."""
    import cv2

    warming = _lab_warm_up
    if warming is not None and warming.is_alive():
        warming.join()
    lab = cv2.cvtColor(np.ascontiguousarray(patch, np.float32), cv2.COLOR_RGB2LAB)
    a = cv2.cvtColor(np.ascontiguousarray(ref_from[None], np.float32), cv2.COLOR_RGB2LAB)[0]
    b = cv2.cvtColor(np.ascontiguousarray(ref_to[None], np.float32), cv2.COLOR_RGB2LAB)[0]
    ratio = np.clip(b.std(0) / np.maximum(a.std(0), 1e-3), *STD_RATIO)
    lab = (lab - a.mean(0)) * ratio + a.mean(0) + MATCH_STRENGTH * (b.mean(0) - a.mean(0))
    return np.clip(cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB), 0.0, 1.0)


class MouthTransfer:
    """Per-session mouth transfer (module doc): knows the render mesh's socket faces and lip
    vertices; ``apply`` pastes the driving interior into a face layer."""

    def __init__(self, mesh, model) -> None:
        socket = mesh.region_mask("mouth_socket")
        socket_faces = socket[mesh.faces_long].all(1)
        # Indexed by the rasteriser's face id + 1 (0: off the mesh).
        self.lut = torch.cat([torch.zeros(1, dtype=torch.bool), socket_faces])
        lm = model.landmarks68.long()[LIPS]
        idx = torch.searchsorted(mesh.index, lm).clamp_max(mesh.n_vertices - 1)
        self.enabled = bool(socket_faces.any()) and bool((mesh.index[idx] == lm).all())
        self.lip_vertices = idx

    def apply(
        self,
        face: Tensor,
        rast: Tensor,
        verts_cam: Tensor,
        K_crop: Tensor,
        driving: np.ndarray,
        driving_landmarks: np.ndarray,
    ) -> Tensor:
        """``face`` ``[1,3,L,L]`` (the face layer, any square size over the render crop of
        ``rast`` ``[1,S,S,4]`` and camera ``K_crop``) with its mouth socket replaced by the
        driving frame's mouth interior (uint8 ``driving``, its 68 ``driving_landmarks``); in place."""
        import cv2

        if not self.enabled:
            return face
        S, L = rast.shape[1], face.shape[-1]
        f = L / S
        crop_pts = project_points(verts_cam[:, self.lip_vertices], K_crop)[0].numpy()
        # The socket's pixels in the crop, looked up over the lips' box only (cheap).
        c0 = np.clip(np.floor(crop_pts.min(0)) - 1, 0, S).astype(int)
        c1 = np.clip(np.ceil(crop_pts.max(0)) + 2, 0, S).astype(int)
        socket = np.zeros((S, S), np.float32)
        sub_ids = rast[0, c0[1] : c1[1], c0[0] : c1[0], 3].long()
        socket[c0[1] : c1[1], c0[0] : c1[0]] = self.lut[sub_ids].numpy()
        if socket.sum() < MIN_PIXELS:
            return face
        out_pts = (crop_pts.astype(np.float64) + 0.5) * f - 0.5  # crop pixels -> layer pixels
        A = lip_affine(out_pts, np.asarray(driving_landmarks, np.float64)[LIPS])
        # Patch: the socket's and the colour ring's bounding box, in layer pixels.
        c = out_pts[:12].mean(0)
        ring = (out_pts[:12] - c) * RING_SCALE + c
        x0, y0 = (int(v) for v in np.clip(np.floor(ring.min(0)) - 2, 0, L))
        x1, y1 = (int(v) for v in np.clip(np.ceil(ring.max(0)) + 3, 0, L))
        if x1 - x0 < 2 or y1 - y0 < 2:
            return face
        M = A.copy()
        M[:, 2] += A[:, :2] @ np.array([x0, y0], np.float64)
        sample = cv2.warpAffine(
            driving, M, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        ).astype(np.float32) / 255.0  # fmt: skip
        # Masks in patch pixels: socket (the crop's, resampled), lips and the skin ring around them.
        h, w = y1 - y0, x1 - x0
        to_crop = np.array([[1 / f, 0, (x0 + 0.5) / f - 0.5], [0, 1 / f, (y0 + 0.5) / f - 0.5]])
        sm = cv2.warpAffine(
            socket, to_crop, (w, h),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
        )  # fmt: skip
        lips = np.zeros((h, w), np.uint8)
        ring_m = np.zeros((h, w), np.uint8)
        off = np.array([x0, y0])
        cv2.fillPoly(ring_m, [np.round(ring - off).astype(np.int32)], 1)
        cv2.fillPoly(lips, [np.round(out_pts[:12] - off).astype(np.int32)], 1)
        ring_sel = (ring_m > 0) & (lips == 0) & (sm < 0.01)
        layer = face[0, :, y0:y1, x0:x1].permute(1, 2, 0).numpy()
        if int(ring_sel.sum()) >= 8:
            sample = match_colours(sample, sample[ring_sel], layer[ring_sel])
        alpha = cv2.GaussianBlur(sm, (0, 0), max(0.6, 0.75 * f)) * (sm > 0.01)
        alpha = torch.from_numpy(np.clip(alpha, 0.0, 1.0))[None]
        sub = face[0, :, y0:y1, x0:x1]
        sub.add_(alpha * (torch.from_numpy(sample).permute(2, 0, 1) - sub))
        return face


def synthetic_socket(mesh, model, colors: Tensor, visible: Tensor) -> Tensor:
    """Give the mouth-socket vertices the photo does not show (``~visible``) the synthetic
    interior (``stages.mouth_colors``) in ``colors`` ``[V,3]`` (in place); returns them (bool)."""
    from jr2net.pipeline.stages import mouth_colors

    hidden = mesh.region_mask("mouth_socket") & ~visible
    if not hidden.any():
        return hidden
    skin = colors[visible].mean(0) if visible.any() else torch.full((3,), 0.6)
    lm = model.vertices[model.landmarks68]
    centre = (lm[62] + lm[66]) / 2
    half_width = float((lm[54, 0] - lm[48, 0]).abs()) / 2
    mouth = mouth_colors(
        mesh.vertices[:, 1] - float(centre[1]),
        (mesh.vertices[:, 0] - float(centre[0])) / max(half_width, 1.0),
        float(skin.mean()),
    )
    colors[hidden] = mouth[hidden]
    return hidden
