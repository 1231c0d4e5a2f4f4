"""The Python API: load a bundle, ask about clips, chat over one clip.

Thread-safe: the model is only read after loading, and the one shared mutable
thing, the cache of encoded clips, sits behind a lock. Clips are keyed by a
hash of the file's bytes, so a second question about the same file neither
decodes nor encodes it again.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import bundle
from .config import ModelConfig
from .features import clip_features
from .media import Clip, load_clip
from .prompt import with_video

if TYPE_CHECKING:
    from .perception import Perception

CACHE_SIZE = 32
PERCEPTION_TOKENS = 160  # the text block's budget where a bundle not trained with one is asked to read it


@dataclass
class PreparedClip:
    """A clip as the model takes it in: decoded media, the log-mel, and its projected tokens."""

    key: str
    clip: Clip
    frames: torch.Tensor  # (T, 3, S, S) normalised
    mel: torch.Tensor  # (n_mels, F)
    tokens: torch.Tensor  # (K, H) in the LLM's embedding space
    perception: "Perception | None" = None  # what pretrained models found (vqa.perception), when enabled
    # how far its tokens lie from the bundle's training clips (vqa.domain), and whether within their range;
    # None where the bundle has no domain
    domain_distance: float | None = None
    in_domain: bool | None = None


class VideoQA:
    def __init__(self, model, source: str | None = None, cache_size: int = CACHE_SIZE, perception: bool | None = None,
                 domain=None):
        self.model = model.eval()
        self.source = source
        # run vqa.perception on each clip and give the LLM its text: by default where the bundle was trained to
        self.perception = model.config.perception_tokens > 0 if perception is None else perception
        self.perception_tokens = model.config.perception_tokens or PERCEPTION_TOKENS
        self.domain = domain  # vqa.domain.Domain of the bundle's training clips, where it has one
        self._cache: OrderedDict[str, PreparedClip] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    # ---- construction ----
    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str | None = None,
                        perception: bool | None = None) -> "VideoQA":
        """Load a bundle folder; with no argument, the default `adapters/avsynth`. `perception`: see vqa.perception."""
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
        from .domain import Domain

        return cls(model, source=str(folder), perception=perception, domain=Domain.load(folder))

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
        key = _content_key(video, self.config) + (":perception" if self.perception else "")
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
        perception = None
        if self.perception:
            from .perception import perceive

            perception = perceive(video, clip=None if isinstance(video, Clip) else _perception_clip(clip))
        prepared = PreparedClip(key, clip, frames, mel, tokens, perception)
        if self.domain is not None:
            prepared.domain_distance = self.domain.distance(tokens)
            prepared.in_domain = prepared.domain_distance <= self.domain.threshold
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
        context = "" if prepared.perception is None else prepared.perception.to_text(
            self.perception_tokens, count=lambda text: len(self.model.tokenizer(text, add_special_tokens=False)["input_ids"]))
        messages = _messages(history or [], question, context)
        yield from self.model.stream(prepared.tokens, messages, max_new_tokens=max_new_tokens, temperature=temperature)

    def ask(self, video, question: str, history: list[dict] | None = None, max_new_tokens: int = 128,
            temperature: float = 0.0) -> str:
        return "".join(self.stream(video, question, history, max_new_tokens, temperature)).strip()

    def chat(self, video) -> "Chat":
        return Chat(self, self.prepare(video))


class Chat:
    """Several turns about one clip, which is encoded once."""

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


def _messages(history: list[dict], question: str, perception: str = "") -> list[dict]:
    """The placeholder (and the perception text after it) goes into the first user turn of the conversation."""
    turns = [{"role": t["role"], "content": t["content"]} for t in history]
    if turns:
        turns[0]["content"] = with_video(turns[0]["content"], perception)
        return turns + [{"role": "user", "content": question}]
    return [{"role": "user", "content": with_video(question, perception)}]


def _perception_clip(clip: Clip) -> Clip | None:
    """The model's decoded clip, reused by perception for its audio (perception decodes its own larger frames)."""
    return clip if clip.sample_rate == 16000 else None


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
