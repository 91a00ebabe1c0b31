"""Image I/O at the library's edge: bytes/files <-> uint8 ``[H, W, 3]`` RGB <-> float ``[B, 3, H, W]``.

Decoding rules (every path returns 3-channel 8-bit RGB):

- EXIF orientation is applied and dropped (``load_image`` only; ``decode_frame`` skips the walk).
- Grayscale (``1``, ``L``, ``I;16*``, ``I``, ``F``) is replicated to 3 channels. 16-bit data is
  *scaled* to 8 bits (``round(v * 255 / 65535)``), not clipped; mode ``I`` is read as 16-bit
  range (the practical sources are 16-bit PNG/TIFF) and values outside ``[0, 65535]`` are clipped;
  mode ``F`` is taken as ``[0, 1]`` when its maximum is <= 1, else as ``[0, 255]``.
- Anything with transparency (alpha channel, palette or ``tRNS`` transparency, premultiplied
  ``RGBa``/``La``) is composited over **white** (``rgb * a + 255 * (1 - a)``): the usual "paper"
  background of portrait cut-outs, and it keeps a transparent background from reading as a
  dark face region. Alpha never leaks into the RGB values.
- Palette, CMYK (Adobe-inverted JPEGs included) and YCbCr are converted to RGB by Pillow.
  Colour profiles (ICC) are ignored. Multi-frame files (GIF, APNG, TIFF) give their first frame.
- Images larger than ``MAX_PIXELS`` decoded pixels are refused (decompression bombs); Pillow's
  ``DecompressionBombWarning``/``Error`` also become ``InvalidImageError``.
- Corrupt, truncated, empty or non-image input raises ``InvalidImageError`` (a ``ValueError``).
- ``load_image`` returns a writable array; ``decode_frame`` (per-frame hot path) may return a
  read-only one, saving a copy.
"""

from __future__ import annotations

import functools
import io
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from jr2net.errors import InvalidImageError

if TYPE_CHECKING:  # torch is imported by the two tensor helpers only: clients need none
    import torch

MAX_PIXELS = 50_000_000
"""Largest image (decoded width x height) accepted; about 8660 x 5770. Below Pillow's own
warning threshold (~89.5 M), so a bomb is always refused with our error."""

FRAME_FORMATS = ("JPEG", "PNG", "RAW_RGB24")
_ENCODE_FORMATS = FRAME_FORMATS
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


