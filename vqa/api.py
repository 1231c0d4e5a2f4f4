"""The Python API: load a bundle, ask about clips, chat over one clip.

Thread-safe: the model is only read after loading, and the shared mutable
things, the cache of encoded clips and the pool of conversations' keys and
values, sit behind locks. Clips are keyed by a hash of the file's bytes, so a
second question about the same file neither decodes nor encodes it again; a
follow-up question (or another question about the same clip) computes only the
tokens its prompt does not share with one the pool holds.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import bundle
from .config import ModelConfig
from .decoder import KVCache, common_prefix
from .features import clip_features
from .media import Clip, load_clip
from .prompt import with_video

CACHE_SIZE = 32
# keys and values of idle conversations kept for their next turn; least recently used dropped first
PREFIX_CACHE_BYTES = 256 << 20


@dataclass
class PreparedClip:
    """A clip as the model takes it in: decoded media, the log-mel, and its projected tokens."""

    key: str
    clip: Clip
    frames: torch.Tensor  # (T, 3, S, S) normalised
    mel: torch.Tensor  # (n_mels, F)
    tokens: torch.Tensor  # (K, H) in the LLM's embedding space


class VideoQA:
    def __init__(self, model, source: str | None = None, cache_size: int = CACHE_SIZE):
        self.model = model.eval()
        self.source = source
        self._cache: OrderedDict[str, PreparedClip] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.prefixes = PrefixPool(PREFIX_CACHE_BYTES)

    # ---- construction ----
    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str | None = None) -> "VideoQA":
        """Load a bundle folder; with no argument, the default `adapters/avsynth`."""
        from .llm import load_llm
        from .model import VideoLLM

        folder = Path(path) if path is not None else bundle.default_bundle()
        if not folder.is_dir():
            hint = (
                "no default adapter is installed yet: train one with `vqa train --config configs/avsynth.yaml` "
                "(see the README), or pass a bundle folder"
                if path is None else "pass a folder written by `save_pretrained` or `vqa train`"
            )
            raise bundle.BundleError(f"bundle folder {folder} does not exist: {hint}")
        config = bundle.read_config(folder)
        llm, tokenizer = load_llm(config.llm)
        model = VideoLLM(config, llm, tokenizer)
        bundle.load_weights(model, folder)
        if device:
            model.to(device)
        model.decoder()  # merge and pack the weights now, not on the first question
        return cls(model, source=str(folder))

    @classmethod
    def untrained(cls, config: ModelConfig | None = None, seed: int = 0) -> "VideoQA":
        """The base LLM with a freshly initialised encoder and projector: a starting point for training."""
        from .llm import load_llm
        from .model import VideoLLM

        config = config or ModelConfig()
        llm, tokenizer = load_llm(config.llm)
        torch.manual_seed(seed)
        return cls(VideoLLM(config, llm, tokenizer), source=None)

    def save_pretrained(self, folder: str | Path) -> Path:
        return bundle.save_bundle(self.model, folder)

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    # ---- clips ----
    def prepare(self, video: str | Path | Clip) -> PreparedClip:
        """Decode and encode a clip once; later calls with the same file or clip hit the cache."""
        key = _content_key(video, self.config)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        media = self.config.media
        clip = video if isinstance(video, Clip) else load_clip(video, num_frames=media.num_frames, size=media.size)
        frames, mel = clip_features(clip, media, mel_frames=self.config.encoder.audio_frames)
        with torch.no_grad():
            device = self.model.device
            tokens = self.model.get_video_features(frames[None].to(device), mel[None].to(device))[0]
        prepared = PreparedClip(key, clip, frames, mel, tokens)
        with self._lock:
            self._cache[key] = prepared
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return prepared

    # ---- questions ----
    def stream(
        self,
        video: str | Path | Clip | PreparedClip,
        question: str,
        history: list[dict] | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
    ) -> Iterator[str]:
        """Yield the answer as it is generated. `history`: earlier role/content turns about this clip."""
        prepared = video if isinstance(video, PreparedClip) else self.prepare(video)
        messages = _messages(history or [], question)
        decoder = self.model.decoder()
        if decoder is None:
            yield from self.model.stream(prepared.tokens, messages, max_new_tokens=max_new_tokens,
                                         temperature=temperature)
            return
        ids = self.model.encode_prompt(messages).input_ids.tolist()
        cache = self.prefixes.take(decoder, prepared.key, ids) or decoder.new_cache(
            capacity=len(ids) + max_new_tokens, key=prepared.key)
        try:
            yield from self.model.stream(prepared.tokens, messages, max_new_tokens=max_new_tokens,
                                         temperature=temperature, cache=cache)
        finally:  # also when the reader stops early: the cache holds every position it computed
            self.prefixes.put(decoder, cache)

    def ask(self, video, question: str, history: list[dict] | None = None, max_new_tokens: int = 128,
            temperature: float = 0.0) -> str:
        return "".join(self.stream(video, question, history, max_new_tokens, temperature)).strip()

    def ask_many(self, pairs: list[tuple], batch_size: int = 16, max_new_tokens: int = 32) -> list[str]:
        """Greedy answers to many (clip, question) pairs, asked in batches of batch_size; in order."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        prepared = [(self.prepare(video), question) for video, question in pairs]
        prompts = [self.model.encode_prompt(_messages([], question)) for _, question in prepared]
        # similar lengths together: less padding per batch
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].input_ids))
        answers = [""] * len(prompts)
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                tokens = torch.stack([prepared[i][0].tokens for i in idx])  # (B, K, H)
                texts = self.model.generate_batch(tokens, [prompts[i] for i in idx], max_new_tokens=max_new_tokens)
                for i, text in zip(idx, texts):
                    answers[i] = text.strip()
        return answers

    def chat(self, video) -> "Chat":
        return Chat(self, self.prepare(video))


