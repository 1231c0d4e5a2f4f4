"""`vqa eval`: how well a bundle answers a dataset's questions, beside the same model without the clip.

Works on any dataset folder (qa.jsonl). For each record the last answer is held out and scored:
- `loss`: the mean cross-entropy of the reference answers' tokens, the clip shown (teacher forcing);
- `match`: the reply equals the reference once both are normalised (case, punctuation, articles,
  number words as digits);
- `keywords`: every key word of the reference (its words less common function words) is in the reply,
  for free-form answers that say the right thing in other words.
Reported overall and per `type`. The blind baseline asks the same model the same questions with the
clip's tokens withheld: what it gets right comes from the question alone. A recipe that scores the
dataset (its dataset.json names one, or `--recipe`) adds its own table (AVSynth: per family).

Notation: B batch, K clip tokens, H LLM hidden size.
"""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import torch

from .data import FeatureCache, PromptEncoder, Sample, load_features, read_qa, usable
from .data.perception import add_perception
from .prompt import without_video
from .train.card import set_section
from .train.precision import autocast, resolve_precision
from .train.recipe import Recipe, dataset_recipe, load_recipe

MAX_NEW_TOKENS = 48
ALL = "all"
# not key words: what a reference shares with almost any reply
STOPWORDS = frozenset(
    "a an the is are was were be been being am it its it's this that these those there here of in on at to for "
    "from by with and or but as so do does did has have had i you he she we they them his her their our your "
    "my me what which who whom when where how why not no yes very just than then also can could would should "
    "will shall may might must".split()
)
_NUMBERS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}


# ---- scoring replies ----
def normalize(text: str) -> list[str]:
    """Lower-case words without punctuation or articles, number words as digits."""
    words = re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())
    return [_NUMBERS.get(w, w) for w in words if w not in ("a", "an", "the")]


def key_words(reference: str) -> set[str]:
    """The reference's content words (all of its words where it has nothing else, e.g. "yes")."""
    words = normalize(reference)
    keys = {w for w in words if w not in STOPWORDS}
    return keys or set(words)


def score_reply(reply: str, reference: str) -> dict[str, bool]:
    got = normalize(reply)
    return {"match": got == normalize(reference), "keywords": key_words(reference) <= set(got)}


def score_replies(records: list[dict], replies: list[str]) -> dict:
    """Match and key-word shares overall and per `type`: {"overall": {...}, "types": {type: {...}}}."""
    groups: dict[str, list[dict]] = {}
    for r, reply in zip(records, replies):
        s = score_reply(reply, reference(r))
        for key in (ALL, r.get("type")):
            if key is not None:
                groups.setdefault(str(key), []).append(s)

    def share(scores: list[dict]) -> dict:
        n = len(scores)
        return {"n": n, "match": sum(s["match"] for s in scores) / max(1, n),
                "keywords": sum(s["keywords"] for s in scores) / max(1, n)}

    overall = share(groups.pop(ALL, []))
    return {"overall": overall, "types": {k: share(v) for k, v in sorted(groups.items())}}


def reference(record: dict) -> str:
    """The answer held out: the conversation's last assistant turn."""
    return [m["content"] for m in record["messages"] if m["role"] == "assistant"][-1]


def question_messages(record: dict) -> list[dict]:
    """The conversation up to its last question (the answer to score removed, where it has one)."""
    messages = record["messages"]
    answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    return messages[:answers[-1]] if answers else messages


# ---- the model's answers ----
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
    """The model's greedy reply to each record's last question; `blind` withholds the clip's tokens."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    if tokens is None and not blind:
        tokens = clip_tokens(model, cache, precision=precision)
    prompts = [model.encode_prompt(question_messages(r), blind=blind) for r in records]
    rows = [cache.row(r["video"]) for r in records]
    video = [None if blind else tokens[row].to(model.device) for row in rows]
    with tqdm(total=len(records), desc=desc, unit="q", disable=not progress) as bar, autocast(precision, model.device):
        replies = model.generate_many(video, rows, prompts, batch_size, max_new_tokens, done=bar.update)
    model.train(was_training)
    return replies


@torch.no_grad()
def answer_loss(model, cache: FeatureCache, records: list[dict], blind: bool = False, batch_size: int = 16,
                precision: str = "fp32") -> float:
    """Mean cross-entropy of the records' answer tokens (every assistant turn), over batches."""
    was_training = model.training
    model.eval()
    samples = [Sample(None if blind else cache.row(r["video"]), r["messages"]) for r in records]
    if blind:  # the same conversations, the placeholder dropped
        samples = [Sample(None, [{**m, "content": without_video(m["content"])}
                                 for m in s.messages]) for s in samples]
    prompts = PromptEncoder(model, samples)
    total, count = 0.0, 0
    for start in range(0, len(samples), batch_size):
        idx = list(range(start, min(start + batch_size, len(samples))))
        batch = {k: v.to(model.device) for k, v in prompts.batch(idx, cache).items()}
        with autocast(precision, model.device):
            total += model(**batch).item() * len(idx)
        count += len(idx)
    model.train(was_training)
    return total / max(1, count)


