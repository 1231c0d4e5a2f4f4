"""Training and evaluation data: LLaVA-style qa.jsonl, clips decoded once into a feature cache, batches.

A split is a folder holding `qa.jsonl` (one conversation a line, `video` relative
to the folder) and, for AVSynth, `meta.jsonl` and `clips/`. Decoding a clip costs
far more than a training step on it, so every clip of a split is decoded once into
`features-<key>.safetensors` beside it (frames as uint8, log-mel as float16); the
key covers every media option, so changing one builds a new cache.

Notation: N clips, T frames, S frame side, M mel bins, F log-mel frames.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import MediaConfig, ModelConfig
from .prompt import EncodedPrompt, normalize_messages, pad_batch

QA_FILE = "qa.jsonl"
META_FILE = "meta.jsonl"
CACHE_PREFIX = "features-"
CACHE_FORMAT = 1


# ---- reading a split ----
def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    rows = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON object: {e}") from e
    return rows


def read_qa(folder: str | Path) -> list[dict]:
    """Every record of a split's qa.jsonl, checked: a `video` path and a conversation starting with the user."""
    folder = Path(folder)
    records = read_jsonl(folder / QA_FILE)
    for n, r in enumerate(records, 1):
        if "video" not in r or "conversations" not in r:
            raise ValueError(f"{folder / QA_FILE}:{n}: a record needs `video` and `conversations`, got {sorted(r)}")
        r["messages"] = normalize_messages(r["conversations"])
    if not records:
        raise ValueError(f"{folder / QA_FILE} holds no records")
    return records


def read_meta(folder: str | Path) -> dict[str, dict]:
    """meta.jsonl keyed by the clip's video path (as qa.jsonl names it)."""
    return {m["video"]: m for m in read_jsonl(Path(folder) / META_FILE)}


def ensure_split(folder: str | Path, clips: int, seed: int, workers: int | None = None, progress: bool = True) -> Path:
    """The split folder, generated with the AVSynth generator first if it has no qa.jsonl and `clips` > 0."""
    folder = Path(folder)
    if (folder / QA_FILE).is_file():
        return folder
    if clips <= 0:
        raise FileNotFoundError(
            f"{folder / QA_FILE} does not exist: generate the split first "
            f"(`vqa synth --out {folder} --clips N --seed S`) or set the config's *_clips to generate it"
        )
    from .synth.generate import generate

    generate(folder, clips, seed, workers=workers, progress=progress)
    return folder


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
        from .features import frames_to_tensor

        rows = torch.as_tensor(rows, dtype=torch.long)
        frames = torch.stack([frames_to_tensor(self.frames[i].numpy()) for i in rows.tolist()])
        return frames, self.mel[rows].float()


