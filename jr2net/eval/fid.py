"""Fréchet distance between two sets of image features, with a pluggable feature extractor.

``frechet_distance`` is the FID formula ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))``
(Heusel et al. 2017) on whatever features it is given. The default extractor here is **not**
Inception-v3 (no ImageNet weights can be had offline): it is the 128-D descriptor of dlib's
face-recognition ResNet (``jr2net.models.face_id``) on face chips aligned with the frame's
landmarks. Values are therefore a face-identity/appearance distance in that network's units and
are not comparable to published FIDs (docs/evaluation.md).

An extractor is any callable ``(images, landmarks) -> [N, D]``: ``images`` a list of uint8
``[H, W, 3]`` RGB, ``landmarks`` a matching list of ``[68, 2]`` pixel arrays (where the face is).
``load_extractor("module:factory")`` builds one from a zero-argument factory.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "Extractor",
    "FaceIdFeatures",
    "frechet_distance",
    "feature_statistics",
    "fid_from_features",
    "load_extractor",
    "DEFAULT_EXTRACTOR",
]

Extractor = Callable[[Sequence[np.ndarray], Sequence[np.ndarray]], np.ndarray]
DEFAULT_EXTRACTOR = "jr2net.eval.fid:FaceIdFeatures"


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and covariance ``[D, D]`` (unbiased, rows are samples) of ``[N, D]``."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be [N, D] with N >= 2, got {list(f.shape)}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or inf")
    return f.mean(0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(
    mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray
) -> float:
    """Fréchet distance of two Gaussians ``N(mu_a, sigma_a)`` and ``N(mu_b, sigma_b)``.

    The matrix square root is ``scipy.linalg.sqrtm``; when the product is singular (fewer
    samples than dimensions) a small ridge is added, as the reference implementation does, and
    the imaginary round-off is dropped.
    """
    from scipy import linalg

    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    sa, sb = np.atleast_2d(sigma_a).astype(np.float64), np.atleast_2d(sigma_b).astype(np.float64)
    if mu_a.shape != mu_b.shape or sa.shape != sb.shape or sa.shape != (mu_a.size,) * 2:
        raise ValueError(
            f"shapes do not match: mu {mu_a.shape} / {mu_b.shape}, sigma {sa.shape} / {sb.shape}"
        )
    diff = mu_a - mu_b
    covmean = linalg.sqrtm(sa @ sb)
    if not np.isfinite(covmean).all() or np.abs(np.imag(covmean)).max() > 1e-3 * max(
        np.abs(covmean).max(), 1e-12
    ):
        ridge = np.eye(sa.shape[0]) * 1e-6 * max(np.trace(sa), np.trace(sb), 1e-12) / sa.shape[0]
        covmean = linalg.sqrtm((sa + ridge) @ (sb + ridge))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(sa) + np.trace(sb) - 2.0 * np.trace(covmean))


def fid_from_features(real: np.ndarray, generated: np.ndarray) -> float:
    """Fréchet distance between two feature sets ``[N, D]`` and ``[M, D]``."""
    return frechet_distance(*feature_statistics(real), *feature_statistics(generated))


class FaceIdFeatures:
    """The default extractor: dlib's face-recognition ResNet (PyTorch port) on 150x150 chips
    aligned like ``dlib.get_face_chip`` with the given landmarks; 128-D descriptors."""

    name = "face_id_resnet_128"

    def __init__(self, device: str = "cpu") -> None:
        from jr2net.models.face_id import load_face_id_net

        self.device = device
        self.net = load_face_id_net(device)

    def __call__(self, images: Sequence[np.ndarray], landmarks: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        from jr2net.io.images import to_tensor
        from jr2net.models.face_id import align_face_chips

        if len(images) != len(landmarks):
            raise ValueError(f"{len(images)} images but {len(landmarks)} landmark sets")
        out = []
        with torch.inference_mode():
            for img, lmk in zip(images, landmarks, strict=True):
                lm = torch.as_tensor(np.asarray(lmk, dtype=np.float32))[None]
                chips = align_face_chips(to_tensor(img).to(self.device), lm.to(self.device))
                out.append(self.net(chips)[0].double().cpu().numpy())
        return np.stack(out) if out else np.zeros((0, 128))


def load_extractor(spec: str = DEFAULT_EXTRACTOR) -> Extractor:
    """Build an extractor from ``"package.module:factory"`` (a class or function called with no
    arguments that returns the callable). ValueError names a bad spec."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"feature extractor must be 'module:factory', got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load feature extractor {spec!r}: {exc}") from None
    extractor = factory()
    if not callable(extractor):
        raise ValueError(f"feature extractor {spec!r} did not return a callable")
    return extractor
