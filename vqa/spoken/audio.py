"""The sound of a spoken clip, (L,) float32 mono at RATE: espeak-ng speech, a recorded prompt, a melody, noise, silence.

- speech: Debian's espeak-ng reading a sentence (voice, variant, speed and pitch drawn per clip);
- recordings: Debian's asterisk-core-sounds-en-wav (Allison Smith's telephony prompts, CC-BY-SA 3.0),
  with their texts from asterisk-core-sounds-en's core-sounds-en.txt.gz; used where both are installed;
- music: a melody of harmonic tones over a held bass, random key, tempo and timbre;
- noise: brown or pink noise at an audible level (no speech, no music);
- silence: digital zeros or a hiss under the silence threshold of vqa.perception.sound.
"""
from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

RATE = 16000
ESPEAK_RATE = 22050
ASTERISK_SOUNDS = Path("/usr/share/asterisk/sounds/en")
ASTERISK_TEXTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10), "pentatonic": (0, 2, 4, 7, 9)}


def espeak_missing() -> str | None:
    return None if shutil.which("espeak-ng") else "espeak-ng is not installed (Debian: apt-get install espeak-ng)"


def _resample(samples: np.ndarray, rate: int) -> np.ndarray:
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(rate, RATE)
    return resample_poly(samples, RATE // g, rate // g).astype(np.float32)


def _read_wav(path: Path) -> np.ndarray:
    """(L,) float32 at RATE from a 16-bit PCM WAV file (mono or the first channel)."""
    with wave.open(str(path)) as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM, got {8 * w.getsampwidth()}-bit")
        raw = np.frombuffer(w.readframes(w.getnframes()), np.int16).reshape(-1, w.getnchannels())[:, 0]
        return _resample(raw.astype(np.float32) / 32768.0, w.getframerate())


def speak(text: str, voice: str = "en", speed: int = 150, pitch: int = 50) -> np.ndarray:
    """(L,) float32 at RATE: espeak-ng reading `text` with `voice` (e.g. "de", "en-us+f2")."""
    if espeak_missing():
        raise FileNotFoundError(espeak_missing())
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), text],
                       check=True, capture_output=True)
        return _read_wav(wav)


def recordings(min_words: int = 3, max_chars: int = 160) -> list[tuple[str, str]]:
    """[(wav path, its text)] of the installed English Asterisk prompts that are plain sentences; [] if not installed."""
    if not (ASTERISK_SOUNDS.is_dir() and ASTERISK_TEXTS.is_file()):
        return []
    out = []
    for line in gzip.decompress(ASTERISK_TEXTS.read_bytes()).decode("utf-8", "replace").splitlines():
        name, sep, text = line.partition(": ")
        text = re.sub(r"\s+", " ", text).strip()
        wav = ASTERISK_SOUNDS / f"{name.strip()}.wav"
        if (not sep or line.startswith(";") or "[" in text or "..." in text or len(text) > max_chars
                or len(text.split()) < min_words or not wav.is_file()):
            continue
        out.append((str(wav), text))
    return sorted(out)


def recording(path: str) -> np.ndarray:
    return _read_wav(Path(path))


def melody(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """(L,) float32: notes of a random scale with a few harmonics each, over a held bass note; peak 0.1-0.3."""
    t = np.arange(int(seconds * RATE)) / RATE
    out = np.zeros_like(t)
    root = 196.0 * 2 ** (rng.integers(0, 12) / 12)  # G3 .. F#4
    scale = SCALES[str(rng.choice(list(SCALES)))]
    beat = rng.uniform(0.2, 0.55)  # seconds per note
    harmonics = rng.uniform(0.2, 0.8, size=int(rng.integers(2, 6)))  # timbre: relative level of harmonics 2..
    decay = rng.uniform(1.5, 6.0)
    for start in np.arange(0.0, seconds, beat):
        step = scale[int(rng.integers(len(scale)))] + 12 * int(rng.integers(0, 2))
        f = root * 2 ** (step / 12)
        seg = (t >= start) & (t < start + 2 * beat)
        tt = t[seg] - start
        env = np.exp(-decay * tt) * np.minimum(tt / 0.01, 1)
        out[seg] += env * np.sin(2 * np.pi * f * tt)
        for h, level in enumerate(harmonics, start=2):
            out[seg] += level / h * env * np.sin(2 * np.pi * f * h * tt)
    out += 0.3 * np.sin(2 * np.pi * root / 2 * t) * np.minimum(t / 0.05, 1)  # the bass
    return (rng.uniform(0.1, 0.3) * out / np.abs(out).max()).astype(np.float32)


def noise(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """(L,) float32: brown or pink-ish noise at -35 to -22 dBFS RMS."""
    white = rng.standard_normal(int(seconds * RATE))
    if rng.random() < 0.5:
        shaped = np.cumsum(white)  # brown
        shaped -= np.convolve(shaped, np.ones(400) / 400, mode="same")  # drift removed
    else:  # pink-ish: sum of smoothed white noise at a few scales
        shaped = sum(np.convolve(white, np.ones(k) / np.sqrt(k), mode="same") for k in (1, 4, 16, 64))
    rms = 10 ** (rng.uniform(-35, -22) / 20)
    return (rms * shaped / (shaped.std() + 1e-9)).astype(np.float32)


def silence(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """(L,) float32: digital silence, or a hiss at -80 to -65 dBFS (under the -50 dBFS silence threshold)."""
    n = int(seconds * RATE)
    if rng.random() < 0.5:
        return np.zeros(n, np.float32)
    return (10 ** (rng.uniform(-80, -65) / 20) * rng.standard_normal(n)).astype(np.float32)
