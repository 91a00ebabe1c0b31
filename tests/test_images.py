"""Image decoding/encoding at the I/O edge: modes, EXIF, transparency, bombs, corrupt input."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from jr2net.errors import InvalidImageError
from jr2net.io import images
from jr2net.io.images import decode_frame, encode_image, load_image, save_image, to_tensor, to_uint8


def _png_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kw)
    return buf.getvalue()


def _gradient(h: int = 24, w: int = 32) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) % 256], -1).astype(np.uint8)


def test_rgb_png_round_trips_exactly():
    img = _gradient()
    out = load_image(_png_bytes(Image.fromarray(img)))
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3)
    np.testing.assert_array_equal(out, img)


def test_grayscale_l_becomes_three_equal_channels():
    gray = _gradient()[..., 0]
    out = load_image(_png_bytes(Image.fromarray(gray, "L")))
    assert out.shape == (24, 32, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_sixteen_bit_png_is_scaled_not_clipped():
    v16 = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    im = Image.fromarray(v16)
    data = _png_bytes(im)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = load_image(data)
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])


def test_mode_i_32bit_grayscale_is_read_as_16bit_range(tmp_path):
    v = np.array([[0, 65535, 100000, -5]], dtype=np.int32)
    p = tmp_path / "i.tiff"
    Image.fromarray(v, "I").save(p)
    out = load_image(p)
    np.testing.assert_array_equal(out[0, :, 1], [0, 255, 255, 0])


def test_rgba_composites_over_white_and_alpha_does_not_leak():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0, 0] = (200, 10, 10, 255)  # opaque: unchanged
    rgba[0, 1] = (200, 10, 10, 0)  # transparent: white, colour must not leak
    rgba[0, 2] = (0, 0, 0, 128)  # half black over white
    out = load_image(_png_bytes(Image.fromarray(rgba, "RGBA")))
    np.testing.assert_array_equal(out[0, 0], [200, 10, 10])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 2], [127, 127, 127])


def test_la_and_palette_transparency_composite_over_white():
    la = np.array([[[0, 0], [0, 255]]], np.uint8)
    out = load_image(_png_bytes(Image.fromarray(la, "LA")))
    np.testing.assert_array_equal(out[0], [[255, 255, 255], [0, 0, 0]])

    p = Image.new("P", (2, 1))
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    out = load_image(_png_bytes(p, transparency=0))
    np.testing.assert_array_equal(out[0], [[255, 255, 255], [0, 0, 255]])


def test_palette_without_transparency_maps_colours():
    p = Image.new("P", (2, 1))
    p.putpalette([10, 20, 30, 40, 50, 60] + [0] * 762)
    p.putpixel((1, 0), 1)
    out = load_image(_png_bytes(p))
    np.testing.assert_array_equal(out[0], [[10, 20, 30], [40, 50, 60]])


def test_exif_orientation_is_applied():
    img = np.zeros((10, 20, 3), np.uint8)
    img[0, 0] = 255  # a white marker top-left in stored pixels
    im = Image.fromarray(img)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored image must be rotated 90 degrees clockwise for display
    buf = io.BytesIO()
    im.save(buf, "PNG", exif=exif)
    out = load_image(buf.getvalue())
    assert out.shape == (20, 10, 3)
    assert out[0, -1].min() == 255  # top-left moved to top-right
    assert out[0, 0].max() == 0


def test_cmyk_jpeg_decodes_to_rgb():
    im = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95)
    out = load_image(buf.getvalue())
    assert out.shape == (16, 16, 3)
    r, g, b = out.reshape(-1, 3).mean(0)
    assert r > 200 and g < 40 and b < 40


def test_tiny_image_loads():
    out = load_image(_png_bytes(Image.new("RGB", (8, 8), (1, 2, 3))))
    assert out.shape == (8, 8, 3) and tuple(out[4, 4]) == (1, 2, 3)


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, b"\xff\xd8\xff\xe0garbage"],
)
def test_corrupt_or_empty_bytes_raise_invalid_image(data):
    with pytest.raises(InvalidImageError):
        load_image(data)


def test_truncated_jpeg_raises_invalid_image():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buf, "JPEG"
    )
    data = buf.getvalue()
    with pytest.raises(InvalidImageError, match="corrupt or truncated"):
        load_image(data[: len(data) // 2])


def test_invalid_image_error_is_a_value_error():
    with pytest.raises(ValueError):
        load_image(b"xx")


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "nope.png")


def test_decompression_bomb_is_refused(monkeypatch):
    data = _png_bytes(Image.new("L", (400, 300)))
    with pytest.raises(InvalidImageError, match="exceeds the limit"):
        load_image(data, max_pixels=100_000)
    # Pillow's own guard (its warning) is also turned into our error.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)
    with pytest.raises(InvalidImageError, match="decompression bomb"):
        load_image(data)


def test_max_side_downscales_jpeg_and_png():
    big = np.random.default_rng(1).integers(0, 255, (1200, 1600, 3), np.uint8)
    jpg = encode_image(big, "JPEG")
    out = load_image(jpg, max_side=400)
    assert out.shape == (300, 400, 3)
    out = load_image(encode_image(big, "PNG"), max_side=400)
    assert out.shape == (300, 400, 3)
    assert load_image(jpg, max_side=5000).shape == (1200, 1600, 3)


def test_shared_photos_load(images_dir):
    for name in ["obama.jpg", "alex-lacamoire.png", "s12.jpg"]:
        out = load_image(images_dir / name)
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3


def test_decode_frame_formats():
    img = _gradient(16, 20)
    raw = decode_frame(encode_image(img, "RAW_RGB24"), "RAW_RGB24", 20, 16)
    np.testing.assert_array_equal(raw, img)
    png = decode_frame(encode_image(img, "PNG"), "PNG", 20, 16)
    np.testing.assert_array_equal(png, img)
    jpg = decode_frame(encode_image(img, "JPEG", quality=95), "JPEG", 0, 0)
    assert jpg.shape == (16, 20, 3)
    assert np.abs(jpg.astype(int) - img).mean() < 6


def test_decode_frame_raw_wrong_length_raises():
    with pytest.raises(InvalidImageError, match="expected width\\*height\\*3"):
        decode_frame(b"\x00" * 100, "RAW_RGB24", 10, 10)


def test_decode_frame_rejects_mismatches():
    png = encode_image(_gradient(16, 20), "PNG")
    with pytest.raises(InvalidImageError, match="declared"):
        decode_frame(png, "PNG", 21, 16)
    with pytest.raises(InvalidImageError, match="not JPEG"):
        decode_frame(png, "JPEG")
    with pytest.raises(ValueError, match="fmt"):
        decode_frame(png, "GIF")
    with pytest.raises(InvalidImageError):
        decode_frame(b"garbage", "JPEG")


def test_encode_validates_input():
    with pytest.raises(TypeError, match="img"):
        encode_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="img"):
        encode_image(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="quality"):
        encode_image(np.zeros((4, 4, 3), np.uint8), quality=0)


def test_save_image_round_trip(tmp_path):
    img = _gradient()
    save_image(tmp_path / "a.png", img)
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), img)
    with pytest.raises(ValueError, match="extension"):
        save_image(tmp_path / "a.xyz", img)


def test_to_tensor_and_back():
    img = _gradient()
    t = to_tensor(img)
    assert t.shape == (1, 3, 24, 32) and t.dtype == torch.float32 and t.is_contiguous()
    assert float(t.max()) <= 1.0 and float(t.min()) >= 0.0
    assert torch.allclose(t[0, 0, 0, 31], torch.tensor(1.0))
    back = to_uint8(t)
    assert isinstance(back, list) and len(back) == 1
    np.testing.assert_array_equal(back[0], img)
    np.testing.assert_array_equal(to_uint8(t[0]), img)
    tb = to_tensor([img, img[::-1].copy()])
    assert tb.shape == (2, 3, 24, 32)


def test_to_uint8_clamps_and_handles_nan():
    t = torch.tensor([-1.0, 0.5, 2.0, float("nan")]).view(1, 1, 4).expand(3, 1, 4)
    out = to_uint8(t)
    np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255, 0])


def test_tensor_conversions_validate():
    with pytest.raises(TypeError, match="img"):
        to_tensor(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="img"):
        to_tensor([np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)])
    with pytest.raises(TypeError, match="t must"):
        to_uint8(torch.zeros(3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="t must"):
        to_uint8(torch.zeros(1, 4, 4, 4))


def test_module_limit_is_below_pillow_warning_threshold():
    assert images.MAX_PIXELS < Image.MAX_IMAGE_PIXELS


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` but carries (almost) no pixel data: a bomb."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def test_png_claiming_a_huge_size_is_refused_before_decoding():
    with pytest.raises(InvalidImageError, match="too large|exceeds"):
        load_image(_png_header_only(30000, 30000))
    with pytest.raises(InvalidImageError, match="exceeds"):
        load_image(_png_header_only(8000, 7000))  # 56 MP: under Pillow's guard, over ours
    with pytest.raises(InvalidImageError):
        decode_frame(_png_header_only(30000, 30000), "PNG")


def test_max_side_lets_a_big_jpeg_under_the_pixel_limit_via_draft():
    big = np.random.default_rng(2).integers(0, 255, (1200, 1600, 3), np.uint8)
    jpg = encode_image(big, "JPEG")
    with pytest.raises(InvalidImageError, match="exceeds"):
        load_image(jpg, max_pixels=1_000_000)
    # DCT scaling decodes at 1/4 (400x300) before the limit is checked.
    assert load_image(jpg, max_side=400, max_pixels=1_000_000).shape == (300, 400, 3)


def test_load_image_arrays_are_writable_and_frames_are_valid_arrays(images_dir):
    for img in (
        load_image(images_dir / "obama.jpg"),
        load_image(images_dir / "alex-lacamoire.png"),
    ):
        assert img.flags.writeable and img.flags.c_contiguous
        img[0, 0] = 0
    for frame in (
        decode_frame(encode_image(_gradient(), "JPEG"), "JPEG"),
        decode_frame(encode_image(_gradient(), "RAW_RGB24"), "RAW_RGB24", 32, 24),
    ):
        assert frame.flags.c_contiguous and frame.shape == (24, 32, 3)
        assert frame.copy().flags.writeable  # documented: may be read-only, copy to modify


def test_check_image_is_the_one_validator_with_one_size_rule():
    from jr2net.io.images import MIN_FACE_SIDE, ImageDtypeError, check_image

    ok = np.zeros((MIN_FACE_SIDE, MIN_FACE_SIDE, 3), np.uint8)
    assert check_image(ok) is ok
    strided = np.zeros((32, 64, 3), np.uint8)[:, ::2]
    assert check_image(strided).flags.c_contiguous
    with pytest.raises(InvalidImageError, match="too small"):
        check_image(np.zeros((MIN_FACE_SIDE - 1, 64, 3), np.uint8))
    assert check_image(np.zeros((1, 1, 3), np.uint8), min_side=1).shape == (1, 1, 3)
    with pytest.raises(InvalidImageError, match="empty"):
        check_image(np.zeros((0, 4, 3), np.uint8), min_side=1)
    with pytest.raises(ImageDtypeError, match="frame must have dtype uint8") as err:
        check_image(np.zeros((32, 32, 3), np.float32), "frame")
    assert isinstance(err.value, TypeError) and isinstance(err.value, ValueError)
    with pytest.raises(InvalidImageError, match=r"\[H, W, 3\]"):
        check_image(np.zeros((32, 32, 4), np.uint8))
    with pytest.raises(TypeError, match="numpy uint8 array"):
        check_image([[0, 0, 0]])


def _photo_like(h: int = 96, w: int = 128) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(3)
    img = np.stack([xx * 2, yy * 2, (xx + yy)], axis=-1) + rng.integers(0, 40, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def test_jpeg_fast_path_matches_pillow_and_round_trips():
    """The libjpeg-turbo fast path (simplejpeg) decodes what Pillow decodes, and its encoder's
    output is a valid JPEG that Pillow reads back close to the input."""
    pytest.importorskip("simplejpeg")
    img = _photo_like()
    for quality in (50, 90):
        data = encode_image(img, "JPEG", quality=quality)
        assert data[:2] == b"\xff\xd8"
        pil = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        fast = decode_frame(data, "JPEG", 128, 96)
        assert fast.shape == (96, 128, 3) and fast.dtype == np.uint8
        assert np.abs(fast.astype(int) - pil.astype(int)).max() <= 1
        buf = io.BytesIO()  # Pillow's own encoder at the same quality: similar size and error
        Image.fromarray(img).save(buf, "JPEG", quality=quality)
        ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        err = np.abs(pil.astype(int) - img.astype(int)).mean()
        assert err <= 1.05 * np.abs(ref.astype(int) - img.astype(int)).mean() + 0.1
        assert 0.8 < len(data) / len(buf.getvalue()) < 1.25


def test_jpeg_fast_path_refuses_truncated_data_and_falls_back_without_simplejpeg(monkeypatch):
    pytest.importorskip("simplejpeg")
    img = _photo_like()
    data = encode_image(img, "JPEG", quality=90)
    with pytest.raises(InvalidImageError):
        decode_frame(data[: len(data) // 2], "JPEG")
    fast = decode_frame(data, "JPEG")
    monkeypatch.setattr(images, "_jpeg_codec", lambda: None)  # as if simplejpeg were not installed
    slow = decode_frame(data, "JPEG")
    assert np.abs(fast.astype(int) - slow.astype(int)).max() <= 1
    assert decode_frame(encode_image(img, "JPEG"), "JPEG").shape == img.shape
