"""The AVSynth recipe: what the benchmark adds to the generic training loop (vqa.train.recipe).

- data: splits generated with `vqa synth` where missing (`train_clips`, `train_seed`, `val_clips`, `val_seed`);
- model: the caption's source slots point at the colour whose beep count is not zero (`source_pointer`);
- pretrain stages: heads on each clip's metadata, per-patch targets (`dense_weight`) and the caption the
  summary tokens land on in the LLM's input space (`caption_weight`), see vqa.avsynth.pretrain;
- align stages: "Describe this clip." answered from the metadata (a stage's `mix: {describe: share}`);
- scoring: the per-family table of avsynth-spec.md (vqa.avsynth.score).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data import QA_FILE, FeatureCache, Sample, read_jsonl
from ..train.precision import autocast
from ..train.recipe import PretrainTask, Recipe
from .caption import ANSWER_SLOTS, CAPTION, answer_slot, source_pointer

META_FILE = "meta.jsonl"
MAX_NEW_TOKENS = 6  # the benchmark's answers are one word


def read_meta(folder: str | Path) -> dict[str, dict]:
    """meta.jsonl keyed by the clip's video path (as qa.jsonl names it)."""
    return {m["video"]: m for m in read_jsonl(Path(folder) / META_FILE)}


def ensure_split(folder: str | Path, clips: int, seed: int, workers: int | None = None, progress: bool = True) -> Path:
    """The split folder, generated with the AVSynth generator first if it has no qa.jsonl and `clips` > 0."""
    folder = Path(folder)
    if (folder / QA_FILE).is_file():
        return folder
    if clips <= 0:
        raise FileNotFoundError(
            f"{folder / QA_FILE} does not exist: generate the split first "
            f"(`vqa synth --out {folder} --clips N --seed S`) or set the recipe's *_clips to generate it"
        )
    from .generate import generate

    generate(folder, clips, seed, workers=workers, progress=progress)
    return folder


def describe_samples(meta: dict[str, dict], cache: FeatureCache, count: int, seed: int = 0) -> list[Sample]:
    """`count` one-question conversations asking for the whole clip (vqa.avsynth.describe), answered with
    the description of its metadata; clips in a seeded order, pass after pass, phrasings drawn at random."""
    from ..prompt import with_video
    from .describe import DESCRIBE_QUESTIONS, describe

    videos = [v for v in cache.videos if v in meta]
    if not videos:
        raise ValueError("no clip of the feature cache has metadata: cannot teach descriptions")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(videos))
    out = []
    for k in range(count):
        video = videos[order[k % len(videos)]]
        question = with_video(DESCRIBE_QUESTIONS[int(rng.integers(len(DESCRIBE_QUESTIONS)))])
        out.append(Sample(cache.row(video), [{"role": "user", "content": question},
                                             {"role": "assistant", "content": describe(meta[video])}]))
    return out


class AVSynthRecipe(Recipe):
    name = "avsynth"
    options = ("train_clips", "train_seed", "val_clips", "val_seed", "dense_weight", "caption_weight",
               "source_pointer")

    def __init__(self, **options):
        super().__init__(**options)
        s = self.settings
        self.dense_weight = float(s.get("dense_weight", 0.0))
        self.caption_weight = float(s.get("caption_weight", 0.0))
        if self.dense_weight < 0 or self.caption_weight < 0:
            raise ValueError(f"dense_weight and caption_weight must be >= 0, got {self.dense_weight}, "
                             f"{self.caption_weight}")

    def configure_model(self, model_config) -> None:
        enc = model_config.encoder
        if self.settings.get("source_pointer"):
            layout = source_pointer()
            problems = layout.problems(enc.summary_tokens)
            if problems:
                raise ValueError(f"source_pointer needs summary_tokens >= {len(CAPTION)} (one per caption slot), "
                                 f"got {enc.summary_tokens}")
            enc.pointer = layout
        if self.caption_weight > 0 and enc.summary_tokens < len(CAPTION):
            raise ValueError(f"caption_weight > 0 needs encoder.summary_tokens >= {len(CAPTION)} (one per caption "
                             f"slot), got {enc.summary_tokens}")

    def prepare_data(self, data, workers, progress) -> None:
        s = self.settings
        if data.val is None:
            raise ValueError("the avsynth recipe validates on its own split: set data.val")
        for folder, clips, seed in ((data.train, s.get("train_clips", 0), s.get("train_seed", 1)),
                                    (data.val, s.get("val_clips", 0), s.get("val_seed", 2))):
            ensure_split(folder, clips, seed, workers=workers, progress=progress)

    def pretrain(self, model, model_config, config, train_cache, val_cache, val_records):
        return AVSynthPretrain(self, model, model_config, config, train_cache, val_cache, val_records)

    def samples(self, name, folder, cache, count, seed):
        if name != "describe":
            return super().samples(name, folder, cache, count, seed)
        return describe_samples(read_meta(folder), cache, count, seed=seed)

    def score(self, records, replies):
        from .score import one_word_share, summarize

        asked = [(r, t) for r, t in zip(records, replies) if "family" in r]
        if not asked:
            return None
        result = summarize([r for r, _ in asked], [t for _, t in asked])
        return {"accuracy": result["overall"]["accuracy"], **result,
                "one_word": one_word_share([t for _, t in asked])}

    def report(self, score, blind):
        from .score import format_table

        if score is None:
            return None
        return (f"{format_table(score, blind)}\n\n"
                f"Replies that are exactly one answer word: {100 * score['one_word']:.1f}%.")

    def max_new_tokens(self, default: int) -> int:
        return MAX_NEW_TOKENS


