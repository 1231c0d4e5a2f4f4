"""vqa.train: configs, schedule, metadata targets, and real runs of the loop with a tiny LLM:
a run killed with SIGKILL resumes to bit-identical weights, and two DDP processes end identical."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from vqa.synth.questions import FAMILY_GROUP
from vqa.train import checkpoint
from vqa.train.config import StageConfig, load_config
from vqa.train.pretrain import (
    CAPTION, IGNORE, PATCH_TARGETS, TARGETS, CaptionHead, Heads, caption_accuracy, caption_labels, caption_loss,
    caption_words, dense_accuracy, heads_loss, labels, patch_labels,
)
from vqa.train.schedule import lr_factor

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "configs" / "ablations").glob("*.yaml"))


# ---- configs ----
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_parses(path):
    model, train = load_config(path)
    assert train.stages and model.encoder.num_tokens > 0


ABLATIONS = sorted((ROOT / "configs" / "ablations").glob("*.yaml"))


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.stem)
def test_each_ablation_is_the_default_model_with_its_one_change(path):
    """The ablation configs are copies; the docs compare them as 'the default config with that one change'.
    `fusion-late` must be configs/avsynth.yaml's model with fusion: late, and all share one training recipe."""
    import dataclasses

    default, default_train = load_config(ROOT / "configs" / "avsynth.yaml")
    reference_train = load_config(ROOT / "configs" / "ablations" / "fusion-bottleneck.yaml")[1]
    model, train = load_config(path)
    key, value = path.stem.split("-")
    assert model == dataclasses.replace(default, encoder=dataclasses.replace(default.encoder, **{key: value}))
    assert train.out_dir == f"runs/ablations/{path.stem}"
    assert train.data == default_train.data
    assert dataclasses.replace(train, out_dir=reference_train.out_dir) == reference_train


@pytest.mark.parametrize("stage, message", [
    (dict(kind="pretrain", train=["encoder", "lora"]), "cannot train the LoRA"),
    (dict(kind="align", train=["heads"]), "no heads to train"),
    (dict(train=["decoder"]), "unknown parts"),
    (dict(kind="distill"), "kind must be one of"),
    (dict(steps=10, warmup_steps=11), "warmup_steps"),
    (dict(batch_size=0), "batch_size must be >= 1"),
    (dict(describe=1.0), r"describe must be in \[0, 1\)"),
    (dict(kind="pretrain", train=["encoder"], describe=0.1), "only an align stage mixes in describe"),
    (dict(chat=0.6, describe=0.4), "chat \\+ describe must leave room"),
])
def test_bad_stage_is_refused_with_the_reason(stage, message):
    with pytest.raises(ValueError, match=message):
        StageConfig(**stage)


def test_unknown_keys_are_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  stages:\n    - {name: a, stepz: 3}\n")
    with pytest.raises(ValueError, match="unknown StageConfig keys: \\['stepz'\\]"):
        load_config(path)


# ---- precision ----
def test_precision_follows_the_hardware():
    from vqa.train.precision import cpu_has_bf16, resolve_precision

    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_has_bf16() else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", "cpu")


# ---- schedule ----
def test_warmup_then_cosine_to_the_floor():
    factors = [lr_factor(s, warmup=4, total=20, min_ratio=0.1) for s in range(21)]
    assert factors[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert factors[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))
    assert factors[20] == pytest.approx(0.1)
    assert factors[12] == pytest.approx(0.55)  # halfway down the cosine


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
    from vqa.caption import answer_slot
    from vqa.synth.questions import FAMILIES, options
    from vqa.synth.scene import clip_meta

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


