"""vqa.train: configs, schedule, and real runs of the loop with a tiny LLM:
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

from vqa.avsynth.questions import FAMILY_GROUP
from vqa.train import checkpoint
from vqa.train.config import StageConfig, load_config
from vqa.train.schedule import lr_factor

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "configs" / "ablations").glob("*.yaml"))


# ---- configs ----
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_parses(path):
    model, train = load_config(path)
    assert train.stages and model.encoder.num_tokens > 0


ABLATIONS = sorted((ROOT / "configs" / "ablations").glob("*-*.yaml"))
# the pretrained-branch ablations: the branch, and what it needs (its grid, Whisper's mel bins and hop)
PRETRAINED = {
    "video-effnet": {"encoder": {"video_backbone": "bundled:efficientnet-lite0", "patch_size": 16}},
    "video-effnet-p8": {"encoder": {"video_backbone": "bundled:efficientnet-lite0", "patch_size": 8}},
    "audio-whisper": {"media": {"n_mels": 80}, "encoder": {"audio_backbone": "bundled:whisper-base",
                                                           "audio_window": "clip", "audio_frames": 300}},
}


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.stem)
def test_each_ablation_is_the_shared_recipe_with_its_one_change(path):
    """Each ablation is base.yaml plus the one change its name says; base.yaml is the default model."""
    import dataclasses

    default = load_config(ROOT / "configs" / "avsynth.yaml")[0]
    base_model, base_train = load_config(ROOT / "configs" / "ablations" / "base.yaml")
    assert base_model == default
    model, train = load_config(path)
    if path.stem in PRETRAINED:
        change = PRETRAINED[path.stem]
        expected = dataclasses.replace(default, media=dataclasses.replace(default.media, **change.get("media", {})),
                                       encoder=dataclasses.replace(default.encoder, **change["encoder"]))
    else:
        key, value = path.stem.split("-")
        expected = dataclasses.replace(default, encoder=dataclasses.replace(default.encoder, **{key: value}))
    assert model == expected
    assert train.out_dir == f"runs/ablations/{path.stem}"
    assert dataclasses.replace(train, out_dir=base_train.out_dir) == base_train


def test_a_config_changes_its_base_key_by_key(tmp_path):
    (tmp_path / "base.yaml").write_text("model:\n  encoder: {width: 64, heads: 4}\ntrain:\n  seed: 3\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nmodel:\n  encoder: {heads: 8}\n")
    model, train = load_config(tmp_path / "child.yaml")
    assert (model.encoder.width, model.encoder.heads, train.seed) == (64, 8, 3)
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ValueError, match="chain comes back to it"):
        load_config(tmp_path / "loop.yaml")


@pytest.mark.parametrize("stage, message", [
    (dict(kind="pretrain", train=["encoder", "lora"]), "cannot train the LoRA"),
    (dict(kind="align", train=["heads"]), "no heads to train"),
    (dict(train=["decoder"]), "unknown parts"),
    (dict(kind="distill"), "kind must be one of"),
    (dict(steps=10, warmup_steps=11), "warmup_steps"),
    (dict(batch_size=0), "batch_size must be >= 1"),
    (dict(mix={"describe": 1.0}), r"describe share must be in \[0, 1\)"),
    (dict(kind="pretrain", train=["encoder"], mix={"describe": 0.1}), "only an align stage mixes in describe"),
    (dict(chat=0.6, mix={"describe": 0.4}), "must leave room for the dataset's questions"),
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
    from vqa.avsynth.generate import generate

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
    raw["train"]["recipe_options"].update(train_clips=0, val_clips=0)
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
    from vqa.train.validate import precise_batch_norm as _precise_batch_norm

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
