"""VideoInstruct-100K (Maaz et al., Video-ChatGPT, ACL 2024): `VideoInstruct_Dataset.json` from
mbzuai-oryx/Video-ChatGPT's docs/train_video_chatgpt.md, a list of question-answer pairs:

    {"q": "What is the man doing?", "a": "The man is ...", "video_id": "v_k_ZXmr8pmrs"}

Every clip is an ActivityNet video, named as in the repository's docs/train_video_ids.txt
(`v_<youtube id>`); answers are free-form sentences and paragraphs, with no question type.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from .common import Sample, get, json_records


def read(src: Path) -> Iterator[Sample]:
    for i, r in enumerate(json_records(src)):
        where = f"{src}: record [{i}]"
        video = get(r, "video_id", where)
        bare = video[2:] if video.startswith("v_") else video
        yield Sample(id=f"{video}_{i}", clips=(video, bare), question=get(r, "q", where), answer=get(r, "a", where))
