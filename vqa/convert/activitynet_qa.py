"""ActivityNet-QA (Yu et al., AAAI 2019): MILVLG/activitynet-qa's dataset/, questions and answers in
separate files, `{train,val,test}_q.json` and `{train,val,test}_a.json`, joined by `question_id`:

    {"video_name": "TIEzvhv6xaI", "question": "is the no.3 athlete playing indoor", "question_id": "v_TIEzvhv6xaI_2"}
    {"answer": "yes", "type": 3, "question_id": "v_TIEzvhv6xaI_2"}

`video_name` is the YouTube id; ActivityNet's downloads name the clip `v_<id>.mp4` (or .mkv/.webm).
`type` is 0 Motion, 1 Spatial Relationship, 2 Temporal Relationship, and for free questions by
answer 3 Yes/No, 4 Color, 5 Object, 6 Location, 7 Number, 8 Other.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from .common import ConvertError, Sample, get, json_records

TYPES = {0: "Motion", 1: "Spatial Relationship", 2: "Temporal Relationship", 3: "Yes/No", 4: "Color",
         5: "Object", 6: "Location", 7: "Number", 8: "Other"}


def pair(src: Path) -> tuple[Path, Path]:
    """SRC may name either file of a split; the other sits beside it."""
    for mine, other in (("_q.json", "_a.json"), ("_a.json", "_q.json")):
        if src.name.endswith(mine):
            partner = src.with_name(src.name[: -len(mine)] + other)
            if not partner.is_file():
                raise ConvertError(f"{src}: its partner file {partner.name} is not beside it")
            return (src, partner) if mine == "_q.json" else (partner, src)
    raise ConvertError(f"{src}: expected an ActivityNet-QA file named <split>_q.json or <split>_a.json")


def read(src: Path) -> Iterator[Sample]:
    questions_file, answers_file = pair(src)
    answers = {}
    for i, r in enumerate(json_records(answers_file)):
        where = f"{answers_file}: record [{i}]"
        kind = get(r, "type", where, (int,))
        answers[get(r, "question_id", where)] = (str(get(r, "answer", where, (str, int))), TYPES.get(kind, str(kind)))
    for i, r in enumerate(json_records(questions_file)):
        where = f"{questions_file}: record [{i}]"
        qid = get(r, "question_id", where)
        if qid not in answers:
            raise ConvertError(f"{where}: question_id {qid!r} has no answer in {answers_file}")
        name = get(r, "video_name", where)
        answer, kind = answers[qid]
        yield Sample(id=qid, clips=(f"v_{name}", name), question=get(r, "question", where), answer=answer, type=kind)
