"""Temporal filtering of the tracked driving motion: the One-Euro filter (Casiez et al., CHI 2012).

Per-frame landmark fits jitter by a fraction of a pixel even on a still head, and the face the
pipeline draws shimmers with them. The One-Euro filter is a first-order low-pass whose cutoff
rises with the signal's speed: still stretches are smoothed hard (low jitter), fast motion passes
with little lag. Per channel, with ``dx`` the low-passed derivative (cutoff ``d_cutoff``):
``cutoff = min_cutoff + beta * |dx|`` and ``x̂ = x̂_prev + α (x - x̂_prev)``,
``α = 1 / (1 + 1 / (2π cutoff Δt))``.

Before it, ``StillnessGate`` holds the driving fit while the driving landmarks stay within
``STILL_THRESHOLD`` (RMS over the 68 points, in inter-ocular distances) of the frame that set the
held fit: re-fitting a still face (sensor noise, re-encoding) moves dlib's landmarks by ~1-2 % IOD
and the warm-started fit drifts by up to ~1.5° and ~0.3 in an expression weight over 20 frames;
held, a still driving head gives a still output. Motion past the threshold takes the new fit (the
One-Euro filter after the gate smooths the step). The gate also lets go once the landmarks' rigid
2D motion since the held frame (the least-squares similarity: translation, scale, roll; RMS
displacement over the 68 points, in IOD) passes ``DRIFT_FRACTION`` of the threshold: averaged over
68 points (and measured on the mean landmarks of the last ``DRIFT_FRAMES`` frames, against the
same mean when the held fit was set) it is far less noisy than the per-point RMS, so a slowly
drifting or zooming head is followed within a few frames instead of lagging by up to the whole
threshold, and detection noise on a still head does not let go (a re-fit of a still face can
move the output by a fraction of a pixel to a pixel).

``PoseExpressionFilter`` runs one filter per group of a driving fit's coefficients (Euler angles
in radians, translation in mm, expression weights in [0, 1]) with the settings in
``DEFAULT_SETTINGS``; Δt is one frame at ``FRAME_RATE`` (sessions receive frames, not times).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import Tensor

FRAME_RATE = 30.0  # Hz: the nominal frame rate that sets Δt

# group -> (min_cutoff Hz, beta per unit/s, d_cutoff Hz). Light smoothing (the gate holds still
# heads): lower cutoffs lagged zooming heads (d20) by ~2 dB face PSNR.
DEFAULT_SETTINGS: dict[str, tuple[float, float, float]] = {
    "angles": (3.0, 5.0, 1.0),
    "translation": (3.0, 0.5, 1.0),
    "expression": (4.0, 10.0, 1.0),
}


STILL_THRESHOLD = 0.025  # landmark RMS change / inter-ocular distance that counts as motion
DRIFT_FRACTION = 0.5  # rigid (similarity) landmark motion that counts as motion / STILL_THRESHOLD
DRIFT_FRAMES = 3  # the rigid motion is measured on the mean landmarks of this many last frames


def rigid_motion(a: np.ndarray, b: np.ndarray) -> float:
    """RMS displacement of points ``a`` ``[N,2]`` under the least-squares 2D similarity that takes
    them to ``b`` (the rigid part of ``b - a``; per-point noise averages out)."""
    za = (a[:, 0] - a[:, 0].mean()) + 1j * (a[:, 1] - a[:, 1].mean())
    zb = (b[:, 0] - b[:, 0].mean()) + 1j * (b[:, 1] - b[:, 1].mean())
    m = np.vdot(za, zb) / max(float(np.vdot(za, za).real), 1e-12)
    shift = complex(b[:, 0].mean() - a[:, 0].mean(), b[:, 1].mean() - a[:, 1].mean())
    return float(np.sqrt(np.mean(np.abs((m - 1) * za + shift) ** 2)))


class StillnessGate:
    """Holds a driving fit while its landmarks stay still (module doc)."""

    def __init__(self, threshold: float = STILL_THRESHOLD) -> None:
        if not threshold >= 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        self.threshold = float(threshold)
        self.reset()

    def reset(self) -> None:
        """Forget the held fit."""
        self._landmarks: np.ndarray | None = None
        self._coeffs = None
        self._recent: list[np.ndarray] = []  # the last DRIFT_FRAMES frames' landmarks
        self._held_mean: np.ndarray | None = None  # their mean when the held fit was set

    def __call__(self, fit):
        """``fit`` (a ``FitResult``) or, while the face is still, a copy with the held coefficients."""
        from jr2net.face.landmarks import interocular_distance

        lm = np.asarray(fit.detection.landmarks, dtype=np.float64)
        if self._recent and self._recent[-1].shape != lm.shape:
            self._recent = []
        self._recent = [*self._recent[1 - DRIFT_FRAMES :], lm]
        mean = np.mean(self._recent, axis=0)
        if self._landmarks is not None and self._landmarks.shape == lm.shape:
            iod = max(interocular_distance(self._landmarks), 1e-6)
            rms = float(np.sqrt(((lm - self._landmarks) ** 2).sum(1).mean())) / iod
            drift = rigid_motion(self._held_mean, mean) / iod
            if rms <= self.threshold and drift <= DRIFT_FRACTION * self.threshold:
                return dataclasses.replace(fit, coeffs=self._coeffs)
        self._landmarks, self._coeffs, self._held_mean = lm, fit.coeffs, mean
        return fit


def _alpha(cutoff: Tensor | float, dt: float) -> Tensor | float:
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """One-Euro filter over a tensor signal of fixed shape (one filter per element)."""

    def __init__(
        self, min_cutoff: float, beta: float, d_cutoff: float = 1.0, rate: float = FRAME_RATE
    ) -> None:
        if min_cutoff <= 0 or d_cutoff <= 0 or rate <= 0 or beta < 0:
            raise ValueError(
                "OneEuroFilter needs min_cutoff, d_cutoff, rate > 0 and beta >= 0, got "
                f"{min_cutoff}, {d_cutoff}, {rate}, {beta}"
            )
        self.min_cutoff = float(min_cutoff)
        self.beta = float(beta)
        self.d_cutoff = float(d_cutoff)
        self.dt = 1.0 / float(rate)
        self.reset()

    def reset(self) -> None:
        """Forget the signal (the next value passes unchanged)."""
        self._x: Tensor | None = None
        self._dx: Tensor | None = None

    def __call__(self, x: Tensor) -> Tensor:
        """The filtered value of the next sample ``x`` (a new tensor)."""
        x = x.detach().to(torch.float64)
        if self._x is None or self._x.shape != x.shape:
            self._x, self._dx = x.clone(), torch.zeros_like(x)
            return x.clone()
        dx = (x - self._x) / self.dt
        self._dx = self._dx + _alpha(self.d_cutoff, self.dt) * (dx - self._dx)
        cutoff = self.min_cutoff + self.beta * self._dx.abs()
        self._x = self._x + _alpha(cutoff, self.dt) * (x - self._x)
        return self._x.clone()


class PoseExpressionFilter:
    """One-Euro filters on a driving fit's angles, translation and expression (module doc)."""

    def __init__(
        self,
        settings: dict[str, tuple[float, float, float]] | None = None,
        rate: float = FRAME_RATE,
        still_threshold: float = STILL_THRESHOLD,
    ) -> None:
        settings = dict(DEFAULT_SETTINGS if settings is None else settings)
        unknown = set(settings) - set(DEFAULT_SETTINGS)
        if unknown:
            raise ValueError(f"unknown filter groups {sorted(unknown)}; {sorted(DEFAULT_SETTINGS)}")
        self.filters = {k: OneEuroFilter(*v, rate=rate) for k, v in settings.items()}
        self.gate = StillnessGate(still_threshold)

    def reset(self) -> None:
        """Forget the motion (after a lost face, so the next fit is taken as it is)."""
        self.gate.reset()
        for f in self.filters.values():
            f.reset()

    def __call__(self, fit):
        """A copy of ``fit`` (a ``FitResult``) gated and with its pose and expression filtered."""
        fit = self.gate(fit)
        c = fit.coeffs
        new = {
            name: flt(getattr(c, name)).to(getattr(c, name).dtype)
            for name, flt in self.filters.items()
        }
        return dataclasses.replace(fit, coeffs=dataclasses.replace(c, **new))
