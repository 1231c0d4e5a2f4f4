"""`vqa train --config FILE`: the training loop, on a CPU or a GPU, or on several under `accelerate launch`.

Reads top to bottom: configs, processes, data, model, then each stage in turn (what it
trains, optimiser and schedule, the loop with logging, validation and checkpoints),
then the bundle. A run whose out_dir holds a checkpoint continues from it exactly:
same weights, optimiser, schedule, RNG streams and data position as if never stopped.

Every process takes its own slice of each global batch (`data.rank_share`), gradients are
averaged by DDP, so all processes hold the same weights after every step.
"""
from __future__ import annotations

import contextlib
import gc
import json
import shutil
import time
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from .. import bundle
from ..caption import ANSWER_SLOTS, answer_slot, source_pointer
from ..config import ModelConfig
from ..data import (
    EpochOrder, PromptEncoder, describe_samples, ensure_split, load_features, qa_samples, rank_share, read_meta, read_qa,
)
from . import checkpoint
from .card import write_card
from .chat import CHAT_FILE, chat_prompts, chat_samples, load_or_make_replies
from .config import TrainConfig, load_config
from .plot import plot_curves
from .precision import autocast, resolve_precision
from .pretrain import (
    CAPTION, CaptionHead, Heads, caption_accuracy, caption_labels, dense_accuracy, heads_accuracy, heads_loss, labels,
    patch_labels, word_embeddings,
)
from .schedule import warmup_cosine

LOG = "log.jsonl"
PLOT = "curves.png"


def cli(args) -> int:
    model_config, train_config = load_config(args.config)
    train(model_config, train_config, config_path=args.config)
    return 0


class StageModule(nn.Module):
    """What one training step runs, as one module (so DDP sees one forward): heads loss or answer loss."""

    def __init__(self, model: nn.Module, heads: nn.Module | None, precision: str = "fp32", dense_weight: float = 0.0,
                 caption_weight: float = 0.0, train_pointer: bool = False):
        super().__init__()
        self.train_pointer = train_pointer
        self.model = model
        self.heads = heads
        self.precision = precision
        self.dense_weight = dense_weight
        self.caption_weight = caption_weight

    def forward(self, frames=None, mel=None, targets=None, patch_targets=None, caption_targets=None,
                **prompt) -> torch.Tensor:
        # frames None: a batch of conversations without a clip (general chat)
        with autocast(self.precision, prompt["input_ids"].device if frames is None else frames.device):
            if targets is not None:
                out = self.heads.run(self.model.encoder, frames, mel, self.model.projector)
                if not self.train_pointer:  # its copies' loss would move the projector, not the pointer
                    out.pop("caption_pointer", None)
                return heads_loss(out, targets, patch_targets, caption_targets, self.dense_weight, self.caption_weight,
                                  self.heads.pointer_slots)
            return self.model(frames=frames, mel=mel, **prompt)


def parts_of(model, heads: nn.Module | None) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """The trainable parts, each as (checkpoint name, parameter) pairs."""
    pointer = ".pointer."  # the summary tokens' SlotPointer: a part of its own (vqa.encoder.summary)
    parts = {
        "encoder": [(f"encoder.{n}", p) for n, p in model.encoder.named_parameters() if pointer not in f".{n}"],
        "pointer": [(f"encoder.{n}", p) for n, p in model.encoder.named_parameters() if pointer in f".{n}"],
        "projector": [(f"projector.{n}", p) for n, p in model.projector.named_parameters()],
        "lora": [(f"llm.{n}", p) for n, p in model.llm.named_parameters() if "lora_" in n],
        "heads": [] if heads is None else [(f"heads.{n}", p) for n, p in heads.named_parameters()],
    }
    return parts


