"""`vqa train --config FILE`: the training loop, on a CPU or a GPU, or on several under `accelerate launch`.

Reads top to bottom: processes, recipe and data, model, resume, each stage in turn (vqa.train.stage),
then the bundle. A run whose out_dir holds a checkpoint continues from it exactly: same weights,
optimiser, schedule, RNG streams and data position as if never stopped.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from .. import bundle
from ..config import ModelConfig
from ..data import load_features, read_qa, split_holdout, usable
from ..data.perception import add_perception
from ..domain import fit_domain
from . import checkpoint
from .card import write_card
from .config import TrainConfig, load_config
from .plot import plot_curves
from .precision import resolve_precision
from .recipe import load_recipe
from .runlog import LOG, RunLog, last_val
from .stage import PLOT, Run, parts_of, run_stage

LOCK = ".running"  # in out_dir while a run writes there


class RunningError(RuntimeError):
    """Another training run is writing to the same output folder."""


def cli(args) -> int:
    model_config, train_config = load_config(args.config)
    try:
        train(model_config, train_config, config_path=args.config)
    except RunningError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted(Path(train_config.out_dir), f"vqa train --config {args.config}"), file=sys.stderr)
        return 130
    return 0


def interrupted(out_dir: Path, command: str) -> str:
    """What a user who stopped a run (Ctrl-C) keeps, and how to go on."""
    found = checkpoint.list_checkpoints(out_dir)
    kept = (f"its last checkpoint, {found[-1]}, keeps it up to step {checkpoint.step_of(found[-1])}"
            if found else "it had written no checkpoint yet, so it starts again from the beginning")
    return f"\nstopped: {kept}. The same command goes on:\n  {command}"


def train(model_config: ModelConfig, config: TrainConfig, llm=None, tokenizer=None, config_path: str | None = None,
          command: str | None = None):
    """Run every stage (resuming from the newest checkpoint in out_dir); returns the trained VideoLLM.

    `llm`, `tokenizer`: a causal LM to adapt instead of loading `model_config.llm` (tests pass tiny ones).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    # ---- processes: cpu=True without a GPU, so a torchrun-style launch joins over gloo ----
    device_kind = "cuda" if torch.cuda.is_available() else "cpu"
    precisions = [resolve_precision(s.precision or config.precision, device_kind) for s in config.stages]
    accelerator = Accelerator(
        # bf16 needs no loss scaling: each stage autocasts itself; fp16 (GPU) goes through accelerate's scaler
        mixed_precision="fp16" if "fp16" in precisions else "no", cpu=device_kind == "cpu",
        # a batch may hold no clip for some heads, and some encoder outputs feed no target
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    main, out = accelerator.is_main_process, Path(config.out_dir)
    set_seed(config.seed)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    with claim(out) if main else nullcontext():
        return _run(accelerator, main, out, precisions, device_kind, model_config, config, llm, tokenizer,
                    config_path, command)


@contextmanager
def claim(out: Path) -> Iterator[None]:
    """Hold `out` for this run: a second run into the same folder would resume from this one's checkpoints
    while it still writes them, and both would write the bundle. The lock goes with the process that holds it."""
    lock = FileLock(out / LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunningError(f"another training run is writing to {out} (it holds {out / LOCK}); let it finish, "
                           f"stop it and run this command again to resume it, or give another output folder") from None
    try:
        yield
    finally:
        lock.release()


def _run(accelerator, main: bool, out: Path, precisions: list[str], device_kind: str, model_config: ModelConfig,
         config: TrainConfig, llm, tokenizer, config_path: str | None, command: str | None):
    from ..model import VideoLLM

    # ---- recipe and data: the main process makes missing splits and feature caches first ----
    recipe = load_recipe(config.recipe, config.recipe_options)
    recipe.configure_model(model_config)
    show = main and config.progress
    with accelerator.main_process_first():
        recipe.prepare_data(config.data, config.data.workers, show)
        train_records, val_records, val_folder = read_splits(config)
        held_out = val_folder == config.data.train  # one folder, one cache
        train_cache = load_features(config.data.train, model_config, workers=config.data.workers, progress=show,
                                    records=train_records + val_records if held_out else train_records)
        val_cache = train_cache if held_out else load_features(
            val_folder, model_config, records=val_records, workers=config.data.workers, progress=show)
    train_records, val_records = usable(train_records, train_cache), usable(val_records, val_cache)
    if model_config.perception_tokens and any(r.get("unfamiliar") for r in train_records):
        model_config.unfamiliar_line = True  # it learns what the line means, so it is served with it

    # ---- model ----
    if llm is None:
        from ..llm import load_llm

        llm, tokenizer = load_llm(model_config.llm)
    torch.manual_seed(config.seed)
    model = VideoLLM(model_config, llm, tokenizer)
    if config.init_from:
        bundle.load_weights(model, config.init_from)
    with accelerator.main_process_first():  # the perception text the LLM reads, where it reads one
        train_records = add_perception(config.data.train, train_records, model_config, tokenizer, show)
        val_records = add_perception(val_folder, val_records, model_config, tokenizer, show)
    task = (recipe.pretrain(model, model_config, config, train_cache, val_cache, val_records)
            if any(s.kind == "pretrain" for s in config.stages) else None)
    run = Run(accelerator, model, model_config, config, recipe, task, train_records, train_cache, val_records,
              val_cache, out, None, precisions, time.perf_counter())
    run.parts = parts_of(model, task.heads if task is not None else None)
    run.saved_tensors = checkpoint.trained_tensors(run.parts, model.encoder, task)

    # ---- resume ----
    progress, resume = {"stage": 0, "step": 0, "position": 0, "global_step": 0, "elapsed_s": 0.0}, None
    ckpt = checkpoint.latest_checkpoint(out)
    if ckpt is not None:
        progress, resume = checkpoint.resume(ckpt, run.saved_tensors, accelerator.num_processes)
        if main:
            print(f"resuming from {ckpt} (stage {progress['stage']}, step {progress['step']})")
    run.log = RunLog(out / LOG, keep_upto=progress["global_step"]) if main else None
    if main and ckpt is None:
        run.log.write({"type": "start", "model": model_config.to_dict(), "train": config.to_dict(),
                       "processes": accelerator.num_processes, "precision": precisions, "device": device_kind,
                       "train_records": len(train_records), "val_records": len(val_records)})
    run.started = time.perf_counter() - progress["elapsed_s"]

    # ---- the stages ----
    global_step = progress["global_step"]
    for index, stage in enumerate(config.stages):
        if index >= progress["stage"]:
            global_step = run_stage(run, index, stage, global_step, resume if index == progress["stage"] else None)

    # ---- the bundle ----
    if main:
        seconds = time.perf_counter() - run.started
        summary = {"train_seconds": round(seconds, 1), "processes": accelerator.num_processes,
                   "precision": precisions, "config_path": config_path, "command": command}
        # what "a clip like the training clips" means (vqa.domain)
        domain = fit_domain(model, train_cache, folder=config.data.train)
        for folder in [out / "final"] + ([Path(config.export)] if config.export else []):
            bundle.save_bundle(model, folder)
            domain.save(folder)
            write_card(folder, model_config, config, summary, last_val(out / LOG))
        run.log.write({"type": "end", **summary})
        plot_curves(out / LOG, out / PLOT)
        print(f"trained in {seconds / 60:.1f} min; bundle in {out / 'final'}"
              + (f" and {config.export}" if config.export else ""))
    accelerator.wait_for_everyone()
    return model


def read_splits(config: TrainConfig) -> tuple[list[dict], list[dict], str]:
    """(train records, validation records, the validation folder): `data.val`, or a held-out part of the
    training clips where it is None."""
    d = config.data
    records = read_qa(d.train)
    if d.val is not None:
        return records, read_qa(d.val), d.val
    train, held = split_holdout(records, d.val_fraction, seed=config.seed)
    return train, held, d.train
