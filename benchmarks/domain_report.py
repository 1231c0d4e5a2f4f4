"""What a bundle's out-of-domain signal says about clips: real footage, and held-out clips of its own kinds.

    python benchmarks/domain_report.py [--adapter DIR] [--media ../shared/media] [--folder DIR ...]

Prepares each clip through the API with perception (so the picture signal runs where sight is
installed) and prints, per group, how many lie within the bundle's domain and the range of their
token and picture distances; each clip of --media and of the page's spoken examples on a line of its
own. `--folder` (repeatable) adds a dataset's clips, those its qa.jsonl names (for example a
validation split). Also prints the training pictures' own nearest-neighbour cosine distances (photographic
and drawn ones apart) and, for each clip of --media, its cosine distance to the nearest training picture of
its kind.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    from vqa.api import VideoQA
    from vqa.data import read_qa
    from vqa.spoken.examples import spoken_examples

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", default=None, help="bundle folder (default: adapters/real)")
    ap.add_argument("--media", type=Path, default=ROOT.parent / "shared" / "media")
    ap.add_argument("--folder", type=Path, action="append", default=[], help="a dataset folder of held-out clips")
    args = ap.parse_args()
    qa = VideoQA.from_pretrained(args.adapter, perception=True)
    domain = qa.domain
    if domain is None:
        raise SystemExit(f"{qa.source} has no domain.safetensors")
    pictures = domain.pictures or domain.photographs
    print(f"{qa.source}: token threshold {domain.threshold:.2f}")
    kinds = (("drawn or computer-made", domain.pictures), ("photographic", domain.photographs)) if domain.split \
        else (("all", domain.pictures),)
    for kind, group in kinds:
        if group is None:
            print(f"{kind} training pictures: fewer than 2")
            continue
        apart = 1 - group.points @ group.points.T
        apart.fill_diagonal_(float("inf"))
        nearest = apart.min(dim=1).values
        print(f"{kind} training pictures: {len(group.points)}, threshold {group.threshold:.2f} (relative); cosine "
              "distance to their nearest other, quantiles 0.5 / 0.9 / 0.99: "
              + " / ".join(f"{float(torch.quantile(nearest, q)):.2f}" for q in (0.5, 0.9, 0.99)))
    media = sorted(p for p in args.media.glob("*") if p.suffix in {".mp4", ".webm", ".mkv", ".mov", ".gif"}
                   and p.name != "corrupted.mp4") if args.media.is_dir() else []
    groups = [("media", media, True)]
    groups += [(str(f), sorted({f / r["video"] for r in read_qa(f)}), False) for f in args.folder]
    groups.append(("page examples", [path for path, _ in spoken_examples()], True))
    for name, paths, each in groups:
        if not paths:
            print(f"{name}: no clips")
            continue
        rows = [(p, qa.prepare(p)) for p in paths]
        inside = sum(bool(r.in_domain) for _, r in rows)
        line = f"{name}: {inside}/{len(rows)} in domain; tokens {_span([r.domain_distance for _, r in rows])}"
        if pictures is not None:
            line += f"; pictures {_span([r.picture_distance for _, r in rows])}"
        print(line)
        for path, r in rows if each else []:
            cosine = ""
            concepts = None if r.perception is None else r.perception.concepts
            group = None if concepts is None else domain.group(concepts.photographic)
            if group is not None:
                e = F.normalize(torch.from_numpy(concepts.embedding)[None], dim=-1)
                looks = "photographic" if domain.split and concepts.photographic else "drawn" if domain.split else ""
                cosine = (f", cosine to the nearest {looks + ' ' if looks else ''}training picture "
                          f"{float((1 - e @ group.points.T).min()):.2f}")
            picture = "" if r.picture_distance is None else f", picture {r.picture_distance:.2f}"
            print(f"    {path.name}: {'in' if r.in_domain else 'OUT'}, tokens {r.domain_distance:.2f}{picture}{cosine}")


def _span(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{min(known):.2f}-{max(known):.2f}" if known else "-"


if __name__ == "__main__":
    main()