def train(
    model_config: ModelConfig, config: TrainConfig, llm=None, tokenizer=None, config_path: str | None = None
):
    """Run every stage (resuming from the newest checkpoint in out_dir); returns the trained VideoLLM.

    `llm`, `tokenizer`: a causal LM to adapt instead of loading `model_config.llm` (tests pass tiny ones).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    started = time.perf_counter()
    out = Path(config.out_dir)
    device_kind = "cuda" if torch.cuda.is_available() else "cpu"
    precision = resolve_precision(config.precision, device_kind)
    stage_precision = [resolve_precision(s.precision or config.precision, device_kind) for s in config.stages]
    # cpu=True where there is no GPU: under a torchrun-style launch the processes then join over gloo
    # find_unused_parameters: a batch may hold no clip for some heads, and some encoder outputs feed no target
    accelerator = Accelerator(
        # bf16 needs no loss scaling: each stage autocasts itself; fp16 (GPU) goes through accelerate's scaler
        mixed_precision="fp16" if "fp16" in stage_precision else "no", cpu=device_kind == "cpu",
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    set_seed(config.seed)
    if main:
        out.mkdir(parents=True, exist_ok=True)

    # ---- data: the main process generates missing splits and builds the feature caches first ----
    kinds = {s.kind for s in config.stages}
    with accelerator.main_process_first():
        d = config.data
        ensure_split(d.train, d.train_clips, d.train_seed, workers=d.workers, progress=main and config.progress)
        ensure_split(d.val, d.val_clips, d.val_seed, workers=d.workers, progress=main and config.progress)
        train_records, val_records = read_qa(d.train), read_qa(d.val)
        train_cache = load_features(d.train, model_config, workers=d.workers, progress=main and config.progress)
        val_cache = load_features(d.val, model_config, workers=d.workers, progress=main and config.progress)
    dense = "pretrain" in kinds and config.dense_weight > 0 and model_config.encoder.uses_video
    caption = "pretrain" in kinds and config.caption_weight > 0
    if caption and model_config.encoder.summary_tokens < len(CAPTION):
        raise ValueError(f"caption_weight > 0 needs encoder.summary_tokens >= {len(CAPTION)} (one per caption "
                         f"slot), got {model_config.encoder.summary_tokens}")
    if "pretrain" in kinds:
        train_labels = _clip_labels(d.train, train_cache, model_config if dense else None, caption)
        val_labels = _clip_labels(d.val, val_cache, model_config if dense else None, caption)

    # ---- model ----
    from ..model import VideoLLM

    if llm is None:
        from ..llm import load_llm

        llm, tokenizer = load_llm(model_config.llm)
    torch.manual_seed(config.seed)
    model = VideoLLM(model_config, llm, tokenizer)
    enc = model_config.encoder
    heads = None
    if "pretrain" in kinds:
        head = CaptionHead(word_embeddings(model.llm, tokenizer)) if caption else None
        heads = Heads(enc.width, enc.num_tokens, dense=dense, caption=head,
                      caption_start=enc.num_tokens - enc.summary_tokens,
                      pointer_slots=source_pointer().outs if enc.source_pointer else ())
    parts = parts_of(model, heads)
    named = {name: p for pairs in parts.values() for name, p in pairs}
    # what a checkpoint holds: the parameters, and the buffers training changes (batch-norm statistics)
    saved_tensors = {**named, **_buffers(model.encoder, "encoder."), **_buffers(heads, "heads.")}

    # ---- resume ----
    progress = {"stage": 0, "step": 0, "position": 0, "global_step": 0, "elapsed_s": 0.0}
    ckpt = checkpoint.latest_checkpoint(out)
    opt_state = None
    if ckpt is not None:
        weights, opt_state, saved = checkpoint.load(ckpt)
        _load_weights(saved_tensors, weights, ckpt)
        progress = saved["progress"]
        if saved["world_size"] != world:
            raise RuntimeError(
                f"{ckpt} was written by {saved['world_size']} processes, this run has {world}: "
                f"resume with the same number (the data order depends on it)"
            )
        if main:
            print(f"resuming from {ckpt} (stage {progress['stage']}, step {progress['step']})")
    log = _Log(out / LOG, keep_upto=progress["global_step"]) if main else None
    if main and ckpt is None:
        log.write({"type": "start", "model": model_config.to_dict(), "train": config.to_dict(),
                   "processes": world, "precision": precision, "device": device_kind})

    run_started = time.perf_counter() - progress["elapsed_s"]
    for index, stage in enumerate(config.stages):
        if index < progress["stage"]:
            continue
        resume = ckpt if (ckpt is not None and index == progress["stage"]) else None
        for p in named.values():
            p.requires_grad_(False)
        trained = [p for part in stage.train for _, p in parts[part]]
        if not trained:
            raise ValueError(f"stage {stage.name!r} trains {stage.train}, which have no parameters in this model")
        for p in trained:
            p.requires_grad_(True)

        groups = []
        for part in stage.train:
            lr = stage.lr * stage.lr_scale.get(part, 1.0)
            decay = [p for _, p in parts[part] if p.ndim >= 2]
            no_decay = [p for _, p in parts[part] if p.ndim < 2]  # biases, norms, embeddings' scales
            groups += [{"params": decay, "lr": lr, "weight_decay": stage.weight_decay},
                       {"params": no_decay, "lr": lr, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=stage.lr)
        module = StageModule(model, heads if stage.kind == "pretrain" else None, stage_precision[index],
                             config.dense_weight, config.caption_weight, train_pointer="pointer" in stage.train)
        wrapped, optimizer = accelerator.prepare(module, optimizer)
        scheduler = warmup_cosine(optimizer, stage.warmup_steps, stage.steps, stage.min_lr_ratio)

        if stage.kind == "pretrain":
            n_samples = len(train_cache)
            make_batch = lambda idx: _clip_batch(train_cache, train_labels, idx)  # noqa: E731
        else:
            samples = qa_samples(train_records, train_cache, turns=stage.turns, seed=config.seed + index)
            # chat and descriptions make up `stage.chat` and `stage.describe` of the mixed conversations
            total = len(samples) / (1 - stage.chat - stage.describe)
            if stage.describe > 0:
                samples += describe_samples(read_meta(d.train), train_cache, round(stage.describe * total),
                                            seed=config.seed + index)
            if stage.chat > 0:
                with accelerator.main_process_first():  # the main process writes the replies, the others read
                    replies = load_or_make_replies(out / CHAT_FILE, model, chat_prompts(), config.chat_reply_tokens,
                                                   progress=main and config.progress)
                samples += chat_samples(replies, round(stage.chat * total), len(train_cache), seed=config.seed + index)
            prompts = PromptEncoder(model, samples)
            n_samples = len(samples)
            make_batch = lambda idx: prompts.batch(idx, train_cache)  # noqa: E731
        order = EpochOrder(n_samples, seed=config.seed * 100 + index)

        step, position = 0, 0
        if resume is not None:
            optimizer.load_state_dict(opt_state["optimizer"])
            scheduler.load_state_dict(opt_state["scheduler"])
            step, position = progress["step"], progress["position"]
            checkpoint.load_rng(resume, rank)

        def validate() -> dict:
            with torch.random.fork_rng(devices=[]):  # validation must not move the training RNG
                if "encoder" in stage.train:
                    _precise_batch_norm(model.encoder, train_cache, config.val_batch_size, stage_precision[index])
                if stage.kind == "pretrain":
                    return _validate_heads(model, heads, val_cache, val_labels, config, stage_precision[index],
                                           val_records)
                return _validate_answers(model, val_cache, val_records, config, stage_precision[index])

        def save(step_now: int, position_now: int, global_step: int) -> None:
            tmp, final = checkpoint.staging_dir(out, global_step)
            if main:
                if tmp.exists():  # left by a process killed while saving
                    shutil.rmtree(tmp)
                tmp.mkdir(parents=True)
            accelerator.wait_for_everyone()
            checkpoint.save_rng(tmp, rank)
            accelerator.wait_for_everyone()
            if main:
                state = {
                    "progress": {"stage": index, "step": step_now, "position": position_now,
                                 "global_step": global_step, "elapsed_s": time.perf_counter() - run_started},
                    "stage": stage.name, "world_size": world,
                    "model": model_config.to_dict(), "train": config.to_dict(),
                }
                checkpoint.save_main(tmp, saved_tensors, optimizer.state_dict(), scheduler.state_dict(), state)
                checkpoint.publish(tmp, final, config.keep_checkpoints)
                plot_curves(out / LOG, out / PLOT)
            accelerator.wait_for_everyone()

        global_step = progress["global_step"]
        bar = tqdm(total=stage.steps, initial=step, desc=stage.name, unit="step",
                   disable=not (main and config.progress), dynamic_ncols=True)
        window_loss, window_steps, window_samples, window_start = 0.0, 0, 0, time.perf_counter()
        global_batch = stage.batch_size * world
        while step < stage.steps:
            wrapped.train()
            for part, m in {"encoder": model.encoder, "projector": model.projector, "heads": heads}.items():
                if m is not None and part not in stage.train:
                    m.eval()  # frozen parts run as at inference
            total = torch.zeros((), device=accelerator.device)
            for micro in range(stage.grad_accum):
                idx = rank_share(order, position, stage.batch_size, rank, world)
                position += global_batch
                batch = {k: v.to(accelerator.device) for k, v in make_batch(idx).items()}
                last = micro == stage.grad_accum - 1
                sync = contextlib.nullcontext() if last else accelerator.no_sync(wrapped)
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
            if main and (step % config.log_every == 0 or end):
                log.write({"type": "train", "stage": stage.name, "step": global_step, "stage_step": step,
                           "loss": window_loss / window_steps, "lr": scheduler.get_last_lr()[0],
                           "samples_per_s": round(rate, 2), "epoch": round(position / n_samples, 3),
                           "elapsed_s": round(time.perf_counter() - run_started, 1)})
                window_loss, window_steps, window_samples, window_start = 0.0, 0, 0, time.perf_counter()
            paused = time.perf_counter()
            if step % config.eval_every == 0 or end:
                if main:
                    result = validate()
                    log.write({"type": "val", "stage": stage.name, "step": global_step, "stage_step": step,
                               **result})
                    bar.write(f"[{stage.name} step {step}] validation accuracy {100 * result['accuracy']:.1f}%")
                accelerator.wait_for_everyone()
            if step % config.ckpt_every == 0 or end:
                save(step, position, global_step)
            window_start += time.perf_counter() - paused  # the rate counts training time only
        bar.close()
        progress = {"stage": index + 1, "step": 0, "position": 0, "global_step": global_step,
                    "elapsed_s": time.perf_counter() - run_started}
        ckpt = None  # later stages start fresh
        # the next stage trains other parts: a fresh DDP wrapper and optimiser
        del wrapped, optimizer, scheduler, module
        accelerator.free_memory()
        gc.collect()

    if main:
        seconds = time.perf_counter() - run_started
        final = bundle.save_bundle(model, out / "final")
        summary = {"train_seconds": round(seconds, 1), "processes": world, "precision": precision,
                   "config_path": config_path, "session_seconds": round(time.perf_counter() - started, 1)}
        write_card(final, model_config, config, summary, _last_val(out / LOG))
        if config.export:
            bundle.save_bundle(model, config.export)
            write_card(Path(config.export), model_config, config, summary, _last_val(out / LOG))
        log.write({"type": "end", **summary})
        plot_curves(out / LOG, out / PLOT)
        print(f"trained in {seconds / 60:.1f} min; bundle in {final}" + (f" and {config.export}" if config.export else ""))
    accelerator.wait_for_everyone()
    return model


# ---- helpers ----
class _Log:
    """Append-only JSONL; on resume, records after the checkpoint's step are dropped (they will be redone)."""

    def __init__(self, path: Path, keep_upto: int):
        self.path = path
        if path.is_file():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= keep_upto
                    and json.loads(line)["type"] != "end"]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")


