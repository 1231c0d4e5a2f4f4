"""The ablation table: per benchmark family, how well each variant's tokens answer the questions.

    python benchmarks/ablation_table.py runs/ablations/fusion-bottleneck runs/ablations/fusion-late ...

Reads each run's last metadata-stage validation in log.jsonl. Its "caption_answers" are the validation
split's benchmark questions answered with the word each one's caption slot holds, through the projector, in
the LLM's input space (the pointer's copies in the source slots): what the LLM is given to read, before any
LLM training. Prints a markdown table per family, per group and overall (means over families), with chance.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vqa.avsynth.questions import CHANCE, FAMILIES, GROUPS  # noqa: E402


def caption_answers(run: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    vals = [r for r in rows if r["type"] == "val" and r.get("caption_answers")]
    if not vals:
        raise SystemExit(f"{run}/log.jsonl has no validation with caption_answers: train it with a config whose "
                         f"metadata stage has caption_weight > 0 (configs/ablations/*.yaml)")
    return vals[-1]["caption_answers"]


def table(results: dict[str, dict[str, float]]) -> list[str]:
    names = list(results)

    def cell(name: str, families: list[str]) -> str:
        got = [results[name][f] for f in families if f in results[name]]
        return f"{100 * statistics.mean(got):.1f}" if got else "-"

    lines = ["| family | group | " + " | ".join(names) + " | chance |",
             "| --- | --- | " + " | ".join("---:" for _ in names) + " | ---: |"]
    for family, spec in FAMILIES.items():
        cells = " | ".join(cell(n, [family]) for n in names)
        lines.append(f"| {family} | {spec.group} | {cells} | {100 * CHANCE[family]:.1f} |")
    for group in GROUPS:
        members = [f for f, spec in FAMILIES.items() if spec.group == group]
        cells = " | ".join(cell(n, members) for n in names)
        lines.append(f"| **{group}** | | {cells} | {100 * statistics.mean(CHANCE[f] for f in members):.1f} |")
    cells = " | ".join(f"**{cell(n, list(FAMILIES))}**" for n in names)
    lines.append(f"| **overall** | | {cells} | {100 * statistics.mean(CHANCE.values()):.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    args = parser.parse_args()
    print("\n".join(table({run.name: caption_answers(run) for run in args.runs})))


if __name__ == "__main__":
    main()
