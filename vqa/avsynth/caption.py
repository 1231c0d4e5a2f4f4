"""The caption: what the encoder's summary tokens hold, one AVSynth metadata word per token.

Summary token i, through the projector, is taught to land on the LLM's embedding of caption slot i's word
(vqa.avsynth.pretrain), in a fixed order that reads like a terse description: "three red circle left two
green none none zero ... yes two high red circle left circle red square none triangle blue". Answering a
question is then reading words, which the LLM already does.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import PointerConfig
from .questions import COUNT_ANSWERS, DIRECTION_ANSWERS
from .scene import COLORS, SHAPES

NONE = "none"
PRESENT = ("no", "yes")


@dataclass(frozen=True)
class Target:
    name: str
    classes: tuple[str, ...]


def caption_slots() -> list[Target]:
    """The caption's slots in order; a slot with one word is a constant (a label such as "red")."""
    out = [Target("count_objects", ("one", "two", "three"))]
    for c in COLORS:
        out += [Target(c, (c,)), Target(f"{c}.shape", SHAPES + (NONE,)),
                Target(f"{c}.motion", DIRECTION_ANSWERS), Target(f"{c}.beeps", COUNT_ANSWERS)]
    out += [
        Target("beep_exists", PRESENT),
        Target("count_beeps", COUNT_ANSWERS),
        Target("pitch", ("high", "low", NONE)),
        Target("source_color", tuple(COLORS) + (NONE,)),
        Target("source_shape", SHAPES + (NONE,)),
        Target("source_motion", DIRECTION_ANSWERS),
    ]
    for s in SHAPES:
        out += [Target(s, (s,)), Target(f"{s}.color", tuple(COLORS) + (NONE,))]
    return out


CAPTION = caption_slots()
SLOT_INDEX = {slot.name: i for i, slot in enumerate(CAPTION)}

# the caption slot whose word answers each benchmark family; {color} / {shape}: the object the question names
ANSWER_SLOTS = {
    "count_objects": "count_objects", "shape_of": "{color}.shape", "color_of": "{shape}.color",
    "motion_of": "{color}.motion", "beep_exists": "beep_exists", "count_beeps": "count_beeps", "pitch": "pitch",
    "source_color": "source_color", "source_shape": "source_shape", "source_motion": "source_motion",
    "beeps_of": "{color}.beeps",
}


def answer_slot(family: str, question: str) -> int:
    """Index in CAPTION of the slot whose word is the answer to a benchmark question of `family`.

    A question names at most one colour (shape_of, motion_of, beeps_of) or one shape (color_of); the other
    shapes some phrasings list as choices are not read for those families."""
    words = set(re.findall(r"[a-z]+", question.lower()))
    named = {"color": [c for c in COLORS if c in words], "shape": [s for s in SHAPES if s in words]}
    pattern = ANSWER_SLOTS[family]
    fields = {}
    for field in re.findall(r"{(\w+)}", pattern):
        if len(named[field]) != 1:
            raise ValueError(f"a {family} question names one {field}, found {named[field]} in {question!r}")
        fields[field] = named[field][0]
    return SLOT_INDEX[pattern.format(**fields)]


def source_pointer() -> PointerConfig:
    """The beeping object's slots point at one colour's slots, chosen by that colour's beep count.

    Learned on their own, these slots stayed well below every colour's beep count, shape and motion
    (docs/training.md): which object beeps is already known per colour, so the source slots copy it."""
    at = SLOT_INDEX
    return PointerConfig(
        keys=[at[f"{c}.beeps"] for c in COLORS],
        none_key=at["beep_exists"],
        outs=[at["source_color"], at["source_shape"], at["source_motion"]],
        values=[[at[c] for c in COLORS], [at[f"{c}.shape"] for c in COLORS], [at[f"{c}.motion"] for c in COLORS]],
    )
