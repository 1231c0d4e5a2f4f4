"""Answers the perception text supports: what the LLM reads beside a clip, checked against what the clip holds.

The model learns to answer from the perception text (vqa.data.perception), so a sound answer is taught only
where that text agrees with the generator (its "Sound:" line names the clip's sound) and a quote only where
Whisper's transcript is close to the sentence read in the right language; the quote is the transcript itself,
so the model learns to copy what it is given rather than to invent a sentence it cannot hear.
"""
from __future__ import annotations

import re
from difflib import SequenceMatcher

SOUND_KINDS = ("said", "content", "unsaid", "language", "speaking", "music", "silent", "hear", "describe")
QUOTE_KINDS = ("said", "content", "unsaid", "hear", "describe")
LANGUAGE_KINDS = ("language", "speaking")  # answers that name the language spoken
MIN_SIMILARITY = 0.6  # of the transcript to the sentence read (characters, after lower-casing)
EXPECTED = {"speech": "speech", "music": "music", "noise": "other sound", "silence": "silence",
            "no-audio": "no audio track"}

_SOUND = re.compile(r"^Sound: (.*)\.$", re.MULTILINE)
LOUDNESS = ("quiet", "moderate", "loud")
_LANGUAGE = re.compile(r"^Speech \(([a-z]+), \d+%\):$", re.MULTILINE)
_SEEN = re.compile(r"^Seen \([^)]*\): (.*)\.$", re.MULTILINE)
_CONCEPT = re.compile(r"\s*(.+?) (\d\.\d\d)$")
_SEGMENT = re.compile(r"^\[[\d.]+-[\d.]+ s\] (.*)$", re.MULTILINE)


def heard(text: str) -> dict:
    """What a perception text says: {"sounds": [labels], "language": code or None, "transcript": str}."""
    sound = _SOUND.search(text)
    language = _LANGUAGE.search(text)
    labels = sound.group(1).split(", ") if sound else []
    return {"sounds": [x for x in labels if not x.startswith(LOUDNESS)],
            "language": language.group(1) if language else None,
            "transcript": " ".join(s.strip() for s in _SEGMENT.findall(text))}


def seen(text: str) -> list[tuple[str, float]]:
    """The (concept, probability) pairs of a perception text's "Seen" line, most probable first ([] if none)."""
    line = _SEEN.search(text)
    if line is None:
        return []
    pairs = [_CONCEPT.match(part) for part in line.group(1).split(",")]
    return [(m.group(1), float(m.group(2))) for m in pairs if m]


def normalise(text: str) -> str:
    """Lower case, punctuation dropped, single spaces: how quotes and sentences are compared."""
    return " ".join(re.sub(r"[^\w ]+", "", text.lower()).split())


def similarity(a: str, b: str) -> float:
    return SequenceMatcher(None, normalise(a), normalise(b)).ratio()


def supported(clip: dict, text: str) -> tuple[tuple[str, ...], str | None]:
    """(question kinds to leave out, the transcript to quote or None) for a spoken clip and its perception text."""
    got = heard(text)
    if got["sounds"] != [EXPECTED[clip["sound"]]]:
        return SOUND_KINDS, None
    if clip["sound"] != "speech":
        return (), None
    if got["language"] != clip["language"]:
        return LANGUAGE_KINDS + QUOTE_KINDS, None
    if similarity(got["transcript"], clip["text"]) < MIN_SIMILARITY:
        return QUOTE_KINDS, None
    return (), got["transcript"]