def test_rng_state_round_trips(tmp_path):
    torch.manual_seed(5)
    checkpoint.save_rng(tmp_path, 0)
    import random

    import numpy as np

    a = (torch.rand(3), np.random.rand(), random.random())
    checkpoint.load_rng(tmp_path, 0)
    b = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_plot_is_written(tmp_path):
    from vqa.train.plot import plot_curves

    log = tmp_path / "log.jsonl"
    rows = [{"type": "start"}] + [{"type": "train", "stage": "s", "step": i, "loss": 1 / i} for i in range(1, 5)]
    rows.append({"type": "val", "stage": "s", "step": 4, "accuracy": 0.5})
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    png = plot_curves(log, tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- real runs with a tiny LLM, in subprocesses ----
RUNNER = '''
import sys, time


def main():
    from vqa.train import checkpoint, loop
    from vqa.train.config import load_config

    config_path, pause_at = sys.argv[1], int(sys.argv[2])
    if pause_at:  # stop for good after this checkpoint, so the test can kill the process there
        publish = checkpoint.publish

        def publish_then_wait(tmp, final, keep):
            publish(tmp, final, keep)
            if final.name == f"step-{pause_at:06d}":
                print("CHECKPOINTED", flush=True)
                time.sleep(120)

        checkpoint.publish = publish_then_wait
    model = loop.train(*load_config(config_path))
    if len(sys.argv) > 3:  # dump this process's trained weights
        from accelerate import PartialState
        from safetensors.torch import save_file

        rank = PartialState().process_index
        weights = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad or "lora_" in k
                   or k.startswith(("encoder.", "projector."))}
        save_file(weights, f"{sys.argv[3]}/rank{rank}.safetensors")


if __name__ == "__main__":
    main()
'''


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tokenizer):
    """A tiny random Llama saved as a model folder, the runner script, and small generated splits."""
    from tests.helpers import tiny_llm
    from vqa.synth.generate import generate

    root = tmp_path_factory.mktemp("train")
    torch.manual_seed(0)
    tiny_llm(tokenizer).save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    (root / "runner.py").write_text(RUNNER)
    generate(root / "train-split", 12, seed=101, workers=1, progress=False)
    generate(root / "val-split", 4, seed=102, workers=1, progress=False)
    return root


def write_config(workspace: Path, name: str, **train) -> Path:
    raw = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    raw["model"]["llm"] = str(workspace / "llm")
    raw["train"].update(out_dir=str(workspace / name), progress=False, keep_checkpoints=20,
                        data={"train": str(workspace / "train-split"), "val": str(workspace / "val-split")}, **train)
    path = workspace / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run(args: list[str], **kwargs) -> subprocess.Popen:
    # one thread: the same arithmetic in every run, and no oversubscription with two processes
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def final_weights(out_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    weights = {}
    for name in ("encoder_projector.safetensors", "adapter_model.safetensors"):
        weights.update(load_file(str(out_dir / "final" / name)))
    # the heads live only in checkpoints
    weights.update({f"ckpt.{k}": v for k, v in load_file(str(checkpoint.latest_checkpoint(out_dir) / "weights.safetensors")).items()})
    return weights


@pytest.fixture(scope="module")
def uninterrupted(workspace):
    config = write_config(workspace, "straight")
    finish(run([sys.executable, str(workspace / "runner.py"), str(config), "0"]))
    return workspace / "straight"


def test_run_writes_bundle_log_plot_and_keeps_frozen_parts(uninterrupted):
    out = uninterrupted
    assert (out / "curves.png").is_file()
    for name in ("vqa_config.json", "encoder_projector.safetensors", "adapter_model.safetensors", "README.md"):
        assert (out / "final" / name).is_file(), name
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["type"] == "start" and log[-1]["type"] == "end"
    assert [r["step"] for r in log if r["type"] == "train"] == list(range(1, 12))
    assert {r["stage"] for r in log if r["type"] == "val"} == {"encoder", "projector", "lora"}
    # encoder-stage validation also scores the benchmark questions read off the caption's words
    read = [r["caption_answers"] for r in log if r["type"] == "val" and r["stage"] == "encoder"]
    assert read and set(read[-1]) <= set(FAMILY_GROUP) and "count_objects" in read[-1]
    assert all(0.0 <= v <= 1.0 for v in read[-1].values())
    # the LoRA stage mixed in general chat: the base LLM's replies, generated once into the run's folder
    from vqa.train.chat import CHAT_FILE, chat_prompts

    chat = [json.loads(line) for line in (out / CHAT_FILE).read_text().splitlines()]
    assert [r["prompt"] for r in chat] == chat_prompts()
    # the encoder trains only in the first stage (global steps 1-4), the LoRA only in the last (8-11)
    from safetensors.torch import load_file

    def ckpt(step):
        return load_file(str(out / "checkpoints" / f"step-{step:06d}" / "weights.safetensors"))

    after_encoder, after_projector, end = ckpt(4), ckpt(7), ckpt(11)
    enc = [k for k in end if k.startswith("encoder.")]
    lora = [k for k in end if "lora_B" in k]
    assert enc and lora
    assert all(torch.equal(after_encoder[k], end[k]) for k in enc)
    assert all(torch.equal(after_projector[k], after_encoder[k]) for k in lora)
    assert not all(torch.equal(after_projector[k], end[k]) for k in lora)
    assert not torch.equal(after_encoder["projector.fc1.weight"], after_projector["projector.fc1.weight"])


@pytest.mark.parametrize("kill_after", [2, 9], ids=["mid-pretrain", "mid-lora"])
def test_resume_after_sigkill_matches_an_uninterrupted_run(workspace, uninterrupted, kill_after):
    config = write_config(workspace, f"killed-{kill_after}")
    proc = run([sys.executable, str(workspace / "runner.py"), str(config), str(kill_after)])
    deadline = time.monotonic() + 240
    for line in proc.stdout:  # wait until the checkpoint is on disk
        if "CHECKPOINTED" in line or time.monotonic() > deadline:
            break
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = workspace / f"killed-{kill_after}"
    assert checkpoint.latest_checkpoint(out).name == f"step-{kill_after:06d}" and not (out / "final").exists()

    log = finish(run([sys.executable, str(workspace / "runner.py"), str(config), "0"]))
    assert f"resuming from {out / 'checkpoints' / f'step-{kill_after:06d}'}" in log
    resumed, straight = final_weights(out), final_weights(uninterrupted)
    assert set(resumed) == set(straight)
    different = [k for k in straight if not torch.equal(resumed[k], straight[k])]
    assert not different, different[:5]
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()
             if json.loads(line)["type"] == "train"]
    assert steps == list(range(1, 12))  # records after the checkpoint were dropped, then redone once


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ddp_processes_end_with_identical_weights(workspace):
    config = write_config(workspace, "ddp")
    out = workspace / "ddp"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(ROOT / "configs" / "accelerate" / "ddp_cpu.yaml"), "--main_process_port", str(_free_port())]
    finish(run(launch + [str(workspace / "runner.py"), str(config), "0", str(out)]))
    from safetensors.torch import load_file

    ranks = [load_file(str(out / f"rank{r}.safetensors")) for r in range(2)]
    assert set(ranks[0]) == set(ranks[1]) and len(ranks[0]) > 10
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    start = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert start["processes"] == 2
    # two processes each took half of every global batch: as many samples per step as the batch size twice
    rates = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any(r["type"] == "train" for r in rates)


