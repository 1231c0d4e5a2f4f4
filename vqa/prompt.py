"""Prompts in the LLM's own chat template, with the `<video>` placeholder expanded.

A conversation is rendered segment by segment (the template applied to ever
longer message lists, each segment the new text), so training and inference
tokenise a conversation identically, and the answer spans are known exactly.
The placeholder is expanded to one position per clip token; `video_mask`
marks those positions, whose embeddings the model replaces.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import VIDEO_PLACEHOLDER

IGNORE_INDEX = -100


@dataclass
class EncodedPrompt:
    input_ids: torch.Tensor  # (L,) long
    labels: torch.Tensor  # (L,) long, IGNORE_INDEX outside answers
    video_mask: torch.Tensor  # (L,) bool, True where a clip token goes


def normalize_messages(conversations: list[dict]) -> list[dict]:
    """LLaVA-style turns ({"from": "human"|"gpt", "value"}) or chat messages -> role/content dicts."""
    roles = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
    out = []
    for turn in conversations:
        if "role" in turn:
            role, content = turn["role"], turn["content"]
        else:
            role, content = turn["from"], turn["value"]
        if role not in roles:
            raise ValueError(f"unknown conversation role {role!r}; expected one of {sorted(roles)}")
        out.append({"role": roles[role], "content": content})
    return out


def without_video(text: str) -> str:
    """A turn with the clip's placeholder (and the line break after it) taken out."""
    return text.replace(f"{VIDEO_PLACEHOLDER}\n", "").replace(VIDEO_PLACEHOLDER, "")


def with_video(question: str, perception: str = "") -> str:
    """The first user turn about a clip: the placeholder, then what perception found (a short text
    block, if any), then the question (unless the question carries the placeholder already)."""
    if VIDEO_PLACEHOLDER in question:
        return question
    return f"{VIDEO_PLACEHOLDER}\n{perception}\n{question}" if perception else f"{VIDEO_PLACEHOLDER}\n{question}"


def _render(tokenizer, system: str, messages: list[dict], generation_prompt: bool) -> str:
    full = ([{"role": "system", "content": system}] if system else []) + messages
    return tokenizer.apply_chat_template(full, tokenize=False, add_generation_prompt=generation_prompt)


def encode_conversation(
    tokenizer, system: str, messages: list[dict], num_video_tokens: int, video_token_id: int
) -> EncodedPrompt:
    """Token ids for a conversation; assistant turns are labelled, the rest ignored.

    If the last message is from the user, the prompt ends with the generation
    prompt (inference); otherwise every assistant turn carries labels (training).
    """
    if not messages or messages[0]["role"] != "user":
        raise ValueError("a conversation must start with a user turn")
    ids: list[int] = []
    labels: list[int] = []
    mask: list[bool] = []
    rendered = ""
    for k, message in enumerate(messages):
        is_answer = message["role"] == "assistant"
        # a user turn answered next (or last) ends with the generation prompt, so the
        # following segment is exactly the answer text and its end-of-turn tokens
        answered = k + 1 == len(messages) or messages[k + 1]["role"] == "assistant"
        upto = _render(tokenizer, system, messages[: k + 1], generation_prompt=not is_answer and answered)
        if not upto.startswith(rendered):
            raise ValueError("the chat template does not render conversations prefix-consistently")
        segment, rendered = upto[len(rendered):], upto
        pieces = segment.split(VIDEO_PLACEHOLDER)
        for j, piece in enumerate(pieces):
            if j:
                ids += [video_token_id] * num_video_tokens
                labels += [IGNORE_INDEX] * num_video_tokens
                mask += [True] * num_video_tokens
            piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []
            ids += piece_ids
            labels += piece_ids if is_answer else [IGNORE_INDEX] * len(piece_ids)
            mask += [False] * len(piece_ids)
    return EncodedPrompt(
        input_ids=torch.tensor(ids, dtype=torch.long),
        labels=torch.tensor(labels, dtype=torch.long),
        video_mask=torch.tensor(mask, dtype=torch.bool),
    )


def pad_batch(prompts: list[EncodedPrompt], pad_id: int, side: str = "right") -> dict[str, torch.Tensor]:
    """Stack prompts into (B, L) tensors with an attention mask; left padding for generation."""
    length = max(len(p.input_ids) for p in prompts)
    out = {
        "input_ids": torch.full((len(prompts), length), pad_id, dtype=torch.long),
        "labels": torch.full((len(prompts), length), IGNORE_INDEX, dtype=torch.long),
        "video_mask": torch.zeros((len(prompts), length), dtype=torch.bool),
        "attention_mask": torch.zeros((len(prompts), length), dtype=torch.long),
    }
    for i, p in enumerate(prompts):
        n = len(p.input_ids)
        sl = slice(0, n) if side == "right" else slice(length - n, length)
        out["input_ids"][i, sl] = p.input_ids
        out["labels"][i, sl] = p.labels
        out["video_mask"][i, sl] = p.video_mask
        out["attention_mask"][i, sl] = 1
    return out
