"""The model card a training run writes into its bundle (README.md): what was trained, how, and how well."""
from __future__ import annotations

import json
from pathlib import Path

from ..config import ModelConfig
from .config import TrainConfig


def write_card(folder: Path, model: ModelConfig, train: TrainConfig, summary: dict, last_val: dict | None) -> Path:
    enc, media = model.encoder, model.media
    lines = [
        f"# {Path(folder).name}",
        "",
        f"A vqa bundle: an audio-visual encoder and projector feeding `{model.llm}`"
        + (f" through a LoRA adapter (r={model.lora.r})." if model.lora else "."),
        "",
        "## Model",
        "",
        f"- frames: {media.num_frames} x {media.size}x{media.size} px; audio: {media.n_mels}-bin log-mel, "
        f"{enc.audio_frames} frames",
        f"- encoder: width {enc.width}, video depth {enc.video_depth} ({enc.attention} attention, "
        f"patch {enc.patch_size}, {enc.patch_stem} stem), "
        f"audio depth {enc.audio_depth}, fusion {enc.fusion}; {enc.num_tokens} clip tokens"
        + (f", the last {enc.summary_tokens} of them summary tokens" if enc.summary_tokens else "")
        + (f" ({len(enc.pointer.outs)} of them copy another's slots: a slot pointer)" if enc.pointer else ""),
        f"- projector: MLP {enc.width} -> {model.projector_hidden} -> LLM hidden size",
        "",
        "## Training",
        "",
        f"Data: `{train.data.train}` (validation "
        + (f"`{train.data.val}`)." if train.data.val else f"{100 * train.data.val_fraction:g} % of its clips, held out)."),
        "",
        "| stage | kind | trains | steps | batch | lr |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for s in train.stages:
        batch = s.batch_size * s.grad_accum * summary.get("processes", 1)
        lines.append(f"| {s.name} | {s.kind} | {', '.join(s.train)} | {s.steps} | {batch} | {s.lr:g} |")
    lines += [
        "",
        f"Trained in {summary['train_seconds'] / 60:.1f} min on {summary.get('processes', 1)} process(es), "
        f"precision {summary.get('precision')}"
        + (f", with `vqa train --config {summary['config_path']}`." if summary.get("config_path") else ".")
        + (f" Made by:\n\n```\n{summary['command']}\n```" if summary.get("command") else ""),
    ]
    if last_val:
        lines += ["", "## Validation", "", f"Last validation ({last_val['stage']}, step {last_val['step']}): "
                  f"accuracy {100 * last_val['accuracy']:.1f}%"
                  + (f", answer loss {last_val['loss']:.3f}." if "loss" in last_val else ".")]
        if "types" in last_val:
            lines += ["", "| type | match | keywords |", "| --- | ---: | ---: |",
                      f"| **overall** | {100 * last_val['match']:.1f} | {100 * last_val['keywords']:.1f} |"]
            lines += [f"| {k} | {100 * v['match']:.1f} | {100 * v['keywords']:.1f} |"
                      for k, v in last_val["types"].items()]
            lines += ["", "match: the reply equals the reference, normalised; keywords: every key word of the "
                      "reference is in the reply (vqa.evaluate)."]
    lines += ["", "## Config", "", "```json", json.dumps({"model": model.to_dict(), "train": train.to_dict()}, indent=1),
              "```", ""]
    path = Path(folder) / "README.md"
    path.write_text("\n".join(lines))
    return path


def set_section(path: Path, title: str, body: str) -> None:
    """Put `## title` with `body` into a card: in place of a section of that title, else before `## Config`
    (the generated config stays last), else at the end."""
    lines = Path(path).read_text().splitlines()
    head = f"## {title}"
    new = [head, "", *body.strip("\n").splitlines(), ""]
    if head in lines:
        start = lines.index(head)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = new
    elif "## Config" in lines:
        at = lines.index("## Config")
        lines[at:at] = new
    else:
        lines += ["", *new]
    Path(path).write_text("\n".join(lines).rstrip("\n") + "\n")
