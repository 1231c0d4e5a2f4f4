"""What pretrained perception found in each clip of a dataset, as the text the LLM reads after the clip tokens.

A bundle whose config has `perception: true` reads a short text block (vqa.perception: transcript, sounds,
concepts) after the clip tokens, at inference and so in training too. Perceiving a clip (Whisper above
all) costs far more than a training step, so each clip's text is computed once into
`perception-<key>.json` beside the dataset's qa.jsonl; the key covers the token budget and the LLM whose
tokenizer counts it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from ..prompt import with_video, without_video

log = logging.getLogger("vqa")
PREFIX = "perception-"
FORMAT = 3  # 2: the "Picture:" line; 3: speech heard on short windows


def perception_texts(folder: str | Path, videos: list[str], max_tokens: int, tokenizer, llm: str,
                     progress: bool = True) -> dict[str, str]:
    """{video: its perception text}, computed once per clip and kept beside the dataset."""
    from tqdm import tqdm

    from ..perception import perceive

    folder = Path(folder)
    key = hashlib.sha256(json.dumps([FORMAT, max_tokens, llm]).encode()).hexdigest()[:12]
    path = folder / f"{PREFIX}{key}.json"
    texts = json.loads(path.read_text()) if path.is_file() else {}
    missing = [v for v in dict.fromkeys(videos) if v not in texts]
    if not missing:
        return texts

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    for video in tqdm(missing, desc=f"perceiving {folder.name}", unit="clip", disable=not progress):
        texts[video] = perceive(folder / video).to_text(max_tokens, count=count)
    try:
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(texts, indent=0))
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not write %s (%s); keeping the perception texts in memory only", path, e)
    return texts


def with_perception(records: list[dict], texts: dict[str, str]) -> list[dict]:
    """Copies of the records whose first user turn carries its clip's perception text after the placeholder
    (also kept as "perception", so packed turns can leave it out after the first)."""
    out = []
    for r in records:
        messages = [dict(m) for m in r["messages"]]
        first = messages[0]["content"]
        question = without_video(first)
        messages[0]["content"] = with_video(question, texts[r["video"]])
        out.append({**r, "messages": messages, "perception": texts[r["video"]]})
    return out


def add_perception(folder: str | Path, records: list[dict], model_config, tokenizer, progress: bool = True) -> list:
    """The records with their clips' perception texts, where the model reads them (`perception_tokens`)."""
    if not model_config.perception_tokens or not records:
        return records
    texts = perception_texts(folder, [r["video"] for r in records], model_config.perception_tokens, tokenizer,
                             model_config.llm, progress=progress)
    return with_perception(records, texts)
