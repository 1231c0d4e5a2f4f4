"""A plain CSV for people with a spreadsheet: a header row naming `clip`, `question`, `answer`,
and optionally `type` and `id`, then one question a row. `clip` is a file under the videos
folder (default: the CSV's own folder), with or without its extension:

    clip,question,answer,type
    kitchen.mp4,What is the cook stirring?,a pot of soup,object
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator

from .common import ConvertError, Sample

REQUIRED = ("clip", "question", "answer")


def read(src: Path) -> Iterator[Sample]:
    try:
        f = open(src, encoding="utf-8-sig", newline="")  # utf-8-sig: spreadsheets write a BOM
    except FileNotFoundError:
        raise ConvertError(f"{src}: no such file") from None
    with f:
        reader = csv.DictReader(f)
        header = [h.strip().lower() for h in reader.fieldnames or []]
        if missing := [c for c in REQUIRED if c not in header]:
            raise ConvertError(f"{src}: line 1: the header needs columns {', '.join(REQUIRED)}; "
                               f"missing {', '.join(missing)} (found: {', '.join(header) or 'nothing'})")
        reader.fieldnames = header
        for row in reader:
            where = f"{src}: line {reader.line_num}"
            if None in row:
                raise ConvertError(f"{where}: more fields than the header's {len(header)}")
            values = {k: (v or "").strip() for k, v in row.items()}
            if empty := [c for c in REQUIRED if not values[c]]:
                raise ConvertError(f"{where}: empty {', '.join(empty)}")
            yield Sample(id=values.get("id") or f"{src.name}:{reader.line_num}", clips=(values["clip"],),
                         question=values["question"], answer=values["answer"], type=values.get("type") or None)
