"""AVSynth pixels and sound from a scene's metadata, written as an MP4 (H.264 yuv420p + mono AAC) with PyAV.

Notation: T frames, H = W = SIZE pixels, C = 3 colour channels, N audio samples.
"""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from vqa.avsynth.scene import (
    BACKGROUND, BEEP_AMPLITUDE, COLORS, FPS, NOISE_AMPLITUDE, NUM_FRAMES, PITCHES, PIXEL_NOISE,
    RAMP_S, SAMPLE_RATE, SIZE, frame_boxes, sounding_object,
)

VIDEO_CODEC = "libx264"
VIDEO_OPTIONS = {"crf": "23", "preset": "veryfast"}  # x264 default quality; 128 px clips stay ~40 kB
AUDIO_CODEC = "aac"
AUDIO_BIT_RATE = 32000


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, h: float) -> np.ndarray:
    """Pixels whose centres (offsets dx, dy from the object's centre) fall inside a shape of half extent h.

    The triangle points up: apex at the top middle of its h-box, base along the bottom.
    """
    if shape == "circle":
        return dx * dx + dy * dy <= h * h
    if shape == "square":
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "triangle":
        return (dy <= h) & (np.abs(dx) <= (dy + h) / 2)
    raise ValueError(f"unknown shape {shape!r}, expected circle, square or triangle")


def render_frames(meta: dict, rng: np.random.Generator) -> np.ndarray:
    """The clip's frames, (T, H, W, C) uint8: noisy background, then each object, pulsed where it pulses."""
    noise = rng.standard_normal((NUM_FRAMES, SIZE, SIZE, 3), dtype=np.float32)
    frames = np.clip(np.float32(BACKGROUND) + PIXEL_NOISE * noise, 0, 255).astype(np.uint8)  # (T, H, W, C)
    if not meta["objects"]:
        return frames
    centres, halves = frame_boxes(meta["objects"])  # (K, T, 2), (K, T)
    for k, obj in enumerate(meta["objects"]):
        color = np.array(COLORS[obj["color"]], np.uint8)
        for t in range(frames.shape[0]):
            (cx, cy), h = centres[k, t], halves[k, t]
            x0, x1 = max(int(np.floor(cx - h)), 0), min(int(np.ceil(cx + h)), SIZE)
            y0, y1 = max(int(np.floor(cy - h)), 0), min(int(np.ceil(cy + h)), SIZE)
            dx = np.arange(x0, x1) + 0.5 - cx  # pixel centres relative to the object's centre
            dy = np.arange(y0, y1) + 0.5 - cy
            mask = _shape_mask(obj["shape"], dx[None, :], dy[:, None], h)  # (h', w')
            frames[t, y0:y1, x0:x1][mask] = color
    return frames


def beep_envelope(n: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(n,) gain: raised-cosine ramps of RAMP_S at both ends, 1 in between."""
    ramp = int(round(RAMP_S * sample_rate))
    env = np.ones(n)
    rise = 0.5 * (1 - np.cos(np.pi * np.arange(ramp) / ramp))
    env[:ramp] = rise
    env[n - ramp:] = rise[::-1]
    return env


def render_audio(meta: dict, rng: np.random.Generator) -> np.ndarray:
    """The clip's sound, (N,) float32 in [-1, 1]: white noise, plus a sine beep during each sounding pulse."""
    sr = meta["sample_rate"]
    n = int(round(meta["duration"] * sr))
    audio = rng.uniform(-NOISE_AMPLITUDE, NOISE_AMPLITUDE, n)
    source = sounding_object(meta)
    if source is not None:
        freq = PITCHES[meta["pitch"]]
        for start, end in source["pulses"]:
            a, b = int(round(start * sr)), int(round(end * sr))
            t = np.arange(b - a) / sr
            audio[a:b] += BEEP_AMPLITUDE * beep_envelope(b - a, sr) * np.sin(2 * np.pi * freq * t)
    return audio.astype(np.float32)


def write_mp4(path: str | Path, frames: np.ndarray, audio: np.ndarray, fps: int = FPS,
              sample_rate: int = SAMPLE_RATE) -> None:
    """Encode (T, H, W, C) uint8 frames and (N,) float audio into one MP4."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    with av.open(str(path), mode="w", format="mp4") as container:
        video = container.add_stream(VIDEO_CODEC, rate=fps, options=dict(VIDEO_OPTIONS))
        video.width, video.height = frames.shape[2], frames.shape[1]
        video.pix_fmt = "yuv420p"
        video.codec_context.thread_count = 1  # one process per core already; also keeps output bit-exact
        sound = container.add_stream(AUDIO_CODEC, rate=sample_rate, layout="mono")
        sound.bit_rate = AUDIO_BIT_RATE
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")
            vf.pts = i
            container.mux(video.encode(vf))
        container.mux(video.encode())
        step = sound.codec_context.frame_size or 1024
        samples = np.ascontiguousarray(audio, dtype=np.float32)
        for offset in range(0, len(samples), step):
            af = av.AudioFrame.from_ndarray(samples[None, offset:offset + step], format="fltp", layout="mono")
            af.sample_rate = sample_rate
            af.pts = offset
            container.mux(sound.encode(af))
        container.mux(sound.encode())


def render_clip(meta: dict, path: str | Path, rng: np.random.Generator) -> None:
    """Draw, synthesise and encode one clip at `path`."""
    write_mp4(path, render_frames(meta, rng), render_audio(meta, rng), meta["fps"], meta["sample_rate"])
