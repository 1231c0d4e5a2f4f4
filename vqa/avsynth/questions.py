"""AVSynth questions: the families of avsynth-spec.md, phrased in varied English, balanced, and scored.

Each family has one question per clip where it applies. Where a question names
an object, the name is chosen by a `Balancer` that keeps the family's answers
close to a target distribution (uniform, or for `beeps_of` more non-zero
answers than chance would give). Replies are scored by their first vocabulary word.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from vqa.config import VIDEO_PLACEHOLDER
from vqa.avsynth.scene import COLORS, QUESTIONS, SHAPES, clip_rng, sounding_object

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
VOCABULARY = (
    "zero", "one", "two", "three", "yes", "no", "circle", "square", "triangle",
    "red", "green", "blue", "yellow", "white", "purple", "left", "right", "up", "down", "none", "high", "low",
)
GROUPS = ("visual", "audio", "audio-visual")
DIRECTION_ANSWERS = ("left", "right", "up", "down", "none")
COUNT_ANSWERS = ("zero", "one", "two", "three")


@dataclass(frozen=True)
class Family:
    group: str
    answers: tuple[str, ...]
    phrasings: tuple[str, ...]  # the first is the spec's canonical question

    @property
    def canonical(self) -> str:
        return self.phrasings[0]


FAMILIES: dict[str, Family] = {
    "count_objects": Family("visual", ("one", "two", "three"), (
        "How many objects are there?",
        "Count the objects in the clip.",
        "What is the number of shapes you can see?",
        "In this video, how many things are shown?",
        "Objects on screen: how many?",
        "Tell me how many objects appear.",
    )),
    "shape_of": Family("visual", SHAPES, (
        "What shape is the {color} object?",
        "The {color} object: what shape is it?",
        "Is the {color} thing a circle, a square or a triangle?",
        "Tell me the shape of the {color} object.",
        "Which shape is drawn in {color}?",
        "What is the shape of the {color} one?",
    )),
    "color_of": Family("visual", tuple(COLORS), (
        "What color is the {shape}?",
        "The {shape} is what colour?",
        "Which colour does the {shape} have?",
        "Tell me the color of the {shape}.",
        "In what colour is the {shape} drawn?",
        "What is the {shape}'s color?",
    )),
    "motion_of": Family("visual", DIRECTION_ANSWERS, (
        "Which way does the {color} object move?",
        "In which direction is the {color} object moving?",
        "The {color} one: where does it go?",
        "Does the {color} shape move left, right, up, down, or not at all?",
        "Tell me the direction the {color} object travels in.",
        "Where is the {color} thing heading?",
    )),
    "beep_exists": Family("audio", ("yes", "no"), (
        "Is there a beep?",
        "Can you hear a beep in this clip?",
        "Does anything beep?",
        "In the audio, is a beep present?",
        "Is any beeping sound heard?",
        "Any beeps in the soundtrack, yes or no?",
    )),
    "count_beeps": Family("audio", COUNT_ANSWERS, (
        "How many beeps are there?",
        "Count the beeps you hear.",
        "What is the number of beeps in the audio?",
        "In this clip, how many times is a beep heard?",
        "Beeps in the soundtrack: how many?",
        "Tell me how many beeps sound.",
    )),
    "pitch": Family("audio", ("high", "low"), (
        "Is the beep high or low?",
        "Is the pitch of the beep high or low?",
        "Low or high: how does the beep sound?",
        "Does the beep have a high or a low pitch?",
        "Tell me whether the beep is low or high.",
        "The beeping tone, is it high or low?",
    )),
    "source_color": Family("audio-visual", tuple(COLORS), (
        "What color is the object that beeps?",
        "Which colour is the thing making the beep?",
        "The beeping object: what color is it?",
        "Tell me the colour of the object you hear beeping.",
        "When the beep sounds, which coloured object makes it?",
        "Of the objects, what is the color of the one that beeps?",
    )),
    "source_shape": Family("audio-visual", SHAPES, (
        "What shape is the object that beeps?",
        "Which shape makes the beeping sound?",
        "The object that beeps: is it a circle, a square or a triangle?",
        "Tell me the shape of the beeping object.",
        "When you hear a beep, which shape is making it?",
        "Of the objects, what is the shape of the one that beeps?",
    )),
    "source_motion": Family("audio-visual", DIRECTION_ANSWERS, (
        "Which way does the object that beeps move?",
        "In which direction does the beeping object travel?",
        "The thing making the beeps: where does it move?",
        "Tell me the direction of the object that beeps.",
        "Does the beeping object move left, right, up, down, or not at all?",
        "Where is the object you hear beeping heading?",
    )),
    "beeps_of": Family("audio-visual", COUNT_ANSWERS, (
        "How many times does the {color} object beep?",
        "Count the beeps made by the {color} object.",
        "The {color} one: how many times does it beep?",
        "How often do we hear the {color} shape beep?",
        "Tell me the number of beeps from the {color} object.",
        "Beeps from the {color} thing: how many?",
    )),
}
FAMILY_GROUP = {name: f.group for name, f in FAMILIES.items()}
# chance = one over the number of answers a family can have
CHANCE = {name: 1 / len(f.answers) for name, f in FAMILIES.items()}
# answer share the Balancer aims at where it names an object; uniform unless listed
TARGETS = {"beeps_of": {"zero": 0.40, "one": 0.20, "two": 0.20, "three": 0.20}}
# the balance rule: no answer of a family more frequent than chance + this
BALANCE_SLACK = 0.20


def motion_word(obj: dict) -> str:
    return "none" if obj["motion"] == "still" else obj["motion"]


def options(meta: dict, family: str) -> list[tuple[str, dict]]:
    """Every (answer, template fields) the family can ask about this clip; empty where it does not apply."""
    objects = meta["objects"]
    source = sounding_object(meta)
    if family == "count_objects":
        return [(NUMBER_WORDS[len(objects)], {})]
    if family == "shape_of":
        return [(o["shape"], {"color": o["color"]}) for o in objects]
    if family == "color_of":
        shapes = Counter(o["shape"] for o in objects)
        return [(o["color"], {"shape": o["shape"]}) for o in objects if shapes[o["shape"]] == 1]
    if family == "motion_of":
        return [(motion_word(o), {"color": o["color"]}) for o in objects]
    if family == "beep_exists":
        return [("yes" if source else "no", {})]
    if family == "count_beeps":
        return [(NUMBER_WORDS[len(source["pulses"]) if source else 0], {})]
    if family == "beeps_of":
        return [(NUMBER_WORDS[len(o["pulses"]) if o["beeps"] else 0], {"color": o["color"]}) for o in objects]
    if source is None:  # the remaining families need a beep
        return []
    if family == "pitch":
        return [(meta["pitch"], {})]
    if family == "source_color":
        return [(source["color"], {})]
    if family == "source_shape":
        return [(source["shape"], {})]
    if family == "source_motion":
        return [(motion_word(source), {})]
    raise ValueError(f"unknown question family {family!r}; known: {list(FAMILIES)}")


class Balancer:
    """Chooses among a question's options the answer furthest below its target share so far."""

    def __init__(self) -> None:
        self.counts = {name: Counter() for name in FAMILIES}

    def target(self, family: str, answer: str) -> float:
        return TARGETS.get(family, {}).get(answer, CHANCE[family])

    def choose(self, family: str, opts: list[tuple[str, dict]], rng: np.random.Generator) -> tuple[str, dict]:
        counts = self.counts[family]
        total = sum(counts.values()) + 1
        answers = sorted({a for a, _ in opts})
        deficit = [self.target(family, a) * total - counts[a] for a in answers]
        best = [a for a, d in zip(answers, deficit) if d >= max(deficit) - 1e-9]
        answer = best[int(rng.integers(len(best)))]
        same = [o for o in opts if o[0] == answer]
        counts[answer] += 1
        return same[int(rng.integers(len(same)))]


