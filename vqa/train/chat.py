"""General chat mixed into the LLM stages, so the LoRA keeps the LLM's language.

Benchmark answers are one word; a LoRA trained on them alone learns to answer
everything with one word ("What is the capital of France?" -> "France"). Mixed
into those stages are prompts unrelated to any clip, each answered with the
base LLM's own reply (the LoRA disabled, the same system prompt): replayed, they
pin the adapted model to what the base model said. Half of them are asked with a
clip shown, so a clip in the prompt does not change an unrelated answer.

The replies are generated once per run (greedy, so deterministic) into
`chat.jsonl` in the run's folder, which a resumed run reads back.
"""
from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import torch

from ..data import Sample
from ..prompt import with_video

CHAT_FILE = "chat.jsonl"

_COUNTRIES = ("Japan", "Italy", "Canada", "Egypt", "Brazil", "Germany", "Spain", "Kenya", "Norway", "India",
              "Mexico", "Greece", "Australia", "Portugal", "Sweden", "Peru", "Ireland", "Poland")
_CONCEPTS = ("gravity", "photosynthesis", "a black hole", "democracy", "inflation", "a neural network",
             "evaporation", "a volcano", "an atom", "the internet", "a vaccine", "recycling", "a rainbow",
             "a prime number", "electricity", "an eclipse")
_WORDS = ("happy", "big", "fast", "cold", "bright", "quiet", "strong", "early", "easy", "old", "rich", "brave")
_TOPICS = ("the ocean", "autumn leaves", "a city at night", "the moon", "a mountain", "morning coffee",
           "a thunderstorm", "a garden", "winter", "a train journey", "friendship", "the desert")
_ANIMALS = ("elephants", "octopuses", "penguins", "bees", "dolphins", "owls", "giraffes", "ants", "wolves",
            "turtles", "bats", "camels")
_JOBS = ("nurse", "carpenter", "pilot", "librarian", "chef", "firefighter", "architect", "farmer", "teacher",
         "plumber")
_TASKS = ("boil an egg", "plant a tree", "tie a tie", "make a cup of tea", "change a bicycle tyre",
          "start learning a language", "save money each month", "write a good email", "fall asleep faster",
          "prepare for a job interview", "keep a plant alive indoors", "clean a laptop keyboard")
_PHRASES = ("good morning", "thank you very much", "where is the station", "I like music", "see you tomorrow",
            "how much does it cost")
_LANGUAGES = ("Spanish", "German", "Italian")
_PEOPLE = ("Isaac Newton", "Marie Curie", "Leonardo da Vinci", "Ada Lovelace", "Charles Darwin",
           "Nelson Mandela", "Galileo Galilei", "Jane Austen")
_OPEN = ("Hello! How are you today?", "Can you help me plan a weekend trip?", "Tell me a joke.",
         "What should I cook for dinner tonight?", "Give me three ideas for a birthday present.",
         "What are the benefits of regular exercise?", "How can I be more productive at work?",
         "Recommend a good habit to start this year.", "Why is sleep important?",
         "What is the difference between weather and climate?", "Write a short thank-you note to a friend.",
         "What makes a good story?", "Explain how to make a paper aeroplane.", "What do bees do in winter?",
         "How do I stay calm before an exam?", "What are some fun things to do on a rainy day?",
         "Write one sentence describing a sunset.", "Suggest a name for a small bakery.",
         "What are the three states of matter?", "How many continents are there?")
# questions in the benchmark's own words (how many, what colour, what shape) about the world, not the clip:
# without them the adapted model answers "How many wheels does a bicycle have?" with a count from the clip
_WORLD = ("How many days are in a week?", "How many wheels does a bicycle have?", "How many minutes are in an hour?",
          "How many sides does a square have?", "How many months are in a year?", "How many legs does a dog have?",
          "How many players are on a football team?", "How many letters are in the English alphabet?",
          "How many colours are in a rainbow?", "How many planets are in our solar system?",
          "How many wheels does a car have?", "How many seconds are in a minute?", "How many eyes does a person have?",
          "How many strings does a guitar usually have?", "How many weeks are in a year?",
          "What colour is grass?", "What colour are bananas when they are ripe?", "What colour is snow?",
          "What colour do you get by mixing blue and yellow?", "What colour is a fire truck?",
          "What colour are most clouds?", "What shape is a football?", "What shape is a slice of pizza?",
          "What shape is the Earth?", "What shape is a stop sign?", "Which way does the sun move across the sky?",
          "Does the moon make a sound?", "What sound does a cat make?", "What makes thunder loud?",
          "Is a whale a fish?")


