"""jr2net.protocol: build-time code generation, the enum <-> name tables and the image codecs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jr2net.errors import InvalidImageError
from jr2net.io.images import FRAME_FORMATS
from jr2net.paths import PROJECT_ROOT
from jr2net.protocol import (
    FORMAT_NAMES,
    IMAGE_FORMATS,
    MODE_NAMES,
    MODES,
    POSE_MODE_NAMES,
    POSE_MODES,
    SERVICE_NAME,
    decode_image,
    frame_message,
    frame_problem,
    image_message,
    output_message,
    pb2,
)
from jr2net.protocol import build as proto_build
from jr2net.protocol.tables import mode_name, mode_value, output_format, pose_mode_name

PROTO = PROJECT_ROOT / "proto" / "jr2net.proto"
GENERATED = PROJECT_ROOT / "jr2net" / "protocol" / "_generated"


def _outputs(folder):
    return [folder / name for name in proto_build.OUTPUTS]


def test_generate_writes_the_modules_and_regenerates_only_when_the_proto_is_newer(tmp_path):
    out = tmp_path / "gen"
    assert proto_build.generate(PROTO, out) is True
    files = _outputs(out)
    assert all(f.is_file() for f in files)
    assert "from . import jr2net_pb2" in (out / "jr2net_pb2_grpc.py").read_text()
    assert proto_build.generate(PROTO, out) is False  # up to date: untouched
    old = PROTO.stat().st_mtime - 10
    os.utime(out / "jr2net_pb2.py", (old, old))  # now older than the .proto
    assert proto_build.generate(PROTO, out) is True
    assert (out / "jr2net_pb2.py").stat().st_mtime > old


def test_generate_without_the_proto_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.proto"):
        proto_build.generate(tmp_path / "missing.proto", tmp_path / "gen")


def test_the_checkout_generated_code_is_up_to_date_with_the_proto():
    assert not proto_build.is_stale(GENERATED, PROTO), "run `make build` (setup.py build_proto)"
    assert SERVICE_NAME == "jr2net.v1.Reenactment"


def test_setup_build_proto_generates_the_code_in_a_tree_that_has_none(tmp_path):
    # What a fresh clone has: setup.py, proto/ and the generator, no jr2net/protocol/_generated.
    shutil.copy(PROJECT_ROOT / "setup.py", tmp_path / "setup.py")
    shutil.copytree(PROJECT_ROOT / "proto", tmp_path / "proto")
    (tmp_path / "jr2net" / "protocol").mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "jr2net" / "protocol" / "build.py", tmp_path / "jr2net" / "protocol")
    env = {**os.environ, "JR2NET_SKIP_EXT": "1"}
    run = subprocess.run([sys.executable, "setup.py", "-q", "build_proto"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert all(f.is_file() for f in _outputs(tmp_path / "jr2net" / "protocol" / "_generated"))


def test_missing_generated_code_is_an_import_error_saying_how_to_build_it():
    code = ("import sys; sys.modules['jr2net.protocol._generated'] = None\n"
            "import jr2net.protocol\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "ImportError" in run.stderr and "make build" in run.stderr


def test_tables_cover_every_proto_enum_value_both_ways():
    assert tuple(IMAGE_FORMATS) == FRAME_FORMATS
    for table, inverse, enum, unspecified in (
        (IMAGE_FORMATS, FORMAT_NAMES, pb2.ImageFormat, pb2.IMAGE_FORMAT_UNSPECIFIED),
        (MODES, MODE_NAMES, pb2.Mode, pb2.MODE_UNSPECIFIED),
        (POSE_MODES, POSE_MODE_NAMES, pb2.PoseMode, pb2.POSE_MODE_UNSPECIFIED),
    ):
        assert sorted(table.values()) == sorted(v for v in enum.values() if v != unspecified)
        assert all(inverse[v] == k for k, v in table.items())
    assert MODES == {"geometric": pb2.GEOMETRIC, "learned": pb2.LEARNED}
    assert POSE_MODES == {"relative": pb2.RELATIVE, "absolute": pb2.ABSOLUTE}


def test_unspecified_values_resolve_to_the_documented_defaults_and_unknown_ones_raise():
    assert mode_name(pb2.MODE_UNSPECIFIED) is None and mode_value("") == pb2.MODE_UNSPECIFIED
    assert pose_mode_name(pb2.POSE_MODE_UNSPECIFIED) == "relative"
    assert output_format(pb2.IMAGE_FORMAT_UNSPECIFIED) == pb2.JPEG
    for fn, field in ((mode_name, "mode"), (pose_mode_name, "pose_mode"),
                      (output_format, "output_format")):
        with pytest.raises(ValueError, match=f"unknown {field} enum value 99"):
            fn(99)
    with pytest.raises(ValueError, match="mode must be one of"):
        mode_value("fancy")


@pytest.mark.parametrize("fmt", ["PNG", "RAW_RGB24"])
def test_image_and_frame_messages_decode_back_to_the_same_pixels(fmt):
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    msg = image_message(image, fmt)
    assert msg.format == IMAGE_FORMATS[fmt]
    np.testing.assert_array_equal(decode_image(msg, still=True), image)
    frame = frame_message(7, image, fmt, capture_ts_us=5)
    assert (frame.frame_id, frame.capture_ts_us) == (7, 5)
    np.testing.assert_array_equal(decode_image(frame), image)
    out = output_message(frame, image, IMAGE_FORMATS[fmt], 90, face_found=True)
    assert (out.frame_id, out.capture_ts_us, out.width, out.height) == (7, 5, 30, 20)
    np.testing.assert_array_equal(decode_image(out), image)


def test_encoded_bytes_are_sniffed_and_bad_messages_are_invalid_image_errors():
    image = np.zeros((8, 8, 3), np.uint8)
    png = image_message(image, "PNG").data
    np.testing.assert_array_equal(decode_image(frame_message(0, png)), image)  # UNSPECIFIED: sniffed
    with pytest.raises(InvalidImageError, match="neither JPEG nor PNG"):
        decode_image(pb2.Frame(data=b"not an image"))
    with pytest.raises(InvalidImageError, match="exceeds the server limit"):
        decode_image(pb2.Frame(format=pb2.PNG, data=png, width=5000, height=5000), max_pixels=10**6)
    with pytest.raises(InvalidImageError, match="empty"):
        decode_image(pb2.Frame(format=pb2.PNG))
    with pytest.raises(InvalidImageError, match="unknown image format enum value 9"):
        decode_image(pb2.Frame(format=9, data=png))
    with pytest.raises(TypeError, match="path, bytes or a uint8 array"):
        image_message(12345)


def test_frame_problem_names_what_makes_a_frame_unusable_before_decoding():
    ok = pb2.Frame(frame_id=0, format=pb2.RAW_RGB24, data=b"\x00" * 12, width=2, height=2)
    assert frame_problem(ok, max_pixels=4) == ""
    cases = [
        (pb2.Frame(frame_id=-1, data=b"x"), "frame_id must be >= 0"),
        (pb2.Frame(format=9, data=b"x"), "unknown image format enum value 9"),
        (pb2.Frame(format=pb2.PNG), "empty frame data"),
        (pb2.Frame(format=pb2.PNG, data=b"x", width=3, height=2), "exceeds the server limit of 4"),
        (pb2.Frame(format=pb2.RAW_RGB24, data=b"\x00" * 5, width=2, height=2), "got 5 bytes"),
    ]
    for frame, needle in cases:
        assert needle in frame_problem(frame, max_pixels=4)
