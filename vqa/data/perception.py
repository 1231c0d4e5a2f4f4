"""What pretrained perception found in each clip of a dataset, as the text the LLM reads after the clip tokens.

A bundle whose config has `perception: true` reads a short text block (vqa.perception: transcript, sounds,
concepts) after the clip tokens, at inference and so in training too. Perceiving a clip (Whisper above
all) costs far more than a training step, so each clip's text is computed once into
`perception-<key>.json` beside the dataset's qa.jsonl; the key covers the token budget and the LLM whose
tokenizer counts it.

A record with `"unfamiliar": true` reads its clip's text with the line a served clip gets when the bundle's
domain finds it unlike the training clips (vqa.perception.UNFAMILIAR): a recipe marks clips so to teach the
model what not to read from the clip tokens there. Such a text is kept under "<video>#unfamiliar".
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
MARK = "#unfamiliar"
FORMAT = 3  # 2: the "Picture:" line; 3: speech heard on short windows


def perception_texts(folder: str | Path, videos: list[str], max_tokens: int, tokenizer, llm: str,
                     progress: bool = True, unfamiliar: set[str] = frozenset()) -> dict[str, str]:
    """{video: its perception text}, computed once per clip and kept beside the dataset; for the videos in
    `unfamiliar`, also {text_key(video, True): the text with the UNFAMILIAR line}."""
    from tqdm import tqdm

    from ..perception import perceive

    folder = Path(folder)
    key = hashlib.sha256(json.dumps([FORMAT, max_tokens, llm]).encode()).hexdigest()[:12]
    path = folder / f"{PREFIX}{key}.json"
    texts = json.loads(path.read_text()) if path.is_file() else {}
    videos = list(dict.fromkeys(videos))  # every plain text (generators check it), and the marked ones
    wanted = videos + [text_key(v, True) for v in videos if v in unfamiliar]
    missing = [k for k in wanted if k not in texts]
    if not missing:
        return texts

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    by_video: dict[str, list[str]] = {}
    for k in missing:
        by_video.setdefault(k.removesuffix(MARK), []).append(k)
    for video, keys in tqdm(by_video.items(), desc=f"perceiving {folder.name}", unit="clip", disable=not progress):
        perceived = perceive(folder / video)
        for k in keys:
            texts[k] = perceived.to_text(max_tokens, count=count, unfamiliar=k.endswith(MARK))
    try:
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(texts, indent=0))
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not write %s (%s); keeping the perception texts in memory only", path, e)
    return texts


def text_key(video: str, unfamiliar: bool) -> str:
    return f"{video}{MARK}" if unfamiliar else video


def with_perception(records: list[dict], texts: dict[str, str]) -> list[dict]:
    """Copies of the records whose first user turn carries its clip's perception text after the placeholder
    (also kept as "perception", so packed turns can leave it out after the first)."""
    out = []
    for r in records:
        messages = [dict(m) for m in r["messages"]]
        first = messages[0]["content"]
        question = without_video(first)
        text = texts[text_key(r["video"], bool(r.get("unfamiliar")))]
        messages[0]["content"] = with_video(question, text)
        out.append({**r, "messages": messages, "perception": text})
    return out


def add_perception(folder: str | Path, records: list[dict], model_config, tokenizer, progress: bool = True) -> list:
    """The records with their clips' perception texts, where the model reads them (`perception_tokens`)."""
    if not model_config.perception_tokens or not records:
        return records
    texts = perception_texts(folder, [r["video"] for r in records], model_config.perception_tokens, tokenizer,
                             model_config.llm, progress=progress,
                             unfamiliar={r["video"] for r in records if r.get("unfamiliar")})
    return with_perception(records, texts)