def chat_prompts() -> list[str]:
    """The general prompts, in a fixed order: templates filled from small lists (about 240)."""
    out = list(_OPEN) + list(_WORLD)
    out += [f"What is the capital of {c}?" for c in _COUNTRIES]
    out += [f"Explain {c} in one sentence." for c in _CONCEPTS]
    out += [f"What is {c}?" for c in _CONCEPTS]
    out += [f"Give me a word that means the opposite of '{w}'." for w in _WORDS]
    out += [f"What is another word for '{w}'?" for w in _WORDS]
    out += [f"Write a haiku about {t}." for t in _TOPICS]
    out += [f"Describe {t} in two sentences." for t in _TOPICS]
    out += [f"Tell me an interesting fact about {a}." for a in _ANIMALS]
    out += [f"Where do {a} live?" for a in _ANIMALS]
    out += [f"What does a {j} do?" for j in _JOBS]
    out += [f"How do I {t}?" for t in _TASKS]
    out += [f"Translate '{p}' into {lang}." for p, lang in itertools.product(_PHRASES, _LANGUAGES)]
    out += [f"Who was {p}?" for p in _PEOPLE]
    out += [f"What is {a} plus {b}?" for a, b in ((12, 7), (25, 25), (3, 9), (40, 2), (18, 5), (100, 1))]
    out += [f"What is {a} times {b}?" for a, b in ((6, 7), (3, 4), (10, 10), (9, 2), (5, 8), (11, 3))]
    out += [f"What is {a} minus {b}?" for a, b in ((10, 3), (9, 5), (20, 8), (7, 7), (15, 6), (50, 25))]
    return out


@torch.no_grad()
def base_replies(model, prompts: list[str], max_new_tokens: int, batch_size: int = 16,
                 progress: bool = False) -> list[str]:
    """The base LLM's greedy reply to each prompt (no clip, the LoRA disabled), under the model's system prompt."""
    from contextlib import nullcontext

    from tqdm import tqdm

    disable = getattr(model.llm, "disable_adapter", None)
    replies = []
    was_training = model.llm.training
    model.llm.eval()
    with disable() if disable is not None else nullcontext():
        for start in tqdm(range(0, len(prompts), batch_size), desc="base LLM replies to chat prompts",
                          unit="batch", disable=not progress):
            encoded = [model.encode_prompt([{"role": "user", "content": p}], blind=True)
                       for p in prompts[start:start + batch_size]]
            replies += [r.strip() for r in model.generate_batch(None, encoded, max_new_tokens=max_new_tokens)]
    model.llm.train(was_training)
    return replies


def load_or_make_replies(path: Path, model, prompts: list[str], max_new_tokens: int,
                         progress: bool = False) -> list[dict]:
    """[{"prompt", "reply", "max_new_tokens"}]: read from `path` (if made from the same prompts and
    limit, `train.chat_reply_tokens`), or generated and written there (atomically) first."""
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if [(r["prompt"], r["max_new_tokens"]) for r in rows] == [(p, max_new_tokens) for p in prompts]:
            return rows
    replies = base_replies(model, prompts, max_new_tokens=max_new_tokens, progress=progress)
    rows = [{"prompt": p, "reply": r, "max_new_tokens": max_new_tokens} for p, r in zip(prompts, replies)]
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)
    return rows


def chat_samples(rows: list[dict], count: int, clips: int, seed: int) -> list[Sample]:
    """`count` conversations cycling over the prompts; every other one is asked with a clip (drawn from
    `clips` feature-cache rows) shown before it. Replies that came out empty are skipped."""
    rows = [r for r in rows if r["reply"]]
    if not rows:
        raise ValueError("the base LLM gave no reply to any chat prompt: cannot mix chat into training")
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        r = rows[k % len(rows)]
        shown = (k // len(rows) + k % len(rows)) % 2 == 1  # each prompt alternates, pass after pass
        question = with_video(r["prompt"]) if shown else r["prompt"]
        row = int(rng.integers(clips)) if shown else None
        out.append(Sample(row, [{"role": "user", "content": question}, {"role": "assistant", "content": r["reply"]}]))
    return out
