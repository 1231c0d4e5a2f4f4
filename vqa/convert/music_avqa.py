"""MUSIC-AVQA (Li et al., CVPR 2022): `avqa-train.json`, `avqa-val.json`, `avqa-test.json` from
GeWu-Lab/MUSIC-AVQA's data/json/. A list of records:

    {"video_id": "00000272", "question_id": 50, "type": "[\"Audio-Visual\", \"Temporal\"]",
     "question_content": "Where is the <FL> sounding instrument?", "templ_values": "[\"first\"]",
     "question_deleted": 0, "anser": "left"}

`type` and `templ_values` are lists written as strings; each `<...>` placeholder in the question
takes the next template value; the answer key is spelled `anser` in the release. Clips are the
raw-video release's `<video_id>.mp4`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from .common import ConvertError, Sample, get, json_records, string_list

PLACEHOLDER = re.compile(r"<[^<>]+>")
ANSWER_KEYS = ("anser", "answer")  # the release's spelling first; corrected copies use "answer"


def fill(question: str, values: list[str], where: str) -> str:
    """'Is the <Object> louder than the <Object>?' + ['piano', 'violin'] -> the question in words."""
    slots = PLACEHOLDER.findall(question)
    if len(slots) != len(values):
        raise ConvertError(f"{where}: question {question!r} has {len(slots)} placeholder(s) "
                           f"but templ_values has {len(values)}: {values}")
    it = iter(values)
    return PLACEHOLDER.sub(lambda _: next(it), question)


def read(src: Path) -> Iterator[Sample]:
    for i, r in enumerate(json_records(src)):
        where = f"{src}: record [{i}]"
        key = next((k for k in ANSWER_KEYS if k in r), ANSWER_KEYS[0])
        video = get(r, "video_id", where)
        question = fill(get(r, "question_content", where),
                        string_list(get(r, "templ_values", where, (str, list)), "templ_values", where), where)
        kind = string_list(get(r, "type", where, (str, list)), "type", where)
        yield Sample(id=str(get(r, "question_id", where, (int, str))), clips=(video,), question=question,
                     answer=get(r, key, where), type="/".join(kind) or None)
