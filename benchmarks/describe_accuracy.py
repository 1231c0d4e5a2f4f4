"""How well an adapter describes whole clips: "Describe this clip." on an AVSynth split, scored fact by fact.

    python benchmarks/describe_accuracy.py --adapter adapters/avsynth --data data/avsynth-test --clips 200

Each reply is read with vqa.avsynth.describe.facts and compared with the description of the clip's metadata:
the object count, the objects (colour, shape and motion of each, all of them right), what beeps (colour,
shape, how often, pitch; or nothing), and the whole reply word for word. Also asks a phrasing the training
never used, to show whether the request, not the template, was learned.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vqa.avsynth.recipe import read_meta  # noqa: E402
from vqa.data import load_features  # noqa: E402
from vqa.evaluate import answer  # noqa: E402
from vqa.prompt import with_video  # noqa: E402
from vqa.avsynth.describe import DESCRIBE_QUESTIONS, describe, facts  # noqa: E402
from vqa.train.precision import resolve_precision  # noqa: E402

UNSEEN = "What can you see and hear in this clip?"


def score(replies: list[str], truths: list[str]) -> dict[str, float]:
    n = len(replies)
    got, want = [facts(r) for r in replies], [facts(t) for t in truths]
    return {
        "count": sum(g["count"] == w["count"] for g, w in zip(got, want)) / n,
        "objects": sum(g["objects"] == w["objects"] for g, w in zip(got, want)) / n,
        "sound": sum(g["sound"] == w["sound"] for g, w in zip(got, want)) / n,
        "all facts": sum(g == w for g, w in zip(got, want)) / n,
        "word for word": sum(r.strip() == t for r, t in zip(replies, truths)) / n,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter", required=True)
    p.add_argument("--data", required=True, help="an AVSynth split (meta.jsonl, clips/)")
    p.add_argument("--clips", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", help="write the scores and every reply here")
    args = p.parse_args()

    from vqa.api import VideoQA

    model = VideoQA.from_pretrained(args.adapter).model
    meta = read_meta(args.data)
    videos = list(meta)[:args.clips]
    cache = load_features(args.data, model.config, videos=videos)
    truths = [describe(meta[v]) for v in videos]
    precision = resolve_precision("auto", model.device)
    out = {"adapter": args.adapter, "data": args.data, "clips": len(videos)}
    print(f"{args.adapter} on {len(videos)} clips of {args.data}\n")
    print("| question | count | objects | sound | all facts | word for word |\n| --- | ---: | ---: | ---: | ---: | ---: |")
    for question in (DESCRIBE_QUESTIONS[0], UNSEEN):
        records = [{"video": v, "messages": [{"role": "user", "content": with_video(question)}]} for v in videos]
        start = time.perf_counter()
        replies = answer(model, cache, records, batch_size=args.batch_size, max_new_tokens=64, precision=precision,
                         desc=question)
        s = score(replies, truths)
        print(f"| {question} | " + " | ".join(f"{100 * v:.1f}" for v in s.values()) + " |")
        out[question] = {"scores": s, "seconds": round(time.perf_counter() - start, 1),
                         "replies": [{"video": v, "truth": t, "reply": r} for v, t, r in zip(videos, truths, replies)]}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
