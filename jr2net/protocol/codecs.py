"""Image <-> protocol message codecs, both directions, for the server and the clients.

The pixels are decoded and encoded by ``jr2net.io.images`` (uint8 ``[H, W, 3]`` RGB at this edge);
this module maps them onto ``Image`` / ``Frame`` / ``OutputFrame`` fields and keeps the size guards
(declared sizes over ``max_pixels`` are refused before decoding; the decoder's own
decompression-bomb check covers the real size).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from jr2net.errors import InvalidImageError
from jr2net.io.images import MAX_PIXELS, decode_frame, encode_image, load_image
from jr2net.protocol.messages import pb2
from jr2net.protocol.tables import FORMAT_NAMES, format_value

RAW = "RAW_RGB24"


def sniff_format(data: bytes) -> str:
    """JPEG or PNG from the magic bytes (for IMAGE_FORMAT_UNSPECIFIED); InvalidImageError otherwise."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    raise InvalidImageError(
        "format UNSPECIFIED and the data is neither JPEG nor PNG; set format (RAW_RGB24 needs it)"
    )


def format_name(fmt: int, data: bytes) -> str:
    """The ``jr2net.io.images`` format name of an ImageFormat value (UNSPECIFIED: sniffed)."""
    if fmt == pb2.IMAGE_FORMAT_UNSPECIFIED:
        return sniff_format(data)
    if fmt not in FORMAT_NAMES:
        raise InvalidImageError(f"unknown image format enum value {fmt}")
    return FORMAT_NAMES[fmt]


def frame_problem(frame: Any, max_pixels: int) -> str:
    """What makes a ``Frame`` unusable without decoding it ("" if nothing): the server's admission
    check, so a bad frame is answered at once instead of taking a worker."""
    if frame.frame_id < 0:
        return f"frame_id must be >= 0, got {frame.frame_id}"
    if frame.format not in (pb2.IMAGE_FORMAT_UNSPECIFIED, *FORMAT_NAMES):
        return f"unknown image format enum value {frame.format}"
    if not frame.data:
        return "empty frame data (0 bytes)"
    if frame.width * frame.height > max_pixels:
        return (f"declared size {frame.width}x{frame.height} exceeds the server limit of "
                f"{max_pixels} pixels")
    if frame.format == pb2.RAW_RGB24 and len(frame.data) != frame.width * frame.height * 3:
        return (f"RAW_RGB24 frame: got {len(frame.data)} bytes, expected width*height*3 = "
                f"{frame.width * frame.height * 3}")
    return ""


# ---- message -> image --------------------------------------------------------------------------


def decode_image(msg: Any, max_pixels: int = MAX_PIXELS, still: bool = False) -> np.ndarray:
    """Decode an ``Image`` / ``Frame`` / ``OutputFrame`` to uint8 [H, W, 3]; InvalidImageError if unusable.

    ``still`` (a session's source, a Reconstruct input): JPEG/PNG are turned upright by their EXIF
    orientation, and a declared size must match the decoded one.
    """
    data = bytes(msg.data)
    if not data:
        raise InvalidImageError("empty image data (0 bytes)")
    if msg.width * msg.height > max_pixels:
        raise InvalidImageError(
            f"declared size {msg.width}x{msg.height} exceeds the server limit of {max_pixels} pixels"
        )
    fmt = format_name(msg.format, data)
    if not still or fmt == RAW:
        return decode_frame(data, fmt, msg.width, msg.height, max_pixels=max_pixels)
    image = load_image(data, max_pixels=max_pixels)
    if (msg.width and msg.width != image.shape[1]) or (msg.height and msg.height != image.shape[0]):
        raise InvalidImageError(
            f"decoded size {image.shape[1]}x{image.shape[0]} != declared {msg.width}x{msg.height}"
        )
    return image


# ---- image -> message --------------------------------------------------------------------------


def image_message(image: str | Path | bytes | np.ndarray, fmt: str = "PNG", quality: int = 95) -> Any:
    """A ``pb2.Image`` from a file path, encoded JPEG/PNG bytes (format sniffed by the server), or a
    uint8 [H, W, 3] array (encoded as ``fmt``)."""
    if isinstance(image, np.ndarray):
        value = format_value(fmt)
        h, w = image.shape[:2]
        data = encode_image(image, fmt, quality=quality)
        raw = fmt == RAW
        return pb2.Image(format=value, data=data, width=w if raw else 0, height=h if raw else 0)
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        image = path.read_bytes()
    if isinstance(image, (bytes, bytearray)):
        return pb2.Image(format=pb2.IMAGE_FORMAT_UNSPECIFIED, data=bytes(image))
    raise TypeError(f"image must be a path, bytes or a uint8 array, got {type(image).__name__}")


def frame_message(frame_id: int, frame: np.ndarray | bytes | Any, fmt: str = "JPEG",
                  quality: int = 90, capture_ts_us: int | None = None) -> Any:
    """A ``pb2.Frame`` from an array (encoded as ``fmt``), encoded bytes, or a Frame (passed through)."""
    if isinstance(frame, pb2.Frame):
        return frame
    ts = int(time.time() * 1e6) if capture_ts_us is None else capture_ts_us
    if isinstance(frame, (bytes, bytearray)):
        return pb2.Frame(frame_id=frame_id, capture_ts_us=ts, format=pb2.IMAGE_FORMAT_UNSPECIFIED,
                         data=bytes(frame))
    image = image_message(frame, fmt, quality)
    return pb2.Frame(frame_id=frame_id, capture_ts_us=ts, format=image.format, data=image.data,
                     width=image.width, height=image.height)


def output_message(frame: Any, image: np.ndarray, fmt: int, quality: int, **fields: Any) -> Any:
    """A ``pb2.OutputFrame`` answering ``frame`` (ids echoed) with ``image`` encoded as ``fmt``
    (an ImageFormat value); ``fields``: the other OutputFrame fields (face_found, fallback, ...)."""
    data = encode_image(image, FORMAT_NAMES[fmt], quality=quality)
    h, w = image.shape[:2]
    return pb2.OutputFrame(frame_id=frame.frame_id, capture_ts_us=frame.capture_ts_us, format=fmt,
                           data=data, width=w, height=h, **fields)