def _open(fp: io.BytesIO | Path, what: str) -> Image.Image:
    """Open (header only) with Pillow, turning every failure into ``InvalidImageError``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(fp)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise InvalidImageError(f"{what}: image too large (decompression bomb?): {exc}") from exc
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError, TypeError, EOFError) as exc:
        # PIL.UnidentifiedImageError is an OSError.
        raise InvalidImageError(f"{what}: not a decodable image ({exc})") from exc


def _check_size(im: Image.Image, what: str, max_pixels: int) -> None:
    w, h = im.size
    if w <= 0 or h <= 0:
        raise InvalidImageError(f"{what}: zero-size image ({w}x{h})")
    if w * h > max_pixels:
        raise InvalidImageError(
            f"{what}: image of {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} "
            "(decompression-bomb guard; pass max_pixels to raise it)"
        )


def _load(im: Image.Image, what: str) -> None:
    try:
        im.load()
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
        raise InvalidImageError(f"{what}: corrupt or truncated image data ({exc})") from exc


def _composite_white(rgba: np.ndarray) -> np.ndarray:
    """Composite uint8 ``[H, W, 4]`` straight (un-premultiplied) RGBA over white -> uint8 RGB."""
    rgb = rgba[..., :3].astype(np.uint16)
    a = rgba[..., 3:4].astype(np.uint16)
    # rgb*a + 255*(255-a), divided by 255 with rounding; all in integers (exact, fast).
    out = rgb * a + 255 * (255 - a) + 127
    return (out // 255).astype(np.uint8)


def _gray_high_depth_to_u8(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """16/32-bit integer or float grayscale -> uint8 ``[H, W]`` (scaled), plus an alpha mask."""
    arr = np.asarray(im)
    alpha = None
    trns = im.info.get("transparency")
    if isinstance(trns, int) and im.mode != "F":
        alpha = np.where(arr == trns, 0, 255).astype(np.uint8)
    if im.mode == "F":
        arr = arr.astype(np.float32)
        finite = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        u8 = np.clip(np.rint(finite * scale), 0, 255).astype(np.uint8)
    else:
        v = np.clip(arr.astype(np.int64), 0, 65535)
        u8 = ((v * 255 + 32767) // 65535).astype(np.uint8)
    return u8, alpha


def _to_rgb_array(im: Image.Image, what: str, writable: bool = True) -> np.ndarray:
    """A loaded Pillow image of any mode -> uint8 ``[H, W, 3]`` RGB (rules in the module doc).

    ``writable=False`` may return a read-only array (saves a copy on the frame hot path).
    """
    mode = im.mode
    try:
        if mode == "RGB":
            arr = np.asarray(im)  # read-only, over a packed copy of Pillow's buffer
            return arr.copy() if writable else arr
        if mode.startswith("I") or mode == "F":
            gray, alpha = _gray_high_depth_to_u8(im)
            if alpha is not None:
                rgba = np.dstack([gray, gray, gray, alpha])
                return _composite_white(rgba)
            return np.repeat(gray[:, :, None], 3, axis=2)
        if mode in _ALPHA_MODES or "transparency" in im.info:
            return _composite_white(np.asarray(im.convert("RGBA")))
        if mode == "L":
            gray = np.asarray(im)
            return np.repeat(gray[:, :, None], 3, axis=2)
        arr = np.asarray(im.convert("RGB"))
        return arr.copy() if writable else arr
    except (ValueError, OSError) as exc:
        raise InvalidImageError(
            f"{what}: cannot convert image mode {mode!r} to RGB ({exc})"
        ) from exc


def load_image(
    source: str | Path | bytes | bytearray | memoryview,
    max_side: int | None = None,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """Decode a file or encoded bytes to uint8 ``[H, W, 3]`` RGB, EXIF-upright.

    ``max_side`` downscales on load so the longest side is at most that many pixels (JPEGs use
    libjpeg's DCT scaling, so big photos decode fast). A missing path raises FileNotFoundError.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        what = "image bytes"
        if len(data) == 0:
            raise InvalidImageError("image bytes: empty input (0 bytes)")
        fp: io.BytesIO | Path = io.BytesIO(data)
    elif isinstance(source, (str, Path)):
        fp = Path(source)
        what = str(fp)
        if not fp.is_file():
            raise FileNotFoundError(f"image file not found: {fp}")
        if fp.stat().st_size == 0:
            raise InvalidImageError(f"{what}: empty file (0 bytes)")
    else:
        raise TypeError(f"source must be a path or bytes, got {type(source).__name__}")
    if max_side is not None and (not isinstance(max_side, int) or max_side < 1):
        raise ValueError(f"max_side must be a positive int or None, got {max_side!r}")

    im = _open(fp, what)
    try:
        if max_side is not None:
            w, h = im.size
            longest = max(w, h)
            if longest > max_side and im.format == "JPEG":
                # Ask for the smallest DCT scale that keeps the longest side >= max_side.
                req = (max(1, -(-w * max_side // longest)), max(1, -(-h * max_side // longest)))
                im.draft("RGB" if im.mode in ("RGB", "YCbCr") else im.mode, req)
        _check_size(im, what, max_pixels)
        _load(im, what)
        try:
            upright = ImageOps.exif_transpose(im)
        except Exception:  # a broken EXIF block must not reject a good image
            upright = im
        if upright is not im:
            im.close()
            im = upright
        if max_side is not None and max(im.size) > max_side:
            w, h = im.size
            s = max_side / max(w, h)
            size = (max(1, round(w * s)), max(1, round(h * s)))
            if im.mode not in ("RGB", "RGBA", "L", "LA"):
                im = Image.fromarray(_to_rgb_array(im, what))
            im = im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        return _to_rgb_array(im, what)
    finally:
        im.close()


def decode_frame(
    data: bytes, fmt: str, width: int = 0, height: int = 0, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Decode one streamed frame (``fmt`` JPEG, PNG or RAW_RGB24) to uint8 ``[H, W, 3]`` RGB.

    RAW_RGB24 needs ``width``/``height`` and exactly ``width*height*3`` bytes. For JPEG/PNG a
    non-zero ``width``/``height`` must match the decoded size; 0 means "not given". This is the
    per-frame hot path, so the result may be a read-only view (RAW_RGB24: over ``data`` itself);
    copy it before modifying it in place.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    if not isinstance(fmt, str):
        raise TypeError(f"fmt must be a str, got {type(fmt).__name__}")
    f = fmt.upper()
    if f not in FRAME_FORMATS:
        raise ValueError(f"fmt must be one of {FRAME_FORMATS}, got {fmt!r}")
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    if len(data) == 0:
        raise InvalidImageError(f"{f} frame: empty data (0 bytes)")
    if f == "RAW_RGB24":
        if width == 0 or height == 0:
            raise InvalidImageError("RAW_RGB24 frame: width and height must be given (> 0)")
        if width * height > max_pixels:
            raise InvalidImageError(
                f"RAW_RGB24 frame: {width}x{height} exceeds {max_pixels} pixels"
            )
        expected = width * height * 3
        if len(data) != expected:
            raise InvalidImageError(
                f"RAW_RGB24 frame: got {len(data)} bytes, expected width*height*3 = "
                f"{width}*{height}*3 = {expected}"
            )
        return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)
    what = f"{f} frame"
    im = _open(io.BytesIO(data), what)
    try:
        if im.format != f:
            raise InvalidImageError(f"{what}: data is {im.format or 'unknown'}, not {f}")
        _check_size(im, what, max_pixels)
        if (width and im.width != width) or (height and im.height != height):
            raise InvalidImageError(
                f"{what}: decoded size {im.width}x{im.height} != declared {width}x{height}"
            )
        if f == "JPEG" and im.mode == "RGB":
            fast = _decode_jpeg_fast(data, what)
            if fast is not None:
                return fast
        _load(im, what)
        return _to_rgb_array(im, what, writable=False)
    finally:
        im.close()


@functools.cache
def _jpeg_codec():
    """``simplejpeg`` (libjpeg-turbo straight into a numpy array) when installed, else None.

    Measured on this project's 2-core AMD EPYC (benchmarks/server.py codec rows): 512² decode
    0.46 ms vs 1.0 ms through Pillow, 1920x1080 3.6 vs 6.5-8.1 ms; encode at 4:2:0 about equal
    to Pillow at 512², a little faster at 1080p. Pillow stays the fallback and the validator."""
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


def _decode_jpeg_fast(data: bytes | bytearray | memoryview, what: str) -> np.ndarray | None:
    """A 3-component JPEG (whose header Pillow has already checked) decoded by libjpeg-turbo via
    simplejpeg, strict (truncated or corrupt data raise ``InvalidImageError``); None without it."""
    codec = _jpeg_codec()
    if codec is None:
        return None
    try:
        return codec.decode_jpeg(bytes(data) if isinstance(data, memoryview) else data,
                                 colorspace="RGB", strict=True)
    except ValueError as exc:
        raise InvalidImageError(f"{what}: corrupt or truncated image data ({exc})") from exc


MIN_FACE_SIDE = 16
"""Smallest height and width (pixels) of an image that is searched for a face: the one size rule
of every face-facing entry point (detection, tracking, fitting, sessions, Reconstruct). Pure I/O
(encoding, saving, tensor conversion) only needs a non-empty image (``min_side=1``)."""


class ImageDtypeError(InvalidImageError, TypeError):
    """An array image with the wrong dtype: a TypeError (its element type is wrong) and an
    InvalidImageError (a ValueError), so callers mapping either to "bad input" catch it."""


def check_image(image: object, name: str = "image", min_side: int = MIN_FACE_SIDE) -> np.ndarray:
    """Validate a uint8 ``[H, W, 3]`` RGB image and return it C-contiguous (no copy if it is).

    Not a numpy array: TypeError. Wrong dtype: ``ImageDtypeError`` (a TypeError and an
    InvalidImageError). Wrong shape, or a side below ``min_side`` (default ``MIN_FACE_SIDE``, the
    rule for anything that looks for a face; 1 for pure I/O): InvalidImageError (a ValueError).
    Messages name ``name``.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy uint8 array [H, W, 3] (use jr2net.io.images.load_image), "
            f"got {type(image).__name__}"
        )
    if image.dtype != np.uint8:
        raise ImageDtypeError(f"{name} must have dtype uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidImageError(f"{name} must have shape [H, W, 3] (RGB), got {list(image.shape)}")
    if image.shape[0] < max(min_side, 1) or image.shape[1] < max(min_side, 1):
        what = "empty" if min(image.shape[:2]) == 0 else f"too small (sides must be >= {min_side})"
        raise InvalidImageError(f"{name} is {what}: shape {list(image.shape)}")
    return np.ascontiguousarray(image)


def encode_image(
    img: np.ndarray, fmt: str = "JPEG", quality: int = 90, png_compress_level: int = 1
) -> bytes:
    """Encode uint8 ``[H, W, 3]`` RGB as JPEG (``quality`` 1-100), PNG or RAW_RGB24 bytes.

    PNG uses zlib level 1 by default: the server encodes every frame, and level 6 costs ~4x the
    time for ~10% smaller files.
    """
    check_image(img, "img", min_side=1)
    f = fmt.upper() if isinstance(fmt, str) else fmt
    if f not in _ENCODE_FORMATS:
        raise ValueError(f"fmt must be one of {_ENCODE_FORMATS}, got {fmt!r}")
    if f == "RAW_RGB24":
        return np.ascontiguousarray(img).tobytes()
    if f == "JPEG":
        if not isinstance(quality, int) or not 1 <= quality <= 100:
            raise ValueError(f"quality must be an int in [1, 100], got {quality!r}")
        codec = _jpeg_codec()
        if codec is not None:  # same libjpeg quality tables and 4:2:0 sampling as Pillow's default
            return codec.encode_jpeg(np.ascontiguousarray(img), quality=quality,
                                     colorspace="RGB", colorsubsampling="420")
    buf = io.BytesIO()
    pil = Image.fromarray(np.ascontiguousarray(img))
    if f == "JPEG":
        pil.save(buf, "JPEG", quality=quality)
    else:
        pil.save(buf, "PNG", compress_level=png_compress_level)
    return buf.getvalue()


def save_image(path: str | Path, img: np.ndarray, quality: int = 95) -> None:
    """Write uint8 ``[H, W, 3]`` RGB to ``path``; the format follows the extension."""
    check_image(img, "img", min_side=1)
    path = Path(path)
    pil = Image.fromarray(np.ascontiguousarray(img))
    try:
        fmt = Image.registered_extensions()[path.suffix.lower()]
    except KeyError:
        raise ValueError(f"path: unknown image extension {path.suffix!r} in {path}") from None
    kwargs = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    pil.save(path, fmt, **kwargs)


def to_tensor(img: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` (or ``[B, H, W, 3]``, or a list of same-size images) -> float32
    ``[B, 3, H, W]`` in [0, 1], contiguous."""
    if isinstance(img, np.ndarray) and img.ndim == 4:
        if img.dtype != np.uint8:
            raise TypeError(f"img must have dtype uint8, got {img.dtype}")
        if img.shape[3] != 3:
            raise ValueError(f"img must have shape [B, H, W, 3], got {list(img.shape)}")
        batch = img
    elif isinstance(img, np.ndarray):
        batch = check_image(img, "img", min_side=1)[None]
    elif isinstance(img, (list, tuple)):
        if len(img) == 0:
            raise ValueError("img: empty list of images")
        arrs = [check_image(a, f"img[{i}]", min_side=1) for i, a in enumerate(img)]
        if any(a.shape != arrs[0].shape for a in arrs):
            raise ValueError(f"img: images differ in size: {[list(a.shape) for a in arrs]}")
        batch = np.stack(arrs)
    else:
        raise TypeError(
            f"img must be a uint8 numpy array or a list of them, got {type(img).__name__}"
        )
    import torch

    src = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
    out = torch.empty(src.shape, dtype=torch.float32)
    out.copy_(src)
    return out.mul_(1.0 / 255.0)


def to_uint8(t: torch.Tensor) -> np.ndarray | list[np.ndarray]:
    """float ``[3, H, W]`` -> uint8 ``[H, W, 3]``; ``[B, 3, H, W]`` -> list of B such arrays.

    Values are clamped to [0, 1] (NaN -> 0) and rounded.
    """
    import torch

    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"t must be a floating-point tensor in [0, 1], got {t.dtype}")
    if t.dim() not in (3, 4) or t.shape[-3] != 3:
        raise ValueError(f"t must have shape [3, H, W] or [B, 3, H, W], got {list(t.shape)}")
    x = t.detach()
    x = torch.nan_to_num(x, nan=0.0).clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)
    x = x.cpu().movedim(-3, -1).contiguous().numpy()
    if x.ndim == 3:
        return x
    return list(x)
