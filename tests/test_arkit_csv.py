"""Live Link Face CSV: the column layout, the ARKit -> face-model name map, round trips, and the
errors that name the line and column."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from jr2net.face.importers import ICT_EXPRESSIONS
from jr2net.io.arkit_csv import (
    ARKIT_NAMES,
    HEADER,
    MocapCSVError,
    arkit_to_model,
    format_timecode,
    model_names_for,
    model_to_arkit,
    parse_timecode,
    read_live_link_csv,
    sample_take,
    write_live_link_csv,
)

NAMES = list(ICT_EXPRESSIONS)  # the 53 ICT names


def _write(path, lines):
    path.write_text("\n".join(",".join(str(v) for v in row) for row in lines) + "\n")
    return path


def _row(code="00:00:00:00.000", value=0.5, n_pose=9):
    return [code, 61] + [value] * 52 + [0.1] * n_pose


def test_header_is_live_link_face_layout():
    assert len(ARKIT_NAMES) == 52 and len(HEADER) == 63
    assert HEADER[:3] == ("Timecode", "BlendShapeCount", "EyeBlinkLeft")
    assert ARKIT_NAMES[-1] == "TongueOut" and HEADER[-1] == "RightEyeRoll"


def test_every_ict_shape_is_driven_and_split_shapes_copy_to_both_sides():
    driven = {m for a in ARKIT_NAMES for m in model_names_for(a)}
    assert driven == set(NAMES)  # 51 ARKit shapes (minus TongueOut) cover all 53 ICT shapes
    assert model_names_for("EyeBlinkLeft") == ("eyeBlink_L",)
    assert model_names_for("BrowInnerUp") == ("browInnerUp_L", "browInnerUp_R")
    assert model_names_for("TongueOut") == ()
    arkit = np.zeros((1, 52), np.float32)
    arkit[0, ARKIT_NAMES.index("CheekPuff")] = 0.7
    arkit[0, ARKIT_NAMES.index("MouthSmileRight")] = 0.4
    beta = arkit_to_model(arkit, NAMES)
    assert beta[0, NAMES.index("cheekPuff_L")] == beta[0, NAMES.index("cheekPuff_R")] == 0.7
    assert beta[0, NAMES.index("mouthSmile_R")] == pytest.approx(0.4)
    assert beta[0, NAMES.index("mouthSmile_L")] == 0.0


def test_write_then_read_round_trips_coefficients_pose_and_times(tmp_path):
    beta, head = sample_take(NAMES, seconds=1.0, fps=30, seed=3)
    # A split shape's two sides are averaged on the way out: make them equal to round-trip.
    for base in ("browInnerUp", "cheekPuff"):
        i, j = NAMES.index(base + "_L"), NAMES.index(base + "_R")
        beta[:, j] = beta[:, i]
    path = write_live_link_csv(tmp_path / "take.csv", beta, NAMES, fps=30, head=head)
    take = read_live_link_csv(path, fps=30)
    assert len(take) == 30
    np.testing.assert_allclose(take.expressions(NAMES), beta, atol=1e-6)
    np.testing.assert_allclose(take.head, head, atol=1e-6)
    np.testing.assert_allclose(take.times, np.arange(30) / 30, atol=1e-6)
    assert take.duration == pytest.approx(1.0)
    assert path.read_text().splitlines()[0] == ",".join(HEADER)


def test_timecodes_parse_frames_and_subframes():
    assert parse_timecode("01:02:03:30.500", fps=60) == pytest.approx(3723 + 30.5 / 60)
    for t in (0.0, 1 / 60, 0.5, 59 / 60, 1.0, 3661.25):
        assert parse_timecode(format_timecode(t)) == pytest.approx(t, abs=1e-9)
    for bad in ("1:2:3", "00:00:00:60.000", "00:61:00:00", "aa:00:00:00"):
        with pytest.raises(ValueError):
            parse_timecode(bad, fps=60)


def test_camel_case_header_and_no_pose_columns_read(tmp_path):
    header = ["Timecode", "BlendShapeCount"] + [n[0].lower() + n[1:] for n in ARKIT_NAMES]
    path = _write(tmp_path / "a.csv", [header, _row(n_pose=0), _row("00:00:00:01.000", n_pose=0)])
    take = read_live_link_csv(path)
    assert len(take) == 2 and take.head is None
    assert take.times[1] == pytest.approx(1 / 60)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda h, r: (h[:10] + h[11:], [x[:10] + x[11:] for x in r]), r":1: missing column\(s\) EyeLookDownRight"),
        (lambda h, r: (h, [r[0], r[1][:-1]]), r":3: 62 values, but the header has 63 columns"),
        (lambda h, r: (h, [r[0], r[1][:5] + ["nan"] + r[1][6:]]), r":3, column EyeLookOutLeft: nan is not finite"),
        (lambda h, r: (h, [r[0][:20] + [1.5] + r[0][21:], r[1]]), r":2, column MouthClose: 1.5 is outside \[0, 1\]"),
        (lambda h, r: (h, [r[0], r[1][:3] + ["x"] + r[1][4:]]), r":3, column EyeLookDownLeft: 'x' is not a number"),
        (lambda h, r: (h, [["00:00:0:00"] + r[0][1:], r[1]]), r":2, column Timecode: .*HH:MM:SS:FF"),
        (lambda h, r: (h, [r[1], r[0]]), r":3, column Timecode: .* earlier than the previous row"),
        (lambda h, r: (h + ["Extra"], [x + [0] for x in r]), r":1, column 64 \('Extra'\): unknown column"),
    ],
    ids=["missing-column", "column-count", "nan", "out-of-range", "not-a-number", "bad-timecode",
         "decreasing-time", "unknown-column"],
)  # fmt: skip
def test_bad_csv_errors_name_line_and_column(tmp_path, edit, message):
    header = list(HEADER)
    rows = [_row("00:00:00:00.000"), _row("00:00:00:01.000")]
    header, rows = edit(header, rows)
    path = _write(tmp_path / "bad.csv", [header, *rows])
    with pytest.raises(MocapCSVError, match=message):
        read_live_link_csv(path)


def test_missing_and_empty_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_live_link_csv(tmp_path / "none.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(MocapCSVError, match="empty file"):
        read_live_link_csv(tmp_path / "empty.csv")
    _write(tmp_path / "header.csv", [HEADER])
    with pytest.raises(MocapCSVError, match="no data rows"):
        read_live_link_csv(tmp_path / "header.csv")


def test_writer_refuses_out_of_range_coefficients(tmp_path):
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        write_live_link_csv(tmp_path / "x.csv", np.full((2, 53), 1.2), NAMES)
    assert model_to_arkit(np.ones((1, 53)), NAMES)[0, ARKIT_NAMES.index("TongueOut")] == 0


def test_assets_write_csv_writes_a_ten_second_take(tmp_path):
    out = tmp_path / "take.csv"
    cmd = [sys.executable, "-m", "jr2net.cli", "assets", "write-csv", str(out), "--seconds", "10",
           "--face-model", "ict"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    take = read_live_link_csv(out)
    assert len(take) == 600 and take.duration == pytest.approx(10.0)
    assert take.arkit.max() > 0.5  # large expressions, not a neutral track


def test_reenact_driving_csv_writes_one_frame_per_row(tmp_path, images_dir):
    from jr2net.io.video import VideoReader

    beta, head = sample_take(NAMES, seconds=1.0, fps=12, seed=2)
    csv = write_live_link_csv(tmp_path / "take.csv", beta, NAMES, fps=12, head=head)
    out = tmp_path / "out.mp4"
    cmd = [sys.executable, "-m", "jr2net.cli", "reenact", "--source", str(images_dir / "biden.jpg"),
           "--driving-csv", str(csv), "--csv-fps", "12", "--out", str(out), "--face-model", "ict",
           "--crop-size", "128"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    with VideoReader(out) as reader:
        frames = list(reader)
    assert len(frames) == 12
    # The take opens the mouth and moves the head: the output frames are not all the same.
    assert max(np.abs(f.astype(int) - frames[0].astype(int)).mean() for f in frames) > 0.5


def test_reenact_driving_csv_reports_a_bad_take_by_line_and_column(tmp_path, images_dir):
    bad = _write(tmp_path / "bad.csv", [HEADER, _row(value=2.0)])
    cmd = [sys.executable, "-m", "jr2net.cli", "reenact", "--source", str(images_dir / "biden.jpg"),
           "--driving-csv", str(bad), "--out", str(tmp_path / "o.mp4"), "--face-model", "ict"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert "bad.csv:2, column EyeBlinkLeft: 2 is outside [0, 1]" in res.stderr
