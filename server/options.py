"""Session options (``SessionConfig.options``) checked, with their ranges, when a session opens.

A value the pipeline could not use would otherwise be accepted at open and then fail every frame
(e.g. ``feather=99999999999999999999999`` overflowing in the compositor). Each mode's options are
declared here from the pipeline's own tables (``LIGHT_MODES``, ``EXPRESSION_VALUES``); a mode with
no table here (one registered by an embedding application) gets only the size checks, and its
pipeline validates its options itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass

MAX_KEY_CHARS, MAX_VALUE_CHARS, MAX_OPTIONS = 128, 4096, 32
FLAG_VALUES = ("1", "0", "true", "false", "yes", "no")


class OptionError(ValueError):
    """An option is unknown or out of range (-> INVALID_ARGUMENT when the session opens)."""


@dataclass(frozen=True)
class Choice:
    """A value out of a fixed set of words."""

    values: tuple[str, ...]

    def check(self, key: str, value: str, crop_size: int) -> None:
        if value not in self.values:
            raise OptionError(f"option {key!r} must be one of {self.values}, got {value!r}")

    def describe(self, crop_size: int) -> str:
        return "|".join(self.values)


@dataclass(frozen=True)
class CropFraction:
    """An integer in ``0..crop_size // divisor`` (a radius in face-crop pixels)."""

    divisor: int

    def check(self, key: str, value: str, crop_size: int) -> None:
        hi = crop_size // self.divisor
        text = value.strip()
        if not (text.isdigit() and len(text) <= 6):  # no sign, no float, no 10**22
            raise OptionError(f"option {key!r} must be an integer in 0..{hi}, got {value!r}")
        if int(text) > hi:
            raise OptionError(
                f"option {key!r} must be an integer in 0..{hi} (crop_size {crop_size} / "
                f"{self.divisor}), got {value!r}")

    def describe(self, crop_size: int) -> str:
        return f"0..{crop_size // self.divisor}"


@dataclass(frozen=True)
class Fraction:
    """A decimal number in ``0..hi`` (e.g. a threshold in inter-ocular distances)."""

    hi: float

    def check(self, key: str, value: str, crop_size: int) -> None:
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not (len(value) <= 16 and 0.0 <= number <= self.hi):  # NaN fails too
            raise OptionError(f"option {key!r} must be a number in 0..{self.hi:g}, got {value!r}")

    def describe(self, crop_size: int) -> str:
        return f"0..{self.hi:g}"


Spec = Choice | CropFraction | Fraction


def _table(module: str, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A pipeline's own table of allowed words (``default`` when the module lacks it)."""
    try:
        return tuple(getattr(importlib.import_module(module), name))
    except (ImportError, AttributeError):
        return default


def _common(light: tuple[str, ...]) -> dict[str, Spec]:
    expression = _table("jr2net.pipeline.etnet_tracker", "EXPRESSION_VALUES", ("absolute", "relative"))
    return {
        "light": Choice(light),
        "expression": Choice(expression),
        "feather": CropFraction(2),
        "background_warp": Choice(FLAG_VALUES),
    }


def mode_options(mode: str) -> dict[str, Spec] | None:
    """The options ``mode`` accepts (name -> spec); None when this module does not know the mode."""
    if mode == "geometric":
        mouth = _table("jr2net.pipeline.transfer", "MOUTH_MODES", ("transfer", "synthetic"))
        return {**_common(_table("jr2net.pipeline.geometric", "LIGHT_MODES", ("source", "none"))),
                "full_res_face": Choice(FLAG_VALUES), "temporal_filter": Choice(FLAG_VALUES),
                "still_threshold": Fraction(1.0), "mouth": Choice(mouth), "gaze": Choice(FLAG_VALUES)}
    if mode == "learned":
        return _common(_table("jr2net.pipeline.learned", "LIGHT_MODES", ("source", "driving")))
    return None


def check_options(mode: str, options: Mapping[str, str], crop_size: int) -> None:
    """OptionError naming the first unusable option: too many, too long, unknown or out of range."""
    if len(options) > MAX_OPTIONS:
        raise OptionError(f"at most {MAX_OPTIONS} options, got {len(options)}")
    for key, value in options.items():
        if len(key) > MAX_KEY_CHARS or len(value) > MAX_VALUE_CHARS:
            raise OptionError(f"option {key[:32]!r}: key over {MAX_KEY_CHARS} or value over "
                              f"{MAX_VALUE_CHARS} characters")
    specs = mode_options(mode)
    if specs is None:
        return
    for key, value in options.items():
        spec = specs.get(key)
        if spec is None:
            known = ", ".join(f"{k}={s.describe(crop_size)}" for k, s in specs.items())
            raise OptionError(f"unknown option {key!r} for mode {mode!r}; known: {known}")
        spec.check(key, value, crop_size)
