"""Encoder pre-training on AVSynth's metadata: small classification heads read the encoder's output tokens.

Cheaper than teaching the encoder through the LLM: no LLM runs, and every clip
gives ~80 exact targets at once. The heads read only the tokens the projector
will later pass to the LLM, so whatever they can classify is there for the LLM
to read. The heads are dropped after training; the model still answers through the LLM.

Notation: B batch, K encoder tokens, D encoder width, Q targets.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..synth.questions import COUNT_ANSWERS, DIRECTION_ANSWERS, NUMBER_WORDS, motion_word
from ..synth.scene import COLORS, SHAPES, SIZE, sounding_object

IGNORE = -100
PRESENT = ("no", "yes")
SIZES = ("small", "large")
QUARTERS = ("0", "1", "2", "3")


@dataclass(frozen=True)
class Target:
    name: str
    classes: tuple[str, ...]


def targets() -> list[Target]:
    """Every metadata target: the benchmark's questions for every object at once, plus what binds them."""
    out = [Target("count_objects", ("one", "two", "three"))]
    for c in COLORS:
        out += [
            Target(f"{c}.present", PRESENT),
            Target(f"{c}.shape", SHAPES),
            Target(f"{c}.motion", DIRECTION_ANSWERS),
            Target(f"{c}.beeps", COUNT_ANSWERS),
            Target(f"{c}.pulses", COUNT_ANSWERS),  # seen, sounding or not: ties pulses to objects
            Target(f"{c}.size", SIZES),
            # where it starts and ends (x, y in quarters of the frame): dense position targets, from which
            # motion is learned far sooner than from the five motion words alone
            *(Target(f"{c}.{axis}{end}", QUARTERS) for end in "01" for axis in "xy"),
        ]
    out += [Target(f"{s}.color", tuple(COLORS)) for s in SHAPES]
    out += [
        Target("beep_exists", PRESENT),
        Target("count_beeps", COUNT_ANSWERS),
        Target("pitch", ("high", "low")),
        Target("source_color", tuple(COLORS)),
        Target("source_shape", SHAPES),
        Target("source_motion", DIRECTION_ANSWERS),
    ]
    return out


TARGETS = targets()


def labels(meta: dict) -> torch.Tensor:
    """(Q,) class indices of one clip's targets; IGNORE where a target does not apply."""
    values: dict[str, str] = {"count_objects": NUMBER_WORDS[len(meta["objects"])]}
    by_color = {o["color"]: o for o in meta["objects"]}
    for c in COLORS:
        o = by_color.get(c)
        values[f"{c}.present"] = "yes" if o else "no"
        if o:
            values[f"{c}.shape"] = o["shape"]
            values[f"{c}.motion"] = motion_word(o)
            values[f"{c}.beeps"] = NUMBER_WORDS[len(o["pulses"]) if o["beeps"] else 0]
            values[f"{c}.pulses"] = NUMBER_WORDS[len(o["pulses"])]
            values[f"{c}.size"] = o["size"]
            for end, point in (("0", o["start"]), ("1", o["end"])):
                for axis, coord in zip("xy", point):
                    values[f"{c}.{axis}{end}"] = QUARTERS[min(3, int(4 * coord / SIZE))]
    for s in SHAPES:
        same = [o for o in meta["objects"] if o["shape"] == s]
        if len(same) == 1:  # "What color is the {shape}?" is asked only then
            values[f"{s}.color"] = same[0]["color"]
    source = sounding_object(meta)
    values["beep_exists"] = "yes" if source else "no"
    values["count_beeps"] = NUMBER_WORDS[len(source["pulses"]) if source else 0]
    if source:
        values["pitch"] = meta["pitch"]
        values["source_color"] = source["color"]
        values["source_shape"] = source["shape"]
        values["source_motion"] = motion_word(source)
    out = torch.full((len(TARGETS),), IGNORE, dtype=torch.long)
    for q, t in enumerate(TARGETS):
        if t.name in values:
            if values[t.name] not in t.classes:
                raise ValueError(f"clip {meta.get('id')}: {t.name} = {values[t.name]!r} is not one of {t.classes}")
            out[q] = t.classes.index(values[t.name])
    return out


class Heads(nn.Module):
    """An MLP over the concatenated tokens (B, K*D), then one classifier slice per target.

    Reading the tokens by their place in the sequence (which time step, which grid cell), as the
    LLM does through its positions, lets position and motion be learned at once; heads that pool
    the tokens by attention first stayed at chance on both for hundreds of steps."""

    def __init__(self, width: int, num_tokens: int, hidden: int = 512, targets: list[Target] = TARGETS):
        super().__init__()
        self.targets = targets
        self.sizes = [len(t.classes) for t in targets]
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(num_tokens * width, hidden), nn.GELU(), nn.Linear(hidden, sum(self.sizes)))

    def forward(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """(B, K, D) -> Q logits tensors, each (B, classes)."""
        x = self.norm(tokens).flatten(1)  # (B, K*D)
        return list(self.mlp(x).split(self.sizes, dim=-1))


def heads_loss(logits: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """Mean over targets of each target's cross-entropy on the clips where it applies. y: (B, Q)."""
    losses = []
    for q, lg in enumerate(logits):
        keep = y[:, q] != IGNORE
        if keep.any():
            losses.append(F.cross_entropy(lg[keep].float(), y[keep, q]))
    return torch.stack(losses).mean()


@torch.no_grad()
def heads_accuracy(logits: list[torch.Tensor], y: torch.Tensor) -> dict[str, float]:
    """Accuracy per target over the clips where it applies."""
    out = {}
    for q, (t, lg) in enumerate(zip(TARGETS, logits)):
        keep = y[:, q] != IGNORE
        if keep.any():
            out[t.name] = (lg[keep].argmax(-1) == y[keep, q]).float().mean().item()
    return out
