"""The training tree: what to train on, in which stages, for how long. Saved with every checkpoint.

A training YAML has two sections: `model:` (a `vqa.config.ModelConfig`, the one
model tree) and `train:` (a `TrainConfig`, below). Each stage names what it
trains; the LLM's own weights are never trained, only the LoRA beside them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ModelConfig

# what a stage can train
PARTS = ("encoder", "pointer", "projector", "lora", "heads")
# "pretrain": the encoder with small classification heads on the clip metadata (no LLM);
# "align": answers through the LLM, loss on the answer tokens
STAGE_KINDS = ("pretrain", "align")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class DataConfig:
    # AVSynth-style folders (qa.jsonl, meta.jsonl, clips/)
    train: str = "data/avsynth-train"
    val: str = "data/avsynth-val"
    # where a folder has no qa.jsonl yet, generate it with `vqa synth` (0: never generate)
    train_clips: int = 0
    train_seed: int = 1
    val_clips: int = 0
    val_seed: int = 2
    # processes that decode clips into the feature cache (None: every core)
    workers: int | None = None


@dataclass
class StageConfig:
    name: str = "align"
    kind: str = "align"
    train: list[str] = field(default_factory=lambda: ["projector"])
    steps: int = 100
    batch_size: int = 8  # per process, per micro-step
    grad_accum: int = 1
    # optimisation: AdamW, linear warm-up then cosine decay to lr * min_lr_ratio
    lr: float = 1e-3
    # per-part learning-rate factors, e.g. {"encoder": 0.1}
    lr_scale: dict[str, float] = field(default_factory=dict)
    weight_decay: float = 0.01
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    # align: at most this many questions of one clip in one conversation (shares the clip's tokens)
    turns: int = 1
    # align: this share of the conversations is general chat (vqa.train.chat): prompts unrelated to any clip,
    # answered with the base LLM's own replies, so the LoRA keeps the LLM's language
    chat: float = 0.0
    # align: this share of the conversations asks for the whole clip ("Describe this clip.") and is answered
    # with a description of its AVSynth metadata (vqa.synth.describe)
    describe: float = 0.0
    # None: the run's precision; small encoders can be faster in fp32 on a CPU than in bf16
    precision: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in STAGE_KINDS:
            problems.append(f"kind must be one of {STAGE_KINDS}, got {self.kind!r}")
        unknown = sorted(set(self.train) - set(PARTS))
        if unknown:
            problems.append(f"train names unknown parts {unknown}; parts: {PARTS}")
        if not self.train:
            problems.append("train is empty: name at least one part")
        if self.kind == "pretrain" and "lora" in self.train:
            problems.append(f"a pretrain stage runs no LLM and cannot train the LoRA, got {self.train}")
        if self.kind == "align" and "heads" in self.train:
            problems.append("an align stage has no heads to train")
        unknown = sorted(set(self.lr_scale) - set(PARTS))
        if unknown:
            problems.append(f"lr_scale names unknown parts {unknown}")
        for name in ("steps", "batch_size", "grad_accum", "turns"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.warmup_steps > self.steps:
            problems.append(f"warmup_steps must be in [0, steps={self.steps}], got {self.warmup_steps}")
        for name in ("chat", "describe"):
            if not 0 <= getattr(self, name) < 1:
                problems.append(f"{name} must be in [0, 1), got {getattr(self, name)}")
            if getattr(self, name) and self.kind != "align":
                problems.append(f"only an align stage mixes in {name} (a pretrain stage runs no LLM)")
        if self.chat + self.describe >= 1:
            problems.append(f"chat + describe must leave room for the benchmark questions, got "
                            f"{self.chat} + {self.describe}")
        if self.precision is not None and self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS} or null, got {self.precision!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if problems:
            raise ValueError(f"invalid stage {self.name!r}: " + "; ".join(problems))


@dataclass
class TrainConfig:
    # where checkpoints, logs, the plot and the final bundle go
    out_dir: str = "runs/avsynth"
    # where the trained bundle is also written when training ends (None: only out_dir/final)
    export: str | None = None
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])
    # > 0: pretrain stages also classify every video patch (which object's centre it holds, that object's
    # motion, whether it beeps) with per-patch heads, dropped with the others; this weighs their loss
    # against the clip targets' mean (at 1.0 they drown the clip targets: the audio ones stay at chance)
    dense_weight: float = 0.0
    # > 0: pretrain stages also teach the first summary tokens, through the projector, to land on the LLM's
    # embeddings of a caption of the clip's metadata (vqa.caption.CAPTION; needs that many summary
    # tokens), weighed like dense_weight; the stage should then train the projector too
    caption_weight: float = 0.0
    # the longest base-LLM reply to a chat prompt (stages with `chat`), in tokens; a longer one is cut short
    chat_reply_tokens: int = 128
    # "auto": bf16 where the device runs it natively (CUDA bf16, or a CPU with AVX512-BF16/AMX), else fp32
    precision: str = "auto"
    # periodic work, in optimiser steps of the current stage
    log_every: int = 10
    eval_every: int = 100
    ckpt_every: int = 100
    keep_checkpoints: int = 2
    # validation: questions answered (align) or clips classified (pretrain) at each evaluation
    val_questions: int = 256
    val_batch_size: int = 32
    progress: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("dense_weight", "caption_weight"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("log_every", "eval_every", "ckpt_every", "keep_checkpoints", "val_batch_size", "chat_reply_tokens"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.stages:
            problems.append("stages is empty")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            problems.append(f"stage names must be distinct, got {names}")
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        _check_keys(cls, d)
        if "data" in d:
            _check_keys(DataConfig, d["data"])
            d["data"] = DataConfig(**d["data"])
        if "stages" in d:
            stages = []
            for s in d["stages"]:
                _check_keys(StageConfig, s)
                stages.append(StageConfig(**s))
            d["stages"] = stages
        return cls(**d)


def _check_keys(cls, d: dict[str, Any]) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {unknown}; known: {sorted(known)}")


def load_config(path: str | Path) -> tuple[ModelConfig, TrainConfig]:
    """Read a training YAML (relative paths in it are relative to the working folder)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping with `model:` and `train:` sections")
    unknown = sorted(set(raw) - {"model", "train"})
    if unknown:
        raise ValueError(f"{path}: unknown sections {unknown}; expected `model:` and `train:`")
    model = ModelConfig.from_dict(raw.get("model") or {})
    train = TrainConfig.from_dict(raw.get("train") or {})
    return model, train
