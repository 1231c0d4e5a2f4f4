"""The Python API: load a bundle, ask about clips, chat over one clip.

Thread-safe: the model is only read after loading, and the shared mutable
things, the cache of encoded clips and the pool of conversations' keys and
values, sit behind locks. Clips are keyed by a hash of the file's bytes, so a
second question about the same file neither decodes nor encodes it again; a
follow-up question (or another question about the same clip) computes only the
tokens its prompt does not share with one the pool holds. The clip cache is
bounded by count and by bytes, and a cached clip keeps its frames, log-mel and
tokens, not its sound samples.

One request's work is bounded before the model runs: `max_duration` refuses long
clips while they decode, and the question and history are bounded in tokens
(vqa.limits): a long question is refused, a long history loses its oldest turns.
"""
from __future__ import annotations

import contextvars
import dataclasses
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import bundle
from .config import ModelConfig
from .decoder import KVCache, common_prefix, cut_back
from .features import clip_features
from .limits import MAX_CONVERSATION_TOKENS, MAX_QUESTION_TOKENS, check_history, check_question, fit_history
from .media import Clip, MediaError, load_clip, load_views, local_path
from .prompt import EncodedPrompt, with_video

if TYPE_CHECKING:
    from .perception import Perception

log = logging.getLogger(__name__)

CACHE_SIZE = 32
CACHE_BYTES = 256 * 2**20  # about 20 clips of 16 frames at 224 px
PERCEPTION_TOKENS = 160  # the text block's budget where a bundle not trained with one is asked to read it
# keys and values of idle conversations kept for their next turn; least recently used dropped first
PREFIX_CACHE_BYTES = 256 << 20


@dataclass
class PreparedClip:
    """A clip as the model takes it in: decoded media, the log-mel, and its projected tokens.

    `clip.audio` is empty: the log-mel holds what the model hears, and a long track's samples
    would dwarf everything else in the cache.
    """

    key: str
    clip: Clip
    frames: torch.Tensor  # (T, 3, S, S) normalised
    mel: torch.Tensor  # (n_mels, F)
    tokens: torch.Tensor  # (K, H) in the LLM's embedding space
    perception: "Perception | None" = None  # what pretrained models found (vqa.perception), when enabled
    # how far its tokens and its picture lie from the bundle's training clips (vqa.domain), whether within
    # their range, and why not, in words; None where the bundle has no domain (or no picture domain)
    domain_distance: float | None = None
    picture_distance: float | None = None
    in_domain: bool | None = None
    unfamiliar: str | None = None

    @property
    def nbytes(self) -> int:
        arrays = (self.clip.frames, self.clip.timestamps, self.clip.audio)
        return sum(a.nbytes for a in arrays) + sum(t.numel() * t.element_size()
                                                  for t in (self.frames, self.mel, self.tokens))


