"""The ablation table: per benchmark family, what each variant's encoder tokens carry.

    python benchmarks/ablation_table.py runs/ablations/fusion-bottleneck runs/ablations/fusion-late ...

Reads each run's last encoder-stage validation in log.jsonl (the metadata heads, which read the tokens the
projector passes to the LLM) and maps the heads' targets onto the benchmark's families: a family's figure
is the mean accuracy of the targets that answer its question (`shape_of`: every colour's shape target, on
the validation clips that have that colour; `color_of`: every shape's colour target where that shape is
unique in the clip; and so on). Prints a markdown table with chance beside it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vqa.synth.questions import CHANCE, FAMILIES, GROUPS  # noqa: E402

# family -> the suffix (after "<colour>." or "<shape>.") or exact name of the head targets that answer it
FAMILY_TARGETS = {
    "count_objects": "count_objects", "shape_of": ".shape", "color_of": ".color", "motion_of": ".motion",
    "beep_exists": "beep_exists", "count_beeps": "count_beeps", "pitch": "pitch",
    "source_color": "source_color", "source_shape": "source_shape", "source_motion": "source_motion",
    "beeps_of": ".beeps",
}


def family_accuracy(targets: dict[str, float]) -> dict[str, float]:
    out = {}
    for family, key in FAMILY_TARGETS.items():
        values = [v for name, v in targets.items() if (name.endswith(key) if key.startswith(".") else name == key)]
        out[family] = statistics.mean(values) if values else float("nan")
    return out


def last_encoder_val(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    vals = [r for r in rows if r["type"] == "val" and "targets" in r]
    if not vals:
        raise SystemExit(f"{run}/log.jsonl has no encoder-stage validation yet")
    return vals[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    args = parser.parse_args()
    results = {run.name: family_accuracy(last_encoder_val(run)["targets"]) for run in args.runs}
    names = list(results)
    print("| family | group | " + " | ".join(names) + " | chance |")
    print("| --- | --- | " + " | ".join("---:" for _ in names) + " | ---: |")
    for family, spec in FAMILIES.items():
        cells = " | ".join(f"{100 * results[n][family]:.1f}" for n in names)
        print(f"| {family} | {spec.group} | {cells} | {100 * CHANCE[family]:.1f} |")
    for group in GROUPS:
        members = [f for f, spec in FAMILIES.items() if spec.group == group]
        cells = " | ".join(f"{100 * statistics.mean(results[n][f] for f in members):.1f}" for n in names)
        chance = 100 * statistics.mean(CHANCE[f] for f in members)
        print(f"| **{group}** | | {cells} | {chance:.1f} |")
    cells = " | ".join(f"**{100 * statistics.mean(results[n].values()):.1f}**" for n in names)
    print(f"| **overall** | | {cells} | {100 * statistics.mean(CHANCE.values()):.1f} |")


if __name__ == "__main__":
    main()
