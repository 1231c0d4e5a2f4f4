"""Training samples and their order: conversations about clips, a resumable epoch order, padded batches.

Notation: B batch, L tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..prompt import EncodedPrompt, pad_batch, without_video
from .cache import FeatureCache


@dataclass
class Sample:
    """One conversation about one clip (several questions when turns are packed)."""

    row: int | None  # the clip's row in the feature cache; None for a conversation without a clip
    messages: list[dict]


def qa_samples(records: list[dict], cache: FeatureCache, turns: int = 1, seed: int = 0) -> list[Sample]:
    """Conversations to train on. With turns > 1, single-question records of the same clip are packed
    (in a seeded random order) into conversations of up to `turns` questions: they share the clip's
    tokens (and perception text), so a step learns from more answers at the same cost."""
    if turns == 1:
        return [Sample(cache.row(r["video"]), r["messages"]) for r in records]
    by_clip: dict[str, list[tuple[list[dict], str]]] = {}
    for r in records:
        by_clip.setdefault(r["video"], []).append((r["messages"], r.get("perception", "")))
    rng = np.random.default_rng(seed)
    samples = []
    for video, convs in by_clip.items():
        order = rng.permutation(len(convs))
        for start in range(0, len(convs), turns):
            messages = []
            for k, j in enumerate(order[start:start + turns]):
                conv, perception = [dict(m) for m in convs[j][0]], convs[j][1]
                if k:  # the placeholder and the perception text only in the first turn: the clip is shown once
                    content = conv[0]["content"].replace(f"{perception}\n", "", 1) if perception else conv[0]["content"]
                    conv[0]["content"] = without_video(content)
                messages += conv
            samples.append(Sample(cache.row(video), messages))
    return samples


class EpochOrder:
    """Sample order as a pure function of (seed, position): epoch e is a seeded permutation, epochs follow
    each other, so a run resumes exactly from its position alone and any process can compute its share."""

    def __init__(self, n: int, seed: int):
        if n < 1:
            raise ValueError("cannot order an empty dataset")
        self.n = n
        self.seed = seed
        self._epoch = -1
        self._perm: list[int] = []

    def take(self, position: int, count: int) -> list[int]:
        """Indices at positions [position, position + count)."""
        out = []
        for p in range(position, position + count):
            epoch, k = divmod(p, self.n)
            if epoch != self._epoch:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._perm = torch.randperm(self.n, generator=g).tolist()
                self._epoch = epoch
            out.append(self._perm[k])
        return out


def rank_share(order: EpochOrder, position: int, batch_size: int, rank: int, world: int) -> list[int]:
    """This process's part of the global batch that starts at `position` (world * batch_size samples)."""
    return order.take(position + rank * batch_size, batch_size)


class PromptEncoder:
    """Tokenises conversations once each (memoised by sample index) and pads them into batches."""

    def __init__(self, model, samples: list[Sample]):
        self.model = model
        self.samples = samples
        self._memo: dict[int, EncodedPrompt] = {}

    def prompt(self, i: int) -> EncodedPrompt:
        if i not in self._memo:
            self._memo[i] = self.model.encode_prompt(self.samples[i].messages)
        return self._memo[i]

    def batch(self, indices: list[int], cache: FeatureCache) -> dict[str, torch.Tensor]:
        """Padded prompt tensors plus the frames and mel of the clips shown (in batch order; none
        for a conversation without a clip, and no frames at all if no conversation shows one)."""
        pad_id = self.model.tokenizer.pad_token_id
        prompts = [self.prompt(i) for i in indices]
        batch = pad_batch(prompts, pad_id if pad_id is not None else 0)
        rows = [self.samples[i].row for i, p in zip(indices, prompts) if p.video_mask.any()]
        if None in rows:
            raise ValueError("a conversation shows a clip (it has the placeholder) but names no clip")
        if rows:
            batch["frames"], batch["mel"] = cache.inputs(rows)
        return batch
