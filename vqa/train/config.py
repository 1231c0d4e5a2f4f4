"""The training tree: what to train on, in which stages, for how long. Saved with every checkpoint.

A training YAML has two sections: `model:` (a `vqa.config.ModelConfig`, the one
model tree) and `train:` (a `TrainConfig`, below), and may name a `base:` YAML that
it changes (mappings merge key by key, anything else is replaced). Each stage names
what it trains; the LLM's own weights are never trained, only the LoRA beside them.
A `recipe` (a module, e.g. `vqa.avsynth`) plugs in what one benchmark adds: data
generation, pre-training heads, extra conversations, scoring (`vqa.train.recipe`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ModelConfig, build

# what a stage can train
PARTS = ("encoder", "pointer", "projector", "lora", "heads")
# "pretrain": the encoder with a recipe's small heads on its clip targets (no LLM);
# "align": answers through the LLM, loss on the answer tokens
STAGE_KINDS = ("pretrain", "align")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class DataConfig:
    # dataset folders, each with a qa.jsonl (vqa.data.records)
    train: str = "data/train"
    # None: hold out `val_fraction` of the training clips (by clip, seeded) for validation
    val: str | None = None
    val_fraction: float = 0.1
    # processes that decode clips into the feature cache (None: every core)
    workers: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"invalid DataConfig: val_fraction must be in (0, 1), got {self.val_fraction}")


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
    # align: shares of the conversations that come from the recipe's own sources by name
    # (AVSynth: {"describe": 0.15}, "Describe this clip." answered from the clip's metadata)
    mix: dict[str, float] = field(default_factory=dict)
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
        shares = {"chat": self.chat, **self.mix}
        for name, share in shares.items():
            if not 0 <= share < 1:
                problems.append(f"the {name} share must be in [0, 1), got {share}")
            if share and self.kind != "align":
                problems.append(f"only an align stage mixes in {name} (a pretrain stage runs no LLM)")
        if sum(shares.values()) >= 1:
            problems.append(f"chat and mix shares must leave room for the dataset's questions, got {shares}")
        if self.precision is not None and self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS} or null, got {self.precision!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if problems:
            raise ValueError(f"invalid stage {self.name!r}: " + "; ".join(problems))


@dataclass
class TrainConfig:
    # where checkpoints, logs, the plot and the final bundle go
    out_dir: str = "runs/train"
    # where the trained bundle is also written when training ends (None: only out_dir/final)
    export: str | None = None
    # a bundle whose weights the model starts from (its config must match `model:`); None: from scratch
    init_from: str | None = None
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])
    # a module with a RECIPE (vqa.train.recipe.Recipe), and its options; None: the generic loop only
    recipe: str | None = None
    recipe_options: dict[str, Any] = field(default_factory=dict)
    # validation answers: at most this many new tokens each
    val_max_new_tokens: int = 48
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
        for name in ("log_every", "eval_every", "ckpt_every", "keep_checkpoints", "val_batch_size", "chat_reply_tokens",
                     "val_max_new_tokens"):
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
        return build(cls, d)


def load_config(path: str | Path) -> tuple[ModelConfig, TrainConfig]:
    """Read a training YAML (relative paths in it are relative to the working folder); a recipe named in
    it completes the model config (`Recipe.configure_model`)."""
    raw = read_yaml(path)
    model = ModelConfig.from_dict(raw.get("model") or {})
    train = TrainConfig.from_dict(raw.get("train") or {})
    if train.recipe:
        from .recipe import load_recipe

        load_recipe(train.recipe, train.recipe_options).configure_model(model)
    return model, train


def read_yaml(path: str | Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A training YAML as a dict, with its `base:` chain merged in (the base's path relative to the file)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config {path} does not exist")
    if path.resolve() in seen:
        raise ValueError(f"{path}: its `base:` chain comes back to it")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping with `model:` and `train:` sections")
    unknown = sorted(set(raw) - {"base", "model", "train"})
    if unknown:
        raise ValueError(f"{path}: unknown sections {unknown}; expected `base:`, `model:` and `train:`")
    base = raw.pop("base", None)
    if base is None:
        return raw
    return merge(read_yaml(path.parent / base, seen + (path.resolve(),)), raw)


def merge(base: dict, change: dict) -> dict:
    """`base` with `change` applied: mappings merge key by key, any other value replaces the base's."""
    out = dict(base)
    for k, v in change.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
