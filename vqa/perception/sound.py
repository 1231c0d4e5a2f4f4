"""What the sound is like: silence, loudness, speech and music, from simple measured cues.

- level: RMS of 50 ms frames in dBFS (0 dBFS = a full-scale square wave); the clip is silent when
  95 % of its frames are under `SILENT_DB`. Loudness words: quiet under -40 dBFS, loud over -16.
- speech: words that Whisper decoded inside the stretches Silero VAD calls voice (speech.py); the
  VAD alone also fires on music (a 1 s orchestral clip is all "voice" to it), the decoder does not.
- music: Whisper wrote a music tag ("[Music]", "♪") for a voiced stretch, or the sound is mostly
  harmonic: the harmonic share of the spectrogram's energy after harmonic/percussive separation
  (librosa's HPSS), over the audible frames, is at least `TONAL_MUSIC` while speech covers under
  half the clip. Measured on the real clips (benchmarks/real_clips.py prints it): music 0.76
  (chaplin.mp4) and 0.94 (big_buck_bunny_432_433.webm), a synthetic melody 0.96; narration 0.49
  (nasa_13013.mp4), room sound with voices 0.28, espeak-ng speech 0.19-0.21. A held pure tone is
  harmonic too, and counts as music.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .speech import Transcript

FRAME_S = 0.05
SILENT_DB = -50.0
FLOOR_DB = -120.0
QUIET_DB, LOUD_DB = -40.0, -16.0
TONAL_MUSIC = 0.6
N_FFT, HOP = 1024, 512


@dataclass
class Sound:
    has_audio: bool
    silent: bool
    level_db: float  # mean power of the audible frames, dBFS (FLOOR_DB when none)
    peak_db: float  # loudest 50 ms frame, dBFS
    speech: bool | None  # None when speech recognition is off
    speech_s: float  # seconds covered by decoded words
    music: bool
    tonal: float  # harmonic share of the energy, 0..1
    music_cue: str  # what said music ("" when none)

    @property
    def labels(self) -> list[str]:
        if not self.has_audio:
            return ["no audio track"]
        if self.silent:
            return ["silence"]
        return [name for name, on in (("speech", self.speech), ("music", self.music)) if on] or ["other sound"]

    @property
    def loudness(self) -> str:
        return "silent" if self.silent else "quiet" if self.level_db < QUIET_DB else "loud" if self.level_db > LOUD_DB else "moderate"


def frame_db(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """(L,) -> (F,) RMS level of each 50 ms frame in dBFS (full-scale sine: -3 dB)."""
    n = max(int(FRAME_S * sample_rate), 1)
    usable = len(audio) // n * n
    if usable == 0:
        return np.full(1, FLOOR_DB)
    frames = audio[:usable].astype(np.float64).reshape(-1, n)  # (F, n)
    rms = np.sqrt((frames ** 2).mean(1))
    return 20 * np.log10(np.maximum(rms, 1e-6))  # digital silence floors at -120 dBFS


def tonal_share(audio: np.ndarray, audible: float = SILENT_DB) -> float:
    """Harmonic share of the energy in frames above `audible` dBFS (HPSS), 0 when none is audible."""
    import librosa

    power = np.abs(librosa.stft(audio.astype(np.float32), n_fft=N_FFT, hop_length=HOP)) ** 2  # (freq, F)
    loud = 10 * np.log10(power.sum(0) / (N_FFT ** 2 / 8) + 1e-20) > audible  # mean-square level per frame
    if not loud.any():
        return 0.0
    harmonic, _ = librosa.decompose.hpss(power)
    return float(harmonic[:, loud].sum() / (power[:, loud].sum() + 1e-20))


def silent(audio: np.ndarray, sample_rate: int, has_audio: bool) -> bool:
    """Whether the clip is silent as `describe` judges it (no track, or 95 % of its frames under SILENT_DB)."""
    return not has_audio or _quiet(frame_db(audio, sample_rate))


def _quiet(levels: np.ndarray) -> bool:
    return bool(np.percentile(levels, 95) < SILENT_DB)


def describe(audio: np.ndarray, sample_rate: int, has_audio: bool, transcript: Transcript | None,
             tonal: float | None = None) -> Sound:
    """The sound of a clip. audio: (L,) float32 mono; transcript: speech.transcribe's, None when speech is off;
    tonal: `tonal_share(audio)` where it was computed already (beside sight and the transcription)."""
    levels = frame_db(audio, sample_rate) if has_audio else np.full(1, FLOOR_DB)
    is_silent = not has_audio or _quiet(levels)
    audible = levels[levels >= SILENT_DB]
    level = float(10 * np.log10(np.mean(10 ** (audible / 10)))) if len(audible) else FLOOR_DB
    peak = float(levels.max())
    if is_silent:
        return Sound(has_audio, True, level, peak, None if transcript is None else False, 0.0, False, 0.0, "")
    speech_s = 0.0 if transcript is None else sum(s.end - s.start for s in transcript.segments)
    duration = len(audio) / sample_rate
    tags = [] if transcript is None else [e.text for e in transcript.events if "music" in e.text.lower() or "♪" in e.text]
    tonal = tonal_share(audio) if tonal is None else tonal
    if tags:
        cue = f"Whisper wrote {tags[0]}"
    elif tonal >= TONAL_MUSIC and speech_s < 0.5 * duration:
        cue = f"harmonic share {tonal:.2f}"
    else:
        cue = ""
    speech = None if transcript is None else bool(transcript.segments)
    return Sound(True, False, round(level, 1), round(peak, 1), speech, round(speech_s, 2), bool(cue), round(tonal, 3), cue)
