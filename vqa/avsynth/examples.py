"""Example clips for the web chat: a few AVSynth clips, generated once into the user's cache.

Nothing is committed: the first start runs the AVSynth generator (`vqa synth`) into a temporary
folder, keeps the clips (under MAX_BYTES in all) and one question for each, then moves them into
place. If generation fails the app starts without examples and says why in its log.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from filelock import FileLock

from .describe import DESCRIBE_QUESTIONS

log = logging.getLogger(__name__)

NUM_EXAMPLES = 4
SEED = 20240  # away from training and test seeds, so examples are fresh clips
MAX_BYTES = 2 * 1024 * 1024
TIMEOUT_S = 300
INDEX = "examples.json"
FALLBACK_QUESTION = "What color is the object that beeps?"
# one question family per example, in turn, so the examples show seeing, hearing and both;
# "describe" asks for the whole clip in a sentence (the default adapter is trained on it)
FAMILIES = ["source_color", "count_beeps", "motion_of", "describe", "shape_of", "pitch", "count_objects"]


def cache_dir() -> Path:
    """vqa's cache folder, where the converted LLM also lives ($VQA_CACHE_DIR, else ~/.cache/vqa)."""
    from ..llm import cache_root

    return cache_root()


def example_clips(folder: str | Path | None = None, n: int = NUM_EXAMPLES, seed: int = SEED) -> list[tuple[Path, str]]:
    """(clip, question) pairs, generated on first use; [] where generation is not possible."""
    folder = Path(folder) if folder is not None else cache_dir() / "examples"
    found = _read_index(folder)
    if len(found) >= n:
        return found[:n]
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder) + ".lock", timeout=TIMEOUT_S):  # two servers starting at once generate once
            found = _read_index(folder)
            if len(found) < n:
                _generate(folder, n, seed)
                found = _read_index(folder)
    except Exception as e:  # examples are a convenience: never stop the app for them
        log.warning("no example clips: generating them into %s failed: %s", folder, e)
        return []
    return found[:n]


def _generate(folder: Path, n: int, seed: int) -> None:
    with tempfile.TemporaryDirectory(prefix="vqa-examples-", dir=folder.parent) as tmp:
        out = Path(tmp) / "synth"
        cmd = [sys.executable, "-m", "vqa.cli", "synth", "--out", str(out), "--clips", str(n), "--seed", str(seed),
               "--workers", "1"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"`vqa synth` exited with {done.returncode}: {' / '.join(tail)}")
        questions = _questions(out / "qa.jsonl")
        clips = sorted((out / "clips").glob("*.mp4"))
        if not clips:
            raise RuntimeError(f"`vqa synth` wrote no clips under {out / 'clips'}")
        staged = Path(tmp) / "examples"
        staged.mkdir()
        index, total = [], 0
        for i, clip in enumerate(clips[:n]):
            size = clip.stat().st_size
            if total + size > MAX_BYTES:
                break
            total += size
            shutil.copy2(clip, staged / clip.name)
            index.append({"video": clip.name, "question": _pick(questions.get(clip.name, {}), i)})
        (staged / INDEX).write_text(json.dumps(index, indent=1) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staged, folder)  # readers see the old folder or the whole new one


def _questions(path: Path) -> dict[str, dict[str, str]]:
    """Clip file name -> {family: question} from the generator's qa.jsonl ({} where absent or unreadable)."""
    questions: dict[str, dict[str, str]] = {}
    if not path.is_file():
        return questions
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            first = next(t["value"] for t in row["conversations"] if t["from"] == "human")
            questions.setdefault(Path(row["video"]).name, {}).setdefault(
                row.get("family", ""), first.replace("<video>", "").strip())
        except (ValueError, KeyError, TypeError, StopIteration, AttributeError):
            continue
    return questions


def _pick(by_family: dict[str, str], i: int) -> str:
    """The i-th example's question: its turn's family where the clip has one, else any."""
    for family in FAMILIES[i % len(FAMILIES):] + FAMILIES[:i % len(FAMILIES)]:
        if family == "describe":
            return DESCRIBE_QUESTIONS[0]
        if family in by_family:
            return by_family[family]
    return next(iter(by_family.values()), FALLBACK_QUESTION)


def _read_index(folder: Path) -> list[tuple[Path, str]]:
    try:
        rows = json.loads((folder / INDEX).read_text())
        pairs = [(folder / r["video"], str(r["question"])) for r in rows]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [(p, q) for p, q in pairs if p.is_file()]
