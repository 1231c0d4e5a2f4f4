"""A fresh process's first clip, with and without `VideoQA.warm_up` before it.

    python benchmarks/first_clip.py [CLIP ...]

What a process pays once (lazily imported audio code and its compilation, kernels built for the clip
path's shapes, Whisper's first decoding) falls on its first clip unless it was warmed up, as the app does
at start. Each case runs in a new Python process: load the default bundle, warm up or not, then time
`VideoQA.prepare` on the clip, then again with its caches dropped. Clips: the arguments, else
chaplin.mp4 and nasa_13013.mp4 from ../shared/media where present, else a generated 10 s 720p clip.
Prints one markdown table.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MEDIA = ROOT.parent / "shared" / "media"


def child(clip: str, warm: bool) -> None:
    sys.path.insert(0, str(ROOT))
    from vqa.api import VideoQA
    from vqa.perception import speech

    qa = VideoQA.from_pretrained()
    warm_s = qa.warm_up() if warm else 0.0
    times = []
    for _ in range(2):
        qa._cache.clear()
        speech.forget()  # a new clip each time: Whisper keeps its last encoder output
        t = time.perf_counter()
        qa.prepare(clip)
        times.append(time.perf_counter() - t)
    print(json.dumps({"warm_up": warm_s, "first": times[0], "second": times[1]}))


def run(clip: str, warm: bool) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", clip, "warm" if warm else "cold"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    clips = sys.argv[1:] or [str(MEDIA / n) for n in ("chaplin.mp4", "nasa_13013.mp4") if (MEDIA / n).is_file()]
    if not clips:
        sys.path.insert(0, str(ROOT))
        from benchmarks.bench_generate import make_clip

        clips = [str(make_clip(Path(tempfile.mkdtemp()) / "720p.mp4"))]
    print("| clip | first prepare, no warm-up | warm-up | first prepare after it | second prepare |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for clip in clips:
        cold, warm = run(clip, False), run(clip, True)
        print(f"| {Path(clip).name} | {cold['first']:.2f} s | {warm['warm_up']:.2f} s | {warm['first']:.2f} s "
              f"| {warm['second']:.2f} s |", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3] == "warm")
    else:
        main()
