"""Write a spoken-clips dataset: DIR/clips/*.mp4, DIR/clips.jsonl (what each clip holds) and DIR/qa.jsonl.

    python -m vqa.spoken.generate --out data/spoken --clips 700 --seed 0 [--avsynth 0.3] [--perception-tokens 160]
        [--unfamiliar 0.25] [--templated 0.5] [--contrast]

Clip i depends only on (seed, i). A share of the clips (`--avsynth`) are plain AVSynth clips with their own
questions, written by vqa.avsynth.generate into DIR/avsynth/ and listed in the same qa.jsonl, so a model
trained on the folder keeps its AVSynth skills. With `--perception-tokens N` (default 160; 0: off) every
clip's perception text is computed by vqa.data.perception into the cache a bundle with that budget reads in
training, and a spoken clip's answers are kept only where that text supports them (vqa.spoken.check). A share
of the spoken clips (`--unfamiliar`) are marked unfamiliar: their perception text says that the picture is unlike
the training clips, as a served clip's does where the bundle's domain finds it so, and their answers take what is
seen from the image classifier alone (vqa.spoken.questions).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from . import audio
from .check import seen, supported
from .frames import gradient_frames, scene_frames, write_clip
from .pictures import draw_picture, missing_sources, picture_frames
from .questions import records
from .sentences import LANGUAGES, SENTENCES, VARIANTS, VOICES
from .templated import draw as template_draw

logger = logging.getLogger(__name__)

QA_FILE = "qa.jsonl"
CLIPS_FILE = "clips.jsonl"
AVSYNTH_DIR = "avsynth"
# shares of the spoken clips' sound; speech is split between espeak-ng and recordings where installed
SOUND_SHARES = {"speech": 0.55, "music": 0.15, "noise": 0.1, "silence": 0.12, "no-audio": 0.08}
RECORDED_SHARE = 0.2  # of speech clips, where the recordings are installed
ENGLISH_SHARE = 0.45  # of espeak-ng speech; the rest spread over the other languages
GRADIENT_SHARE = 0.15  # of pictures; the rest are AVSynth scenes without beeps, or real pictures where installed
PICTURE_SHARE = 0.5  # of pictures, real ones (vqa.spoken.pictures) where installed
LEAD_S = 0.4  # silence before the speech starts
PAUSE_S = (0.8, 1.6)  # between two sentences: Whisper writes them as two segments
TWO_SENTENCES = 0.3  # of espeak-ng speech clips, two sentences: answers have to read past the first segment
UNFAMILIAR = 0.25  # of spoken clips, marked unfamiliar
TEMPLATED = 0.5  # of espeak-ng speech clips, an English sentence with slots (vqa.spoken.templated)
LLM = "bundled:smollm2-135m-instruct"  # whose tokenizer counts the perception budget (the bundles' LLM)


def clip_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index, 7]))


def _speech(rng: np.random.Generator, recorded: list[tuple[str, str]], more: np.random.Generator,
            two_sentences: float, templated: float = 0.0, slots: np.random.Generator | None = None
            ) -> tuple[dict, np.ndarray]:
    """What is said and its sound. A share `two_sentences` of the espeak-ng clips say a second sentence of the
    same language after a pause, drawn from `more` so that the other draws stay as they were without it; a share
    `templated` say an English sentence with slots (vqa.spoken.templated), drawn from `slots` likewise."""
    if recorded and rng.random() < RECORDED_SHARE:
        path, text = recorded[int(rng.integers(len(recorded)))]
        return {"language": "en", "text": text, "voice": f"recording:{Path(path).stem}"}, audio.recording(path)
    others = [lang for lang in LANGUAGES if lang != "en"]
    language = "en" if rng.random() < ENGLISH_SHARE else str(rng.choice(others))
    text = SENTENCES[language][int(rng.integers(len(SENTENCES[language])))]
    voice = str(rng.choice(VOICES[language])) + str(rng.choice(VARIANTS))
    speed, pitch = int(rng.integers(120, 185)), int(rng.integers(25, 75))
    said = {}
    if slots is not None and slots.random() < templated:
        said["templated"] = template_draw(slots)
        language, text = "en", said["templated"]["text"]
        voice = str(slots.choice(VOICES["en"])) + str(slots.choice(VARIANTS))
    speech = audio.speak(text, voice, speed=speed, pitch=pitch)
    sentences = [text]
    if more.random() < two_sentences:
        second = str(more.choice([s for s in SENTENCES[language] if s != text]))
        pause = np.zeros(int(more.uniform(*PAUSE_S) * audio.RATE), np.float32)
        said_in_order = [(text, speech), (second, audio.speak(second, voice, speed=speed, pitch=pitch))]
        if "templated" in said and slots.random() < 0.5:  # the slots' sentence second: read past the first
            said_in_order.reverse()
        sentences = [sentence for sentence, _ in said_in_order]
        speech = np.concatenate([said_in_order[0][1], pause, said_in_order[1][1]])
    return ({"language": language, "text": " ".join(sentences), "sentences": sentences, "voice": voice, **said},
            speech * np.float32(rng.uniform(0.5, 1.0)))


def make_clip(out: Path, seed: int, index: int, recorded: list[tuple[str, str]], two_sentences: float = TWO_SENTENCES,
              unfamiliar: float = 0.0, templated: float = 0.0) -> dict:
    """Draw, write and describe spoken clip `index`: {"id", "video", "sound", "language", "text" (all that is
    said), "sentences" (espeak-ng's, one or two), "voice", "objects" (AVSynth-style, None for a gradient or a
    picture), "picture" (a real picture's path), "duration", "templated" (its slots, where templated)}."""
    rng = clip_rng(seed, index)
    sound = str(rng.choice(list(SOUND_SHARES), p=list(SOUND_SHARES.values())))
    clip = {"id": f"spk-{index:06d}", "video": f"clips/spk-{index:06d}.mp4", "sound": sound,
            "language": None, "text": None, "voice": None}
    if sound == "speech":
        said, speech = _speech(rng, recorded, clip_rng(seed, index + 2_000_000), two_sentences, templated,
                               clip_rng(seed, index + 5_000_000))
        clip.update(said)
        seconds = max(3.0, np.ceil((LEAD_S + len(speech) / audio.RATE + 0.4) * 2) / 2)
        track = np.zeros(int(seconds * audio.RATE), np.float32)
        lead = int(LEAD_S * audio.RATE)
        track[lead:lead + len(speech)] = speech[: len(track) - lead]
        if rng.random() < 0.3:  # a faint room hiss under some voices
            track += audio.silence(rng, seconds)[: len(track)]
    else:
        seconds = float(rng.choice([3.0, 4.0, 5.0, 6.0]))
        track = {"music": audio.melody, "noise": audio.noise, "silence": audio.silence,
                 "no-audio": lambda r, s: None}[sound](rng, seconds)
    draw = rng.random()
    picture = draw_picture(rng) if draw >= 1 - PICTURE_SHARE else None
    if draw < GRADIENT_SHARE:
        clip["objects"], frames = None, gradient_frames(rng, seconds)
    elif picture is not None:
        clip["objects"], clip["picture"], frames = None, picture, picture_frames(picture, rng, seconds)
    else:
        scene, frames = scene_frames(rng, seconds)
        clip["objects"] = scene["objects"]
    clip["duration"] = seconds
    if clip_rng(seed, index + 3_000_000).random() < unfamiliar:  # its own draw: the clip is the same either way
        clip["unfamiliar"] = True
    write_clip(out / clip["video"], frames, track)
    return clip


def perception(out: Path, videos: list[str], max_tokens: int, progress: bool, unfamiliar: set[str] = frozenset()
               ) -> dict[str, str]:
    """Every clip's perception text, through the cache training reads (vqa.data.perception)."""
    from vqa.data.perception import perception_texts
    from vqa.llm import load_llm

    _, tokenizer = load_llm(LLM)
    return perception_texts(out, videos, max_tokens, tokenizer, LLM, progress=progress, unfamiliar=unfamiliar)


def generate(out: str | Path, num_clips: int, seed: int, avsynth: float = 0.3, per_clip: int = 6,
             perception_tokens: int = 160, progress: bool = True, two_sentences: float = TWO_SENTENCES,
             unfamiliar: float = UNFAMILIAR, contrast: bool = False, templated: float = TEMPLATED) -> dict[str, int]:
    """Write `num_clips` clips (a share `avsynth` of them AVSynth) and qa.jsonl into `out`; returns record counts
    per type. `contrast`: each clip marked unfamiliar also comes unmarked, with its own questions and their
    familiar answers, and marked it holds back on every question about the objects: the line alone tells
    the two apart."""
    from tqdm import tqdm

    if num_clips < 1:
        raise ValueError(f"--clips must be at least 1, got {num_clips}")
    if not 0 <= avsynth < 1:
        raise ValueError(f"--avsynth must be a share in [0, 1), got {avsynth}")
    if not 0 <= two_sentences <= 1:
        raise ValueError(f"--two-sentences must be a share in [0, 1], got {two_sentences}")
    if not 0 <= unfamiliar <= 1:
        raise ValueError(f"--unfamiliar must be a share in [0, 1], got {unfamiliar}")
    if not 0 <= templated <= 1:
        raise ValueError(f"--templated must be a share in [0, 1], got {templated}")
    if audio.espeak_missing():
        raise FileNotFoundError(audio.espeak_missing())
    for notice in missing_sources():  # the recipe runs without them, on fewer kinds of picture
        logger.warning("pictures: %s", notice)
    out = Path(out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    n_avsynth = int(round(avsynth * num_clips))
    recorded = audio.recordings()
    qa, avsynth_qa = [], []
    clips = [make_clip(out, seed, index, recorded, two_sentences, unfamiliar, templated) for index in
             tqdm(range(num_clips - n_avsynth), desc="spoken clips", unit="clip", disable=not progress)]
    if n_avsynth:
        from vqa.avsynth.generate import generate as avsynth_generate

        avsynth_generate(out / AVSYNTH_DIR, n_avsynth, seed, workers=1, progress=progress)
        for line in (out / AVSYNTH_DIR / QA_FILE).read_text().splitlines():
            r = json.loads(line)
            avsynth_qa.append({**r, "id": f"avsynth-{r['id']}", "video": f"{AVSYNTH_DIR}/{r['video']}"})
    texts = perception(out, [c["video"] for c in clips] + [r["video"] for r in avsynth_qa], perception_tokens,
                       progress, {c["video"] for c in clips if c.get("unfamiliar")}) if perception_tokens else {}
    for index, clip in enumerate(clips):
        skip: tuple[str, ...] = ()
        if texts:
            skip, clip["quote"] = supported(clip, texts[clip["video"]])
            clip["seen"] = seen(texts[clip["video"]])
            clip["unsupported"] = list(skip)
        qa += records(clip, clip_rng(seed, index + 1_000_000), per_clip, skip, hold_back=contrast)
        if contrast and clip.get("unfamiliar"):
            plain = records({**clip, "unfamiliar": False}, clip_rng(seed, index + 4_000_000), per_clip, skip)
            qa += [{**r, "id": f"{r['id']}-plain"} for r in plain]
    qa += avsynth_qa
    order = np.random.default_rng(seed).permutation(len(qa))  # clips mixed, a clip's questions together
    (out / CLIPS_FILE).write_text("".join(json.dumps(c) + "\n" for c in clips))
    (out / QA_FILE).write_text("".join(json.dumps(qa[i]) + "\n" for i in order))
    counts: dict[str, int] = {}
    for r in qa:
        counts[r["type"]] = counts.get(r["type"], 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vqa.spoken.generate", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--clips", type=int, required=True, help="number of clips, AVSynth ones included")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--avsynth", type=float, default=0.3, help="share of plain AVSynth clips (default 0.3)")
    ap.add_argument("--per-clip", type=int, default=6, help="questions per spoken clip (default 6)")
    ap.add_argument("--perception-tokens", type=int, default=160,
                    help="perception budget of the bundle to train (0: no perception, answers unchecked)")
    ap.add_argument("--two-sentences", type=float, default=TWO_SENTENCES,
                    help=f"share of espeak-ng speech clips that say two sentences (default {TWO_SENTENCES}; "
                         "0 gives the clips of earlier versions of this recipe)")
    ap.add_argument("--unfamiliar", type=float, default=UNFAMILIAR,
                    help=f"share of spoken clips marked unfamiliar (default {UNFAMILIAR}; 0 gives the questions of "
                         "earlier versions of this recipe)")
    ap.add_argument("--templated", type=float, default=TEMPLATED,
                    help=f"share of espeak-ng speech clips that say an English sentence with a place, name, number, "
                         f"time or day, asked about (default {TEMPLATED}; 0 gives the clips of earlier versions of "
                         "this recipe)")
    ap.add_argument("--contrast", action="store_true",
                    help="each clip marked unfamiliar also comes unmarked with its familiar answers, and marked "
                         "it holds back on every question about the objects")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    try:
        counts = generate(args.out, args.clips, args.seed, args.avsynth, args.per_clip, args.perception_tokens,
                          two_sentences=args.two_sentences, unfamiliar=args.unfamiliar, contrast=args.contrast,
                          templated=args.templated)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.clips} clips and {sum(counts.values())} questions to {args.out} "
          f"in {time.perf_counter() - start:.0f} s")
    print("  ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
