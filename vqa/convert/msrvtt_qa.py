"""MSRVTT-QA (Xu et al., ACM MM 2017): `train_qa.json`, `val_qa.json`, `test_qa.json` from the
release linked by xudejing/video-question-answering. A list of records:

    {"answer": "cartoon", "category_id": 9, "id": 0, "question": "what is shown?", "video_id": 0}

`video_id` N is MSR-VTT's clip `videoN.mp4` (TrainValVideo/ and TestVideo/ in MSR-VTT's release).
Answers are one word. The question type reported is its first word (what, who, how, when, where),
the breakdown the dataset's paper uses; `category_id` is the clip's MSR-VTT category, not kept.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from .common import Sample, get, json_records

WH_WORDS = ("what", "who", "how", "when", "where", "why", "which", "whose")


def question_type(question: str) -> str:
    first = question.split()[0].lower() if question.split() else ""
    return first if first in WH_WORDS else "other"


def read_xu2017(src: Path, clips: Callable[[int | str], tuple[str, ...]]) -> Iterator[Sample]:
    """The record layout MSRVTT-QA and MSVD-QA share; `clips` names the files a video_id may be."""
    for i, r in enumerate(json_records(src)):
        where = f"{src}: record [{i}]"
        question = get(r, "question", where)
        yield Sample(id=str(get(r, "id", where, (int, str))), clips=clips(get(r, "video_id", where, (int, str))),
                     question=question, answer=str(get(r, "answer", where, (str, int))),
                     type=question_type(question))


def msrvtt_clips(video_id: int | str) -> tuple[str, ...]:
    name = str(video_id)
    return (name,) if name.startswith("video") else (f"video{name}",)


def read(src: Path) -> Iterator[Sample]:
    return read_xu2017(src, msrvtt_clips)