class PrefixPool:
    """Keys and values of recent conversations (lean decoder only), lent to the next prompt that
    starts the same way: a chat's follow-up takes its own conversation's cache over and extends it;
    a prompt that shares only part of a cached one gets a copy of that part. Bounded in bytes; a
    cache in use is not in the pool, so the idle ones are dropped first, least recently used first."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: list[KVCache] = []  # least recently used first
        self._decoder = None  # the decoder the entries belong to; a new one empties the pool
        self._lock = threading.Lock()

    def take(self, decoder, key: str, ids: list[int]) -> KVCache | None:
        with self._lock:
            if decoder is not self._decoder:
                self._entries, self._decoder = [], decoder
            best, n = None, 0
            for entry in self._entries:
                shared = common_prefix(entry.ids, ids) if entry.key == key else 0
                if shared > n:
                    best, n = entry, shared
            if best is None:
                return None
            if n == best.length:  # the prompt extends it: hand it over
                self._entries.remove(best)
                return best
            return best.copy(n)  # a branch: the original stays for its own conversation

    def put(self, decoder, cache: KVCache) -> None:
        with self._lock:
            if decoder is not self._decoder:
                self._entries, self._decoder = [], decoder
            self._entries.append(cache)
            while self._entries and self.nbytes() > self.max_bytes:
                self._entries.pop(0)

    def nbytes(self) -> int:
        return sum(e.nbytes() for e in self._entries)

    def __len__(self) -> int:
        return len(self._entries)


class Chat:
    """Several turns about one clip, which is encoded once; each turn computes only its new tokens."""

    def __init__(self, qa: VideoQA, prepared: PreparedClip):
        self.qa = qa
        self.prepared = prepared
        self.history: list[dict] = []

    def stream(self, question: str, max_new_tokens: int = 128, temperature: float = 0.0) -> Iterator[str]:
        pieces = []
        for piece in self.qa.stream(self.prepared, question, self.history, max_new_tokens, temperature):
            pieces.append(piece)
            yield piece
        self.history += [{"role": "user", "content": question}, {"role": "assistant", "content": "".join(pieces).strip()}]

    def ask(self, question: str, max_new_tokens: int = 128, temperature: float = 0.0) -> str:
        return "".join(self.stream(question, max_new_tokens, temperature)).strip()

    def reset(self) -> None:
        self.history = []


def _messages(history: list[dict], question: str) -> list[dict]:
    """The placeholder goes into the first user turn of the conversation."""
    turns = [{"role": t["role"], "content": t["content"]} for t in history]
    if turns:
        turns[0]["content"] = with_video(turns[0]["content"])
        return turns + [{"role": "user", "content": question}]
    return [{"role": "user", "content": with_video(question)}]


def _content_key(video, config: ModelConfig) -> str:
    h = hashlib.sha256()
    h.update(f"{config.media.num_frames}:{config.media.size}:{config.media.n_mels}".encode())
    if isinstance(video, Clip):
        h.update(np.ascontiguousarray(video.frames).tobytes())
        h.update(np.ascontiguousarray(video.audio).tobytes())
    else:
        path = Path(video)
        if not path.is_file():
            from .media import MediaError

            raise MediaError(f"{path}: no such file")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
