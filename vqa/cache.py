"""vqa's cache of converted weights: built once under a file lock, checked cheaply on every load.

A cache entry is a folder, `cache_root()/<kind>/<name>-<key>/`, holding the converted files and
`vqa-cache.json`, which lists every file with its size and sha256. `build_once` writes it in a
temporary folder beside the target and renames it into place under a file lock, so two processes
starting at once build it once, and a reader sees either the whole folder or none. Every load
runs `manifest_problem` (the marker, every file's size, safetensors headers); a folder that fails
is rebuilt. The sha256 sums are there for a full check by hand (`sha256sum`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock, Timeout

logger = logging.getLogger(__name__)

MARKER = "vqa-cache.json"
LOCK_TIMEOUT_S = 900.0  # a conversion takes seconds to a minute; far longer means a stuck process
# bytes hashed from each end of a source file to key its cache: cheap, and covers header and body
KEY_BYTES = 4 << 20


def cache_root() -> Path:
    """vqa's cache folder: $VQA_CACHE_DIR, else $XDG_CACHE_HOME/vqa, else ~/.cache/vqa."""
    if os.environ.get("VQA_CACHE_DIR"):
        return Path(os.environ["VQA_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "vqa"


def build_once(
    target: Path, build: Callable[[Path], None], problem: Callable[[Path], str | None], what: str
) -> Path:
    """`target`, built by `build(tmp_folder)` unless `problem(target)` finds it sound; rebuilt when not.

    `build` writes the files into the folder it is given; `write_manifest` is usually its last step.
    """
    if problem(target) is None:
        return target  # the common case: no lock, no writes
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target.parent / f"{target.name}.lock"), timeout=LOCK_TIMEOUT_S)
    try:
        with lock:
            reason = problem(target)  # another process may have built it while we waited
            if reason is None:
                return target
            if target.exists():
                logger.warning("rebuilding the %s cache %s: %s", what, target, reason)
                discard(target)
            for stale in target.parent.glob(f".{target.name}.*"):  # left by a killed build
                shutil.rmtree(stale, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
            try:
                build(tmp)
                tmp.chmod(0o755)  # mkdtemp makes it 0700
                os.rename(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except Timeout as e:
        raise TimeoutError(
            f"waited {LOCK_TIMEOUT_S:.0f} s for another process building the {what} cache {target} "
            f"(lock {lock.lock_file}); stop it if it is stuck and retry"
        ) from e
    return target


def write_manifest(folder: Path, fmt: int, **extra) -> None:
    """List every file of `folder` with its size and sha256 in the marker; `extra` goes in beside."""
    files = {}
    for f in sorted(folder.iterdir()):
        if f.name == MARKER:
            continue
        f.chmod(0o644)  # readable like any cache file (safetensors writes 0600)
        files[f.name] = {"size": f.stat().st_size, "sha256": sha256(f)}
    (folder / MARKER).write_text(json.dumps({"format": fmt, **extra, "files": files}, indent=1))


def manifest_problem(folder: Path, fmt: int, required: Callable[[set[str]], bool] = bool) -> str | None:
    """Why a cache folder cannot be used as is (None when it can): marker, format, listed names, sizes, headers.

    `required(names)` says whether the listed file names are a complete entry.
    """
    marker = folder / MARKER
    if not marker.is_file():
        return f"no {MARKER} marker"
    try:
        manifest = json.loads(marker.read_text())
        sizes = {fname: int(info["size"]) for fname, info in manifest["files"].items()}
    except Exception as e:  # noqa: BLE001 -- any unreadable marker means rebuild
        return f"unreadable {MARKER}: {e!r}"
    if manifest.get("format") != fmt:
        return f"{MARKER} has format {manifest.get('format')!r}, this version writes {fmt}"
    if not required(set(sizes)):
        return f"{MARKER} lists an incomplete set of files: {sorted(sizes)}"
    for fname, expected in sizes.items():
        path = folder / fname
        if not path.is_file():
            return f"{fname} is missing"
        size = path.stat().st_size
        if size != expected:
            return f"{fname} is {size} bytes, expected {expected}"
        if fname.endswith(".safetensors"):
            problem = safetensors_problem(path, size)
            if problem:
                return f"{fname}: {problem}"
    return None


def safetensors_problem(path: Path, size: int) -> str | None:
    """Parse the header (u64 length + JSON) and check that the tensors' data exactly fills the file."""
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return "shorter than a safetensors header"
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            return f"header length {n} is beyond the file's {size} bytes"
        try:
            header = json.loads(f.read(n))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except Exception as e:  # noqa: BLE001
            return f"unreadable header: {e!r}"
    if 8 + n + end != size:
        return f"tensors end at byte {8 + n + end}, the file has {size}"
    return None


def discard(folder: Path) -> None:
    # rename first: a reader sees either the whole folder or none
    trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}.trash-", dir=folder.parent))
    os.rename(folder, trash / folder.name)
    shutil.rmtree(trash, ignore_errors=True)


def file_key(*paths: Path) -> str:
    """Content key of source files: their sizes and the sha256 of each one's first and last 4 MiB (~10 ms)."""
    h = hashlib.sha256()
    for path in paths:
        size = path.stat().st_size
        h.update(str(size).encode())
        with path.open("rb") as f:
            h.update(f.read(KEY_BYTES))
            f.seek(max(size - KEY_BYTES, 0))
            h.update(f.read(KEY_BYTES))
    return h.hexdigest()[:16]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