def test_precise_batch_norm_uses_the_exact_statistics():
    from tests.test_encoder import MEDIA, inputs, tiny
    from vqa.encoder import AVEncoder
    from vqa.train.loop import _precise_batch_norm

    torch.manual_seed(0)
    encoder = AVEncoder(MEDIA, tiny(patch_stem="conv")).eval()
    frames, mel = inputs(batch=5)

    class Cache:  # the part of FeatureCache it reads
        def __len__(self):
            return 5

        def inputs(self, rows):
            return frames[rows], mel[rows]

    cache = Cache()
    first = encoder.video.patch_embed.layers[1]
    assert isinstance(first, torch.nn.BatchNorm2d) and torch.all(first.running_mean == 0)
    _precise_batch_norm(encoder, cache, batch_size=1, precision="fp32")
    with torch.no_grad():
        conv = encoder.video.patch_embed.layers[0](frames.flatten(0, 1))  # (5*T, C, h, w)
    # the mean over all five clips (equal batches: the cumulative average of their means is that mean)
    torch.testing.assert_close(first.running_mean, conv.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert first.momentum == 0.1 and not encoder.training  # left as it was


def test_heads_read_the_slots_own_tokens_and_score_the_pointers_copies_apart():
    from vqa.caption import source_pointer
    from vqa.config import EncoderConfig, MediaConfig
    from vqa.encoder import AVEncoder

    media = MediaConfig(num_frames=4, size=32, n_mels=16)
    enc = dict(width=32, heads=4, mlp_ratio=2.0, patch_size=8, video_depth=1, audio_depth=1, audio_patch=8,
               audio_stride=4, audio_frames=36, fusion_layer=1, num_bottlenecks=2, time_steps=4,
               summary_tokens=len(CAPTION), summary_depth=1)
    torch.manual_seed(0)
    plain = AVEncoder(media, EncoderConfig(**enc))
    torch.manual_seed(0)
    encoder = AVEncoder(media, EncoderConfig(**enc, source_pointer=True))
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