# ---- a dataset ----
def evaluate(
    model, data: str | Path, batch_size: int = 16, limit: int | None = None, blind: bool = True,
    precision: str = "auto", progress: bool = True, workers: int | None = None, recipe: Recipe | None = None,
    max_new_tokens: int | None = None,
) -> dict:
    """Answer every question of a dataset (the first `limit` clips), with the clip and blind; a dict."""
    data = Path(data)
    recipe = recipe or load_recipe(dataset_recipe(data))
    max_new_tokens = max_new_tokens or recipe.max_new_tokens(MAX_NEW_TOKENS)
    records = read_qa(data)
    videos = list(dict.fromkeys(r["video"] for r in records))
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be at least 1, got {limit}")
        videos = videos[:limit]
        keep = set(videos)
        records = [r for r in records if r["video"] in keep]
    precision = resolve_precision(precision, model.device)
    start = time.perf_counter()
    cache = load_features(data, model.config, videos=videos, workers=workers, progress=progress, records=records)
    records = add_perception(data, usable(records, cache), model.config, model.tokenizer, progress)
    seconds = {"features": round(time.perf_counter() - start, 1)}
    start = time.perf_counter()
    replies = answer(model, cache, records, batch_size=batch_size, max_new_tokens=max_new_tokens,
                     precision=precision, progress=progress, desc="with the clip")
    out = {
        "data": str(data), "clips": len({r["video"] for r in records}), "questions": len(records), "precision": precision,
        "recipe": recipe.name, "loss": answer_loss(model, cache, records, batch_size=batch_size, precision=precision),
        **score_replies(records, replies), "seconds": seconds,
        "replies": [{"id": r.get("id"), "type": r.get("type"), "reference": reference(r), "reply": t}
                    for r, t in zip(records, replies)],
    }
    out["recipe_score"] = recipe.score(records, replies)
    seconds["answers"] = round(time.perf_counter() - start, 1)
    if blind:
        start = time.perf_counter()
        blind_replies = answer(model, cache, records, blind=True, batch_size=batch_size,
                               max_new_tokens=max_new_tokens, precision=precision, progress=progress, desc="blind")
        out["blind"] = {"loss": answer_loss(model, cache, records, blind=True, batch_size=batch_size,
                                            precision=precision),
                        **score_replies(records, blind_replies), "recipe_score": recipe.score(records, blind_replies)}
        seconds["blind"] = round(time.perf_counter() - start, 1)
    out["recipe_table"] = recipe.report(out["recipe_score"], (out.get("blind") or {}).get("recipe_score"))
    return out


def format_table(result: dict) -> str:
    """A Markdown table: overall, then one row per type; blind beside each share where it was run."""
    blind = result.get("blind")
    head = ("| type | n | match | keywords | blind match | blind keywords |\n"
            "| --- | ---: | ---: | ---: | ---: | ---: |")

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    def row(name: str, s: dict, b: dict | None) -> str:
        return (f"| {name} | {s['n']} | {pct(s['match'])} | {pct(s['keywords'])} | "
                f"{pct(b and b['match'])} | {pct(b and b['keywords'])} |")

    rows = [head, row("**overall**", result["overall"], blind and blind["overall"])]
    for name, s in result["types"].items():
        rows.append(row(name, s, blind and blind["types"].get(name)))
    loss = f"Answer loss {result['loss']:.3f}" + (f" (blind {blind['loss']:.3f})" if blind else "") + "."
    return "\n".join(rows) + "\n\n" + loss


def cli(args) -> int:
    from .api import VideoQA
    from .bundle import BundleError

    if not (Path(args.data) / "qa.jsonl").is_file():
        print(f"error: {Path(args.data) / 'qa.jsonl'} does not exist: a dataset is a folder with a qa.jsonl "
              f"(`vqa data convert` makes one from public sets, `vqa synth` an AVSynth split)", file=sys.stderr)
        return 2
    try:
        recipe = load_recipe(args.recipe or dataset_recipe(args.data))
        qa = VideoQA.from_pretrained(args.adapter)
    except (BundleError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    card = Path(qa.source) / "README.md"
    if args.card and not card.is_file():  # said before the evaluation, not after it
        print(f"error: {card} does not exist: --card needs a bundle folder with a model card", file=sys.stderr)
        return 2
    result = evaluate(qa.model, args.data, batch_size=args.batch_size, limit=args.limit, blind=not args.no_blind,
                      recipe=recipe, max_new_tokens=args.max_new_tokens)
    result["adapter"] = qa.source
    print(f"{qa.source} on {args.data}: {result['clips']} clips, {result['questions']} questions "
          f"({result['precision']}; {sum(result['seconds'].values()):.0f} s)")
    print(format_table(result))
    if result["recipe_table"]:
        print(f"\n{recipe.name}:\n{result['recipe_table']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.card:
        set_section(card, "Test split" if result["recipe_table"] else "Evaluation",
                    card_section(result, _command(args)))
        print(f"wrote the table into {card}")
    return 0


def card_section(result: dict, command: str) -> str:
    """The model card's evaluation section: what was evaluated, the tables, and the command that made them."""
    blind = " \"blind\" is the same model with the clip's tokens withheld." if "blind" in result else ""
    text = f"`{result['data']}`: {result['clips']} clips, {result['questions']} questions.{blind}\n\n"
    if result["recipe_table"]:
        text += f"{result['recipe_table']}\n\nEvery question, scored as free-form answers:\n\n"
    return text + f"{format_table(result)}\n\n```\n{command}\n```"


def _command(args) -> str:
    """The `vqa eval` command line that reproduces a run (without --card)."""
    parts = ["vqa eval"] + ([f"--adapter {args.adapter}"] if args.adapter else []) + [f"--data {args.data}"]
    parts += [f"--recipe {args.recipe}"] if args.recipe else []
    parts += [f"--json {args.json}"] if args.json else []
    parts += [f"--batch-size {args.batch_size}"] if args.batch_size != 16 else []
    parts += [f"--limit {args.limit}"] if args.limit is not None else []
    parts += [f"--max-new-tokens {args.max_new_tokens}"] if args.max_new_tokens else []
    parts += ["--no-blind"] if args.no_blind else []
    return " ".join(parts)