def questions_for(meta: dict, rng: np.random.Generator, canonical: bool = False,
                  balancer: Balancer | None = None) -> list[dict]:
    """Every applicable question of a clip: [{"family", "group", "question", "answer"}], in family order.

    Phrasings are drawn from each family's list (the canonical one only if `canonical`);
    a named object is drawn at random, or by `balancer` when given.
    """
    out = []
    for name, family in FAMILIES.items():
        opts = options(meta, name)
        if not opts:
            continue
        template = family.canonical if canonical else family.phrasings[int(rng.integers(len(family.phrasings)))]
        if balancer is not None:
            answer, fields = balancer.choose(name, opts, rng)
        else:
            answer, fields = opts[int(rng.integers(len(opts)))]
        out.append({"family": name, "group": family.group, "question": template.format(**fields), "answer": answer})
    return out


def build_qa(metas: list[dict], seed: int, canonical: bool = False) -> list[dict]:
    """qa.jsonl records for a split, in clip order: LLaVA-style conversations plus id, clip, family, group, answer.

    One balancer runs over the clips in index order, so the result depends only on the metadata and seed.
    """
    balancer = Balancer()
    records = []
    for index, meta in enumerate(metas):
        rng = clip_rng(seed, index, QUESTIONS)
        for q in questions_for(meta, rng, canonical=canonical, balancer=balancer):
            records.append({
                "id": f"{meta['id']}-{q['family']}", "clip": meta["id"], "family": q["family"], "type": q["family"],
                "group": q["group"],
                "answer": q["answer"], "video": meta["video"],
                "conversations": [
                    {"from": "human", "value": f"{VIDEO_PLACEHOLDER}\n{q['question']}"},
                    {"from": "gpt", "value": q["answer"]},
                ],
            })
    return records


