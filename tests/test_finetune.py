"""vqa.finetune: a tiny model fine-tuned end to end on a dataset that is not AVSynth's (clips made here with
PyAV, free-form sentence answers): the loss falls, validation reports accuracy, the bundle answers and its
card holds the validation table and the command, and an interrupted run resumes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.helpers import tiny_config, tiny_llm

COLORS = {"red": (220, 40, 40), "blue": (40, 60, 220)}


def write_clip(path, color: str, direction: str, tone: bool, fps: int = 8, seconds: float = 1.0, size: int = 48):
    """A coloured square moving left or right on grey, with a tone or silence."""
    import av

    n = int(fps * seconds)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        audio = out.add_stream("aac", rate=16000, layout="mono")
        for i in range(n):
            frame = np.full((size, size, 3), 128, np.uint8)
            x = int(4 + (size - 20) * (i / (n - 1) if direction == "right" else 1 - i / (n - 1)))
            frame[16:28, x:x + 12] = COLORS[color]
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        t = np.arange(int(16000 * seconds)) / 16000
        wave = (0.3 * np.sin(2 * np.pi * 440 * t) if tone else np.zeros_like(t)).astype(np.float32)
        for start in range(0, len(wave), 1024):
            chunk = av.AudioFrame.from_ndarray(wave[None, start:start + 1024], format="flt", layout="mono")
            chunk.sample_rate = 16000
            for packet in audio.encode(chunk):
                out.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode():
                out.mux(packet)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """16 clips, three free-form questions each (one record a two-turn conversation)."""
    folder = tmp_path_factory.mktemp("own-clips")
    (folder / "clips").mkdir()
    records = []
    for i in range(16):
        color, direction, tone = list(COLORS)[i % 2], ("left", "right")[i // 2 % 2], i // 4 % 2 == 0
        name = f"clips/clip{i:02d}.mp4"
        write_clip(folder / name, color, direction, tone)
        ask = "<video>\nWhat colour is the square?"
        records += [
            {"id": f"{i}-color", "type": "color", "video": name, "conversations": [
                {"from": "human", "value": ask}, {"from": "gpt", "value": f"The square is {color}."}]},
            {"id": f"{i}-motion", "type": "motion", "video": name, "conversations": [
                {"from": "human", "value": "<video>\nWhich way does it move?"},
                {"from": "gpt", "value": f"It moves to the {direction}."},
                {"from": "human", "value": "Can you hear anything?"},
                {"from": "gpt", "value": "Yes, a steady tone." if tone else "No, it is silent."}]},
        ]
    (folder / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


@pytest.fixture(scope="module")
def base_bundle(tmp_path_factory, tokenizer):
    """A tiny bundle whose config names a tiny random Llama saved to a folder."""
    from vqa.model import VideoLLM

    root = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    tiny_llm(tokenizer).save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    config = tiny_config()
    config.llm = str(root / "llm")
    from vqa.llm import load_llm

    llm, tok = load_llm(config.llm)
    model = VideoLLM(config, llm, tok)
    from vqa.bundle import save_bundle

    return save_bundle(model, root / "bundle")


def log_of(out) -> list[dict]:
    return [json.loads(line) for line in (out / "training" / "log.jsonl").read_text().splitlines()]


def test_finetune_on_own_clips_writes_a_bundle_that_answers(dataset, base_bundle, tmp_path, capsys):
    from vqa.api import VideoQA
    from vqa.cli import main

    out = tmp_path / "mine"
    code = main(["finetune", str(dataset), "--out", str(out), "--base", str(base_bundle), "--steps", "40",
                 "--batch-size", "4", "--lr", "3e-3", "--workers", "1"])
    assert code == 0, capsys.readouterr().err
    log = log_of(out)
    losses = [r["loss"] for r in log if r["type"] == "train"]
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3]), losses
    val = [r for r in log if r["type"] == "val"]
    assert val and {"loss", "match", "keywords", "types", "accuracy"} <= set(val[-1])
    assert set(val[-1]["types"]) <= {"color", "motion"} and val[-1]["types"]
    start = log[0]
    assert start["val_records"] > 0 and start["train_records"] + start["val_records"] == 32
    card = (out / "README.md").read_text()
    assert "## Validation" in card and "| type | match | keywords |" in card
    assert f"vqa finetune {dataset} --out {out}" in card
    assert not (out / "training" / "checkpoints").exists()  # the bundle holds the result
    qa = VideoQA.from_pretrained(out)
    reply = qa.ask(dataset / "clips" / "clip00.mp4", "What colour is the square?", max_new_tokens=8)
    assert isinstance(reply, str) and reply.strip()
    # the bundle describes its training clips' tokens: one of them lies within their range
    assert (out / "domain.safetensors").is_file() and qa.prepare(dataset / "clips" / "clip01.mp4").in_domain
    from vqa.domain import Domain
    from vqa.perception import sight

    pictures = Domain.load(out).pictures  # and, where sight is installed, its clips' pictures
    assert (pictures is None) == (sight.missing() is not None)
    assert pictures is None or (pictures.points.shape[0] >= 2 and pictures.points.shape[1] == 1280)
    # a second run into a finished bundle is refused, not overwritten
    assert main(["finetune", str(dataset), "--out", str(out), "--base", str(base_bundle)]) == 2
    assert "already holds a bundle" in capsys.readouterr().err


def test_an_interrupted_finetune_resumes_where_it_stopped(dataset, base_bundle, tmp_path, monkeypatch, capsys):
    from vqa.finetune import finetune
    from vqa.train import checkpoint

    publish = checkpoint.publish

    def publish_then_die(tmp, final, keep):
        publish(tmp, final, keep)
        if final.name == "step-000010":
            raise KeyboardInterrupt  # as a user pressing Ctrl-C right after the checkpoint

    monkeypatch.setattr(checkpoint, "publish", publish_then_die)
    out = tmp_path / "mine"
    options = dict(base=str(base_bundle), steps=20, batch_size=4, workers=1, progress=False)
    with pytest.raises(KeyboardInterrupt):
        finetune(str(dataset), str(out), **options)
    assert (out / "training" / "checkpoints" / "step-000010").is_dir() and not (out / "README.md").exists()
    monkeypatch.setattr(checkpoint, "publish", publish)
    finetune(str(dataset), str(out), **options)
    assert "resuming from" in capsys.readouterr().out
    steps = [r["step"] for r in log_of(out) if r["type"] == "train"]
    assert steps == list(range(1, 21))  # steps 1-10 kept, 11-20 done after the resume, none twice
    assert (out / "README.md").is_file()


def test_default_steps_follow_the_dataset_size():
    from vqa.finetune import MAX_STEPS, MIN_STEPS, default_steps

    assert default_steps(800, 8, 0.1) == 270  # 3 passes over the 720 training records
    assert default_steps(10, 8, None) == MIN_STEPS and default_steps(10 ** 6, 8, None) == MAX_STEPS


def test_a_finetune_on_clips_marked_unfamiliar_learns_to_read_the_line(dataset, base_bundle, tmp_path):
    import json

    from vqa import bundle
    from vqa.finetune import finetune
    from vqa.perception import UNFAMILIAR, sight, speech

    if sight.missing() or speech.missing():
        pytest.skip(sight.missing() or speech.missing())
    marked = tmp_path / "marked"
    marked.mkdir()
    lines = (dataset / "qa.jsonl").read_text().splitlines()[:12]  # six clips, two records each
    records = [{**json.loads(line), "video": str(dataset / json.loads(line)["video"])} for line in lines]
    for r in records[:6]:
        r["unfamiliar"] = True
    (marked / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "mine"
    finetune(str(marked), str(out), base=str(base_bundle), steps=2, batch_size=4, workers=1, progress=False,
             perception_tokens=160)
    assert bundle.read_config(out).unfamiliar_line  # served with the line, as it was trained
    (texts,) = [json.loads(p.read_text()) for p in marked.glob("perception-*.json")]
    flagged = {r["video"] for r in records[:6]}
    assert len(flagged) == 3
    assert {k for k in texts if k.endswith("#unfamiliar")} == {f"{v}#unfamiliar" for v in flagged}
    assert all(UNFAMILIAR in texts[f"{v}#unfamiliar"] and UNFAMILIAR not in texts[v] for v in flagged)


def test_a_second_run_into_a_folder_being_trained_is_refused(dataset, base_bundle, tmp_path, capsys):
    """While one run writes to a folder, another into it would resume from checkpoints still being written
    and write the bundle too: it stops at once, naming the folder. A lock held by a process that died goes
    with it, so a run stopped any way resumes."""
    import subprocess
    import sys

    from vqa.cli import main
    from vqa.train.loop import LOCK

    training = tmp_path / "mine" / "training"
    training.mkdir(parents=True)
    hold = (f"import time; from filelock import FileLock; lock = FileLock({str(training / LOCK)!r}); "
            "lock.acquire(); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code = main(["finetune", str(dataset), "--out", str(tmp_path / "mine"), "--base", str(base_bundle),
                     "--steps", "2", "--batch-size", "4", "--workers", "1"])
        assert code == 2
        assert f"another training run is writing to {training}" in capsys.readouterr().err
        assert not (training / "checkpoints").exists() and not (training / "log.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(["finetune", str(dataset), "--out", str(tmp_path / "mine"), "--base", str(base_bundle),
                 "--steps", "2", "--batch-size", "4", "--workers", "1"]) == 0


def test_ctrl_c_says_what_is_kept_and_how_to_go_on(dataset, base_bundle, tmp_path, monkeypatch, capsys):
    from vqa.cli import main
    from vqa.train import checkpoint

    publish = checkpoint.publish

    def publish_then_stop(tmp, final, keep):
        publish(tmp, final, keep)
        if final.name == "step-000005":
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "publish", publish_then_stop)
    out = tmp_path / "mine"
    args = ["finetune", str(dataset), "--out", str(out), "--base", str(base_bundle), "--steps", "10",
            "--batch-size", "4", "--workers", "1"]
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = out / "training" / "checkpoints" / "step-000005"
    assert f"stopped: its last checkpoint, {last}, keeps it up to step 5" in err
    assert f"vqa finetune {dataset} --out {out}" in err and "--steps 10" in err
    monkeypatch.setattr(checkpoint, "publish", publish)
    assert main(args) == 0 and "resuming from" in capsys.readouterr().out


def test_a_run_stopped_before_its_first_checkpoint_is_told_it_starts_again(tmp_path):
    from vqa.train.loop import interrupted

    message = interrupted(tmp_path, "vqa train --config configs/avsynth.yaml")
    assert "no checkpoint yet" in message and message.endswith("\n  vqa train --config configs/avsynth.yaml")
