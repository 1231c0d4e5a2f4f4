"""One training stage: what it trains, its optimiser and schedule, and the loop with logging, validation and
checkpoints. A stage resumed from a checkpoint continues exactly (weights, optimiser, schedule, RNG, data
position). Every process takes its own slice of each global batch (`rank_share`); DDP averages gradients.
"""
from __future__ import annotations

import contextlib
import gc
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from ..data import EpochOrder, FeatureCache, PromptEncoder, qa_samples, rank_share
from . import checkpoint
from .chat import CHAT_FILE, chat_prompts, chat_samples, load_or_make_replies
from .config import StageConfig, TrainConfig
from .plot import plot_curves
from .precision import autocast
from .runlog import LOG, RunLog
from .schedule import warmup_cosine
from .validate import precise_batch_norm, validate_answers

PLOT = "curves.png"


@dataclass
class Run:
    """What every stage of a run shares."""

    accelerator: object
    model: nn.Module
    model_config: object
    config: TrainConfig
    recipe: object
    task: object | None  # the recipe's PretrainTask, where a stage pre-trains
    train_records: list[dict]
    train_cache: FeatureCache
    val_records: list[dict]
    val_cache: FeatureCache
    out: Path
    log: RunLog | None  # the main process's
    precisions: list[str]  # per stage
    started: float  # perf_counter at the run's start, less the time of earlier sessions
    parts: dict = field(default_factory=dict)
    saved_tensors: dict = field(default_factory=dict)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


class StageModule(nn.Module):
    """What one training step runs, as one module (so DDP sees one forward): heads loss or answer loss."""

    def __init__(self, model: nn.Module, task, precision: str = "fp32", train_pointer: bool = False):
        super().__init__()
        self.model = model
        self.task = task
        self.heads = task.heads if task is not None else None  # a submodule, so DDP syncs its gradients
        self.precision = precision
        self.train_pointer = train_pointer

    def forward(self, frames=None, mel=None, **batch) -> torch.Tensor:
        # frames None: a batch of conversations without a clip (general chat)
        device = batch["input_ids"].device if frames is None else frames.device
        with autocast(self.precision, device):
            if self.task is not None:
                return self.task.loss(self.model, {"frames": frames, "mel": mel, **batch}, self.train_pointer)
            return self.model(frames=frames, mel=mel, **batch)


def parts_of(model, heads: nn.Module | None) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """The trainable parts, each as (checkpoint name, parameter) pairs."""
    pointer = ".pointer."  # the summary tokens' SlotPointer: a part of its own (vqa.encoder.summary)
    return {
        "encoder": [(f"encoder.{n}", p) for n, p in model.encoder.named_parameters() if pointer not in f".{n}"],
        "pointer": [(f"encoder.{n}", p) for n, p in model.encoder.named_parameters() if pointer in f".{n}"],
        "projector": [(f"projector.{n}", p) for n, p in model.projector.named_parameters()],
        "lora": [(f"llm.{n}", p) for n, p in model.llm.named_parameters() if "lora_" in n],
        "heads": [] if heads is None else [(f"heads.{n}", p) for n, p in heads.named_parameters()],
    }


def stage_samples(run: Run, index: int, stage: StageConfig) -> tuple[int, callable]:
    """(number of samples, a function from sample indices to a batch) for this stage."""
    config, cache = run.config, run.train_cache
    if stage.kind == "pretrain":
        if run.task is None:
            raise ValueError(f"stage {stage.name!r} pre-trains, but recipe {run.recipe.name!r} has no clip targets "
                             f"to pre-train on (use align stages, or a recipe such as vqa.avsynth)")
        return len(cache), lambda idx: run.task.batch(cache, idx)
    seed = config.seed + index
    samples = qa_samples(run.train_records, cache, turns=stage.turns, seed=seed)
    # chat and the recipe's sources make up their shares of the mixed conversations
    total = len(samples) / (1 - stage.chat - sum(stage.mix.values()))
    for name, share in stage.mix.items():
        samples += run.recipe.samples(name, config.data.train, cache, round(share * total), seed)
    if stage.chat > 0:
        with run.accelerator.main_process_first():  # the main process writes the replies, the others read
            replies = load_or_make_replies(run.out / CHAT_FILE, run.model, chat_prompts(), config.chat_reply_tokens,
                                           progress=run.main and config.progress)
        samples += chat_samples(replies, round(stage.chat * total), len(cache), seed=seed)
    prompts = PromptEncoder(run.model, samples)
    return len(samples), lambda idx: prompts.batch(idx, cache)