@torch.no_grad()
def _precise_batch_norm(encoder: nn.Module, cache, batch_size: int, precision: str, clips: int = 512) -> None:
    """Set every batch norm's running statistics to their average over the first `clips` training clips.

    Training mode normalises with each batch's statistics; inference uses the running averages, which trail
    the weights. Measured on the default recipe after 650 steps: 59.6 % of the metadata targets right with
    the running averages, 71.6 % with batch statistics. Only the running statistics change, which training
    mode never reads, so training itself is unaffected."""
    norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training = encoder.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    encoder.train()
    device = next(encoder.parameters()).device
    for start in range(0, min(clips, len(cache)), batch_size):
        frames, mel = cache.inputs(list(range(start, min(start + batch_size, clips, len(cache)))))
        with autocast(precision, device):
            encoder(frames.to(device), mel.to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    encoder.train(was_training)


def _buffers(module: nn.Module | None, prefix: str) -> dict[str, torch.Tensor]:
    """A module's persistent buffers, by checkpoint name (batch-norm running statistics and step counts);
    non-persistent ones (the caption head's word embeddings) are rebuilt, not saved."""
    if module is None:
        return {}
    persistent = module.state_dict().keys()
    return {prefix + n: b for n, b in module.named_buffers() if n in persistent}


def _load_weights(named: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], ckpt: Path) -> None:
    missing = sorted(set(named) - set(weights))
    unexpected = sorted(set(weights) - set(named))
    if missing or unexpected:
        raise RuntimeError(
            f"{ckpt} does not fit this model: missing {missing[:3]} ({len(missing)}), "
            f"unexpected {unexpected[:3]} ({len(unexpected)}); was the config changed?"
        )
    with torch.no_grad():
        for name, p in named.items():
            if p.shape != weights[name].shape:
                raise RuntimeError(f"{ckpt}: {name} has shape {tuple(weights[name].shape)}, the model {tuple(p.shape)}")
            p.copy_(weights[name])


