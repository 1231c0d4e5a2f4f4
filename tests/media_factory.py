"""Small test videos written with PyAV, whose content can be checked after decoding.

Each frame is one flat colour that encodes its index (`code_color` / `color_code`), so a
decoded frame tells which source frame it came from, whatever the codec did to it.
Audio is a sine tone, optionally only between two times, so its pitch, length and
position can be checked too.
"""
from __future__ import annotations

import io
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner to stdout unless told errors only

# 8 x 8 x 4 levels, spaced widely enough to survive 4:2:0 chroma and the GIF encoder's
# 3-3-2 palette (rgb8): up to 256 distinct frames.
_RG = np.round(np.arange(8) * 255 / 7).astype(int)
_B = np.array([0, 85, 170, 255])
MAX_CODES = 256


def code_color(n: int) -> tuple[int, int, int]:
    """The flat colour of frame `n`."""
    if not 0 <= n < MAX_CODES:
        raise ValueError(f"frame code {n} is outside [0, {MAX_CODES})")
    return int(_RG[n % 8]), int(_RG[(n // 8) % 8]), int(_B[n // 64])


def color_code(image: np.ndarray) -> int:
    """The frame index encoded by an (H, W, 3) image's mean colour."""
    r, g, b = image.reshape(-1, 3).mean(0)
    ri, gi, bi = (int(np.abs(levels - c).argmin()) for levels, c in ((_RG, r), (_RG, g), (_B, b)))
    return ri + 8 * gi + 64 * bi


def encoder_available(codec: str) -> bool:
    try:
        av.Codec(codec, "w")
    except Exception:
        return False
    return True


def decoder_available(codec: str) -> bool:
    try:
        av.Codec(codec, "r")
    except Exception:
        return False
    return True


def tone(seconds: float, rate: int, freq: float, channels: int = 1, start: float = 0.0,
         stop: float | None = None, amplitude: float = 0.5) -> np.ndarray:
    """(channels, samples) float32 sine of `freq` Hz, silent outside [start, stop)."""
    t = np.arange(int(round(seconds * rate))) / rate
    wave = amplitude * np.sin(2 * np.pi * freq * t)
    stop = seconds if stop is None else stop
    wave[(t < start) | (t >= stop)] = 0.0
    return np.repeat(wave[None].astype(np.float32), channels, axis=0)


def _audio_frames(samples: np.ndarray, rate: int, layout: str, chunk: int = 1024):
    for start in range(0, samples.shape[1], chunk):
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples[:, start:start + chunk]), format="fltp", layout=layout)
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        yield frame


def write_video(
    path: str | Path,
    *,
    codec: str = "libx264",
    fps: int = 10,
    num_frames: int = 20,
    size: tuple[int, int] = (96, 64),
    pix_fmt: str = "yuv420p",
    gop: int | None = None,
    codec_options: dict[str, str] | None = None,
    format: str | None = None,
    container_options: dict[str, str] | None = None,
    frame_times: list[float] | None = None,
    images: list[np.ndarray] | None = None,
    codes: list[int] | None = None,
    rotation: int | None = None,
    audio: dict | None = None,
) -> Path:
    """Write a clip of `num_frames` flat frames (frame n has colour `code_color(n)`).

    `frame_times` (seconds) gives a variable frame rate; `codes` gives frame n the colour of
    `codes[n]` instead of n; `images` replaces the flat frames
    (each (H, W, 3) uint8, `size` = (W, H)); `rotation` sets the display matrix (degrees
    counter-clockwise, as players apply it); `audio` is a dict with keys codec, rate,
    layout, and either samples ((channels, n) float32) or freq (a tone over the clip).
    """
    path = Path(path)
    width, height = size
    n = next(len(x) for x in (images, codes, frame_times, [None] * num_frames) if x is not None)
    duration = frame_times[-1] + 1 / fps if frame_times is not None else n / fps
    with av.open(str(path), "w", format=format, options=container_options or {}) as out:
        options = {"preset": "ultrafast"} if codec in ("libx264", "libx265") else {}
        if codec == "libx265":
            options["x265-params"] = "log-level=error"
        if codec == "libsvtav1":
            options.update(preset="12", crf="20")
        options.update(codec_options or {})
        video = out.add_stream(codec, rate=fps, options=options)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        if gop is not None:
            video.gop_size = gop
        if frame_times is not None:
            video.time_base = Fraction(1, 1000)
            video.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            video.set_display_rotation(rotation)
        astream = None
        if audio is not None:
            layout = audio.get("layout", "mono")
            astream = out.add_stream(audio["codec"], rate=audio["rate"], layout=layout)
            samples = audio.get("samples")
            if samples is None:
                channels = av.AudioLayout(layout).nb_channels
                samples = tone(duration, audio["rate"], audio["freq"], channels)
        for i in range(n):
            if images is not None:
                img = images[i]
            else:
                img = np.full((height, width, 3), code_color(codes[i] if codes is not None else i), np.uint8)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            if frame_times is not None:
                frame.pts = int(round(frame_times[i] * 1000))
                frame.time_base = Fraction(1, 1000)
            else:
                frame.pts = i
                frame.time_base = Fraction(1, fps)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if astream is not None:
            for frame in _audio_frames(samples, audio["rate"], astream.layout.name):
                out.mux(astream.encode(frame))
            out.mux(astream.encode(None))
    return path


def write_streams(path: str | Path, videos: list[dict], audios: list[dict], fps: int = 10,
                  num_frames: int = 10, size: tuple[int, int] = (64, 48)) -> Path:
    """An MKV with several video and audio streams; each dict has `code` (the flat colour's
    index) or `freq` (the tone), and `default` (the stream's default disposition)."""
    path = Path(path)
    width, height = size
    with av.open(str(path), "w") as out:
        vstreams = []
        for v in videos:
            s = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
            s.width, s.height, s.pix_fmt = width, height, "yuv420p"
            s.disposition = av.stream.Disposition.default if v["default"] else 0
            vstreams.append(s)
        astreams = []
        for a in audios:
            s = out.add_stream("libopus", rate=48000, layout="mono")
            s.disposition = av.stream.Disposition.default if a["default"] else 0
            astreams.append(s)
        for i in range(num_frames):
            for s, v in zip(vstreams, videos):
                img = np.full((height, width, 3), code_color(v["code"]), np.uint8)
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, fps)
                out.mux(s.encode(frame))
        for s in vstreams:
            out.mux(s.encode(None))
        for s, a in zip(astreams, audios):
            for frame in _audio_frames(tone(num_frames / fps, 48000, a["freq"]), 48000, "mono"):
                out.mux(s.encode(frame))
            out.mux(s.encode(None))
    return path


