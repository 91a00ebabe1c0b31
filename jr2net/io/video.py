"""Video files (PyAV): read uint8 RGB frames, write H.264 MP4 with the audio of another file.

Reading gives frames as stored (a display-matrix rotation of phone videos is not applied).
Writing uses libx264 (yuv420p, CRF) when PyAV has it, else the first of ``libopenh264``/``h264``
/``mpeg4`` it has; ``VideoWriter.codec`` says which. yuv420p needs even dimensions: an odd width
or height is padded by one pixel, replicating the last column/row (no resampling, so the picture
is not shifted or blurred). Audio from ``audio_from`` is stream-copied when MP4 can hold its codec
(AAC, MP3, ALAC, AC-3), otherwise re-encoded to AAC; either way it is interleaved with the video
as frames are written and trimmed to the video's length (copy: to the audio packet, <= ~23 ms for
AAC; re-encode: to the sample).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import numpy as np

from jr2net.errors import VideoError

log = logging.getLogger("jr2net.io")

_COPYABLE_AUDIO = {"aac", "mp3", "alac", "ac3"}
_H264_ENCODERS = ("libx264", "libopenh264", "h264", "mpeg4")


def _av():
    import av

    return av


class VideoReader:
    """Frames of a video file as uint8 ``[H, W, 3]`` RGB; iterate (each ``for`` starts over)."""

    def __init__(self, path: str | Path) -> None:
        av = _av()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"video file not found: {self.path}")
        try:
            container = av.open(str(self.path))
        except av.FFmpegError as exc:
            raise VideoError(f"{self.path}: cannot open video ({exc})") from exc
        try:
            if not container.streams.video:
                raise VideoError(f"{self.path}: no video stream")
            vs = container.streams.video[0]
            cc = vs.codec_context
            if not cc.width or not cc.height:
                raise VideoError(f"{self.path}: video stream has no frame size")
            self.width: int = cc.width
            self.height: int = cc.height
            rate = vs.average_rate or vs.guessed_rate or vs.base_rate
            self.fps: Fraction = Fraction(rate) if rate else Fraction(25)
            self.has_audio: bool = bool(container.streams.audio)
            self.codec: str = cc.name
            self._frames_header = int(vs.frames or 0)
            self.duration: float | None = (
                float(vs.duration * vs.time_base) if vs.duration and vs.time_base else None
            )
        finally:
            container.close()
        self._frame_count: int | None = self._frames_header or None

    @property
    def frame_count(self) -> int:
        """Number of frames: the container's count when it has one (MP4), else counted by
        demuxing the packets (no decoding)."""
        if self._frame_count is None:
            av = _av()
            n = 0
            try:
                with av.open(str(self.path)) as c:
                    for pkt in c.demux(video=0):
                        if pkt.size:
                            n += 1
            except av.FFmpegError as exc:
                raise VideoError(f"{self.path}: cannot read packets ({exc})") from exc
            self._frame_count = n
        return self._frame_count

    def __len__(self) -> int:
        return self.frame_count

    def __iter__(self) -> Iterator[np.ndarray]:
        av = _av()
        try:
            container = av.open(str(self.path))
        except av.FFmpegError as exc:
            raise VideoError(f"{self.path}: cannot open video ({exc})") from exc
        i = 0
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
                i += 1
        except av.FFmpegError as exc:
            raise VideoError(f"{self.path}: decoding failed at frame {i} ({exc})") from exc
        finally:
            container.close()

    def read_all(self, max_frames: int | None = None) -> list[np.ndarray]:
        """All frames (or the first ``max_frames``) as a list of uint8 RGB arrays."""
        if max_frames is not None and max_frames < 0:
            raise ValueError(f"max_frames must be >= 0 or None, got {max_frames}")
        frames: list[np.ndarray] = []
        if max_frames == 0:
            return frames
        it = iter(self)
        try:
            for f in it:
                frames.append(f)
                if max_frames is not None and len(frames) >= max_frames:
                    break
        finally:
            it.close()  # type: ignore[attr-defined]
        return frames

    def close(self) -> None:
        """Nothing is held open between iterations; present for symmetry and ``with``."""

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pick_encoder() -> str:
    av = _av()
    for name in _H264_ENCODERS:
        if name in av.codecs_available:
            try:
                av.Codec(name, "w")
                return name
            except Exception:  # noqa: S112 - not an encoder in this build; try the next
                continue
    raise VideoError(f"no usable video encoder among {_H264_ENCODERS} in this PyAV build")


class VideoWriter:
    """Write uint8 ``[H, W, 3]`` RGB frames to an H.264 MP4 (see the module doc).

    ``width``/``height`` default to the first frame's size; every frame must have that size.
    ``crf`` is x264's constant rate factor (0 lossless .. 51; 18 is visually near-lossless).
    """

    def __init__(
        self,
        path: str | Path,
        fps: float | Fraction,
        width: int | None = None,
        height: int | None = None,
        audio_from: str | Path | None = None,
        crf: int = 18,
        preset: str = "veryfast",
    ) -> None:
        try:
            self.fps = Fraction(fps).limit_denominator(1001 * 1000)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"fps must be a positive number, got {fps!r}") from exc
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {fps!r}")
        for name, v in (("width", width), ("height", height)):
            if v is not None and (not isinstance(v, (int, np.integer)) or v < 1):
                raise ValueError(f"{name} must be a positive int or None, got {v!r}")
        if not 0 <= crf <= 51:
            raise ValueError(f"crf must be in [0, 51], got {crf}")
        self.path = Path(path)
        self.width, self.height = width, height
        self.crf, self.preset = crf, preset
        self.audio_from = Path(audio_from) if audio_from is not None else None
        if self.audio_from is not None and not self.audio_from.is_file():
            raise FileNotFoundError(f"audio_from file not found: {self.audio_from}")
        self.codec = _pick_encoder()
        self.frames_written = 0
        self._container = None
        self._closed = False
        if width is not None and height is not None:
            self._open()

    # -- setup ------------------------------------------------------------------------------

    def _open(self) -> None:
        av = _av()
        assert self.width is not None and self.height is not None
        self._out_w = self.width + (self.width % 2)
        self._out_h = self.height + (self.height % 2)
        opts = {"movflags": "+faststart"} if self.path.suffix.lower() in (".mp4", ".mov") else {}
        try:
            self._container = av.open(str(self.path), mode="w", options=opts)
        except (av.FFmpegError, OSError) as exc:
            raise VideoError(f"{self.path}: cannot create video file ({exc})") from exc
        vs = self._container.add_stream(self.codec, rate=self.fps)
        vs.width, vs.height = self._out_w, self._out_h
        vs.pix_fmt = "yuv420p"
        if self.codec == "libx264":
            vs.options = {"crf": str(self.crf), "preset": self.preset}
        self._vstream = vs
        self._audio_in = None
        self._audio_iter: Iterator | None = None
        self._audio_pending = None
        if self.audio_from is not None:
            self._open_audio()

    def _open_audio(self) -> None:
        av = _av()
        try:
            src = av.open(str(self.audio_from))
        except av.FFmpegError as exc:
            raise VideoError(f"{self.audio_from}: cannot open audio source ({exc})") from exc
        if not src.streams.audio:
            log.info("%s has no audio stream; writing video only", self.audio_from)
            src.close()
            return
        ain = src.streams.audio[0]
        self._audio_in = src
        self._audio_start = ain.start_time or 0
        self._audio_tb = ain.time_base
        self._audio_copy = ain.codec_context.name in _COPYABLE_AUDIO
        if self._audio_copy:
            self._astream = self._container.add_stream_from_template(ain)
            self._audio_iter = iter(src.demux(ain))
        else:
            rate = ain.codec_context.sample_rate or 48000
            rate = rate if rate <= 96000 else 48000
            layout = "mono" if ain.codec_context.channels == 1 else "stereo"
            self._astream = self._container.add_stream("aac", rate=rate)
            self._astream.layout = layout
            self._resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
            self._audio_rate = rate
            self._audio_samples = 0
            self._audio_iter = iter(src.decode(ain))

    # -- audio ------------------------------------------------------------------------------

    def _pump_audio(self, until_s: float, final: bool = False) -> None:
        """Mux/encode source audio that starts before ``until_s`` seconds (the video so far)."""
        if self._audio_iter is None:
            return
        while True:
            item = self._audio_pending
            self._audio_pending = None
            if item is None:
                try:
                    item = next(self._audio_iter)
                except StopIteration:
                    self._finish_audio()
                    return
                except _av().FFmpegError as exc:
                    log.warning("audio source %s: %s; audio ends here", self.audio_from, exc)
                    self._finish_audio()
                    return
            if item.pts is None:
                continue
            t = float((item.pts - self._audio_start) * self._audio_tb)
            if t >= until_s:
                if final:
                    self._finish_audio()
                else:
                    self._audio_pending = item
                return
            if self._audio_copy:
                if item.size == 0:
                    continue
                item.pts -= self._audio_start
                if item.dts is not None:
                    item.dts -= self._audio_start
                item.stream = self._astream
                self._container.mux(item)
            else:
                self._encode_audio(item, until_s if final else None)

    def _encode_audio(self, frame, limit_s: float | None) -> None:
        av = _av()
        for f in self._resampler.resample(frame):
            if limit_s is not None:
                room = int(round(limit_s * self._audio_rate)) - self._audio_samples
                if room <= 0:
                    return
                if f.samples > room:
                    arr = f.to_ndarray()[:, :room]
                    f = av.AudioFrame.from_ndarray(
                        np.ascontiguousarray(arr), format="fltp", layout=f.layout.name
                    )
                    f.sample_rate = self._audio_rate
            f.pts = self._audio_samples
            f.time_base = Fraction(1, self._audio_rate)
            self._audio_samples += f.samples
            for pkt in self._astream.encode(f):
                self._container.mux(pkt)

    def _finish_audio(self) -> None:
        if self._audio_iter is None:
            return
        self._audio_iter = None
        if not self._audio_copy:
            for pkt in self._astream.encode(None):
                self._container.mux(pkt)
        if self._audio_in is not None:
            self._audio_in.close()
            self._audio_in = None

    # -- public -----------------------------------------------------------------------------

    def write(self, frame: np.ndarray) -> None:
        """Append one uint8 ``[H, W, 3]`` RGB frame."""
        av = _av()
        if self._closed:
            raise ValueError("write() on a closed VideoWriter")
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
            raise TypeError("frame must be a numpy uint8 array [H, W, 3]")
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frame must have shape [H, W, 3], got {list(frame.shape)}")
        if self._container is None:
            self.width = self.width or frame.shape[1]
            self.height = self.height or frame.shape[0]
            self._open()
        if frame.shape[:2] != (self.height, self.width):
            raise ValueError(
                f"frame is {frame.shape[1]}x{frame.shape[0]}, the video is {self.width}x{self.height}"
            )
        if (self._out_w, self._out_h) != (self.width, self.height):
            frame = np.pad(
                frame,
                ((0, self._out_h - self.height), (0, self._out_w - self.width), (0, 0)),
                "edge",
            )
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts = self.frames_written
        vf.time_base = 1 / self.fps
        try:
            for pkt in self._vstream.encode(vf):
                self._container.mux(pkt)
        except av.FFmpegError as exc:
            raise VideoError(f"{self.path}: encoding failed ({exc})") from exc
        self.frames_written += 1
        self._pump_audio(float(self.frames_written / self.fps))

    def close(self) -> None:
        """Flush the encoder, finish and trim the audio, and close the file."""
        if self._closed:
            return
        self._closed = True
        if self._container is None:
            return
        try:
            for pkt in self._vstream.encode(None):
                self._container.mux(pkt)
            self._pump_audio(float(self.frames_written / self.fps), final=True)
        finally:
            self._finish_audio_safely()
            self._container.close()

    def _finish_audio_safely(self) -> None:
        try:
            self._finish_audio()
        except Exception:  # closing after an error: keep the original exception
            if self._audio_in is not None:
                self._audio_in.close()
                self._audio_in = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
