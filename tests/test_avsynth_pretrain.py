"""vqa.avsynth.pretrain: the metadata targets, per-patch targets, the caption and its head, the pointer's
slots, as the AVSynth recipe's pretrain stages use them."""
from __future__ import annotations

import pytest
import torch

from vqa.avsynth.caption import source_pointer
from vqa.avsynth.scene import COLORS
from vqa.encoder.summary import SlotPointer

from vqa.avsynth.pretrain import (
    CAPTION, IGNORE, PATCH_TARGETS, TARGETS, CaptionHead, Heads, caption_accuracy, caption_labels, caption_loss,
    caption_words, dense_accuracy, heads_loss, labels, patch_labels,
)

# ---- metadata targets ----
META = {
    "id": "avs-000001", "pitch": "low",
    "objects": [
        {"color": "red", "shape": "circle", "size": "small", "motion": "still", "start": [20.0, 20.0],
         "end": [20.0, 20.0], "pulses": [[0.2, 0.5], [1.0, 1.3]], "beeps": True},
        {"color": "blue", "shape": "circle", "size": "large", "motion": "up", "start": [100.0, 110.0],
         "end": [100.0, 60.0], "pulses": [[2.0, 2.3]], "beeps": False},
        {"color": "white", "shape": "square", "size": "small", "motion": "left", "start": [70.0, 40.0],
         "end": [25.0, 40.0], "pulses": [], "beeps": False},
    ],
}


def test_labels_follow_the_metadata():
    y = labels(META)
    value = {t.name: (t.classes[int(v)] if v != IGNORE else None) for t, v in zip(TARGETS, y)}
    assert value["count_objects"] == "three"
    assert value["red.motion"] == "none" and value["red.beeps"] == "two" and value["red.pulses"] == "two"
    assert value["blue.beeps"] == "zero" and value["blue.pulses"] == "one"  # seen, not heard
    assert value["green.present"] == "no" and value["green.shape"] is None
    assert value["circle.color"] is None  # two circles: "What color is the circle?" is never asked
    assert value["square.color"] == "white"
    assert value["blue.size"] == "large"
    # start and end positions in quarters of the 128 px frame
    assert [value[f"blue.{k}"] for k in ("x0", "y0", "x1", "y1")] == ["3", "3", "3", "1"]
    assert [value[f"white.{k}"] for k in ("x0", "x1")] == ["2", "0"]
    assert (value["beep_exists"], value["count_beeps"], value["pitch"]) == ("yes", "two", "low")
    assert (value["source_color"], value["source_shape"], value["source_motion"]) == ("red", "circle", "none")


def test_silent_clip_masks_source_targets():
    silent = {**META, "pitch": None, "objects": [{**o, "beeps": False} for o in META["objects"]]}
    value = dict(zip([t.name for t in TARGETS], labels(silent).tolist()))
    assert value["source_color"] == value["pitch"] == IGNORE
    assert TARGETS[[t.name for t in TARGETS].index("count_beeps")].classes[value["count_beeps"]] == "zero"


def test_heads_loss_ignores_targets_that_do_not_apply():
    torch.manual_seed(0)
    heads = Heads(16, num_tokens=5)
    logits = heads(torch.randn(3, 5, 16))
    assert [tuple(lg.shape) for lg in logits] == [(3, len(t.classes)) for t in TARGETS]
    y = torch.stack([labels(META)] * 3)
    y_masked = y.clone()
    y_masked[:, 1:] = IGNORE
    import torch.nn.functional as F

    torch.testing.assert_close(heads_loss({"clip": logits}, y_masked), F.cross_entropy(logits[0], y[:, 0]))