def write_audio_only(path: str | Path, seconds: float = 1.0, freq: float = 440.0) -> Path:
    """An M4A-style MP4 holding one AAC track and no video."""
    path = Path(path)
    with av.open(str(path), "w", format="mp4") as out:
        s = out.add_stream("aac", rate=16000, layout="mono")
        for frame in _audio_frames(tone(seconds, 16000, freq), 16000, "mono"):
            out.mux(s.encode(frame))
        out.mux(s.encode(None))
    return path


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """A still PNG or JPEG (by the file's suffix)."""
    path = Path(path)
    codec = {".png": "png", ".jpg": "mjpeg", ".jpeg": "mjpeg"}[path.suffix.lower()]
    with av.open(str(path), "w", format="image2") as out:
        s = out.add_stream(codec, rate=1)
        s.width, s.height = image.shape[1], image.shape[0]
        s.pix_fmt = "rgb24" if codec == "png" else "yuvj444p"
        if codec == "mjpeg":
            s.codec_context.color_range = 2  # full range, as JPEG files are
        out.mux(s.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(s.encode(None))
    return path


def drop_first_keyframe(src: str | Path, dst: str | Path) -> Path:
    """Remux `src` without its first video packet, so the file starts on frames that
    reference a picture that is not there (as a cut stream does)."""
    dst = Path(dst)
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4") as out:
        vin = inp.streams.video[0]
        vout = out.add_stream_from_template(vin)
        first = True
        for packet in inp.demux(vin):
            if packet.dts is None:
                continue
            if first:
                assert packet.is_keyframe, "the source should start on a keyframe"
                first = False
                continue
            packet.stream = vout
            out.mux(packet)
    return dst


def truncate(src: str | Path, dst: str | Path, fraction: float = 0.5) -> Path:
    """The first `fraction` of `src`'s bytes."""
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


class _NoSeek(io.RawIOBase):
    """A write-only stream that cannot seek, as a pipe or a socket: muxers cannot go back to fill in the header."""

    def __init__(self, f):
        self.f = f

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data) -> int:
        return self.f.write(data)


def write_streamed_mkv(path: str | Path, seconds: float, audio_seconds: float | None = None, fps: int = 2,
                       size: int = 16, rate: int = 8000) -> Path:
    """A Matroska written through a non-seekable stream, so its header has no duration: tiny frames at
    `fps` for `seconds`, silent 16-bit PCM at `rate` for `audio_seconds` (default: as long)."""
    audio_seconds = seconds if audio_seconds is None else audio_seconds
    with open(path, "wb") as raw, av.open(_NoSeek(raw), "w", format="matroska") as out:
        video = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        audio = out.add_stream("pcm_s16le", rate=rate, layout="mono")
        step = rate // fps  # audio samples per video frame, interleaved
        n_video, n_audio = int(seconds * fps), int(audio_seconds * fps)
        for i in range(max(n_video, n_audio)):
            if i < n_video:
                img = np.full((size, size, 3), code_color(i % MAX_CODES), np.uint8)
                for packet in video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(packet)
            if i < n_audio:
                frame = av.AudioFrame.from_ndarray(np.zeros((1, step), np.int16), format="s16", layout="mono")
                frame.sample_rate, frame.pts = rate, i * step
                for packet in audio.encode(frame):
                    out.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode():
                out.mux(packet)
    return Path(path)