def load_features(
    folder: str | Path, config: ModelConfig, videos: list[str] | None = None,
    workers: int | None = None, progress: bool = True,
) -> FeatureCache:
    """The split's feature cache, built on first use: each clip qa.jsonl names (or `videos`) is decoded once.

    Clips missing from an existing cache are decoded and added to it; where the folder is read-only
    the cache lives in memory only.
    """
    folder = Path(folder)
    if videos is None:
        videos = sorted({r["video"] for r in read_qa(folder)})
    path = folder / f"{CACHE_PREFIX}{cache_key(config.media, config.encoder.audio_frames)}.safetensors"
    cache = _read_cache(path) if path.is_file() else FeatureCache([], None, None)
    missing = [v for v in dict.fromkeys(videos) if v not in cache.index]
    if not missing:
        return cache
    frames, mel = decode_clips(folder, missing, config, workers=workers, progress=progress)
    if len(cache):
        frames, mel = torch.cat([cache.frames, frames]), torch.cat([cache.mel, mel])
    cache = FeatureCache(cache.videos + missing, frames, mel)
    try:
        _write_cache(path, cache)
    except OSError as e:
        import warnings

        warnings.warn(f"could not write the feature cache {path} ({e}); keeping it in memory only", stacklevel=2)
    return cache


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode clips into frames (N, T, S, S, 3) uint8 and log-mel (N, M, F) float16, in parallel."""
    from tqdm import tqdm

    jobs = [(str(folder / v), config.media.__dict__, config.encoder.audio_frames) for v in videos]
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    frames, mel = [], []
    with tqdm(total=len(jobs), desc=f"decoding {folder.name}", unit="clip", disable=not progress) as bar:
        if workers <= 1:
            results = map(_decode, jobs)
            pool = None
        else:
            # spawn: safe when the caller already runs torch threads
            pool = mp.get_context("spawn").Pool(workers, initializer=_one_thread)
            results = pool.imap(_decode, jobs, chunksize=8)
        try:
            for f, m in results:
                frames.append(f)
                mel.append(m)
                bar.update()
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    return torch.from_numpy(np.stack(frames)), torch.from_numpy(np.stack(mel))


def _one_thread() -> None:
    torch.set_num_threads(1)  # one clip per worker process: threads would only contend


def _decode(job: tuple[str, dict, int]) -> tuple[np.ndarray, np.ndarray]:
    from .features import log_mel
    from .media import load_clip

    path, media, audio_frames = job
    media = MediaConfig(**media)
    clip = load_clip(path, num_frames=media.num_frames, size=media.size)
    mel = log_mel(clip.audio, media, duration=clip.duration, num_frames=audio_frames)
    return np.ascontiguousarray(clip.frames, dtype=np.uint8), np.asarray(mel, dtype=np.float16)


# ---- samples and their order ----
@dataclass
class Sample:
    """One conversation about one clip (several questions when turns are packed)."""

    row: int | None  # the clip's row in the feature cache; None for a conversation without a clip
    messages: list[dict]


def qa_samples(records: list[dict], cache: FeatureCache, turns: int = 1, seed: int = 0) -> list[Sample]:
    """Conversations to train on. With turns > 1, single-question records of the same clip are packed
    (in a seeded random order) into conversations of up to `turns` questions: they share the clip's
    tokens, so a step learns from more answers at the same cost."""
    if turns == 1:
        return [Sample(cache.row(r["video"]), r["messages"]) for r in records]
    by_clip: dict[str, list[list[dict]]] = {}
    for r in records:
        by_clip.setdefault(r["video"], []).append(r["messages"])
    rng = np.random.default_rng(seed)
    samples = []
    for video, convs in by_clip.items():
        order = rng.permutation(len(convs))
        for start in range(0, len(convs), turns):
            messages = []
            for k, j in enumerate(order[start:start + turns]):
                conv = [dict(m) for m in convs[j]]
                if k:  # the placeholder only in the first turn: the clip is shown once
                    conv[0]["content"] = conv[0]["content"].replace("<video>\n", "").replace("<video>", "")
                messages += conv
            samples.append(Sample(cache.row(video), messages))
    return samples


def describe_samples(meta: dict[str, dict], cache: FeatureCache, count: int, seed: int = 0) -> list[Sample]:
    """`count` one-question conversations asking for the whole clip (vqa.synth.describe), answered with
    the description of its metadata; clips in a seeded order, pass after pass, phrasings drawn at random."""
    from .prompt import with_video
    from .synth.describe import DESCRIBE_QUESTIONS, describe

    videos = [v for v in cache.videos if v in meta]
    if not videos:
        raise ValueError("no clip of the feature cache has metadata: cannot teach descriptions")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(videos))
    out = []
    for k in range(count):
        video = videos[order[k % len(videos)]]
        question = with_video(DESCRIBE_QUESTIONS[int(rng.integers(len(DESCRIBE_QUESTIONS)))])
        out.append(Sample(cache.row(video), [{"role": "user", "content": question},
                                             {"role": "assistant", "content": describe(meta[video])}]))
    return out


class EpochOrder:
    """Sample order as a pure function of (seed, position): epoch e is a seeded permutation, epochs follow
    each other, so a run resumes exactly from its position alone and any process can compute its share."""

    def __init__(self, n: int, seed: int):
        if n < 1:
            raise ValueError("cannot order an empty dataset")
        self.n = n
        self.seed = seed
        self._epoch = -1
        self._perm: list[int] = []

    def take(self, position: int, count: int) -> list[int]:
        """Indices at positions [position, position + count)."""
        out = []
        for p in range(position, position + count):
            epoch, k = divmod(p, self.n)
            if epoch != self._epoch:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._perm = torch.randperm(self.n, generator=g).tolist()
                self._epoch = epoch
            out.append(self._perm[k])
        return out


def rank_share(order: EpochOrder, position: int, batch_size: int, rank: int, world: int) -> list[int]:
    """This process's part of the global batch that starts at `position` (world * batch_size samples)."""
    return order.take(position + rank * batch_size, batch_size)


class PromptEncoder:
    """Tokenises conversations once each (memoised by sample index) and pads them into batches."""

    def __init__(self, model, samples: list[Sample]):
        self.model = model
        self.samples = samples
        self._memo: dict[int, EncodedPrompt] = {}

    def prompt(self, i: int) -> EncodedPrompt:
        if i not in self._memo:
            self._memo[i] = self.model.encode_prompt(self.samples[i].messages)
        return self._memo[i]

    def batch(self, indices: list[int], cache: FeatureCache) -> dict[str, torch.Tensor]:
        """Padded prompt tensors plus the frames and mel of the clips shown (in batch order; none
        for a conversation without a clip, and no frames at all if no conversation shows one)."""
        pad_id = self.model.tokenizer.pad_token_id
        prompts = [self.prompt(i) for i in indices]
        batch = pad_batch(prompts, pad_id if pad_id is not None else 0)
        rows = [self.samples[i].row for i, p in zip(indices, prompts) if p.video_mask.any()]
        if None in rows:
            raise ValueError("a conversation shows a clip (it has the placeholder) but names no clip")
        if rows:
            batch["frames"], batch["mel"] = cache.inputs(rows)
        return batch
