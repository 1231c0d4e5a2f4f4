"""Checkpoints that resume exactly: weights, optimiser, scheduler, RNG streams and the data position.

    out_dir/checkpoints/step-000120/
        weights.safetensors    every part that any stage trains (encoder, projector, LoRA, heads)
        optimizer.pt           optimiser and scheduler of the stage in progress
        rng-rank<r>.pt         each process's RNG streams (torch, CUDA, numpy, python)
        state.json             stage, steps, data position, both config trees
        manifest.json          every other file's size and SHA-256

A checkpoint is written under a temporary name, flushed to disk, and renamed, so a
process killed (or a machine losing power) while saving leaves the previous one intact
and no newest-looking partial one. On resume, `latest_checkpoint` checks the newest
against its manifest (or, for one written before manifests, loads each file); a damaged
one is named with its file and the newest intact one is used instead. Everything is
loaded with `weights_only=True`, so a checkpoint never runs code.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cache import sha256

WEIGHTS = "weights.safetensors"
OPTIMIZER = "optimizer.pt"
STATE = "state.json"
MANIFEST = "manifest.json"
PREFIX = "step-"

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """No checkpoint in the output folder can be resumed from; the message names each damaged file."""


def checkpoints_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoints_dir(out_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / STATE).is_file()]
    return sorted(found, key=step_of)


def step_of(folder: Path) -> int:
    """The global step a checkpoint folder (`step-000123`) was saved at."""
    return int(folder.name[len(PREFIX):])


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest intact checkpoint; None when there is none. A damaged newer one is reported (which
    file, what is wrong) and passed over; if every one is damaged, CheckpointError says so."""
    found = list_checkpoints(out_dir)
    problems = []
    for folder in reversed(found):
        problem = verify(folder)
        if problem is None:
            if problems:
                log.warning("resuming from %s, the newest intact checkpoint", folder)
            return folder
        log.warning("checkpoint %s is damaged, passing over it: %s", folder, problem)
        problems.append(f"{folder.name}: {problem}")
    if problems:
        raise CheckpointError(
            f"every checkpoint in {checkpoints_dir(out_dir)} is damaged ({'; '.join(problems)}); "
            "delete that folder to train from the start")
    return None


def verify(folder: Path) -> str | None:
    """What is wrong with a checkpoint, naming the file; None when it is intact."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return _try_loading(folder)  # written before manifests
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{manifest} cannot be read: {e}"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != expected["bytes"]:
            return f"{path} has {size} bytes, {expected['bytes']} were written (truncated or overwritten)"
        if sha256(path) != expected["sha256"]:
            return f"{path} does not match the checksum written with it (its bytes changed)"
    return None


def _try_loading(folder: Path) -> str | None:
    from safetensors.torch import load_file

    for path, read in [(folder / STATE, lambda p: json.loads(p.read_text())),
                       (folder / WEIGHTS, lambda p: load_file(str(p))),
                       (folder / OPTIMIZER, lambda p: torch.load(p, weights_only=True)),
                       *[(p, lambda p: torch.load(p, weights_only=True)) for p in sorted(folder.glob("rng-rank*.pt"))]]:
        if not path.is_file():
            return f"{path} is missing"
        try:
            read(path)
        except Exception as e:  # any reader's error means the same: this file cannot be resumed from
            return f"{path} cannot be loaded: {type(e).__name__}: {str(e)[:200]}"
    return None


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(),
        "python": _python_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _numpy_state() -> list:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]


def _python_state() -> list:
    version, internal, gauss_next = random.getstate()
    return [version, list(internal), gauss_next]


def save_rng(folder: Path, rank: int) -> None:
    torch.save(rng_state(), folder / f"rng-rank{rank}.pt")


def load_rng(folder: Path, rank: int) -> None:
    path = folder / f"rng-rank{rank}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the checkpoint was written by fewer processes than this run has")
    set_rng_state(torch.load(path, weights_only=True))


def staging_dir(out_dir: str | Path, step: int) -> tuple[Path, Path]:
    """(temporary folder to write into, final name)."""
    root = checkpoints_dir(out_dir)
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f".{final.name}.tmp"
    return tmp, final


def save_main(tmp: Path, weights: dict[str, torch.Tensor], optimizer: dict, scheduler: dict, state: dict) -> None:
    """The main process's part: weights, optimiser, scheduler and state."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS))
    torch.save({"optimizer": optimizer, "scheduler": scheduler}, tmp / OPTIMIZER)
    (tmp / STATE).write_text(json.dumps(state, indent=1))


def publish(tmp: Path, final: Path, keep: int) -> None:
    """Write the manifest, flush every file to disk, rename the finished checkpoint into place,
    and drop all but the newest `keep`."""
    files = sorted(p for p in tmp.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = {"files": {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in files}}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    for path in [*files, tmp / MANIFEST, tmp]:
        _fsync(path)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(final.parent)
    for old in list_checkpoints(final.parent.parent)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _fsync(path: Path) -> None:
    """Flush a file's or folder's contents to disk (a folder: its entries), where the system allows."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder
        pass
    finally:
        os.close(fd)


def load(folder: Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(weights, {"optimizer", "scheduler"}, state) of a checkpoint."""
    from safetensors.torch import load_file

    state = json.loads((folder / STATE).read_text())
    weights = load_file(str(folder / WEIGHTS))
    opt = torch.load(folder / OPTIMIZER, weights_only=True)
    return weights, opt, state


# ---- what a run saves and resumes ----
def trained_tensors(parts: dict, encoder: torch.nn.Module, task=None) -> dict[str, torch.Tensor]:
    """What a checkpoint holds, by name: every part's parameters, and the buffers training changes (batch-norm
    statistics); non-persistent buffers (a caption head's word embeddings) are rebuilt, not saved."""
    named = {name: p for pairs in parts.values() for name, p in pairs}
    return {**named, **_buffers(encoder, "encoder."), **_buffers(getattr(task, "heads", None), "heads.")}


def _buffers(module: torch.nn.Module | None, prefix: str) -> dict[str, torch.Tensor]:
    if module is None:
        return {}
    persistent = module.state_dict().keys()
    return {prefix + n: b for n, b in module.named_buffers() if n in persistent}


def resume(folder: Path, tensors: dict[str, torch.Tensor], world_size: int) -> tuple[dict, dict]:
    """Load a checkpoint's weights into `tensors`; (progress, {"step", "position", "optimizer", "scheduler",
    "checkpoint"} for the stage in progress)."""
    weights, opt_state, saved = load(folder)
    missing, unexpected = sorted(set(tensors) - set(weights)), sorted(set(weights) - set(tensors))
    if missing or unexpected:
        raise RuntimeError(f"{folder} does not fit this model: missing {missing[:3]} ({len(missing)}), "
                           f"unexpected {unexpected[:3]} ({len(unexpected)}); was the config changed?")
    with torch.no_grad():
        for name, p in tensors.items():
            if p.shape != weights[name].shape:
                raise RuntimeError(f"{folder}: {name} has shape {tuple(weights[name].shape)}, "
                                   f"the model {tuple(p.shape)}")
            p.copy_(weights[name])
    if saved["world_size"] != world_size:
        raise RuntimeError(f"{folder} was written by {saved['world_size']} processes, this run has {world_size}: "
                           f"resume with the same number (the data order depends on it)")
    progress = saved["progress"]
    return progress, {"step": progress["step"], "position": progress["position"], "checkpoint": folder,
                      **opt_state}
