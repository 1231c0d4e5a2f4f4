"""The feature cache: every clip of a dataset decoded once, beside it.

Decoding a clip costs far more than a training step on it, so every clip of a
dataset is decoded once into `features-<key>.safetensors` in its folder (frames as
uint8, log-mel as float16); the key covers every media option, so changing one
builds a new cache. A clip that is missing or cannot be decoded is reported once,
with the qa.jsonl lines that name it, and left out.

Notation: N clips, T frames, S frame side, M mel bins, F log-mel frames.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import MediaConfig, ModelConfig
from .records import QA_FILE, read_qa

log = logging.getLogger("vqa")

CACHE_PREFIX = "features-"
CACHE_FORMAT = 1


# ---- the feature cache ----
def cache_key(media: MediaConfig, audio_frames: int) -> str:
    spec = json.dumps({"format": CACHE_FORMAT, "media": vars(media), "audio_frames": audio_frames}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


@dataclass
class FeatureCache:
    """Every clip of a split, decoded: frames (N, T, S, S, 3) uint8 and log-mel (N, M, F) float16."""

    videos: list[str]
    frames: torch.Tensor | None
    mel: torch.Tensor | None

    def __post_init__(self) -> None:
        assert not self.videos or len(self.videos) == len(self.frames) == len(self.mel)
        self.index = {v: i for i, v in enumerate(self.videos)}

    def __len__(self) -> int:
        return len(self.videos)

    def row(self, video: str) -> int:
        if video not in self.index:
            raise KeyError(f"clip {video!r} is not in the feature cache ({len(self)} clips)")
        return self.index[video]

    def inputs(self, rows: list[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Model inputs for some clips: frames (B, T, 3, S, S) normalised, mel (B, M, F) float32."""
        from ..features import frames_to_tensor

        rows = torch.as_tensor(rows, dtype=torch.long)
        frames = torch.stack([frames_to_tensor(self.frames[i].numpy()) for i in rows.tolist()])
        return frames, self.mel[rows].float()


def load_features(
    folder: str | Path, config: ModelConfig, videos: list[str] | None = None,
    workers: int | None = None, progress: bool = True, records: list[dict] | None = None,
) -> FeatureCache:
    """The dataset's feature cache, built on first use: each clip qa.jsonl names (or `videos`) is decoded once.

    Clips missing from an existing cache are decoded and added to it; where the folder is read-only
    the cache lives in memory only. A clip that is missing or undecodable is reported once (with the
    lines of `records` that name it) and left out: `usable(records, cache)` drops its records.
    """
    folder = Path(folder)
    if records is None and videos is None:
        records = read_qa(folder)
    if videos is None:
        videos = sorted({r["video"] for r in records})
    path = folder / f"{CACHE_PREFIX}{cache_key(config.media, config.encoder.audio_frames)}.safetensors"
    cache = _read_cache(path) if path.is_file() else FeatureCache([], None, None)
    missing = [v for v in dict.fromkeys(videos) if v not in cache.index]
    if not missing:
        return cache
    decoded, failed = decode_clips(folder, missing, config, workers=workers, progress=progress)
    for video, reason in failed.items():
        lines = sorted(r["line"] for r in records or () if r["video"] == video and "line" in r)
        where = f"{folder / QA_FILE}:{','.join(map(str, lines[:5]))}{'...' if len(lines) > 5 else ''}: " if lines else ""
        log.warning("%sskipping clip %s (%d records): %s", where, video, len(lines), reason)
    if not decoded:
        if not len(cache):
            raise ValueError(f"{folder}: none of its {len(missing)} clips could be decoded (see the messages above)")
        return cache
    added = list(decoded)
    frames = torch.from_numpy(np.stack([decoded[v][0] for v in added]))
    mel = torch.from_numpy(np.stack([decoded[v][1] for v in added]))
    if len(cache):
        frames, mel = torch.cat([cache.frames, frames]), torch.cat([cache.mel, mel])
    cache = FeatureCache(cache.videos + added, frames, mel)
    try:
        _write_cache(path, cache)
    except OSError as e:
        log.warning("could not write the feature cache %s (%s); keeping it in memory only", path, e)
    return cache


def usable(records: list[dict], cache: FeatureCache) -> list[dict]:
    """The records whose clip is in the cache (the others were reported when it was built)."""
    return [r for r in records if r["video"] in cache.index]


def _write_cache(path: Path, cache: FeatureCache) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    meta = {"videos": json.dumps(cache.videos), "format": str(CACHE_FORMAT)}
    save_file({"frames": cache.frames, "mel": cache.mel}, str(tmp), metadata=meta)
    os.replace(tmp, path)  # a killed build never leaves half a cache


def _read_cache(path: Path) -> FeatureCache:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        videos = json.loads(f.metadata()["videos"])
    tensors = load_file(str(path))
    return FeatureCache(videos, tensors["frames"], tensors["mel"])


def decode_clips(
    folder: Path, videos: list[str], config: ModelConfig, workers: int | None = None, progress: bool = True
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str]]:
    """Decode clips in parallel: ({video: (frames (T, S, S, 3) uint8, log-mel (M, F) float16)},
    {video: why it could not be decoded}), both in the order given."""
    from tqdm import tqdm

    jobs = [(str(folder / v), config.media.__dict__, config.encoder.audio_frames) for v in videos]
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    decoded, failed = {}, {}
    with tqdm(total=len(jobs), desc=f"decoding {folder.name}", unit="clip", disable=not progress) as bar:
        if workers <= 1:
            results = map(_decode, jobs)
            pool = None
        else:
            # spawn: safe when the caller already runs torch threads
            pool = mp.get_context("spawn").Pool(workers, initializer=_one_thread)
            results = pool.imap(_decode, jobs, chunksize=8)
        try:
            for video, (out, error) in zip(videos, results):
                if error is None:
                    decoded[video] = out
                else:
                    failed[video] = error
                bar.update()
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    return decoded, failed


def _one_thread() -> None:
    torch.set_num_threads(1)  # one clip per worker process: threads would only contend


def _decode(job: tuple[str, dict, int]) -> tuple[tuple[np.ndarray, np.ndarray] | None, str | None]:
    """((frames, log-mel), None), or (None, the reason) for a clip that is missing or cannot be decoded."""
    from ..features import log_mel
    from ..media import MediaError, load_clip

    path, media, audio_frames = job
    if not os.path.isfile(path):
        return None, "the file does not exist"
    media = MediaConfig(**media)
    try:
        clip = load_clip(path, num_frames=media.num_frames, size=media.size)
    except MediaError as e:
        return None, str(e)
    mel = log_mel(clip.audio, media, duration=clip.duration, num_frames=audio_frames)
    return (np.ascontiguousarray(clip.frames, dtype=np.uint8), np.asarray(mel, dtype=np.float16)), None


