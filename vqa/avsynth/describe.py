"""A clip's description in plain sentences, from its metadata: the answer taught for "Describe this clip."

It says only what the caption (vqa.avsynth.caption) holds: how many objects, each one's colour, shape and motion
(in the caption's colour order), which one beeps, how often and at which pitch. Sizes and silent pulses
are left out: the encoder's caption does not spell them, so the LLM could only guess them.
"""
from __future__ import annotations

import re

from .questions import NUMBER_WORDS
from .scene import COLORS, sounding_object

# how a person asks about the whole clip
DESCRIBE_QUESTIONS = (
    "Describe this clip.",
    "What happens in this video?",
    "Describe what you see and hear.",
    "What is in this clip?",
    "Tell me about this video.",
    "Can you describe the video?",
    "Give a short description of the clip.",
    "What does this clip show?",
)
_MOTION = {"left": "moving left", "right": "moving right", "up": "moving up", "down": "moving down",
           "still": "staying still"}
_TIMES = {1: "once", 2: "twice", 3: "three times"}


def _listing(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def describe(meta: dict) -> str:
    """E.g. "There are two objects: a red circle moving left and a blue square staying still.
    The red circle beeps twice, high-pitched." """
    order = list(COLORS)
    objects = sorted(meta["objects"], key=lambda o: order.index(o["color"]))
    n = len(objects)
    things = [f"a {o['color']} {o['shape']} {_MOTION[o['motion']]}" for o in objects]
    head = f"There is one object: {things[0]}." if n == 1 else \
        f"There are {NUMBER_WORDS[n]} objects: {_listing(things)}."
    source = sounding_object(meta)
    if source is None:
        return head + " Nothing beeps."
    beeps = _TIMES[len(source["pulses"])]
    return head + f" The {source['color']} {source['shape']} beeps {beeps}, {meta['pitch']}-pitched."


_HEAD = re.compile(r"There (?:is|are) (\w+) objects?:")
_THING = re.compile(r"an? (\w+) (\w+) (moving \w+|staying still)")
_SOURCE = re.compile(r"The (\w+) (\w+) beeps (once|twice|three times), (\w+)-pitched")


def facts(text: str) -> dict:
    """What a description (the model's or `describe`'s) states: {"count", "objects": [(colour, shape, motion
    phrase)], "sound": (colour, shape, times, pitch), or "none" for "Nothing beeps", or None if unstated}."""
    head = _HEAD.search(text)
    first = text.split(".")[0]
    sound = _SOURCE.search(text)
    return {
        "count": head.group(1) if head else None,
        "objects": _THING.findall(first),
        "sound": sound.groups() if sound else ("none" if "Nothing beeps" in text else None),
    }
