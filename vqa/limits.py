"""Bounds on one request's text: the question and the conversation before it, counted in tokens.

A question over MAX_QUESTION_TOKENS is refused with a message that says so. A history whose
turns, with the question, pass MAX_CONVERSATION_TOKENS keeps its newest turns that fit and
drops the oldest (the caller tells the user how many). Text is tokenised at most up to
_CHARS_PER_TOKEN characters a token over the budget, so a megabyte of text costs no more than
a question at the limit: no token of a usual vocabulary is longer (SmolLM2's longest is 81).
"""
from __future__ import annotations

EMPTY_QUESTION = "Give a question."
MAX_QUESTION_TOKENS = 256
MAX_CONVERSATION_TOKENS = 1024  # history + question, read by the LLM on every request; the clip and answer come on top
TURN_OVERHEAD_TOKENS = 6  # the chat template's tokens around each turn (role header, end of turn)
ROLES = ("user", "assistant")
_CHARS_PER_TOKEN = 100


class QuestionError(ValueError):
    """A question the model will not take: empty, or too long."""


class HistoryError(ValueError):
    """A conversation history that is not a list of {"role", "content"} turns."""


def count_tokens(tokenizer, text: str, limit: int) -> int:
    """Tokens in `text`, exact up to `limit`; above it, some number over `limit` (long text is cut first)."""
    cut = text[: (limit + 1) * _CHARS_PER_TOKEN]
    n = len(tokenizer(cut, add_special_tokens=False, verbose=False)["input_ids"])
    return max(n, limit + 1) if len(cut) < len(text) else n


def check_question(question, tokenizer, max_tokens: int = MAX_QUESTION_TOKENS) -> str:
    """The question, stripped; raises QuestionError if it is empty, blank or over `max_tokens`."""
    if not isinstance(question, str):
        raise QuestionError(f"the question must be text, got {type(question).__name__}")
    question = question.strip()
    if not question:
        raise QuestionError(EMPTY_QUESTION)
    n = count_tokens(tokenizer, question, max_tokens)
    if n > max_tokens:
        size = f"{len(question):,} characters" if len(question) > max_tokens * _CHARS_PER_TOKEN else f"{n} tokens"
        raise QuestionError(f"The question is too long ({size}); the limit is {max_tokens} tokens. Ask a shorter one.")
    return question


def check_history(history) -> list[dict]:
    """Role/content turns of a client-supplied history; raises HistoryError naming the first bad turn."""
    if history is None:
        return []
    if not isinstance(history, (list, tuple)):
        raise HistoryError(f"the history must be a list of {{role, content}} turns, got {type(history).__name__}")
    turns = []
    for i, turn in enumerate(history):
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise HistoryError(f"history turn {i} is not a {{role, content}} message: {str(turn)[:80]!r}")
        if turn["role"] not in ROLES:
            raise HistoryError(f"history turn {i} has role {str(turn['role'])[:40]!r}; expected one of {list(ROLES)}")
        if not isinstance(turn["content"], str):
            raise HistoryError(f"history turn {i} has content of type {type(turn['content']).__name__}; expected text")
        turns.append({"role": turn["role"], "content": turn["content"]})
    return turns


def fit_history(history: list[dict], tokenizer, budget: int) -> tuple[list[dict], int]:
    """(the newest turns whose tokens fit in `budget`, starting with a user turn; how many were dropped)."""
    kept = 0
    for turn in reversed(history):
        budget -= count_tokens(tokenizer, turn["content"], budget) + TURN_OVERHEAD_TOKENS
        if budget < 0:
            break
        kept += 1
    start = len(history) - kept
    while start < len(history) and history[start]["role"] != "user":
        start += 1
    return history[start:], start
