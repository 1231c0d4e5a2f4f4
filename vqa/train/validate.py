"""Validation during training: held-out answers through the LLM (align stages), batch-norm statistics."""
from __future__ import annotations

import torch
import torch.nn as nn

from .precision import autocast


def validate_answers(model, cache, records: list[dict], config, precision: str, recipe) -> dict:
    """The held-out answers' loss, match and key-word shares (vqa.evaluate), and the recipe's score where it
    has one; "accuracy" is the recipe's where it scores the records, else the key-word share."""
    from ..evaluate import answer, answer_loss, score_replies

    records = records[: config.val_questions]
    if not records:
        raise ValueError("the validation split holds no questions to answer")
    replies = answer(model, cache, records, batch_size=config.val_batch_size, precision=precision, progress=False,
                     max_new_tokens=recipe.max_new_tokens(config.val_max_new_tokens))
    scores = score_replies(records, replies)
    result = {"loss": round(answer_loss(model, cache, records, batch_size=config.val_batch_size,
                                        precision=precision), 4),
              "match": round(scores["overall"]["match"], 4), "keywords": round(scores["overall"]["keywords"], 4),
              "types": {k: {m: round(v[m], 4) for m in ("match", "keywords")} for k, v in scores["types"].items()}}
    recipe_score = recipe.score(records, replies)
    result["accuracy"] = recipe_score["accuracy"] if recipe_score else scores["overall"]["keywords"]
    if recipe_score:
        result["score"] = recipe_score
    return result


@torch.no_grad()
def precise_batch_norm(encoder: nn.Module, cache, batch_size: int, precision: str, clips: int = 512) -> None:
    """Set every batch norm's running statistics to their average over the first `clips` training clips.

    Training mode normalises with each batch's statistics; inference uses the running averages, which trail
    the weights (docs/training.md measures the gap). Only the running statistics change, which training
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