def optimizer_for(run: Run, stage: StageConfig) -> torch.optim.Optimizer:
    """AdamW over the stage's parts (per-part learning-rate factors, no weight decay on 1-D tensors)."""
    groups = []
    for part in stage.train:
        lr = stage.lr * stage.lr_scale.get(part, 1.0)
        decay = [p for _, p in run.parts[part] if p.ndim >= 2]
        no_decay = [p for _, p in run.parts[part] if p.ndim < 2]  # biases, norms, embeddings' scales
        groups += [{"params": decay, "lr": lr, "weight_decay": stage.weight_decay},
                   {"params": no_decay, "lr": lr, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=stage.lr)


def validate(run: Run, stage: StageConfig, precision: str) -> dict:
    config, model = run.config, run.model
    with torch.random.fork_rng(devices=[]):  # validation must not move the training RNG
        if "encoder" in stage.train:
            precise_batch_norm(model.encoder, run.train_cache, config.val_batch_size, precision)
        if stage.kind == "pretrain":
            return run.task.validate(model, config, precision)
        return validate_answers(model, run.val_cache, run.val_records, config, precision, run.recipe)


def save(run: Run, index: int, stage: StageConfig, optimizer, scheduler, progress: dict) -> None:
    """A checkpoint of this moment, written under a temporary name and renamed into place."""
    accelerator, config = run.accelerator, run.config
    tmp, final = checkpoint.staging_dir(run.out, progress["global_step"])
    if run.main:
        if tmp.exists():  # left by a process killed while saving
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    checkpoint.save_rng(tmp, accelerator.process_index)
    accelerator.wait_for_everyone()
    if run.main:
        state = {"progress": {**progress, "stage": index, "elapsed_s": time.perf_counter() - run.started},
                 "stage": stage.name, "world_size": accelerator.num_processes,
                 "model": run.model_config.to_dict(), "train": config.to_dict()}
        checkpoint.save_main(tmp, run.saved_tensors, optimizer.state_dict(), scheduler.state_dict(), state)
        checkpoint.publish(tmp, final, config.keep_checkpoints)
        plot_curves(run.out / LOG, run.out / PLOT)
    accelerator.wait_for_everyone()


def run_stage(run: Run, index: int, stage: StageConfig, global_step: int, resume: dict | None = None) -> int:
    """Train one stage to its last step (from `resume`: {"step", "position", "optimizer", "scheduler",
    "checkpoint"}); returns the global step after it."""
    accelerator, config, model = run.accelerator, run.config, run.model
    rank, world = accelerator.process_index, accelerator.num_processes
    precision = run.precisions[index]
    named = [p for pairs in run.parts.values() for _, p in pairs]
    for p in named:
        p.requires_grad_(False)
    trained = [p for part in stage.train for _, p in run.parts[part]]
    if not trained:
        raise ValueError(f"stage {stage.name!r} trains {stage.train}, which have no parameters in this model")
    for p in trained:
        p.requires_grad_(True)

    module = StageModule(model, run.task if stage.kind == "pretrain" else None, precision,
                         train_pointer="pointer" in stage.train)
    wrapped, optimizer = accelerator.prepare(module, optimizer_for(run, stage))
    scheduler = warmup_cosine(optimizer, stage.warmup_steps, stage.steps, stage.min_lr_ratio)
    n_samples, make_batch = stage_samples(run, index, stage)
    order = EpochOrder(n_samples, seed=config.seed * 100 + index)
    step, position = 0, 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        step, position = resume["step"], resume["position"]
        checkpoint.load_rng(resume["checkpoint"], rank)

    bar = tqdm(total=stage.steps, initial=step, desc=stage.name, unit="step",
               disable=not (run.main and config.progress), dynamic_ncols=True)
    window_loss, window_steps, window_samples, window_start = 0.0, 0, 0, time.perf_counter()
    global_batch = stage.batch_size * world
    while step < stage.steps:
        wrapped.train()
        for part, m in {"encoder": model.encoder, "projector": model.projector, "heads": module.heads}.items():
            if m is not None and part not in stage.train:
                m.eval()  # frozen parts run as at inference
        total = torch.zeros((), device=accelerator.device)
        for micro in range(stage.grad_accum):
            idx = rank_share(order, position, stage.batch_size, rank, world)
            position += global_batch
            batch = {k: v.to(accelerator.device) for k, v in make_batch(idx).items()}
            sync = contextlib.nullcontext() if micro == stage.grad_accum - 1 else accelerator.no_sync(wrapped)
            with sync:
                loss = wrapped(**batch)
                accelerator.backward(loss / stage.grad_accum)
            total += loss.detach().float() / stage.grad_accum
        if stage.max_grad_norm:
            accelerator.clip_grad_norm_(trained, stage.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        global_step += 1
        loss_value = accelerator.reduce(total, reduction="mean").item()
        window_loss += loss_value
        window_steps += 1
        window_samples += global_batch * stage.grad_accum
        rate = window_samples / max(1e-9, time.perf_counter() - window_start)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}", samples_s=f"{rate:.1f}")
        end = step == stage.steps
        if run.main and (step % config.log_every == 0 or end):
            run.log.write({"type": "train", "stage": stage.name, "step": global_step, "stage_step": step,
                           "loss": window_loss / window_steps, "lr": scheduler.get_last_lr()[0],
                           "samples_per_s": round(rate, 2), "epoch": round(position / n_samples, 3),
                           "elapsed_s": round(time.perf_counter() - run.started, 1)})
            window_loss, window_steps, window_samples, window_start = 0.0, 0, 0, time.perf_counter()
        paused = time.perf_counter()
        if step % config.eval_every == 0 or end:
            if run.main:
                result = validate(run, stage, precision)
                run.log.write({"type": "val", "stage": stage.name, "step": global_step, "stage_step": step, **result})
                bar.write(f"[{stage.name} step {step}] validation accuracy {100 * result['accuracy']:.1f}%"
                          + (f", answer loss {result['loss']:.3f}" if "loss" in result else ""))
            accelerator.wait_for_everyone()
        if step % config.ckpt_every == 0 or end:
            save(run, index, stage, optimizer, scheduler,
                 {"step": step, "position": position, "global_step": global_step})
        window_start += time.perf_counter() - paused  # the rate counts training time only
    bar.close()
    # the next stage trains other parts: a fresh DDP wrapper and optimiser
    del wrapped, optimizer, scheduler, module
    accelerator.free_memory()
    gc.collect()
    return global_step
