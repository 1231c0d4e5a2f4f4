"""Encoder pre-training on AVSynth's metadata: small classification heads read the encoder's output tokens.

Cheaper than teaching the encoder through the LLM: no LLM runs, and every clip
gives ~80 exact targets at once. The heads read only the tokens the projector
will later pass to the LLM, so whatever they can classify is there for the LLM
to read. The heads are dropped after training; the model still answers through the LLM.

Notation: B batch, K encoder tokens, D encoder width, Q targets.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .caption import CAPTION, NONE, PRESENT, Target
from .questions import COUNT_ANSWERS, DIRECTION_ANSWERS, NUMBER_WORDS, motion_word
from .scene import COLORS, PULSE_SCALE, SHAPES, SIZE, sounding_object
from .scene import SIZES as SIZE_PX

IGNORE = -100
SIZES = ("small", "large")
QUARTERS = ("0", "1", "2", "3")


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


def _values(meta: dict) -> dict[str, str]:
    """Every target's answer word for one clip, for the targets that apply to it."""
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
    return values


def labels(meta: dict) -> torch.Tensor:
    """(Q,) class indices of one clip's targets; IGNORE where a target does not apply."""
    values = _values(meta)
    out = torch.full((len(TARGETS),), IGNORE, dtype=torch.long)
    for q, t in enumerate(TARGETS):
        if t.name in values:
            if values[t.name] not in t.classes:
                raise ValueError(f"clip {meta.get('id')}: {t.name} = {values[t.name]!r} is not one of {t.classes}")
            out[q] = t.classes.index(values[t.name])
    return out


# ---- the caption (vqa.avsynth.caption): summary tokens projected into the LLM's input space, one word each ----
# caption logits are minus squared distances over this (in units of the words' mean squared norm)
CAPTION_TEMPERATURE = 0.1
# what a slot holds where its target does not apply: an absent colour, no beep, a shape seen twice
_ABSENT = {"shape": NONE, "motion": NONE, "beeps": "zero", "color": NONE, "pitch": NONE}


def caption_words(meta: dict) -> list[str]:
    """The clip's caption, one word per slot of CAPTION."""
    values = _values(meta)
    words = []
    for slot in CAPTION:
        if len(slot.classes) == 1:
            words.append(slot.classes[0])
        else:
            words.append(values.get(slot.name) or _ABSENT[slot.name.rsplit(".", 1)[-1].replace("source_", "")])
    return words


def caption_labels(meta: dict) -> torch.Tensor:
    """(C,) the index of each slot's word among that slot's words."""
    return torch.tensor([slot.classes.index(w) for slot, w in zip(CAPTION, caption_words(meta))])


class CaptionHead(nn.Module):
    """Scores projected summary tokens (B, C, H) against the LLM's embeddings of each slot's words.

    A slot's logits are minus the squared distances to its words' embeddings over CAPTION_TEMPERATURE.
    `caption_loss` adds the distance to the right word, so a token lands on that embedding (the LLM reads
    it as the word) and does not merely point away from the others.
    No parameters: the projector learns."""

    def __init__(self, word_embeddings: dict[str, torch.Tensor]):
        super().__init__()
        words = sorted({w for slot in CAPTION for w in slot.classes})
        table = torch.stack([word_embeddings[w].detach().float() for w in words])  # (W, H)
        self.register_buffer("table", table, persistent=False)
        self.scale = float(table.pow(2).sum(-1).mean()) * CAPTION_TEMPERATURE
        self.slot_words = [torch.tensor([words.index(w) for w in slot.classes]) for slot in CAPTION]

    def forward(self, projected: torch.Tensor, slots: Sequence[int] | None = None) -> list[torch.Tensor]:
        """(B, C, H) -> per slot (B, words) logits; `slots`: which caption slot each token is (default all)."""
        out = []
        for c, ids in zip(range(projected.shape[1]), [self.slot_words[i] for i in slots] if slots else self.slot_words):
            e = self.table[ids.to(self.table.device)]  # (n, H)
            out.append(-(projected[:, c, None].float() - e).pow(2).sum(-1) / self.scale)
        return out


