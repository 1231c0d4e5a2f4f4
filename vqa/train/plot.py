"""The training curves as a PNG beside the checkpoints: loss per step, validation accuracy per evaluation."""
from __future__ import annotations

import json
from pathlib import Path


def read_log(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(log_path: str | Path, png_path: str | Path) -> Path:
    """Two panels: training loss (one line per stage) and validation accuracy, against the global step."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    stages = list(dict.fromkeys(r["stage"] for r in records if "stage" in r))
    for stage in stages:
        train = [r for r in records if r["type"] == "train" and r.get("stage") == stage]
        val = [r for r in records if r["type"] == "val" and r.get("stage") == stage]
        if train:
            ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label=stage)
        if val:
            ax_val.plot([r["step"] for r in val], [100 * r["accuracy"] for r in val], marker="o", label=stage)
    ax_loss.set(xlabel="step", ylabel="training loss", title="loss")
    ax_loss.set_yscale("log")
    ax_val.set(xlabel="step", ylabel="accuracy (%)", title="validation accuracy", ylim=(0, 100))
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    tmp = png_path.with_name(png_path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(png_path)
    return png_path
