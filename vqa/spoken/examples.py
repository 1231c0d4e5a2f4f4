"""Example clips for the web chat of a bundle trained on spoken clips: speech, music and a picture, then AVSynth.

The spoken examples are small files committed beside this module (EXAMPLES_DIR, under 1 MB in all), written
once by `python -m vqa.spoken.examples` with espeak-ng and clip art (Debian's `openclipart-png`, public
domain), so the page shows them without either installed. AVSynth examples follow (vqa.avsynth.examples).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

EXAMPLES_DIR = Path(__file__).with_name("examples")
INDEX = "examples.json"
CLIPART = Path("/usr/share/openclipart/png")
# (file, spoken text and espeak-ng voice or a melody, picture under CLIPART or None for a gradient, question)
EXAMPLES = [
    ("museum.mp4", ("Welcome to the museum. The tour starts in ten minutes at the main entrance.", "en"),
     "animals/emperor_penguin_ralf_ste_01.png", "What does the speaker say?"),
    ("tren.mp4", ("Buenos días. El tren a Madrid sale a las ocho de la mañana.", "es"), None,
     "Which language is spoken?"),
    ("violin.mp4", None, "recreation/music/violin_colour_ganson.png", "Is there music?"),
]
NUM_AVSYNTH = 2


def spoken_examples(folder: Path = EXAMPLES_DIR) -> list[tuple[Path, str]]:
    """The committed (clip, question) pairs that are present."""
    try:
        rows = json.loads((folder / INDEX).read_text())
    except (OSError, ValueError):
        return []
    return [(folder / r["video"], r["question"]) for r in rows if (folder / r["video"]).is_file()]


def example_clips() -> list[tuple[Path, str]]:
    """The page's examples: the spoken ones, then a few AVSynth clips (generated on first use)."""
    from vqa.avsynth.examples import example_clips as avsynth_examples

    return spoken_examples() + avsynth_examples(n=NUM_AVSYNTH)


def write_examples(folder: Path = EXAMPLES_DIR, seed: int = 0) -> list[Path]:
    """Write the spoken example clips and their index into `folder` (needs espeak-ng and openclipart-png)."""
    from . import audio
    from .frames import gradient_frames, write_clip
    from .pictures import picture_frames

    if audio.espeak_missing():
        raise FileNotFoundError(audio.espeak_missing())
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written, index = [], []
    for name, said, picture, question in EXAMPLES:
        if said is None:
            track = audio.melody(rng, 5.0)
        else:
            speech = audio.speak(*said)
            track = np.zeros(int((len(speech) / audio.RATE + 1.0) * audio.RATE), np.float32)
            track[int(0.4 * audio.RATE):int(0.4 * audio.RATE) + len(speech)] = speech
        seconds = len(track) / audio.RATE
        frames = gradient_frames(rng, seconds) if picture is None else picture_frames(str(CLIPART / picture), rng, seconds)
        written.append(write_clip(folder / name, frames, track))
        index.append({"video": name, "question": question})
    (folder / INDEX).write_text(json.dumps(index, indent=1, ensure_ascii=False) + "\n")
    return written


if __name__ == "__main__":
    paths = write_examples()
    print("\n".join(f"{p} {p.stat().st_size // 1024} KB" for p in paths))
    sys.exit(0)
