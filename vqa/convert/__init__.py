"""`vqa data convert FORMAT SRC OUT`: public video QA sets, or a CSV, into a dataset folder whose
`qa.jsonl` the rest of vqa reads. One module per format, each a `read(src) -> Iterator[Sample]`;
what they share (finding clips, writing, the summary) is in `common`. Standard library only."""
from __future__ import annotations

import sys
from pathlib import Path

from . import activitynet_qa, csv_qa, msrvtt_qa, msvd_qa, music_avqa, videoinstruct
from .common import ConvertError, Summary, write

# name on the command line -> module with read(src)
FORMATS = {
    "music-avqa": music_avqa,
    "msrvtt-qa": msrvtt_qa,
    "msvd-qa": msvd_qa,
    "activitynet-qa": activitynet_qa,
    "videoinstruct": videoinstruct,
    "csv": csv_qa,
}

__all__ = ["FORMATS", "ConvertError", "Summary", "convert"]


def convert(format: str, src: str | Path, out: str | Path, videos: str | Path | None = None) -> Summary:
    """Read SRC in FORMAT and write OUT/qa.jsonl, keeping the samples whose clip is under `videos`
    (default: SRC's folder). Raises ConvertError for an unknown format or a malformed annotation."""
    if format not in FORMATS:
        raise ConvertError(f"unknown format {format!r}; one of: {', '.join(FORMATS)}")
    src, out = Path(src), Path(out)
    if not src.is_file():
        raise ConvertError(f"{src}: no such file")
    videos = Path(videos) if videos is not None else src.parent
    if not videos.is_dir():
        raise ConvertError(f"{videos}: no such folder (the --videos folder holding the clips)")
    return write(format, FORMATS[format].read(src), out, videos)


def cli(args) -> int:
    """`vqa data convert`: the summary on stdout; exit 2 for bad input, 1 when no clip was found."""
    try:
        summary = convert(args.format, args.src, args.out, args.videos)
    except ConvertError as e:
        print(f"vqa data convert: {e}", file=sys.stderr)
        return 2
    print(summary.line())
    if summary.written == 0:
        print(f"vqa data convert: no clip found under {summary.videos}; point --videos at the folder of clips",
              file=sys.stderr)
        return 1
    return 0
