"""`vqa synth`: write an AVSynth split, DIR/clips/*.mp4, DIR/meta.jsonl and DIR/qa.jsonl.

Clip i depends only on (seed, i), so any worker count writes the same files; the
questions are chosen afterwards in the parent, in clip order, to balance answers.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from tqdm import tqdm

from vqa.avsynth.questions import answer_distribution, balance_problems, build_qa, format_distribution
from vqa.avsynth.scene import RENDER, clip_meta, clip_rng
from vqa.train.recipe import DATASET_FILE

META_FILE = "meta.jsonl"
QA_FILE = "qa.jsonl"
CLIPS_DIR = "clips"
# below this many clips, answer shares are too noisy for the balance rule to be an error
STRICT_BALANCE_CLIPS = 300


def _make_clip(job: tuple[str, int, int]) -> dict:
    from vqa.avsynth.render import render_clip  # PyAV only where pixels are made

    out, seed, index = job
    meta = clip_meta(seed, index)
    render_clip(meta, Path(out) / meta["video"], clip_rng(seed, index, RENDER))
    return meta


def generate(out: str | Path, num_clips: int, seed: int, workers: int | None = None,
             progress: bool = True) -> dict[str, Counter]:
    """Render `num_clips` clips and their questions into `out`; returns each family's answer counts."""
    if num_clips < 1:
        raise ValueError(f"--clips must be at least 1, got {num_clips}")
    if seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {seed}")
    workers = workers or os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    out = Path(out)
    (out / CLIPS_DIR).mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), seed, i) for i in range(num_clips)]
    metas = []
    with ExitStack() as stack:
        f = stack.enter_context(open(out / META_FILE, "w"))
        bar = stack.enter_context(tqdm(total=num_clips, unit="clip", disable=not progress))
        if workers == 1:
            done = map(_make_clip, jobs)
        else:
            # spawn: safe even when the caller has threads (torch, a web server); leaving the block terminates it
            pool = stack.enter_context(mp.get_context("spawn").Pool(min(workers, num_clips)))
            done = pool.imap(_make_clip, jobs, chunksize=max(1, min(8, num_clips // (4 * workers))))
        for meta in done:  # in index order
            f.write(json.dumps(meta) + "\n")
            metas.append(meta)
            bar.update()
    records = build_qa(metas, seed)
    with open(out / QA_FILE, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    (out / DATASET_FILE).write_text(json.dumps({"recipe": "vqa.avsynth"}) + "\n")  # scored by its family table
    return answer_distribution(records)


def cli(args) -> int:
    start = time.perf_counter()
    try:
        dist = generate(args.out, args.clips, args.seed, args.workers)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    print(f"wrote {args.clips} clips to {args.out} in {seconds:.1f} s ({args.clips / seconds:.2f} clips/s)")
    print(format_distribution(dist))
    problems = balance_problems(dist)
    if problems and args.clips >= STRICT_BALANCE_CLIPS:
        print("error: answers are unbalanced:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    if problems:
        print(f"warning (fewer than {STRICT_BALANCE_CLIPS} clips, so not an error): answers are unbalanced:\n  "
              + "\n  ".join(problems), file=sys.stderr)
    return 0
