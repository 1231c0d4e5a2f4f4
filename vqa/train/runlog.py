"""The run's log, out_dir/log.jsonl: one JSON object per event (start, train, val, end)."""
from __future__ import annotations

import json
import time
from pathlib import Path

LOG = "log.jsonl"


class RunLog:
    """Append-only JSONL; on resume, records after the checkpoint's step are dropped (they will be redone)."""

    def __init__(self, path: Path, keep_upto: int):
        self.path = path
        if path.is_file():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= keep_upto
                    and json.loads(line)["type"] != "end"]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")


def last_val(log_path: Path) -> dict | None:
    from .plot import read_log

    vals = [r for r in read_log(log_path) if r["type"] == "val"]
    return vals[-1] if vals else None