def test_patch_labels_mark_each_object_centre():
    y = patch_labels(META, num_frames=3, grid=(8, 8))  # 16 px cells of the 128 px frame; frames at 0.5, 1.5, 2.5 s
    assert y.shape == (3, 64, 3)
    names = {t.name: t.classes for t in PATCH_TARGETS}

    def at(frame: int, x: float, y_: float) -> tuple[str, str, str]:
        o, m, s = y[frame, int(y_ // 16) * 8 + int(x // 16)].tolist()
        return names["patch.object"][o], names["patch.motion"][m], names["patch.sounding"][s]

    assert at(0, 20, 20) == ("red-circle", "none", "yes")  # still, sounding
    # blue moves up from y=110 to y=60 over 3 s: at 0.5 s it is at y=101.7, at 2.5 s at y=68.3
    assert at(0, 100, 101.7) == ("blue-circle", "up", "no") and at(2, 100, 68.3) == ("blue-circle", "up", "no")
    assert y[2, int(101.7 // 16) * 8 + 6, 0] == 0  # where blue was is background again
    # white moves left from x=70 to x=25: at 1.5 s its centre is at x=47.5
    assert at(1, 47.5, 40) == ("white-square", "left", "no")
    # a patch its box only touches is left out; only object centres carry motion and sound
    assert y[1, 2 * 8 + 3, 0] == IGNORE and ((y[..., 0] > 0) == (y[..., 1] != IGNORE)).all()
    assert ((y[..., 0] > 0).sum(dim=1) == 3).all()  # three objects, one centre each, in every frame


def test_dense_heads_train_and_score_object_patches():
    torch.manual_seed(0)
    heads = Heads(16, num_tokens=5, dense=True)
    y = torch.stack([labels(META)] * 2)
    dense_y = torch.stack([patch_labels(META, num_frames=3, grid=(8, 8))] * 2)  # (B, T, N, 3)
    video = torch.randn(2, 3, 1 + 64, 16, requires_grad=True)  # (B, T, 1+N, D): CLS first
    dense = heads.dense(video)
    assert [tuple(d.shape) for d in dense] == [(2, 3, 64, len(t.classes)) for t in PATCH_TARGETS]
    clip = heads(torch.randn(2, 5, 16))
    with_dense, without = heads_loss({"clip": clip, "dense": dense}, y, dense_y), heads_loss({"clip": clip}, y)
    assert with_dense > without
    with_dense.backward()
    assert video.grad[:, :, 0].abs().sum() == 0 and video.grad[:, :, 1:].abs().sum() > 0  # CLS is not a patch
    # a classifier that is right on every object patch scores 1.0 there, whatever it says on background
    perfect = [torch.nn.functional.one_hot(dense_y[..., j].clamp(min=0), len(t.classes)).float() * 10
               for j, t in enumerate(PATCH_TARGETS)]
    perfect[0][dense_y[..., 0] == 0] = 0.0
    assert dense_accuracy(perfect, dense_y) == {t.name: 1.0 for t in PATCH_TARGETS}


def test_caption_reads_as_a_description_of_the_clip():
    words = caption_words(META)
    assert len(words) == len(CAPTION) and [len(s.classes) == 1 for s in CAPTION].count(True) == 6 + 3
    at = {slot.name: w for slot, w in zip(CAPTION, words)}
    assert at["count_objects"] == "three"
    assert [at[k] for k in ("red", "red.shape", "red.motion", "red.beeps")] == ["red", "circle", "none", "two"]
    assert [at[k] for k in ("white.shape", "white.motion", "white.beeps")] == ["square", "left", "zero"]
    assert [at[k] for k in ("green.shape", "green.motion", "green.beeps")] == ["none", "none", "zero"]  # absent
    assert [at[k] for k in ("beep_exists", "count_beeps", "pitch")] == ["yes", "two", "low"]
    assert [at[k] for k in ("source_color", "source_shape", "source_motion")] == ["red", "circle", "none"]
    # two circles (red, blue): "What color is the circle?" is never asked, the slot says none
    assert (at["circle.color"], at["square.color"], at["triangle.color"]) == ("none", "white", "none")
    silent = {**META, "pitch": None, "objects": [{**o, "beeps": False} for o in META["objects"]]}
    quiet = dict(zip([s.name for s in CAPTION], caption_words(silent)))
    assert [quiet[k] for k in ("beep_exists", "count_beeps", "pitch", "source_color", "red.beeps")] == \
        ["no", "zero", "none", "none", "zero"]
    y = caption_labels(META)
    assert [slot.classes[i] for slot, i in zip(CAPTION, y.tolist())] == words


def test_every_benchmark_question_is_answered_by_its_caption_slot():
    from vqa.avsynth.caption import answer_slot
    from vqa.avsynth.questions import FAMILIES, options
    from vqa.avsynth.scene import clip_meta

    asked = 0
    for meta in [META] + [clip_meta(5, i) for i in range(40)]:
        words = caption_words(meta)
        for family, spec in FAMILIES.items():
            for answer, fields in options(meta, family):
                for phrasing in spec.phrasings:  # every wording, every object it can name
                    assert words[answer_slot(family, phrasing.format(**fields))] == answer, (family, phrasing)
                    asked += 1
    assert asked > 1000
    with pytest.raises(ValueError, match="names one color"):
        answer_slot("shape_of", "Is the thing a circle or a square?")


def test_caption_head_pulls_tokens_onto_word_embeddings():
    torch.manual_seed(0)
    vocab = sorted({w for slot in CAPTION for w in slot.classes})
    embeds = {w: torch.randn(24) for w in vocab}
    head = CaptionHead(embeds)
    y = torch.stack([caption_labels(META)] * 2)
    exact = torch.stack([torch.stack([embeds[w] for w in caption_words(META)])] * 2)  # (B, C, H)
    assert caption_accuracy(head(exact), y) == {s.name: 1.0 for s in CAPTION if len(s.classes) > 1}
    tokens = torch.zeros(2, len(CAPTION), 24, requires_grad=True)
    opt = torch.optim.Adam([tokens], lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        caption_loss(head(tokens), y).backward()
        opt.step()
    assert min(caption_accuracy(head(tokens), y).values()) == 1.0
    # the loss lands each token near its word, constants included, not merely nearer it than the rest
    gap = (tokens.detach() - exact).norm(dim=-1) / exact.norm(dim=-1)
    assert gap.max() < 0.35, gap.max()


def test_heads_read_the_slots_own_tokens_and_score_the_pointers_copies_apart():
    from vqa.avsynth.caption import source_pointer
    from vqa.config import EncoderConfig, MediaConfig
    from vqa.encoder import AVEncoder

    media = MediaConfig(num_frames=4, size=32, n_mels=16)
    enc = dict(width=32, heads=4, mlp_ratio=2.0, patch_size=8, video_depth=1, audio_depth=1, audio_patch=8,
               audio_stride=4, audio_frames=36, fusion_layer=1, num_bottlenecks=2, time_steps=4,
               summary_tokens=len(CAPTION), summary_depth=1)
    torch.manual_seed(0)
    plain = AVEncoder(media, EncoderConfig(**enc))
    torch.manual_seed(0)
    encoder = AVEncoder(media, EncoderConfig(**enc, pointer=source_pointer()))
    # the pointer draws no random numbers: every other weight starts as without it
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in plain.state_dict().items())
    vocab = sorted({w for slot in CAPTION for w in slot.classes})
    head = CaptionHead({w: torch.randn(24) for w in vocab})
    projector = torch.nn.Linear(32, 24)
    outs = source_pointer().outs
    start = encoder.num_tokens - len(CAPTION)
    torch.manual_seed(1)
    heads = Heads(32, encoder.num_tokens, caption=head, caption_start=start, pointer_slots=outs)
    frames, mel = torch.randn(2, 4, 3, 32, 32), torch.randn(2, 16, 36)
    out = heads.run(encoder, frames, mel, projector)
    # the clip heads and the caption see exactly what the encoder without a pointer gives
    torch.manual_seed(1)
    plain_out = Heads(32, encoder.num_tokens, caption=head, caption_start=start).run(plain, frames, mel, projector)
    for kind in ("clip", "caption"):
        assert all(torch.equal(a, b) for a, b in zip(out[kind], plain_out[kind])), kind
    assert [lg.shape[1] for lg in out["caption_pointer"]] == [len(CAPTION[s].classes) for s in outs]
    y, caption_y = torch.stack([labels(META)] * 2), torch.stack([caption_labels(META)] * 2)
    both = heads_loss(out, y, caption_targets=caption_y, pointer_slots=outs)
    alone = heads_loss({k: v for k, v in out.items() if k != "caption_pointer"}, y, caption_targets=caption_y)
    assert both > alone
    both.backward()
    assert encoder.summary.pointer.score.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="pointer slots"):
        Heads(32, encoder.num_tokens, caption=head, caption_start=start, pointer_slots=(1, 2)).run(
            encoder, frames, mel, projector)


def test_source_pointer_copies_the_slots_of_the_colour_that_beeps():
    layout = source_pointer()
    pointer = SlotPointer(32, layout)
    x = torch.randn(2, len(CAPTION), 32)
    with torch.no_grad():  # scores read one feature: clip 0's third colour beeps, clip 1 has no beep
        pointer.score.weight.zero_(), pointer.score.bias.zero_()
        pointer.score_none.weight.zero_(), pointer.score_none.bias.zero_()
        pointer.score.weight[0, 0] = pointer.score_none.weight[0, 0] = 1.0
        x[:, list(layout.keys) + [layout.none_key], 0] = -50.0
        x[0, layout.keys[2], 0] = 50.0
        x[1, layout.none_key, 0] = 50.0
    out = pointer(x)
    at = {slot.name: i for i, slot in enumerate(CAPTION)}
    third = list(COLORS)[2]
    for name, source in (("source_color", third), ("source_shape", f"{third}.shape"),
                         ("source_motion", f"{third}.motion")):
        torch.testing.assert_close(out[0, at[name]], x[0, at[source]])
        torch.testing.assert_close(out[1, at[name]], x[1, at[name]])  # none: the slot keeps its own token
    untouched = [i for i in range(len(CAPTION)) if i not in layout.outs]
    torch.testing.assert_close(out[:, untouched], x[:, untouched])
