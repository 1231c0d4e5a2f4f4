"""Clips with known sound, made here: espeak-ng speech, silence, a synthetic melody, over plain frames.

    speech_clip(path, "Open the red door.", voice="en")   # needs espeak-ng (Debian: apt-get install espeak-ng)

Used by benchmarks/real_clips.py and tests/test_perception.py.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import av
import numpy as np

RATE = 22050  # espeak-ng's own rate


def espeak_missing() -> str | None:
    return None if shutil.which("espeak-ng") else "espeak-ng is not installed (Debian: apt-get install espeak-ng)"


def speak(text: str, voice: str = "en", speed: int = 150) -> np.ndarray:
    """(L,) float32 mono at RATE: espeak-ng reading `text`."""
    if espeak_missing():
        raise FileNotFoundError(espeak_missing())
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(wav), text], check=True, capture_output=True)
        with av.open(str(wav)) as f:
            chunks = [frame.to_ndarray() for frame in f.decode(audio=0)]  # (1, n) int16 or float
    samples = np.concatenate(chunks, axis=1)[0]
    if samples.dtype.kind == "i":
        samples = samples.astype(np.float32) / 32768.0
    return samples.astype(np.float32)


def melody(seconds: float, rate: int = RATE) -> np.ndarray:
    """(L,) float32: plucked notes with harmonics over a bass, one a second, and a noise-burst drum on every beat."""
    t = np.arange(int(seconds * rate)) / rate
    out = np.zeros_like(t)
    notes = [261.6, 329.6, 392.0, 523.3, 440.0, 349.2, 293.7, 392.0]
    for i in range(int(np.ceil(seconds))):
        seg = (t >= i) & (t < i + 1)
        env = np.exp(-3 * (t[seg] - i))
        f = notes[i % len(notes)]
        for h in range(1, 5):
            out[seg] += env * np.sin(2 * np.pi * f * h * t[seg]) / h
        out[seg] += 0.5 * env * np.sin(np.pi * f * t[seg])
    rng = np.random.default_rng(0)
    n = int(0.05 * rate)
    for beat in np.arange(0, seconds, 0.5):
        i = int(beat * rate)
        burst = rng.normal(0, 0.5, n) * np.exp(-np.arange(n) / 300)
        out[i:i + n] += burst[: len(out[i:i + n])]
    return (0.2 * out / np.abs(out).max()).astype(np.float32)


def write_clip(path: str | Path, audio: np.ndarray | None, seconds: float | None = None,
               size: tuple[int, int] = (320, 240), fps: int = 10, color=(128, 128, 128)) -> Path:
    """An H.264 MP4 of flat frames with `audio` ((L,) float32 at RATE) as AAC, or no audio track when None."""
    path = Path(path)
    seconds = seconds if seconds is not None else len(audio) / RATE + 0.3
    width, height = size
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = None if audio is None else out.add_stream("aac", rate=RATE, layout="mono")
        frame = np.full((height, width, 3), color, np.uint8)
        for i in range(int(round(seconds * fps))):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = i
            out.mux(video.encode(vf))
        out.mux(video.encode(None))
        if sound is not None:
            padded = np.zeros(int(seconds * RATE), np.float32)
            padded[: min(len(audio), len(padded))] = audio[: len(padded)]
            for start in range(0, len(padded), 1024):
                af = av.AudioFrame.from_ndarray(padded[None, start:start + 1024], format="flt", layout="mono")
                af.sample_rate, af.pts = RATE, start
                out.mux(sound.encode(af))
            out.mux(sound.encode(None))
    return path


def speech_clip(path: str | Path, text: str, voice: str = "en", **kwargs) -> Path:
    return write_clip(path, speak(text, voice), **kwargs)
