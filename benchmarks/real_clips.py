"""Real-clip benchmark: what perception tells the LLM about real clips and espeak-ng speech, by kind.

    python benchmarks/real_clips.py [--media ../shared/media] [--model [BUNDLE]] [--decoding exact] [--timing]
                                    [--reuse]

Each line of real_clips.jsonl is a question about a clip in ../shared/media (by file name) or one
made here (espeak-ng speech, silence, a melody; see real_clips_media.py), with two regular
expressions (case-insensitive): `answer`, which the perception text matches where it holds the
answer (`^sound:` / `^seen` anchor it to that line; none for the `unknown` kind, questions nothing
in the clip answers, nor for `describe`, "Describe this clip." on real footage, where a right reply names
what is heard and invents none of AVSynth's shapes, beeps or object counts), and `reply`, which a right
reply of a bundle matches. The expected answers
were checked against MANIFEST.tsv's descriptions and the subtitle track, and against the text
espeak-ng reads. "perception" scores the text block the LLM is given (does it hold the answer?);
each `--model BUNDLE` (repeatable; alone, the default bundle) is asked with perception on, and
without it, in the lean decoder's fast mode unless `--decoding exact`. `--timing` prints the time a 10 s 720p clip with speech takes to be ready through the API (the
first --model's, else the default bundle's) with and without perception, the transcription real-time
factor on a minute of speech, and the peak RSS. `--reuse` checks, for the first --model (else the default
bundle), that a reply computed from a cached prompt prefix is the one computed whole: each question asked
twice, asked after another question about its clip, and asked as a chat's follow-up against the same chat
computed whole.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.real_clips_media import RATE, melody, speak, write_clip  # noqa: E402
from vqa.perception import perceive  # noqa: E402

KINDS = ("speech", "sound", "sight", "unknown", "describe")


def make_clip(item: dict, media: Path, folder: Path) -> Path | None:
    if "clip" in item:
        path = media / item["clip"]
        return path if path.is_file() else None
    path = folder / f"{item['id']}.mp4"
    if "speak" in item:
        return write_clip(path, speak(item["speak"]["text"], item["speak"]["voice"]))
    return write_clip(path, np.zeros(4 * RATE, np.float32) if item["make"] == "silence" else melody(6.0))


def right(answer: str, pattern: str) -> bool:
    return re.search(pattern, answer, re.IGNORECASE | re.MULTILINE) is not None


def timing(folder: Path, qa=None) -> None:
    """Clip ready (decode, perception, encode) through the API for a 10 s 1280x720 clip with speech,
    with and without perception; transcription speed on a minute of speech; peak RSS."""
    import resource

    from vqa import VideoQA
    from vqa.perception import speech

    text = ("This is a ten second test of the perception pipeline. The quick brown fox jumps over the lazy dog, "
            "and then the dog sleeps in the sun.")
    audio = speak(text, "en")[: 10 * RATE]
    path = write_clip(folder / "720p.mp4", audio, seconds=10.0, size=(1280, 720), fps=30, color=(90, 120, 60))
    qa = qa or VideoQA.from_pretrained(perception=True)
    qa.prepare(path)  # warm: models load, caches, librosa's first call
    ready = {}
    for perception in (True, False):
        qa.perception, runs = perception, []
        for _ in range(3):
            qa._cache.clear()
            speech.forget()  # a new clip each time: Whisper keeps its last encoder output
            start = time.perf_counter()
            prepared = qa.prepare(path)
            runs.append((time.perf_counter() - start, prepared.perception))
        ready[perception] = sorted(runs, key=lambda r: r[0])[1]
    (total, p), (bare, _) = ready[True], ready[False]
    secs = p.seconds
    print(f"clip ready, 10 s 720p clip with speech ({Path(str(qa.source)).name}), median of 3: {total:.2f} s with perception "
          f"[speech {secs.get('speech', 0):.2f} s, sight {secs.get('sight', 0):.2f} s, sound {secs.get('sound', 0):.2f} s], "
          f"{bare:.2f} s without")
    sentences = [text, "The library closes at nine tonight, so please return your books before then.",
                 "Welcome to the museum. The new exhibition about the ocean opens on the second floor."]
    long = np.concatenate([speak(sentences[k % 3], "en") for k in range(12)])[: 60 * RATE]
    marks = []
    start = time.perf_counter()
    transcript = speech.transcribe(long, progress=lambda done, total: marks.append(done))
    took = time.perf_counter() - start
    print(f"transcription of {len(long) / RATE:.0f} s of speech: {took:.1f} s = real-time factor {took / (len(long) / RATE):.3f}, "
          f"{len(transcript.segments)} segments, {len(marks)} progress calls")
    print(f"peak RSS with everything loaded: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def reuse(items: list[dict], media: Path, folder: Path, qa) -> None:
    """Replies from cached prefixes against the same prompts computed whole (see the module's docstring)."""
    from vqa.api import PrefixPool

    pool = qa.prefixes.max_bytes
    same = pairs = 0
    for item in items:
        path = make_clip(item, media, folder)
        if path is None:
            continue
        q = item["question"]
        qa.prefixes = PrefixPool(pool)
        whole = qa.ask(path, q, max_new_tokens=48)
        again = qa.ask(path, q, max_new_tokens=48)  # all but its last token cached
        qa.prefixes = PrefixPool(pool)
        qa.ask(path, "Describe this clip.", max_new_tokens=8)
        after = qa.ask(path, q, max_new_tokens=48)  # the clip's prefix cached, the question new
        chat = qa.chat(path)
        chat.ask("What can you hear?", max_new_tokens=24)
        follow = chat.ask(q, max_new_tokens=48)  # only its own tokens computed
        qa.prefixes = PrefixPool(0)
        fresh = qa.ask(path, q, history=chat.history[:2], max_new_tokens=48)
        for a, b in ((whole, again), (whole, after), (follow, fresh)):
            same, pairs = same + (a == b), pairs + 1
            if a != b:
                print(f"reuse {item['id']}: {a[:60]!r} against {b[:60]!r}")
    qa.prefixes = PrefixPool(pool)
    print(f"replies from a cached prefix equal to the same prompt computed whole: {same} of {pairs} pairs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--media", type=Path, default=ROOT.parent / "shared" / "media")
    ap.add_argument("--model", nargs="?", const="", action="append", default=[], metavar="BUNDLE",
                    help="also score a bundle's replies, with and without perception (alone: the default bundle); "
                         "repeat to compare bundles")
    ap.add_argument("--decoding", choices=("fast", "exact"), default="fast", help="the lean decoder's mode")
    ap.add_argument("--timing", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="cached prefixes against prompts computed whole")
    args = ap.parse_args()
    items = [json.loads(line) for line in (ROOT / "benchmarks" / "real_clips.jsonl").read_text().splitlines() if line.strip()]
    models = []  # (row name, VideoQA)
    for bundle in args.model:
        from vqa import VideoQA

        qa = VideoQA.from_pretrained(bundle or None, perception=True)
        qa.model.decoding = args.decoding
        name = Path(bundle).name if bundle else "default"
        models += [(f"{name}+perception", qa), (name, VideoQA(qa.model, source=qa.source, perception=False))]
    scores: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    with tempfile.TemporaryDirectory() as tmp:
        for item in items:
            path = make_clip(item, args.media, Path(tmp))
            if path is None:
                print(f"skip {item['id']}: {item['clip']} is not in {args.media}")
                continue
            line = f"{item['kind']:7s} {item['id']:18s}"
            if item["answer"] is not None:
                ok = right(perceive(path).to_text(max_tokens=400), item["answer"])
                scores["perception"][item["kind"]].append(ok)
                line += f" perception {'ok' if ok else 'NO'}"
            for name, model in models:
                reply = model.ask(path, item["question"], max_new_tokens=48)
                ok = right(reply, item["reply"])
                scores[name][item["kind"]].append(ok)
                line += f"\n    {'ok' if ok else 'NO'} {name}: {reply[:160]!r}"
            print(line)
        if args.timing:
            timing(Path(tmp), models[0][1] if models else None)
        if args.reuse:
            from vqa import VideoQA

            reuse(items, args.media, Path(tmp), models[0][1] if models else VideoQA.from_pretrained(perception=True))
    print("\naccuracy by kind (right / questions)")
    width = max([len(name) for name in scores] + [18])
    print(f"{'scored':{width}s}" + "".join(f"{k:>14s}" for k in KINDS) + f"{'all':>14s}")
    for name, by_kind in scores.items():
        cells = [by_kind.get(k, []) for k in KINDS] + [[x for k in KINDS for x in by_kind.get(k, [])]]
        print(f"{name:{width}s}" + "".join(f"{sum(c):>8d}/{len(c):<2d} {100 * sum(c) / max(len(c), 1):3.0f}%"[-14:] for c in cells))


if __name__ == "__main__":
    main()
