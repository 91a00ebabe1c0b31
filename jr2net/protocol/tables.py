"""Protocol enum values <-> the names the library uses, defined once for server and clients.

Image formats are ``jr2net.io.images.FRAME_FORMATS`` (the proto enum uses the same names);
modes and pose modes are the proto enums' names in lower case.
"""

from __future__ import annotations

from jr2net.io.images import FRAME_FORMATS
from jr2net.protocol.messages import pb2

# name -> enum value
IMAGE_FORMATS: dict[str, int] = {name: pb2.ImageFormat.Value(name) for name in FRAME_FORMATS}
MODES: dict[str, int] = {
    pb2.Mode.Name(v).lower(): v for v in pb2.Mode.values() if v != pb2.MODE_UNSPECIFIED
}
POSE_MODES: dict[str, int] = {
    pb2.PoseMode.Name(v).lower(): v for v in pb2.PoseMode.values()
    if v != pb2.POSE_MODE_UNSPECIFIED
}
DEFAULT_POSE_MODE = "relative"  # POSE_MODE_UNSPECIFIED (see proto/jr2net.proto)
DEFAULT_OUTPUT_FORMAT = "JPEG"  # output_format UNSPECIFIED

# enum value -> name
FORMAT_NAMES: dict[int, str] = {v: k for k, v in IMAGE_FORMATS.items()}
MODE_NAMES: dict[int, str] = {v: k for k, v in MODES.items()}
POSE_MODE_NAMES: dict[int, str] = {
    pb2.POSE_MODE_UNSPECIFIED: DEFAULT_POSE_MODE, **{v: k for k, v in POSE_MODES.items()}
}


def _name(table: dict[int, str], value: int, what: str) -> str:
    if value not in table:
        raise ValueError(f"unknown {what} enum value {value}")
    return table[value]


def mode_name(value: int) -> str | None:
    """The mode name of a ``Mode`` value; None for MODE_UNSPECIFIED (the server's default)."""
    if value == pb2.MODE_UNSPECIFIED:
        return None
    return _name(MODE_NAMES, value, "mode")


def pose_mode_name(value: int) -> str:
    """The pose-mode name of a ``PoseMode`` value (UNSPECIFIED: relative)."""
    return _name(POSE_MODE_NAMES, value, "pose_mode")


def output_format(value: int) -> int:
    """An output ``ImageFormat`` with UNSPECIFIED resolved to JPEG; ValueError if unknown."""
    value = value or IMAGE_FORMATS[DEFAULT_OUTPUT_FORMAT]
    _name(FORMAT_NAMES, value, "output_format")
    return value


def _value(table: dict[str, int], name: str, what: str) -> int:
    if name not in table:
        raise ValueError(f"{what} must be one of {sorted(table)}, got {name!r}")
    return table[name]


def format_value(name: str, what: str = "format") -> int:
    """The ``ImageFormat`` of a format name ("JPEG", "PNG", "RAW_RGB24"); ``what`` names it in errors."""
    return _value(IMAGE_FORMATS, name, what)


def mode_value(name: str) -> int:
    """The ``Mode`` of a mode name; "" is MODE_UNSPECIFIED (the server's default)."""
    return pb2.MODE_UNSPECIFIED if name == "" else _value(MODES, name, "mode")


def pose_mode_value(name: str) -> int:
    """The ``PoseMode`` of a pose-mode name."""
    return _value(POSE_MODES, name, "pose_mode")