def answer_distribution(records: list[dict]) -> dict[str, Counter]:
    """Answer counts per family, from qa records (or anything with "family" and "answer")."""
    dist = {name: Counter() for name in FAMILIES}
    for r in records:
        dist[r["family"]][r["answer"]] += 1
    return dist


def balance_problems(dist: dict[str, Counter], slack: float = BALANCE_SLACK) -> list[str]:
    """The families where one answer is more frequent than chance + slack, each as a message."""
    problems = []
    for name, counts in dist.items():
        total = sum(counts.values())
        if not total:
            continue
        answer, top = counts.most_common(1)[0]
        limit = CHANCE[name] + slack
        if top / total > limit + 1e-12:
            problems.append(f"{name}: {answer!r} is {top / total:.1%} of {total} answers, above the {limit:.1%} limit")
    return problems


def format_distribution(dist: dict[str, Counter]) -> str:
    """One line per family: count, chance, majority share and every answer's share."""
    lines = [f"{'family':<14} {'group':<12} {'n':>6} {'chance':>7} {'major':>7}  answers"]
    for name, counts in dist.items():
        total = sum(counts.values())
        shares = "  ".join(f"{a} {counts[a] / total:.1%}" for a in FAMILIES[name].answers) if total else "-"
        major = max(counts.values()) / total if total else 0.0
        lines.append(f"{name:<14} {FAMILY_GROUP[name]:<12} {total:>6} {CHANCE[name]:>7.1%} {major:>7.1%}  {shares}")
    return "\n".join(lines)


_VOCAB = frozenset(VOCABULARY)


def score_reply(reply: str) -> str | None:
    """A reply's first vocabulary word after lower-casing, dropping punctuation and spelling digits ("2" -> "two")."""
    for token in re.findall(r"[^\W_]+", reply.lower()):
        if token.isdecimal():
            value = int(token)
            token = NUMBER_WORDS[value] if value < len(NUMBER_WORDS) else token
        if token in _VOCAB:
            return token
    return None


def is_correct(reply: str, answer: str) -> bool:
    return score_reply(reply) == answer
