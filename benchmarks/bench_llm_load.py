"""Time loading the bundled LLM: the first load (GGUF -> safetensors conversion) and later loads.

Each load runs in a fresh process with its own VQA_CACHE_DIR (a new temporary folder
unless --cache-dir is given), so "first" really converts and "later" reads the cache
as a new program would. A later load reports three figures:
  import    `import vqa.llm` (torch + transformers)
  cold      the process's first load_llm(): includes transformers' lazy imports of the
            Llama and generation modules, paid once by any program that uses them
  warm      a second load_llm() in the same process: reading the cache itself

    python benchmarks/bench_llm_load.py --runs 5
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child() -> None:
    t0 = time.perf_counter()
    from vqa.llm import load_llm

    t1 = time.perf_counter()
    load_llm()
    t2 = time.perf_counter()
    load_llm()
    t3 = time.perf_counter()
    print(json.dumps({"import": t1 - t0, "cold": t2 - t1, "warm": t3 - t2}))


def run_child(cache: Path) -> dict[str, float]:
    env = {**os.environ, "VQA_CACHE_DIR": str(cache)}
    proc = subprocess.run(
        [sys.executable, __file__, "--child"], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode:
        raise RuntimeError(f"load failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="later loads to time")
    parser.add_argument("--cache-dir", default=None, help="cache root (default: a fresh temporary folder)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child()

    with tempfile.TemporaryDirectory(prefix="vqa-bench-") as tmp:
        cache = Path(args.cache_dir) if args.cache_dir else Path(tmp)
        first = run_child(cache)
        print(f"first load (converts): {first['cold']:6.2f} s  (+ import {first['import']:.2f} s)")
        later = [run_child(cache) for _ in range(args.runs)]
        for key in ("import", "cold", "warm"):
            values = [r[key] for r in later]
            print(
                f"later loads, {key:>6}: median {statistics.median(values):5.2f} s  "
                f"(min {min(values):.2f}, max {max(values):.2f}, n={len(values)})"
            )


if __name__ == "__main__":
    main()
