"""Typed errors shared across the library, so callers (CLI, server) can map them precisely."""

from __future__ import annotations


class JR2NetError(Exception):
    """Base class of JR2Net's own errors."""


class InvalidImageError(JR2NetError, ValueError):
    """The bytes or array given are not a decodable / usable image."""


class NoFaceError(JR2NetError):
    """No human face was found where one is required."""


class FaceModelError(JR2NetError, ValueError):
    """A face-model file is missing keys, has inconsistent shapes, or cannot be imported."""


class VideoError(JR2NetError, ValueError):
    """A video file cannot be opened, decoded or written (corrupt, no video stream, bad codec)."""
