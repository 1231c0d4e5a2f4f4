"""The picture of a spoken clip: an AVSynth scene without beeps, or a plain gradient drifting across the frame,
stretched over the clip's length, and the MP4 writer (audio optional: a clip may have no audio track).

Notation: T frames, H = W = SIZE pixels, C = 3 colour channels.
"""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from vqa.avsynth.render import render_frames
from vqa.avsynth.scene import FPS, NUM_FRAMES, SIZE, sample_scene

from .audio import RATE


def scene_frames(rng: np.random.Generator, seconds: float) -> tuple[dict, np.ndarray]:
    """An AVSynth scene with no sounding object, and its frames (T, H, W, C) uint8 slowed to last `seconds`."""
    scene = sample_scene(rng, beeps=False)
    frames = render_frames(scene, rng)  # (NUM_FRAMES, H, W, C) over AVSynth's 3 s
    n = max(int(round(seconds * FPS)), 1)
    pick = np.minimum((np.arange(n) * NUM_FRAMES / n).astype(int), NUM_FRAMES - 1)
    return scene, frames[pick]


def gradient_frames(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """(T, H, W, C) uint8: a linear gradient between two random colours at a random angle, drifting over time."""
    n = max(int(round(seconds * FPS)), 1)
    a, b = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    speed = rng.uniform(0.1, 0.4) * rng.choice([-1, 1])  # periods per second
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE  # (H, W)
    along = np.cos(angle) * x + np.sin(angle) * y  # (H, W)
    t = np.arange(n)[:, None, None] / FPS  # (T, 1, 1)
    mix = 0.5 + 0.5 * np.sin(2 * np.pi * (along[None] + speed * t))  # (T, H, W)
    frames = a + (b - a) * mix[..., None]  # (T, H, W, C)
    frames += rng.normal(0, 3.0, frames.shape)
    return np.clip(frames, 0, 255).astype(np.uint8)


def write_clip(path: str | Path, frames: np.ndarray, audio: np.ndarray | None, fps: int = FPS) -> Path:
    """Encode (T, H, W, C) uint8 frames as H.264 and (L,) float audio at RATE as mono AAC (no audio stream if None)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    path = Path(path)
    with av.open(str(path), mode="w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps, options={"crf": "23", "preset": "veryfast"})
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        video.codec_context.thread_count = 1
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=RATE, layout="mono")
            sound.bit_rate = 48000
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")
            vf.pts = i
            container.mux(video.encode(vf))
        container.mux(video.encode())
        if sound is not None:
            step = sound.codec_context.frame_size or 1024
            samples = np.ascontiguousarray(np.clip(audio, -1, 1), dtype=np.float32)
            for offset in range(0, len(samples), step):
                af = av.AudioFrame.from_ndarray(samples[None, offset:offset + step], format="fltp", layout="mono")
                af.sample_rate, af.pts = RATE, offset
                container.mux(sound.encode(af))
            container.mux(sound.encode())
    return path
