"""Pretrained perception beside the learned clip tokens: what is said, what is seen, what the sound is like.

One module per sense, each optional: `speech` (Whisper base, VAD-gated transcript with times and
language), `sight` (EfficientNet-Lite0 ImageNet concepts over time; whether the picture looks photographic),
`sound` (silence, loudness, speech, music). A sense whose weights package is not installed is off, with a
one-line notice.

    p = perceive("clip.mp4")
    p.to_text(max_tokens=160)   # the few lines the LLM reads after the clip tokens
"""
from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vqa.media import Clip, load_clip

from . import sight, sound, speech
from .sight import Concepts
from .sound import Sound
from .speech import Transcript

logger = logging.getLogger(__name__)

SENSES = ("speech", "sight", "sound")
SIGHT_FRAMES = 8
HEADER = "What pretrained models perceived (they can be wrong):"
# said where a bundle's domain finds the clip unlike its training clips (vqa.domain), for bundles that learned it
UNFAMILIAR = "Unfamiliar: this picture is unlike the clips the model was trained on, so its clip tokens can mislead."
_noticed: set[str] = set()


@dataclass
class Perception:
    transcript: Transcript | None  # None when speech is off
    concepts: Concepts | None  # None when sight is off
    sound: Sound | None  # None when not asked for
    duration: float  # seconds of the clip
    notices: list[str] = field(default_factory=list)  # why a sense is off
    seconds: dict[str, float] = field(default_factory=dict)  # time each sense took

    def to_text(self, max_tokens: int = 160, count: Callable[[str], int] | None = None,
                unfamiliar: bool = False) -> str:
        """A short text block for the LLM within `max_tokens` (counted by `count`, else ~4 characters a token).

        Sound and sight come first (with the UNFAMILIAR line where `unfamiliar`); the transcript follows in
        time order and is cut, with the cut said, where the budget ends."""
        count = count or (lambda text: -(-len(text) // 4))
        lines = [HEADER]
        if self.sound is not None:
            s = self.sound
            level = "" if s.silent else f", {s.loudness} ({s.level_db:.0f} dBFS)"
            lines.append(f"Sound: {', '.join(s.labels)}{level}.")
        if self.concepts is not None:
            lines.append(f"Picture: looks {self.concepts.looks}.")
            seen = ", ".join(f"{c.name} {c.prob:.2f}" for c in self.concepts.concepts)
            lines.append(f"Seen (ImageNet classes, mean probability): {seen or 'nothing with confidence'}.")
        if unfamiliar:
            lines.append(UNFAMILIAR)
        no_track = self.sound is not None and not self.sound.has_audio
        if self.transcript is not None and not no_track:
            t = self.transcript
            if t.segments:
                lines.append(f"Speech ({t.language}, {t.language_probability:.0%}):")
            else:
                lines.append("Speech: no words heard.")
        text = "\n".join(lines)
        if unfamiliar and count(text) > max_tokens:  # a budget that fits the summary alone keeps working
            lines.remove(UNFAMILIAR)
            text = "\n".join(lines)
        if count(text) > max_tokens:
            raise ValueError(f"max_tokens={max_tokens} is too small for the perception summary ({count(text)} tokens)")
        if self.transcript is None or no_track:
            return text
        for k, seg in enumerate(self.transcript.segments):
            line = f"{_stamp(seg)} {seg.text}"
            last = k + 1 == len(self.transcript.segments)
            cut = _cut_note(f"at {seg.start:.1f} s", self.duration)
            if count(f"{text}\n{line}" + ("" if last else f"\n{cut}")) > max_tokens:
                return _cut_within(text, seg, self.duration, max_tokens, count)
            text = f"{text}\n{line}"
        return text


def _cut_within(text: str, seg, duration: float, max_tokens: int, count: Callable[[str], int]) -> str:
    """`text` with as many of the first words of `seg` as fit, and the cut said (a long segment still shows words)."""
    words = seg.text.split()
    cut = _cut_note(f"within {seg.start:.1f}-{seg.end:.1f} s", duration)
    partial = lambda n: f"{text}\n{_stamp(seg)} {' '.join(words[:n])} ...\n{cut}"  # noqa: E731
    lo, hi = 0, len(words) - 1  # the most words that fit, by bisection: count() may be a tokenizer
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(partial(mid)) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    if lo:
        return partial(lo)
    cut = _cut_note(f"at {seg.start:.1f} s", duration)
    return f"{text}\n{cut}" if count(f"{text}\n{cut}") <= max_tokens else text


def _stamp(seg) -> str:
    return f"[{seg.start:.1f}-{seg.end:.1f} s]"


def _cut_note(where: str, duration: float) -> str:
    return f"(transcript cut {where} of {duration:.1f} s: the rest is not shown)"


def available() -> dict[str, str | None]:
    """Each sense and why it is off (None when it can run)."""
    return {"speech": speech.missing(), "sight": sight.missing(), "sound": None}


def perceive(
    video: str | Path | Clip,
    clip: Clip | None = None,
    senses: tuple[str, ...] = SENSES,
    progress: Callable[[float, float], None] | None = None,
) -> Perception:
    """Run the installed senses over a clip. `video`: a path or a decoded Clip; `clip`: the clip already
    decoded from that path (its audio is reused; its frames too when they are 224 px or larger)."""
    unknown = set(senses) - set(SENSES)
    if unknown:
        raise ValueError(f"unknown senses {sorted(unknown)}; choose from {list(SENSES)}")
    if isinstance(video, Clip):
        clip, path = video, None
    else:
        path = Path(video)
        clip = clip or load_clip(path, num_frames=SIGHT_FRAMES, size=sight.SIZE)
    if clip.sample_rate != speech.SAMPLE_RATE:
        raise ValueError(f"perception needs 16 kHz audio, the clip has {clip.sample_rate} Hz")
    off = {name: why for name, why in available().items() if name in senses and why}
    for why in off.values():
        if why not in _noticed:  # once per process
            logger.warning(why)
            _noticed.add(why)
    result = Perception(None, None, None, clip.duration or len(clip.audio) / clip.sample_rate, list(off.values()))
    tonal, tonal_s = None, 0.0
    # speech and the sound's spectrum beside sight: Whisper's decoding and the spectrum's median filters
    # (one thread each) leave cores idle
    with ThreadPoolExecutor(max_workers=2) as pool:
        heard = spectrum = None
        if "speech" in senses and "speech" not in off:
            # in the caller's context: a web page's progress bar is found through context variables
            heard = pool.submit(contextvars.copy_context().run, _timed, _transcribe, clip, progress)
        if "sound" in senses and not sound.silent(clip.audio, clip.sample_rate, clip.has_audio):
            spectrum = pool.submit(_timed, sound.tonal_share, clip.audio)
        if "sight" in senses and "sight" not in off:
            result.concepts, result.seconds["sight"] = _timed(lambda: sight.classify(*_sight_frames(clip, path)))
        if spectrum is not None:
            tonal, tonal_s = spectrum.result()
        if heard is not None:
            result.transcript, result.seconds["speech"] = heard.result()
    if "sound" in senses:
        result.sound, seconds = _timed(
            sound.describe, clip.audio, clip.sample_rate, clip.has_audio, result.transcript, tonal)
        result.seconds["sound"] = round(seconds + tonal_s, 3)
    return result


def picture_embedding(path: str | Path) -> tuple[np.ndarray, bool]:
    """What the image network sees in a clip file, as `perceive` computes it (`Concepts.embedding`), and whether
    the picture looks photographic (`Concepts.photographic`)."""
    clip = load_clip(Path(path), num_frames=SIGHT_FRAMES, size=sight.SIZE, audio=False)
    concepts = sight.classify(clip.frames, clip.timestamps)
    return concepts.embedding, concepts.photographic


def _timed(fn, *args):
    """fn(*args) and the seconds it took."""
    clock = time.perf_counter()
    return fn(*args), round(time.perf_counter() - clock, 3)


def _transcribe(clip: Clip, progress) -> Transcript:
    if not clip.has_audio:
        return Transcript([], None, 0.0, [])
    return speech.transcribe(clip.audio, progress=progress)


def _sight_frames(clip: Clip, path: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Frames at the network's size: the clip's own when large enough, else decoded again from the file."""
    if clip.frames.shape[1] >= sight.SIZE or path is None:
        frames = clip.frames
        if len(frames) > SIGHT_FRAMES:  # evenly spaced subset
            pick = np.linspace(0, len(frames) - 1, SIGHT_FRAMES).round().astype(int)
            return frames[pick], clip.timestamps[pick]
        return frames, clip.timestamps
    again = load_clip(path, num_frames=SIGHT_FRAMES, size=sight.SIZE, audio=False)
    return again.frames, again.timestamps
