"""AVSynth's scoring (avsynth-spec.md): accuracy per family, per group and overall, beside chance.

A reply counts by its first vocabulary word; overall accuracy is the mean over families (each family
weighs the same whatever its number of questions), and a group's is the mean over its families.
"""
from __future__ import annotations

from .questions import CHANCE, FAMILIES, FAMILY_GROUP, GROUPS, VOCABULARY, score_reply


def one_word_share(replies: list[str]) -> float:
    """Share of replies that are exactly one vocabulary word (case and end punctuation aside)."""
    words = [r.strip().strip(".!").lower() for r in replies]
    return sum(w in VOCABULARY for w in words) / max(1, len(words))


def summarize(records: list[dict], replies: list[str]) -> dict:
    """Accuracy per family (with n and chance), per group and overall (means over families)."""
    families: dict[str, dict] = {}
    for r, reply in zip(records, replies):
        f = families.setdefault(r["family"], {"group": FAMILY_GROUP[r["family"]], "n": 0, "correct": 0})
        f["n"] += 1
        f["correct"] += int(score_reply(reply) == r["answer"])
    ordered = {}
    for name in FAMILIES:  # the spec's order
        if name in families:
            f = families[name]
            ordered[name] = {**f, "accuracy": f["correct"] / f["n"], "chance": CHANCE[name]}
    groups = {}
    for g in GROUPS:
        members = [f for f in ordered.values() if f["group"] == g]
        if members:
            groups[g] = {
                "families": len(members), "n": sum(f["n"] for f in members),
                "accuracy": sum(f["accuracy"] for f in members) / len(members),
                "chance": sum(f["chance"] for f in members) / len(members),
            }
    overall = {
        "families": len(ordered), "n": sum(f["n"] for f in ordered.values()),
        "accuracy": sum(f["accuracy"] for f in ordered.values()) / max(1, len(ordered)),
        "chance": sum(f["chance"] for f in ordered.values()) / max(1, len(ordered)),
    }
    return {"families": ordered, "groups": groups, "overall": overall}


def format_table(result: dict, blind: dict | None = None) -> str:
    """A Markdown table: one row per family, then per group, then overall."""
    head = "| family | group | n | accuracy | blind | chance |\n| --- | --- | ---: | ---: | ---: | ---: |"
    rows = [head]

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    def blind_of(section: str, key: str) -> float | None:
        if blind is None:
            return None
        part = blind[section] if section == "overall" else blind[section].get(key)
        return None if part is None else part["accuracy"]

    for name, f in result["families"].items():
        rows.append(f"| {name} | {f['group']} | {f['n']} | {pct(f['accuracy'])} | "
                    f"{pct(blind_of('families', name))} | {pct(f['chance'])} |")
    for name, g in result["groups"].items():
        rows.append(f"| **{name}** (mean of {g['families']}) | | {g['n']} | {pct(g['accuracy'])} | "
                    f"{pct(blind_of('groups', name))} | {pct(g['chance'])} |")
    o = result["overall"]
    rows.append(f"| **overall** (mean of {o['families']} families) | | {o['n']} | **{pct(o['accuracy'])}** | "
                f"{pct(blind_of('overall', ''))} | {pct(o['chance'])} |")
    return "\n".join(rows)