def caption_loss(logits: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over each slot's words plus the distance to the right one (y: (B, C))."""
    losses = []
    for c, lg in enumerate(logits):
        right = lg.gather(1, y[:, c:c + 1]).squeeze(1)  # minus the distance over the temperature
        losses.append(F.cross_entropy(lg, y[:, c]) - CAPTION_TEMPERATURE * right.mean())  # the plain distance
    return torch.stack(losses).mean()


def word_embeddings(llm: nn.Module, tokenizer) -> dict[str, torch.Tensor]:
    """The LLM's input embedding of each caption word, as it appears mid-sentence (after a space)."""
    table = llm.get_input_embeddings().weight
    out = {}
    for w in {w for slot in CAPTION for w in slot.classes}:
        ids = tokenizer.encode(" " + w, add_special_tokens=False)
        out[w] = table[ids].mean(0)  # one token for every word in SmolLM2's vocabulary
    return out


@torch.no_grad()
def caption_accuracy(logits: list[torch.Tensor], y: torch.Tensor) -> dict[str, float]:
    """Accuracy per caption slot (constant slots left out)."""
    return {slot.name: (lg.argmax(-1) == y[:, c]).float().mean().item()
            for c, (slot, lg) in enumerate(zip(CAPTION, logits)) if len(slot.classes) > 1}


# ---- dense targets: what covers each video patch of each frame ----
# Each patch of each frame is told which object's centre lies in it (colour and shape: colours are unique in
# a clip, so the colour-shape pairs of a clip never collide when the patches are pooled into tokens), which way
# that object moves, and whether it is the one that beeps: hundreds of targets per clip where the clip-level
# ones give ~80. With them (and the conv stem) the shape targets are learned where the clip-level ones alone
# stayed near chance (docs/training.md).
BACKGROUND = 0
PATCH_TARGETS = (
    Target("patch.object", ("background",) + tuple(f"{c}-{s}" for c in COLORS for s in SHAPES)),
    Target("patch.motion", DIRECTION_ANSWERS),
    Target("patch.sounding", PRESENT),
)


def patch_labels(meta: dict, num_frames: int, grid: tuple[int, int]) -> torch.Tensor:
    """(T, N, 3) class indices per frame and patch (N = h*w, row-major): object, motion, sounding.

    Frames are the clip's evenly sampled ones (load_clip: frame i at (i + 0.5) * duration / T). The patch
    holding an object's centre gets its labels; the other patches its (pulsed) box touches are IGNOREd,
    since they show part of it; every other patch is background (object 0, the rest IGNORE)."""
    h, w = grid
    out = torch.full((num_frames, h, w, 3), IGNORE, dtype=torch.long)
    out[..., 0] = BACKGROUND
    cell_y, cell_x = SIZE / h, SIZE / w
    for i in range(num_frames):
        f = (i + 0.5) / num_frames  # the frame's time as a fraction of the clip
        centres = []
        for o in meta["objects"]:
            x = o["start"][0] + (o["end"][0] - o["start"][0]) * f
            y = o["start"][1] + (o["end"][1] - o["start"][1]) * f
            half = SIZE_PX[o["size"]] * PULSE_SCALE / 2  # the pulsed half-size: never too small
            r0, r1 = int(max(0, (y - half) // cell_y)), int(min(h - 1, (y + half) // cell_y))
            c0, c1 = int(max(0, (x - half) // cell_x)), int(min(w - 1, (x + half) // cell_x))
            out[i, r0:r1 + 1, c0:c1 + 1, 0] = IGNORE
            centres.append((min(h - 1, int(y // cell_y)), min(w - 1, int(x // cell_x)), o))
        for r, c, o in centres:  # after every box: a centre wins over a neighbour's box
            obj = PATCH_TARGETS[0].classes.index(f"{o['color']}-{o['shape']}")
            out[i, r, c] = torch.tensor([obj, DIRECTION_ANSWERS.index(motion_word(o)), int(bool(o["beeps"]))])
    return out.view(num_frames, h * w, 3)


class DenseHeads(nn.Module):
    """A linear classifier per dense target on every video patch token: (B, T, 1+N, D) -> (B, T, N, classes)."""

    def __init__(self, width: int):
        super().__init__()
        self.sizes = [len(t.classes) for t in PATCH_TARGETS]
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, sum(self.sizes))

    def forward(self, video: torch.Tensor) -> list[torch.Tensor]:
        return list(self.fc(self.norm(video[:, :, 1:])).split(self.sizes, dim=-1))  # CLS dropped


class Heads(nn.Module):
    """An MLP over the concatenated tokens (B, K*D), then one classifier slice per target; optionally the
    dense heads on the video patches and the caption head on the first summary tokens, projected.

    Reading the tokens by their place in the sequence (which time step, which grid cell), as the
    LLM does through its positions, lets position and motion be learned at once; heads that pool
    the tokens by attention first stayed at chance on both for hundreds of steps."""

    def __init__(self, width: int, num_tokens: int, hidden: int = 512, targets: list[Target] = TARGETS,
                 dense: bool = False, caption: CaptionHead | None = None, caption_start: int = 0,
                 pointer_slots: Sequence[int] = ()):
        super().__init__()
        self.targets = targets
        self.dense = DenseHeads(width) if dense else None
        self.caption = caption
        self.caption_start = caption_start  # index of the first summary token
        # caption slots an encoder's pointer replaces (vqa.avsynth.caption.source_pointer): the heads and the caption
        # read them as the slots' own queries made them, so the encoder learns exactly as without a pointer;
        # the pointer's copies are scored apart ("caption_pointer"), which trains only the pointer
        self.pointer_slots = tuple(pointer_slots)
        self.sizes = [len(t.classes) for t in targets]
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(num_tokens * width, hidden), nn.GELU(), nn.Linear(hidden, sum(self.sizes)))

    def forward(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """(B, K, D) -> Q logits tensors, each (B, classes)."""
        x = self.norm(tokens).flatten(1)  # (B, K*D)
        return list(self.mlp(x).split(self.sizes, dim=-1))

    def run(self, encoder: nn.Module, frames: torch.Tensor, mel: torch.Tensor,
            projector: nn.Module | None = None) -> dict[str, list[torch.Tensor]]:
        """The encoder, then every head: {"clip": logits, and "dense", "caption" where built}."""
        features = encoder.forward_features(frames, mel)
        pointed, own = encoder.forward_head(features, own=True)
        if own.shape[1] != len(self.pointer_slots):
            raise ValueError(f"the heads expect {len(self.pointer_slots)} pointer slots, the encoder has {own.shape[1]}")
        slots = torch.tensor(self.pointer_slots, dtype=torch.long, device=own.device) + self.caption_start
        tokens = pointed.index_copy(1, slots, own) if own.shape[1] else pointed  # the own tokens back in place
        out = {"clip": self(tokens)}
        if self.dense is not None:  # the loop builds it only for a model with a video branch
            out["dense"] = self.dense(features["video"])
        if self.caption is not None:
            start = self.caption_start
            out["caption"] = self.caption(projector(tokens[:, start:start + len(CAPTION)]))
            if self.pointer_slots:  # what the LLM reads in those slots
                out["caption_pointer"] = self.caption(projector(pointed[:, slots]), slots=self.pointer_slots)
        return out


def heads_loss(out: dict[str, list[torch.Tensor]], targets: torch.Tensor, patch_targets: torch.Tensor | None = None,
               caption_targets: torch.Tensor | None = None, dense_weight: float = 1.0,
               caption_weight: float = 1.0, pointer_slots: Sequence[int] = ()) -> torch.Tensor:
    """Mean over targets of each target's cross-entropy on the clips where it applies (targets: (B, Q)),
    plus `dense_weight` times the sum of the dense targets' mean cross-entropy over the patches where they
    apply (patch_targets: (B, T, N, 3)), plus `caption_weight` times the caption loss (caption_targets: (B, C))."""
    losses = []
    for q, lg in enumerate(out["clip"]):
        keep = targets[:, q] != IGNORE
        if keep.any():
            losses.append(F.cross_entropy(lg[keep].float(), targets[keep, q]))
    loss = torch.stack(losses).mean()
    if "dense" in out and patch_targets is not None:
        dense_losses = [F.cross_entropy(lg.flatten(0, 2).float(), patch_targets[..., j].flatten(), ignore_index=IGNORE)
                        for j, lg in enumerate(out["dense"])]
        loss = loss + dense_weight * sum(dense_losses)
    if "caption" in out and caption_targets is not None:
        loss = loss + caption_weight * caption_loss(out["caption"], caption_targets)
        if "caption_pointer" in out:  # the pointer's copies
            loss = loss + caption_weight * caption_loss(out["caption_pointer"], caption_targets[:, list(pointer_slots)])
    return loss


@torch.no_grad()
def heads_accuracy(logits: list[torch.Tensor], y: torch.Tensor) -> dict[str, float]:
    """Accuracy per target over the clips where it applies."""
    out = {}
    for q, (t, lg) in enumerate(zip(TARGETS, logits)):
        keep = y[:, q] != IGNORE
        if keep.any():
            out[t.name] = (lg[keep].argmax(-1) == y[keep, q]).float().mean().item()
    return out


@torch.no_grad()
def dense_accuracy(dense: list[torch.Tensor], dense_y: torch.Tensor) -> dict[str, float]:
    """Accuracy per dense target over the object patches (background patches excluded: they dominate)."""
    on_object = dense_y[..., 0] > BACKGROUND
    out = {}
    for j, (t, lg) in enumerate(zip(PATCH_TARGETS, dense)):
        keep = on_object & (dense_y[..., j] != IGNORE)
        if keep.any():
            out[t.name] = (lg[keep].argmax(-1) == dense_y[..., j][keep]).float().mean().item()
    return out