def _clip_labels(
    folder: str, cache, dense_for: ModelConfig | None = None, caption: bool = False
) -> dict[str, torch.Tensor]:
    """Every clip's metadata targets, in cache order: "targets" (N, Q); with `dense_for`, "patch_targets"
    (N, T, patches, 3) for that model's frames and patch grid; with `caption`, "caption_targets" (N, C)."""
    meta = read_meta(folder)
    missing = [v for v in cache.videos if v not in meta]
    if missing:
        raise ValueError(f"{folder}/meta.jsonl has no metadata for {len(missing)} clips (e.g. {missing[0]}); "
                         f"a pretrain stage needs AVSynth metadata")
    out = {"targets": torch.stack([labels(meta[v]) for v in cache.videos])}
    if dense_for is not None:
        side = dense_for.media.size // dense_for.encoder.patch_size
        out["patch_targets"] = torch.stack(
            [patch_labels(meta[v], dense_for.media.num_frames, (side, side)) for v in cache.videos])
    if caption:
        out["caption_targets"] = torch.stack([caption_labels(meta[v]) for v in cache.videos])
    return out


def _clip_batch(cache, clip_labels: dict[str, torch.Tensor], idx: list[int]) -> dict[str, torch.Tensor]:
    frames, mel = cache.inputs(idx)
    return {"frames": frames, "mel": mel, **{k: v[idx] for k, v in clip_labels.items()}}


