"""Video reading/writing round trips, audio carry-over and trimming, odd sizes, bad files."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from jr2net.errors import VideoError
from jr2net.io.video import VideoReader, VideoWriter


def _audio_duration(path) -> float | None:
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return None
        s = c.streams.audio[0]
        return float(s.duration * s.time_base)


def _make_sine_wav(path, seconds: float = 3.0, rate: int = 16000) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_s16le", rate=rate)
        s.layout = "mono"
        t = np.arange(int(seconds * rate)) / rate
        pcm = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
        for i in range(0, len(pcm), 1024):
            f = av.AudioFrame.from_ndarray(pcm[None, i : i + 1024], format="s16", layout="mono")
            f.sample_rate = rate
            f.pts = i
            for pkt in s.encode(f):
                c.mux(pkt)
        for pkt in s.encode(None):
            c.mux(pkt)


def test_reader_metadata_of_shared_videos(videos_dir):
    r = VideoReader(videos_dir / "d0.mp4")
    assert (r.width, r.height, r.frame_count, r.fps, r.has_audio) == (512, 512, 78, 25, False)
    h = VideoReader(videos_dir / "short_hamilton_clip.mp4")
    assert (h.width, h.height, h.has_audio) == (640, 360, True)
    assert h.fps == Fraction(2997, 100)


def test_reader_yields_rgb_frames_and_restarts(videos_dir):
    r = VideoReader(videos_dir / "d0.mp4")
    frames = r.read_all()
    assert len(frames) == r.frame_count == 78
    assert frames[0].dtype == np.uint8 and frames[0].shape == (512, 512, 3)
    again = r.read_all(max_frames=3)
    assert len(again) == 3
    np.testing.assert_array_equal(again[0], frames[0])


def test_round_trip_keeps_frame_count_size_and_audio(videos_dir, tmp_path):
    src = VideoReader(videos_dir / "d11.mp4")
    assert src.has_audio
    frames = src.read_all(max_frames=40)
    out = tmp_path / "out.mp4"
    with VideoWriter(out, src.fps, audio_from=src.path) as w:
        for f in frames:
            w.write(f)
    assert w.codec == "libx264"
    back = VideoReader(out)
    assert (back.width, back.height, back.frame_count, back.fps) == (512, 512, 40, 25)
    decoded = back.read_all()
    assert len(decoded) == 40
    assert np.abs(decoded[20].astype(int) - frames[20]).mean() < 3.0
    assert back.has_audio
    # Audio copied (AAC) and trimmed to the video's 1.6 s, to within one AAC packet.
    assert _audio_duration(out) == pytest.approx(40 / 25, abs=0.05)


def test_audio_is_reencoded_to_aac_and_trimmed_exactly(tmp_path):
    wav = tmp_path / "tone.wav"
    _make_sine_wav(wav, seconds=3.0)
    out = tmp_path / "tone.mp4"
    frames = [np.full((48, 64, 3), i * 10, np.uint8) for i in range(20)]  # 2 s at 10 fps
    with VideoWriter(out, 10, audio_from=wav) as w:
        for f in frames:
            w.write(f)
    with av.open(str(out)) as c:
        assert c.streams.audio[0].codec_context.name == "aac"
        samples = sum(f.samples for f in c.decode(audio=0))
    # AAC adds encoder priming/padding of up to ~2 frames of 1024 samples.
    assert abs(samples - 2 * 16000) <= 2048
    assert VideoReader(out).frame_count == 20


def test_odd_dimensions_are_padded_by_edge_replication(tmp_path):
    out = tmp_path / "odd.mp4"
    frame = np.zeros((31, 45, 3), np.uint8)
    frame[:, -1] = 255  # last column white: the pad column must be white too
    with VideoWriter(out, 25) as w:
        for _ in range(3):
            w.write(frame)
    r = VideoReader(out)
    assert (r.width, r.height, r.frame_count) == (46, 32, 3)
    f = r.read_all()[0]
    assert f[:, -1].mean() > 200 and f[:, :40].mean() < 30


def test_writer_rejects_bad_frames(tmp_path):
    with VideoWriter(tmp_path / "a.mp4", 25, width=32, height=32) as w:
        with pytest.raises(ValueError, match="32x32"):
            w.write(np.zeros((16, 16, 3), np.uint8))
        with pytest.raises(TypeError, match="uint8"):
            w.write(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="fps"):
        VideoWriter(tmp_path / "b.mp4", 0)


def test_writer_without_audio_source_audio_keeps_video_only(videos_dir, tmp_path):
    out = tmp_path / "na.mp4"
    with VideoWriter(out, 25, audio_from=videos_dir / "d0.mp4") as w:  # d0 has no audio
        w.write(np.zeros((32, 32, 3), np.uint8))
    assert not VideoReader(out).has_audio


def test_corrupt_and_missing_files_raise_clear_errors(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    with pytest.raises(VideoError, match="bad.mp4"):
        VideoReader(bad)
    text = tmp_path / "t.mp4"
    text.write_text("hello")
    with pytest.raises(VideoError):
        VideoReader(text)
    with pytest.raises(FileNotFoundError):
        VideoReader(tmp_path / "missing.mp4")


def test_truncated_videos_fail_cleanly_or_give_the_frames_present(videos_dir, tmp_path):
    data = (videos_dir / "d0.mp4").read_bytes()  # index (moov) at the end: unreadable when cut
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match="cannot open"):
        VideoReader(cut)
    # Our files are written index-first (faststart): a cut one still yields its leading frames.
    rng = np.random.default_rng(0)
    full = tmp_path / "full.mp4"
    with VideoWriter(full, 25) as w:
        for _ in range(30):
            w.write(rng.integers(0, 255, (64, 64, 3), np.uint8))
    data = full.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    r = VideoReader(cut)
    assert r.frame_count == 30  # what the index claims
    assert 0 < len(r.read_all()) < 30