class VideoQA:
    def __init__(self, model, source: str | None = None, cache_size: int = CACHE_SIZE,
                 cache_bytes: int = CACHE_BYTES, max_duration: float | None = None, perception: bool | None = None,
                 domain=None):
        """`max_duration`: refuse clips longer than this many seconds (None: any length)."""
        self.model = model.eval()
        self.source = source
        self.max_duration = max_duration
        # run vqa.perception on each clip and give the LLM its text: by default where the bundle was trained to
        self.perception = model.config.perception_tokens > 0 if perception is None else perception
        self.perception_tokens = model.config.perception_tokens or PERCEPTION_TOKENS
        self.domain = domain  # vqa.domain.Domain of the bundle's training clips, where it has one
        self._cache: OrderedDict[str, PreparedClip] = OrderedDict()
        self._cache_size = cache_size
        self._cache_bytes = cache_bytes
        self._lock = threading.Lock()
        self.prefixes = PrefixPool(PREFIX_CACHE_BYTES)

    # ---- construction ----
    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str | None = None,
                        perception: bool | None = None) -> "VideoQA":
        """Load a bundle folder; with no argument, the default `adapters/real`. `perception`: see vqa.perception."""
        from .llm import load_llm
        from .model import VideoLLM

        folder = Path(path) if path is not None else bundle.default_bundle()
        if not folder.is_dir():
            hint = (
                "no default adapter is installed yet: train one with `vqa train --config configs/avsynth.yaml` "
                "and `vqa finetune` on spoken clips (docs/spoken.md), or pass a bundle folder"
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
    def prepare(self, video: str | Path | Clip, progress: Callable[[float, float], None] | None = None
                ) -> PreparedClip:
        """Decode and encode a clip once; later calls with the same file or clip hit the cache.
        `progress(done_s, total_s)` is called as its speech is transcribed (long clips)."""
        key = _content_key(video, self.config) + (":perception" if self.perception else "")
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
        if hit is not None:
            self._check_duration(hit.clip, video)
            return hit
        media = self.config.media
        seen = None  # the frames perception's image network takes, decoded beside the model's
        if isinstance(video, Clip):
            clip = video
            self._check_duration(clip, video)
        elif self.perception and media.sample_rate == 16_000:  # perception reuses the audio
            from .perception import SIGHT_FRAMES, sight

            views = [(media.num_frames, media.size)] + ([(SIGHT_FRAMES, sight.SIZE)] if sight.missing() is None else [])
            clip, *more = load_views(video, views, max_duration=self.max_duration)
            seen = more[0] if more else clip
        else:
            clip = load_clip(video, num_frames=media.num_frames, size=media.size, max_duration=self.max_duration)
        with ThreadPoolExecutor(max_workers=1) as pool:  # perception beside the encoder
            perceived = None
            if self.perception:
                from .perception import perceive

                # in the caller's context: a web page's progress bar is found through context variables
                perceived = pool.submit(contextvars.copy_context().run, perceive, video,
                                        clip=None if isinstance(video, Clip) else seen, progress=progress)
            frames, mel = clip_features(clip, media, mel_frames=self.config.encoder.audio_frames)
            with torch.no_grad():
                device = self.model.device
                tokens = self.model.get_video_features(frames[None].to(device), mel[None].to(device))[0]
            perception = None if perceived is None else perceived.result()
        clip = dataclasses.replace(clip, audio=np.zeros(0, np.float32))  # the log-mel and perception hold it
        prepared = PreparedClip(key, clip, frames, mel, tokens, perception)
        if self.domain is not None:
            concepts = None if perception is None else perception.concepts
            seen = None if concepts is None or concepts.embedding is None else torch.from_numpy(concepts.embedding)
            prepared.domain_distance, prepared.picture_distance, prepared.unfamiliar = self.domain.judge(
                tokens, seen, photographic=concepts is not None and concepts.photographic)
            prepared.in_domain = prepared.unfamiliar is None
        with self._lock:
            self._cache[key] = prepared
            total = sum(p.nbytes for p in self._cache.values())
            while self._cache and (len(self._cache) > self._cache_size or total > self._cache_bytes):
                total -= self._cache.popitem(last=False)[1].nbytes
        return prepared

    def warm_up(self, seconds: float = 2.0) -> float:
        """Run a short generated clip (noise frames, a tone) through what a clip goes through once: features,
        encoder and, where perception is on, every installed sense at its own sizes. What a process pays only
        once (lazily imported audio code and its compilation, kernels built for these shapes) is then paid
        here, at a server's start, and not by its first user's clip. Caches nothing; returns the seconds it took."""
        clock = time.perf_counter()
        media = self.config.media
        rng = np.random.default_rng(0)
        t = np.arange(int(seconds * media.sample_rate)) / media.sample_rate
        audio = (0.1 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)

        def clip(num_frames: int, size: int) -> Clip:
            return Clip(path="warm-up", frames=rng.integers(0, 256, (num_frames, size, size, 3), dtype=np.uint8),
                        timestamps=(np.arange(num_frames) + 0.5) * seconds / num_frames, audio=audio,
                        sample_rate=media.sample_rate, has_audio=True, duration=seconds, width=size, height=size,
                        fps=num_frames / seconds)

        frames, mel = clip_features(clip(media.num_frames, media.size), media,
                                    mel_frames=self.config.encoder.audio_frames)
        with torch.no_grad():
            self.model.get_video_features(frames[None].to(self.model.device), mel[None].to(self.model.device))
        if self.perception and media.sample_rate == 16_000:
            from .perception import SIGHT_FRAMES, perceive, sight, speech

            perceive(clip(SIGHT_FRAMES, sight.SIZE))  # the tone is no voice: Whisper next, on its own
            if speech.missing() is None:
                speech.warm_up()
        return time.perf_counter() - clock

    def warm(self, prepared: PreparedClip) -> int:
        """Compute now what every first question about a prepared clip starts with (the system prompt, the clip
        tokens, the perception text) into the prefix pool, so that the first question, like a follow-up,
        computes only its own tokens. For a page that prepares a clip while its user types. Returns the
        positions computed (0 without the lean decoder, or where the pool holds them already)."""
        decoder = self.model.decoder()
        if decoder is None:
            return 0
        shared = self._start(self._context(prepared))
        n = len(shared.input_ids)
        cache = self.prefixes.take(decoder, prepared.key, shared.input_ids.tolist(), (n,))
        if cache is not None and cache.length >= n:
            self.prefixes.put(decoder, cache)
            return 0
        cache = cache or decoder.new_cache(capacity=n + 64, key=prepared.key)
        before = cache.length
        self.model.prefill(prepared.tokens, shared, cache, decoder)
        self.prefixes.put(decoder, cache)
        return n - before

    def _start(self, context: str) -> EncodedPrompt:
        """What every prompt about a clip with this perception text starts with: the system prompt, the clip
        tokens, the perception text. A prompt's attention is split there (`Decoder.prefill`'s marks), whether
        that start was warmed, is cached from an earlier question, or neither."""
        one, two = (self.model.encode_prompt(_messages([], q, context)) for q in ("A", "B"))
        n = common_prefix(one.input_ids.tolist(), two.input_ids.tolist())
        return EncodedPrompt(one.input_ids[:n], one.labels[:n], one.video_mask[:n])

    def _check_duration(self, clip: Clip, video) -> None:
        if self.max_duration is not None and clip.duration > self.max_duration:
            name = clip.path if isinstance(video, Clip) else video
            raise MediaError(f"{name} lasts {clip.duration:.0f} s; clips up to {self.max_duration:.0f} s are accepted")

    # ---- the request's text ----
    def check_request(self, question: str, history: list[dict] | None = None) -> tuple[str, list[dict], int]:
        """(question stripped, the history turns the model will see, how many oldest turns were dropped).

        Raises QuestionError for an empty, blank or too long question, HistoryError for a history
        that is not a list of role/content turns. Cheap: call it before any decoding.
        """
        tokenizer = self.model.tokenizer
        question = check_question(question, tokenizer, MAX_QUESTION_TOKENS)
        turns = check_history(history)
        budget = MAX_CONVERSATION_TOKENS - len(tokenizer(question, add_special_tokens=False)["input_ids"])
        kept, dropped = fit_history(turns, tokenizer, budget)
        if dropped:
            log.info("dropped the oldest %d of %d history turns (over %d tokens)", dropped, len(turns),
                     MAX_CONVERSATION_TOKENS)
        return question, kept, dropped

    # ---- questions ----
    def stream(
        self,
        video: str | Path | Clip | PreparedClip,
        question: str,
        history: list[dict] | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
    ) -> Iterator[str]:
        """Yield the answer as it is generated. `history`: earlier role/content turns about this clip;
        its oldest turns are left out where the conversation passes MAX_CONVERSATION_TOKENS."""
        question, history, _ = self.check_request(question, history)
        context = getattr(self.model.tokenizer, "model_max_length", None) or 0
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if 0 < context < 10**9 and self.model.num_video_tokens + MAX_CONVERSATION_TOKENS + max_new_tokens > context:
            raise ValueError(f"max_new_tokens={max_new_tokens} does not fit the model's context of {context} "
                             f"tokens beside the clip's {self.model.num_video_tokens} and a conversation's "
                             f"{MAX_CONVERSATION_TOKENS}")
        prepared = video if isinstance(video, PreparedClip) else self.prepare(video)
        context = self._context(prepared)
        messages = _messages(history, question, context)
        decoder = self.model.decoder()
        if decoder is None:
            yield from self.model.stream(prepared.tokens, messages, max_new_tokens=max_new_tokens,
                                         temperature=temperature)
            return
        ids = self.model.encode_prompt(messages).input_ids.tolist()
        marks = (len(self._start(context).input_ids),)
        cache = self.prefixes.take(decoder, prepared.key, ids, marks) or decoder.new_cache(
            capacity=len(ids) + max_new_tokens, key=prepared.key)
        try:
            yield from self.model.stream(prepared.tokens, messages, max_new_tokens=max_new_tokens,
                                         temperature=temperature, cache=cache, decoder=decoder, marks=marks)
        finally:  # also when the reader stops early: the cache holds every position it computed
            self.prefixes.put(decoder, cache)

    def ask(self, video, question: str, history: list[dict] | None = None, max_new_tokens: int = 128,
            temperature: float = 0.0) -> str:
        return "".join(self.stream(video, question, history, max_new_tokens, temperature)).strip()

    def ask_many(self, pairs: list[tuple], batch_size: int = 16, max_new_tokens: int = 32) -> list[str]:
        """Greedy answers to many (clip, question) pairs, asked in batches of batch_size; in order."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        questions = [self.check_request(question)[0] for _, question in pairs]  # before any decoding
        prepared = [(self.prepare(video), question) for (video, _), question in zip(pairs, questions)]
        prompts = [self.model.encode_prompt(_messages([], question, self._context(clip))) for clip, question in prepared]
        with torch.no_grad():
            answers = self.model.generate_many([clip.tokens for clip, _ in prepared], [id(clip) for clip, _ in prepared],
                                               prompts, batch_size, max_new_tokens)
        return [a.strip() for a in answers]

    def chat(self, video: str | Path | Clip | PreparedClip) -> "Chat":
        """A conversation about one clip (a path, a decoded Clip, or a clip `prepare` returned)."""
        return Chat(self, video if isinstance(video, PreparedClip) else self.prepare(video))

    def _context(self, prepared: PreparedClip) -> str:
        """The perception text the LLM reads after the clip tokens ("" where perception is off)."""
        if prepared.perception is None:
            return ""
        tokenizer = self.model.tokenizer
        return prepared.perception.to_text(
            self.perception_tokens, count=lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]),
            unfamiliar=self.model.config.unfamiliar_line and prepared.unfamiliar is not None)


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

    def take(self, decoder, key: str, ids: list[int], marks: tuple[int, ...] = ()) -> KVCache | None:
        """The cache that shares most of `ids`; a branch off one is a copy cut back to the last of `marks`
        it passes (see `Decoder.prefill`), where marks are given."""
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
            if marks:
                n = cut_back(n, marks)
            return best.copy(n) if n else None  # a branch: the original stays for its own conversation

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


def _messages(history: list[dict], question: str, perception: str = "") -> list[dict]:
    """The placeholder (and the perception text after it) goes into the first user turn of the conversation."""
    turns = [{"role": t["role"], "content": t["content"]} for t in history]
    if turns:
        turns[0]["content"] = with_video(turns[0]["content"], perception)
        return turns + [{"role": "user", "content": question}]
    return [{"role": "user", "content": with_video(question, perception)}]


def _content_key(video, config: ModelConfig) -> str:
    h = hashlib.sha256()
    h.update(f"{config.media.num_frames}:{config.media.size}:{config.media.n_mels}".encode())
    if isinstance(video, Clip):
        h.update(np.ascontiguousarray(video.frames).tobytes())
        h.update(np.ascontiguousarray(video.audio).tobytes())
    else:
        path = local_path(video)
        if path.is_dir():
            raise MediaError(f"{path} is a folder, not a video file")
        if not path.is_file():
            raise MediaError(f"{path}: no such file")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