@torch.no_grad()
def _validate_heads(model, heads, cache, clip_labels, config: TrainConfig, precision: str,
                    records: list[dict] = ()) -> dict:
    model.encoder.eval()
    heads.eval()
    n = min(len(cache), config.val_questions)
    parts: dict[str, list[list[torch.Tensor]]] = {}  # per head kind, per batch: a list of logits per target
    for start in range(0, n, config.val_batch_size):
        frames, mel = cache.inputs(list(range(start, min(n, start + config.val_batch_size))))
        with autocast(precision, model.device):
            out = heads.run(model.encoder, frames.to(model.device), mel.to(model.device), model.projector)
        for kind, logits in out.items():
            parts.setdefault(kind, []).append([lg.float().cpu() for lg in logits])
    joined = {kind: [torch.cat(per_target) for per_target in zip(*batches)] for kind, batches in parts.items()}
    acc = heads_accuracy(joined["clip"], clip_labels["targets"][:n])
    result = {"accuracy": sum(acc.values()) / len(acc), "targets": {k: round(v, 4) for k, v in acc.items()}}
    if "dense" in joined:  # reported beside the clip targets, not in their mean
        result["dense"] = {k: round(v, 4) for k, v in
                           dense_accuracy(joined["dense"], clip_labels["patch_targets"][:n]).items()}
    if "caption" in joined:
        cap = caption_accuracy(joined["caption"], clip_labels["caption_targets"][:n])
        result["caption_accuracy"] = sum(cap.values()) / len(cap)
        result["caption"] = {k: round(v, 4) for k, v in cap.items()}
    if "caption_pointer" in joined:  # the pointer's copies, which the LLM reads in those slots
        y = clip_labels["caption_targets"][:n, list(heads.pointer_slots)]
        result["caption_pointer"] = {CAPTION[s].name: round((lg.argmax(-1) == y[:, i]).float().mean().item(), 4)
                                     for i, (s, lg) in enumerate(zip(heads.pointer_slots, joined["caption_pointer"]))}
    if "caption" in joined:
        result["caption_answers"] = _caption_answers(joined, heads.pointer_slots, cache, records, n)
    return result


def _caption_answers(joined: dict, pointer_slots, cache, records, n: int) -> dict[str, float]:
    """Per family, the share of the first `n` clips' benchmark questions whose answer is the word that the
    caption slot for it holds, the pointer's copies in their slots: the words the LLM is given to read."""
    from ..evaluate import summarize

    words = [lg.argmax(-1) for lg in joined["caption"]]
    for s, lg in zip(pointer_slots, joined.get("caption_pointer", [])):
        words[s] = lg.argmax(-1)
    asked = [r for r in records if r.get("family") in ANSWER_SLOTS and cache.row(r["video"]) < n]
    if not asked:
        return {}
    replies = []
    for r in asked:
        slot = answer_slot(r["family"], r["conversations"][0]["value"])
        replies.append(CAPTION[slot].classes[words[slot][cache.row(r["video"])]])
    return {k: round(v["accuracy"], 4) for k, v in summarize(asked, replies)["families"].items()}


def _validate_answers(model, cache, records, config: TrainConfig, precision: str) -> dict:
    from ..evaluate import answer, summarize

    records = [r for r in records if "family" in r][: config.val_questions]
    if not records:
        raise ValueError("the validation split has no benchmark records (with a `family`) to score")
    replies = answer(model, cache, records, batch_size=config.val_batch_size, precision=precision, progress=False)
    result = summarize(records, replies)
    return {"accuracy": result["overall"]["accuracy"],
            "families": {k: round(v["accuracy"], 4) for k, v in result["families"].items()}}


def _last_val(log_path: Path) -> dict | None:
    from .plot import read_log

    vals = [r for r in read_log(log_path) if r["type"] == "val"]
    return vals[-1] if vals else None
