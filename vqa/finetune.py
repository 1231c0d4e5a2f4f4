"""`vqa finetune DATA --out DIR`: teach a bundle a folder of your own clips and questions, in one line.

Starts from a bundle (default: the default one), trains its projector and LoRA (and the encoder with
`--train-encoder`) on DATA's qa.jsonl in one align stage, validates on `--val` or on a held-out tenth
of the clips, and writes a bundle to DIR with a model card holding the validation table and the
command. Checkpoints go to DIR/training/: running the same command again after an interruption
resumes where the run stopped.
"""
from __future__ import annotations

import math
import shlex
import shutil
import sys
from pathlib import Path

from . import bundle
from .config import LoraConfig, ModelConfig
from .data import read_qa
from .train.config import DataConfig, StageConfig, TrainConfig

RUN_DIR = "training"
EPOCHS = 3  # passes over the training questions, where --steps is not given
MIN_STEPS, MAX_STEPS = 20, 3000


def default_steps(records: int, batch_size: int, val_fraction: float | None) -> int:
    """About EPOCHS passes over the training records (less the held-out part), within [MIN, MAX]."""
    train = records * (1 - val_fraction) if val_fraction else records
    return max(MIN_STEPS, min(MAX_STEPS, math.ceil(EPOCHS * train / batch_size)))


def finetune_configs(
    data: str, out: str, base: str | None = None, val: str | None = None, steps: int | None = None,
    batch_size: int = 8, lr: float = 1e-3, train_encoder: bool = False, chat: float = 0.0, seed: int = 0,
    workers: int | None = None, progress: bool = True, perception_tokens: int | None = None, turns: int = 1,
) -> tuple[ModelConfig, TrainConfig]:
    """The model (the base bundle's) and training configs of a fine-tune. `perception_tokens`: the budget of the
    perception text the model reads after the clip tokens (0: none; default: the base bundle's). `turns`: questions
    about one clip packed into a conversation."""
    if turns < 1:
        raise ValueError(f"--turns must be at least 1, got {turns}")
    base_folder = Path(base) if base else bundle.default_bundle()
    model_config = bundle.read_config(base_folder)
    if perception_tokens is not None:
        if perception_tokens < 0:
            raise ValueError(f"--perception-tokens must be 0 (off) or a positive budget, got {perception_tokens}")
        model_config.perception_tokens = perception_tokens
    if model_config.lora is None:  # a bundle without a LoRA gets the default one, trained from zero
        model_config.lora = LoraConfig()
    data_config = DataConfig(train=str(data), val=str(val) if val else None, workers=workers)
    records = len(read_qa(data))
    steps = steps or default_steps(records, batch_size, None if val else data_config.val_fraction)
    parts = ["projector", "lora"] + (["encoder"] if train_encoder else [])
    stage = StageConfig(
        name="finetune", kind="align", train=parts, steps=steps, batch_size=batch_size, lr=lr,
        lr_scale={"projector": 0.1, "encoder": 0.1}, warmup_steps=min(10, steps // 10), chat=chat, turns=turns,
    )
    train_config = TrainConfig(
        out_dir=str(Path(out) / RUN_DIR), export=str(out), init_from=str(base_folder), seed=seed, data=data_config,
        stages=[stage], log_every=max(1, min(10, steps // 20)), eval_every=max(10, steps // 4),
        ckpt_every=max(5, min(100, steps // 10)),
        val_questions=200, val_batch_size=16, progress=progress,
    )
    return model_config, train_config


def finetune(data: str, out: str, llm=None, tokenizer=None, command: str | None = None, **options):
    """Fine-tune and write the bundle to `out`; returns the trained model. Options: see `finetune_configs`."""
    from .train.loop import train

    out_dir = Path(out)
    if (out_dir / bundle.CONFIG_NAME).is_file() and not (out_dir / RUN_DIR / "checkpoints").is_dir():
        raise FileExistsError(f"{out_dir} already holds a bundle: choose another --out, or remove it first")
    model_config, train_config = finetune_configs(data, out, **options)
    model = train(model_config, train_config, llm=llm, tokenizer=tokenizer, command=command)
    shutil.rmtree(out_dir / RUN_DIR / "checkpoints", ignore_errors=True)  # the bundle holds the result
    return model


def cli(args) -> int:
    from .bundle import BundleError
    from .train.loop import RunningError, interrupted

    try:
        finetune(args.data, args.out, command=_command(args), base=args.base, val=args.val, steps=args.steps,
                 batch_size=args.batch_size, lr=args.lr, train_encoder=args.train_encoder, chat=args.chat,
                 workers=args.workers, perception_tokens=args.perception_tokens, turns=args.turns)
    except (BundleError, FileNotFoundError, FileExistsError, ValueError, RunningError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted(Path(args.out) / RUN_DIR, _command(args)), file=sys.stderr)
        return 130
    print(f"wrote the bundle to {args.out}; ask it with: vqa ask CLIP QUESTION --adapter {args.out}")
    return 0


def _command(args) -> str:
    """The `vqa finetune` command line that reproduces a run."""
    parts = ["vqa finetune", shlex.quote(str(args.data)), "--out", shlex.quote(str(args.out))]
    defaults = {"base": None, "val": None, "steps": None, "batch_size": 8, "lr": 1e-3, "chat": 0.0, "workers": None,
                "perception_tokens": None, "turns": 1}
    for name, default in defaults.items():
        if getattr(args, name) != default:
            parts += [f"--{name.replace('_', '-')}", shlex.quote(str(getattr(args, name)))]
    return " ".join(parts + (["--train-encoder"] if args.train_encoder else []))
