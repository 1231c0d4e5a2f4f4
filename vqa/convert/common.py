"""What every converter shares: a sample, reading annotation files with clear errors,
finding each sample's clip, and writing the dataset folder's `qa.jsonl` with a one-line summary."""
from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

# tried in this order when an id names a clip without its extension
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi")
SHOWN_MISSING = 5  # ids named in the summary line


class ConvertError(ValueError):
    """An annotation file that is not in the format its converter reads."""


@dataclass
class Sample:
    id: str
    clips: tuple[str, ...]  # names to look for under the videos folder, in order: a path, or a stem
    question: str
    answer: str
    type: str | None = None


def load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConvertError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise ConvertError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None


def json_records(path: Path) -> list[dict]:
    """A JSON file holding a list of objects (the layout of every public set here)."""
    data = load_json(path)
    if not isinstance(data, list):
        raise ConvertError(f"{path}: expected a JSON list of records, found a {type(data).__name__}")
    for i, record in enumerate(data):
        if not isinstance(record, dict):
            raise ConvertError(f"{path}: record [{i}]: expected an object, found {json.dumps(record)[:60]}")
    return data


def get(record: dict, key: str, where: str, kinds: tuple[type, ...] = (str,)) -> Any:
    """record[key], checked: `where` names the file and record for the error message."""
    if key not in record:
        raise ConvertError(f"{where}: no field {key!r} (fields: {', '.join(sorted(record)) or 'none'})")
    value = record[key]
    if not isinstance(value, kinds) or isinstance(value, bool):
        names = " or ".join(k.__name__ for k in kinds)
        raise ConvertError(f"{where}: field {key!r} should be {names}, found {json.dumps(value)[:60]}")
    if isinstance(value, str) and not value.strip():
        raise ConvertError(f"{where}: field {key!r} is empty")
    return value


def string_list(value: Any, key: str, where: str) -> list[str]:
    """A list of strings, given as a list or as the list's text (MUSIC-AVQA writes '[\"a\", \"b\"]')."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ConvertError(f"{where}: field {key!r} is not a list: {value[:60]!r}") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConvertError(f"{where}: field {key!r} should be a list of strings, found {value!r:.60}")
    return value


class ClipFinder:
    """Finds a sample's clip under one folder: the name as a path, the name plus each usual
    extension, then any file of that stem anywhere below (public sets split clips over subfolders)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._by_stem: dict[str, Path] | None = None
        self._found: dict[tuple[str, ...], Path | None] = {}  # public sets ask many questions per clip

    def find(self, names: tuple[str, ...]) -> Path | None:
        if names not in self._found:
            self._found[names] = next(filter(None, map(self._find_one, names)), None)
        return self._found[names]

    def _find_one(self, name: str) -> Path | None:
        if (self.folder / name).is_file():  # named exactly, whatever its extension
            return self.folder / name
        suffix = Path(name).suffix.lower()
        if suffix in VIDEO_EXTENSIONS:
            name = name[: -len(suffix)]
        for ext in VIDEO_EXTENSIONS:
            if (self.folder / (name + ext)).is_file():
                return self.folder / (name + ext)
        return self._index().get(Path(name).name)

    def _index(self) -> dict[str, Path]:
        if self._by_stem is None:
            rank = {ext: i for i, ext in enumerate(VIDEO_EXTENSIONS)}
            self._by_stem = {}
            for root, dirs, files in os.walk(self.folder):
                dirs.sort()
                for file in sorted(files):
                    stem, ext = os.path.splitext(file)
                    if ext.lower() not in rank:
                        continue
                    held = self._by_stem.get(stem)
                    if held is None or rank[ext.lower()] < rank[held.suffix.lower()]:
                        self._by_stem[stem] = Path(root) / file
        return self._by_stem


@dataclass
class Summary:
    format: str
    path: Path  # the qa.jsonl written
    videos: Path
    written: int = 0
    missing: list[str] = field(default_factory=list)  # ids whose clip was not found

    def line(self) -> str:
        text = f"{self.format}: wrote {self.written} records to {self.path}"
        if self.missing:
            shown = ", ".join(self.missing[:SHOWN_MISSING]) + (", ..." if len(self.missing) > SHOWN_MISSING else "")
            text += f"; skipped {len(self.missing)} whose clip is not under {self.videos} ({shown})"
        return text


def record(sample: Sample, video: str) -> dict:
    """One line of qa.jsonl, LLaVA-style."""
    out: dict[str, Any] = {"id": sample.id, "video": video}
    if sample.type is not None:
        out["type"] = sample.type
    out["conversations"] = [{"from": "human", "value": f"<video>\n{sample.question}"},
                            {"from": "gpt", "value": sample.answer}]
    return out


def write(format: str, samples: Iterable[Sample], out: Path, videos: Path) -> Summary:
    """Write out/qa.jsonl from the samples whose clip is found under `videos`; `video` paths are
    relative to `out`. The file appears only once every sample has been read without error."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "qa.jsonl"
    summary = Summary(format, path, videos)
    finder = ClipFinder(videos)
    base = os.path.abspath(out)
    tmp = path.with_name(path.name + ".part")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for sample in samples:
                clip = finder.find(sample.clips)
                if clip is None:
                    summary.missing.append(sample.id)
                    continue
                video = Path(os.path.relpath(os.path.abspath(clip), base)).as_posix()
                f.write(json.dumps(record(sample, video), ensure_ascii=False) + "\n")
                summary.written += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        if created and not path.exists():
            out.rmdir()  # a failed run leaves no trace
    return summary
