"""MSVD-QA (Xu et al., ACM MM 2017): `train_qa.json`, `val_qa.json`, `test_qa.json` and
`youtube_mapping.txt` from the release linked by xudejing/video-question-answering. Records as
MSRVTT-QA's without `category_id`:

    {"answer": "someone", "id": 30933, "question": "who pours liquid into a bag?", "video_id": 1201}

`video_id` N is the N-th MSVD clip, `vidN`; `youtube_mapping.txt` (beside the JSON) maps MSVD's
YouTube clip names to those, one `-4wsuPCjDBc_5_15 vid1` a line, so a clip is found under either
name: MSVD's YouTubeClips/-4wsuPCjDBc_5_15.avi or a renamed vid1.avi.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from .common import ConvertError, Sample
from .msrvtt_qa import read_xu2017

MAPPING = "youtube_mapping.txt"


def read_mapping(path: Path) -> dict[str, str]:
    """'vidN' -> YouTube clip name."""
    mapping = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].startswith("vid"):
                raise ConvertError(f"{path}: line {n}: expected '<youtube clip> vid<N>', found {line.strip()!r}")
            mapping[parts[1]] = parts[0]
    return mapping


def read(src: Path) -> Iterator[Sample]:
    mapping_file = src.parent / MAPPING
    mapping = read_mapping(mapping_file) if mapping_file.is_file() else {}

    def clips(video_id: int | str) -> tuple[str, ...]:
        vid = str(video_id) if str(video_id).startswith("vid") else f"vid{video_id}"
        return (mapping[vid], vid) if vid in mapping else (vid,)

    return read_xu2017(src, clips)
