"""`vqa eval`: accuracy on an AVSynth split per family, per group and overall, beside chance and a blind baseline.

Scoring follows avsynth-spec.md: a reply counts by its first vocabulary word;
overall accuracy is the mean over families (each family weighs the same
whatever its number of questions), and a group's is the mean over its families.
The blind baseline asks the same model the same questions with the clip's
tokens withheld: what it gets right comes from the question alone.

Notation: B batch, K clip tokens, H LLM hidden size.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from .data import FeatureCache, load_features, read_qa
from .synth.questions import CHANCE, FAMILIES, FAMILY_GROUP, GROUPS, VOCABULARY, score_reply
from .train.card import set_section
from .train.precision import autocast, resolve_precision

MAX_NEW_TOKENS = 6


def question_messages(record: dict) -> list[dict]:
    """The conversation up to its last question (the answer to score removed)."""
    messages = record["messages"]
    return messages[:-1] if messages[-1]["role"] == "assistant" else messages


@torch.no_grad()
def clip_tokens(model, cache: FeatureCache, batch_size: int = 32, precision: str = "fp32") -> torch.Tensor:
    """(N, K, H) tokens of every clip in the cache."""
    out = []
    for start in range(0, len(cache), batch_size):
        frames, mel = cache.inputs(list(range(start, min(start + batch_size, len(cache)))))
        with autocast(precision, model.device):
            out.append(model.get_video_features(frames.to(model.device), mel.to(model.device)).float())
    return torch.cat(out)


@torch.no_grad()
def answer(
    model, cache: FeatureCache, records: list[dict], blind: bool = False, batch_size: int = 16,
    max_new_tokens: int = MAX_NEW_TOKENS, precision: str = "fp32", tokens: torch.Tensor | None = None,
    progress: bool = True, desc: str = "answering",
) -> list[str]:
    """The model's greedy reply to each record's question; `blind` withholds the clip's tokens."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    if tokens is None and not blind:
        tokens = clip_tokens(model, cache, precision=precision)
    prompts = [model.encode_prompt(question_messages(r), blind=blind) for r in records]
    # similar lengths together: less padding per batch
    order = sorted(range(len(records)), key=lambda i: len(prompts[i].input_ids))
    replies: list[str] = [""] * len(records)
    with tqdm(total=len(records), desc=desc, unit="q", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            video = None if blind else tokens[[cache.row(records[i]["video"]) for i in idx]].to(model.device)
            with autocast(precision, model.device):
                texts = model.generate_batch(video, [prompts[i] for i in idx], max_new_tokens=max_new_tokens)
            for i, text in zip(idx, texts):
                replies[i] = text
            bar.update(len(idx))
    model.train(was_training)
    return replies


def one_word_share(replies: list[str]) -> float:
    """Share of replies that are exactly one vocabulary word (case and end punctuation aside)."""
    words = [r.strip().strip(".!").lower() for r in replies]
    return sum(w in VOCABULARY for w in words) / max(1, len(words))


def summarize(records: list[dict], replies: list[str]) -> dict:
    """Accuracy per family (with n and chance), per group and overall (means over families)."""
    families: dict[str, dict] = {}
    for r, reply in zip(records, replies):
        f = families.setdefault(r["family"], {"group": FAMILY_GROUP[r["family"]], "n": 0, "correct": 0})
        f["n"] += 1
        f["correct"] += int(score_reply(reply) == r["answer"])
    ordered = {}
    for name in FAMILIES:  # the spec's order
        if name in families:
            f = families[name]
            ordered[name] = {**f, "accuracy": f["correct"] / f["n"], "chance": CHANCE[name]}
    groups = {}
    for g in GROUPS:
        members = [f for f in ordered.values() if f["group"] == g]
        if members:
            groups[g] = {
                "families": len(members), "n": sum(f["n"] for f in members),
                "accuracy": sum(f["accuracy"] for f in members) / len(members),
                "chance": sum(f["chance"] for f in members) / len(members),
            }
    overall = {
        "families": len(ordered), "n": sum(f["n"] for f in ordered.values()),
        "accuracy": sum(f["accuracy"] for f in ordered.values()) / max(1, len(ordered)),
        "chance": sum(f["chance"] for f in ordered.values()) / max(1, len(ordered)),
    }
    return {"families": ordered, "groups": groups, "overall": overall}


def format_table(result: dict, blind: dict | None = None) -> str:
    """A Markdown table: one row per family, then per group, then overall."""
    head = "| family | group | n | accuracy | blind | chance |\n| --- | --- | ---: | ---: | ---: | ---: |"
    rows = [head]

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    def blind_of(section: str, key: str) -> float | None:
        if blind is None:
            return None
        part = blind[section] if section == "overall" else blind[section].get(key)
        return None if part is None else part["accuracy"]

    for name, f in result["families"].items():
        rows.append(f"| {name} | {f['group']} | {f['n']} | {pct(f['accuracy'])} | "
                    f"{pct(blind_of('families', name))} | {pct(f['chance'])} |")
    for name, g in result["groups"].items():
        rows.append(f"| **{name}** (mean of {g['families']}) | | {g['n']} | {pct(g['accuracy'])} | "
                    f"{pct(blind_of('groups', name))} | {pct(g['chance'])} |")
    o = result["overall"]
    rows.append(f"| **overall** (mean of {o['families']} families) | | {o['n']} | **{pct(o['accuracy'])}** | "
                f"{pct(blind_of('overall', ''))} | {pct(o['chance'])} |")
    return "\n".join(rows)


def evaluate(
    model, data: str | Path, batch_size: int = 16, limit: int | None = None, blind: bool = True,
    precision: str = "auto", progress: bool = True, workers: int | None = None,
) -> dict:
    """Answer every question of a split (the first `limit` clips), with clip and blind; results as a dict."""
    data = Path(data)
    records = [r for r in read_qa(data) if "family" in r]
    if not records:
        raise ValueError(f"{data}: no benchmark records (with a `family`) in its qa.jsonl")
    videos = list(dict.fromkeys(r["video"] for r in records))
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be at least 1, got {limit}")
        videos = videos[:limit]
        keep = set(videos)
        records = [r for r in records if r["video"] in keep]
    precision = resolve_precision(precision, model.device)
    start = time.perf_counter()
    cache = load_features(data, model.config, videos=videos, workers=workers, progress=progress)
    decode_s = time.perf_counter() - start
    start = time.perf_counter()
    replies = answer(model, cache, records, batch_size=batch_size, precision=precision, progress=progress,
                     desc="with the clip")
    answer_s = time.perf_counter() - start
    out = {
        "data": str(data), "clips": len(videos), "questions": len(records), "precision": precision,
        **summarize(records, replies),
        "one_word": one_word_share(replies),
        "seconds": {"features": round(decode_s, 1), "answers": round(answer_s, 1)},
        "replies": [{"id": r.get("id"), "family": r["family"], "answer": r["answer"], "reply": t}
                    for r, t in zip(records, replies)],
    }
    if blind:
        start = time.perf_counter()
        blind_replies = answer(model, cache, records, blind=True, batch_size=batch_size, precision=precision,
                               progress=progress, desc="blind")
        out["blind"] = summarize(records, blind_replies)
        out["seconds"]["blind"] = round(time.perf_counter() - start, 1)
    return out


def cli(args) -> int:
    from .api import VideoQA
    from .bundle import BundleError

    if not (Path(args.data) / "qa.jsonl").is_file():
        print(f"error: {Path(args.data) / 'qa.jsonl'} does not exist: make a split with "
              f"`vqa synth --out {args.data} --clips N --seed S`", file=sys.stderr)
        return 2
    try:
        qa = VideoQA.from_pretrained(args.adapter)
    except (BundleError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    card = Path(qa.source) / "README.md"
    if args.card and not card.is_file():  # said before the evaluation, not after it
        print(f"error: {card} does not exist: --card needs a bundle folder with a model card", file=sys.stderr)
        return 2
    result = evaluate(qa.model, args.data, batch_size=args.batch_size, limit=args.limit, blind=not args.no_blind)
    result["adapter"] = qa.source
    print(f"{qa.source} on {args.data}: {result['clips']} clips, {result['questions']} questions "
          f"({result['precision']}; {sum(result['seconds'].values()):.0f} s)")
    print(format_table(result, result.get("blind")))
    print(f"replies that are exactly one answer word: {100 * result['one_word']:.1f}%")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.card:
        set_section(card, "Test split", card_section(result, _command(args)))
        print(f"wrote the table into {card}")
    return 0


def card_section(result: dict, command: str) -> str:
    """The model card's test section: what was evaluated, the table, and the command that made it."""
    blind = " \"blind\" is the same model with the clip's tokens withheld." if "blind" in result else ""
    return (f"`{result['data']}`: {result['clips']} clips, {result['questions']} questions, every applicable "
            f"family of each clip.{blind}\n\n{format_table(result, result.get('blind'))}\n\n"
            f"Replies that are exactly one answer word: {100 * result['one_word']:.1f}%.\n\n"
            f"```\n{command}\n```")


def _command(args) -> str:
    """The `vqa eval` command line that reproduces a run (without --card)."""
    parts = ["vqa eval"] + ([f"--adapter {args.adapter}"] if args.adapter else []) + [f"--data {args.data}"]
    parts += [f"--json {args.json}"] if args.json else []
    parts += [f"--batch-size {args.batch_size}"] if args.batch_size != 16 else []
    parts += [f"--limit {args.limit}"] if args.limit is not None else []
    parts += ["--no-blind"] if args.no_blind else []
    return " ".join(parts)
