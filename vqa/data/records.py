"""Reading a dataset: a folder with `qa.jsonl`, one LLaVA-style conversation a line.

    {"video": "clips/x.mp4", "conversations": [{"from": "human", "value": "<video>\\nQ"},
                                               {"from": "gpt", "value": "A"}, ...],
     "id": "optional", "type": "optional question type to report by",
     "unfamiliar": "optional true: the clip's perception text says it is unlike the training clips"}

`video` is relative to the folder. Every record keeps its line number (`line`), so a problem with
it (a malformed line, a missing or undecodable clip) is reported where the user can find it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..prompt import normalize_messages

QA_FILE = "qa.jsonl"
# what a folder of a user's own clips usually holds, to show them a first line of qa.jsonl
CLIP_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".gif", ".3gp", ".mpg", ".mpeg", ".wmv", ".flv")


class DatasetError(FileNotFoundError):
    """A dataset folder, or its qa.jsonl, is not there: the message says what to write."""


def no_dataset(folder: Path) -> str:
    """Why `folder` is not a dataset and how to make it one, naming clips it already holds."""
    if not folder.is_dir():
        return f"dataset folder {folder} does not exist"
    clips = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in CLIP_SUFFIXES)
    example = clips[0] if clips else "clips/dog.mp4"
    turns = [{"from": "human", "value": "<video>\nWhat animal can you hear?"},
             {"from": "gpt", "value": "A dog barking."}]
    line = json.dumps({"video": example, "conversations": turns})
    held = (f"it holds {len(clips)} clip{'s' * (len(clips) != 1)} ({', '.join(clips[:3])}{', ...' * (len(clips) > 3)})"
            if clips else "it holds no clips yet")
    return (f"{folder} has no {QA_FILE}, so there is nothing to learn from yet ({held}). Write one question and "
            f"its answer per line, the clip's path relative to the folder, for example:\n  {line}\n"
            f"(README, \"Train on your own clips\"; `vqa data convert` turns public datasets into this form)")


def read_jsonl(path: str | Path) -> list[dict]:
    """Every object of a JSONL file; a line that is not a JSON object raises with its line number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    rows = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON object: {e}") from e
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            row["line"] = n
            rows.append(row)
    return rows


def read_qa(folder: str | Path) -> list[dict]:
    """Every record of a dataset's qa.jsonl, checked: a `video` path and a conversation that starts with the
    user and has at least one answer; `messages` holds it as role/content dicts."""
    path = Path(folder) / QA_FILE
    if not path.is_file():
        raise DatasetError(no_dataset(Path(folder)))
    records = read_jsonl(path)
    for r in records:
        where = f"{path}:{r['line']}"
        if not isinstance(r.get("video"), str) or not isinstance(r.get("conversations"), list):
            raise ValueError(f"{where}: a record needs `video` (a path) and `conversations` (a list), "
                             f"got keys {sorted(k for k in r if k != 'line')}")
        try:
            r["messages"] = normalize_messages(r["conversations"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: malformed conversation: {e}") from e
        roles = [m["role"] for m in r["messages"]]
        if not roles or roles[0] != "user" or "assistant" not in roles:
            raise ValueError(f"{where}: a conversation starts with the user and holds an answer, got roles {roles}")
    if not records:
        raise ValueError(f"{path} holds no records")
    return records


def split_holdout(records: list[dict], fraction: float, seed: int = 0, max_clips: int = 200) -> tuple[list, list]:
    """(train, held-out) records, split by clip so that no clip of the held-out part is trained on: a seeded
    `fraction` of the clips (at least one, at most `max_clips`), and never every clip."""
    videos = sorted({r["video"] for r in records})
    if len(videos) < 2:
        raise ValueError(f"cannot hold out a validation split from {len(videos)} clip: pass --val DATA")
    count = min(max_clips, len(videos) - 1, max(1, round(fraction * len(videos))))
    rng = np.random.default_rng(seed)
    held = {videos[i] for i in rng.permutation(len(videos))[:count]}
    return [r for r in records if r["video"] not in held], [r for r in records if r["video"] in held]