class AVSynthPretrain(PretrainTask):
    """Heads on the clip metadata (vqa.avsynth.pretrain) and each clip's targets, train and val."""

    def __init__(self, recipe: AVSynthRecipe, model, model_config, config, train_cache, val_cache, val_records):
        from .pretrain import CaptionHead, Heads, word_embeddings

        enc = model_config.encoder
        self.recipe = recipe
        self.dense = recipe.dense_weight > 0 and enc.uses_video
        self.caption = recipe.caption_weight > 0
        self.pointer_slots = tuple(enc.pointer.outs) if enc.pointer is not None else ()
        head = CaptionHead(word_embeddings(model.llm, model.tokenizer)) if self.caption else None
        self.heads = Heads(enc.width, enc.num_tokens, dense=self.dense, caption=head,
                           caption_start=enc.num_tokens - enc.summary_tokens, pointer_slots=self.pointer_slots)
        dense_for = model_config if self.dense else None
        self.train_labels = clip_labels(config.data.train, train_cache, dense_for, self.caption)
        self.val_labels = clip_labels(config.data.val, val_cache, dense_for, self.caption)
        self.val_cache, self.val_records = val_cache, val_records

    def batch(self, cache, rows):
        frames, mel = cache.inputs(rows)
        return {"frames": frames, "mel": mel, **{k: v[rows] for k, v in self.train_labels.items()}}

    def loss(self, model, batch, train_pointer):
        from .pretrain import heads_loss

        out = self.heads.run(model.encoder, batch["frames"], batch["mel"], model.projector)
        if not train_pointer:  # its copies' loss would move the projector, not the pointer
            out.pop("caption_pointer", None)
        return heads_loss(out, batch["targets"], batch.get("patch_targets"), batch.get("caption_targets"),
                          self.recipe.dense_weight, self.recipe.caption_weight, self.pointer_slots)

    @torch.no_grad()
    def validate(self, model, config, precision):
        from .pretrain import caption_accuracy, dense_accuracy, heads_accuracy

        heads, cache, labels = self.heads, self.val_cache, self.val_labels
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
        acc = heads_accuracy(joined["clip"], labels["targets"][:n])
        result = {"accuracy": sum(acc.values()) / len(acc), "targets": {k: round(v, 4) for k, v in acc.items()}}
        if "dense" in joined:  # reported beside the clip targets, not in their mean
            result["dense"] = {k: round(v, 4) for k, v in
                               dense_accuracy(joined["dense"], labels["patch_targets"][:n]).items()}
        if "caption" in joined:
            cap = caption_accuracy(joined["caption"], labels["caption_targets"][:n])
            result["caption_accuracy"] = sum(cap.values()) / len(cap)
            result["caption"] = {k: round(v, 4) for k, v in cap.items()}
        if "caption_pointer" in joined:  # the pointer's copies, which the LLM reads in those slots
            y = labels["caption_targets"][:n, list(heads.pointer_slots)]
            result["caption_pointer"] = {
                CAPTION[s].name: round((lg.argmax(-1) == y[:, i]).float().mean().item(), 4)
                for i, (s, lg) in enumerate(zip(heads.pointer_slots, joined["caption_pointer"]))}
        if "caption" in joined:
            result["caption_answers"] = caption_answers(joined, heads.pointer_slots, cache, self.val_records, n)
        return result


def clip_labels(folder: str, cache: FeatureCache, dense_for=None, caption: bool = False) -> dict[str, torch.Tensor]:
    """Every clip's metadata targets, in cache order: "targets" (N, Q); with `dense_for` (a ModelConfig),
    "patch_targets" (N, T, patches, 3) for its frames and patch grid; with `caption`, "caption_targets" (N, C)."""
    from .pretrain import caption_labels, labels, patch_labels

    meta = read_meta(folder)
    missing = [v for v in cache.videos if v not in meta]
    if missing:
        raise ValueError(f"{folder}/{META_FILE} has no metadata for {len(missing)} clips (e.g. {missing[0]}); "
                         f"a pretrain stage needs AVSynth metadata")
    out = {"targets": torch.stack([labels(meta[v]) for v in cache.videos])}
    if dense_for is not None:
        side = dense_for.media.size // dense_for.encoder.patch_size
        out["patch_targets"] = torch.stack(
            [patch_labels(meta[v], dense_for.media.num_frames, (side, side)) for v in cache.videos])
    if caption:
        out["caption_targets"] = torch.stack([caption_labels(meta[v]) for v in cache.videos])
    return out


def caption_answers(joined: dict, pointer_slots, cache: FeatureCache, records, n: int) -> dict[str, float]:
    """Per family, the share of the first `n` clips' benchmark questions whose answer is the word that the
    caption slot for it holds, the pointer's copies in their slots: the words the LLM is given to read."""
    from .score import summarize

    words = [lg.argmax(-1) for lg in joined["caption"]]
    for s, lg in zip(pointer_slots, joined.get("caption_pointer", [])):
        words[s] = lg.argmax(-1)
    asked = [r for r in records if r.get("family") in ANSWER_SLOTS and r["video"] in cache.index
             and cache.row(r["video"]) < n]
    if not asked:
        return {}
    replies = []
    for r in asked:
        slot = answer_slot(r["family"], r["conversations"][0]["value"])
        replies.append(CAPTION[slot].classes[words[slot][cache.row(r["video"])]])
    return {k: round(v["accuracy"], 4) for k, v in summarize(asked, replies)["families"].items()}
