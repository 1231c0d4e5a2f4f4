"""Whisper on short windows against whole 30 s windows: word error, language and time on short speech.

    python benchmarks/speech_windows.py [--prompts 60] [--seed 0]

vqa.perception.speech encodes only a window's sound plus a margin (`short_window`) where a clip has at
least SHORT_SPEECH seconds of speech; this compares that with encoding the whole 30 s window always
(what faster-whisper does) on recorded speech with known text:
Asterisk's English prompts (Debian's asterisk-core-sounds-en-wav, CC-BY-SA 3.0, texts from
asterisk-core-sounds-en; skipped when not installed), espeak-ng sentences and, where ../shared/media is
present, the NASA narration. Word error is over the clips with a known text.
"""
from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.real_clips_media import espeak_missing, speak  # noqa: E402
from vqa.perception import speech  # noqa: E402
from vqa.spoken.check import normalise  # noqa: E402

ASTERISK = Path("/usr/share/asterisk/sounds/en")
ASTERISK_TEXT = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
SENTENCES = ["Please open the red door and feed the cat.",
             "This is a ten second test of the perception pipeline. The quick brown fox jumps over the lazy dog.",
             "The library closes at nine tonight, so please return your books before then.",
             "Welcome to the museum. The new exhibition about the ocean opens on the second floor."]


def clips(prompts: int, seed: int) -> dict[str, tuple[np.ndarray, str | None]]:
    import librosa
    import soundfile as sf

    out = {}
    if ASTERISK.is_dir() and ASTERISK_TEXT.is_file():
        texts = dict(line.split(":", 1) for line in gzip.open(ASTERISK_TEXT, "rt", errors="ignore") if ":" in line)
        texts = {k.strip(): v.strip() for k, v in texts.items()}
        wavs = sorted(p for p in ASTERISK.glob("*.wav") if p.stem in texts)
        for path in np.random.default_rng(seed).choice(wavs, min(prompts, len(wavs)), replace=False):
            audio, rate = sf.read(path, dtype="float32")
            out[path.stem] = (librosa.resample(audio, orig_sr=rate, target_sr=speech.SAMPLE_RATE), texts[path.stem])
    else:
        print(f"skip the Asterisk prompts: {ASTERISK} or {ASTERISK_TEXT} is missing")
    if espeak_missing() is None:
        for k, text in enumerate(SENTENCES):
            out[f"espeak-{k}"] = (speak(text, "en"), text)
    nasa = ROOT.parent / "shared" / "media" / "nasa_13013.mp4"
    if nasa.is_file():
        from vqa.media import load_clip

        out["nasa"] = (load_clip(nasa, num_frames=2, size=32).audio, None)
    return out


def words(text: str) -> list[str]:
    """Compared as vqa compares quotes (vqa.spoken.check.normalise), with Whisper's "10" read as "ten"."""
    return normalise(text.replace("10", "ten")).split()


def errors(ref: str, hyp: str) -> tuple[int, int]:
    """(word edits, reference words)."""
    r, h = words(ref), words(hyp)
    d = np.arange(len(h) + 1)
    for i in range(1, len(r) + 1):
        prev, d[0] = d.copy(), i
        for j in range(1, len(h) + 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (r[i - 1] != h[j - 1]))
    return int(d[-1]), len(r)


def run(data: dict, whole: bool, short_speech: float | None = None) -> tuple[dict, float]:
    """Transcripts and seconds: whole windows always, or as vqa runs them (with `short_speech` in place of
    speech.SHORT_SPEECH where given)."""
    speech.load_model.cache_clear()
    saved = speech.MIN_WINDOW, speech.SHORT_SPEECH
    speech.MIN_WINDOW = 3000 if whole else speech.MIN_WINDOW
    speech.SHORT_SPEECH = speech.SHORT_SPEECH if short_speech is None else short_speech
    try:
        speech.transcribe(next(iter(data.values()))[0])  # warm
        start, out = time.perf_counter(), {}
        for name, (audio, _) in data.items():
            t = speech.transcribe(np.ascontiguousarray(audio, dtype=np.float32))
            out[name] = (t.text, t.language)
        return out, time.perf_counter() - start
    finally:
        speech.MIN_WINDOW, speech.SHORT_SPEECH = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = clips(args.prompts, args.seed)
    seconds = sum(len(a) for a, _ in data.values()) / speech.SAMPLE_RATE
    results = {name: run(data, whole, short) for name, whole, short in (
        ("whole 30 s windows", True, None), ("as vqa runs it", False, None),
        ("short windows for short speech too", False, 0.0))}
    print(f"{len(data)} clips, {seconds:.0f} s of speech\n")
    print("| windows | word error | seconds | same text as whole | same language as whole |")
    print("| --- | --- | --- | --- | --- |")
    base = results["whole 30 s windows"][0]
    for name, (out, took) in results.items():
        edits, total = map(sum, zip(*(errors(text, out[k][0]) for k, (_, text) in data.items() if text)))
        same = sum(out[k][0] == base[k][0] for k in data)
        lang = sum(out[k][1] == base[k][1] for k in data)
        n = len(data)
        print(f"| {name} | {edits / total:.3f} ({edits}/{total}) | {took:.1f} | {same}/{n} | {lang}/{n} |")
    for name, (out, _) in list(results.items())[1:]:
        for k in data:
            if out[k][1] != base[k][1]:
                print(f"language differs on {k}: whole windows {base[k][1]}, {name} {out[k][1]}")


if __name__ == "__main__":
    main()
