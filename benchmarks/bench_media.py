"""How clip loading scales with length: a 10-minute 720p H.264/AAC file against a 10-second one.

    python benchmarks/bench_media.py [--cache DIR] [--runs 5]

Writes both files with PyAV (libx264 preset ultrafast, keyframe every 250 frames as x264's
default, AAC stereo 48 kHz; the long one takes a few minutes to write, so pass --cache to
keep them), then times `vqa.media.load_clip` on each, with and without the audio track, and
prints the medians and their ratios. Frames cost about the same whatever the length (seeking);
the audio is decoded whole, in parallel 60 s chunks, so its share scales with length / cores.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vqa.media import _cpu_count, load_clip  # noqa: E402

WIDTH, HEIGHT, FPS, GOP, AUDIO_RATE = 1280, 720, 30, 250, 48000


def write_clip(path: Path, seconds: int) -> Path:
    """Moving textured frames (so inter-frame coding does real work) and a tone over noise."""
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    # A luma texture twice the frame's width, scrolled one step per frame; chroma drifts slowly.
    texture = rng.integers(16, 236, (HEIGHT, WIDTH * 2), dtype=np.uint8)
    texture = ((texture.astype(np.uint16) + np.roll(texture, 1, 0) + np.roll(texture, 1, 1)) // 3).astype(np.uint8)
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as out:
        video = out.add_stream("libx264", rate=FPS, options={"preset": "ultrafast"})
        video.gop_size = GOP
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        audio = out.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
        samples_per_frame = AUDIO_RATE // FPS
        for i in range(seconds * FPS):
            x = (i * 8) % WIDTH
            yuv = np.empty((HEIGHT * 3 // 2, WIDTH), np.uint8)  # (H*3/2, W): Y plane, then U and V
            yuv[:HEIGHT] = texture[:, x:x + WIDTH]
            yuv[HEIGHT:] = 128 + int(40 * np.sin(i / 50))
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            out.mux(video.encode(frame))
            t = (np.arange(samples_per_frame) + i * samples_per_frame) / AUDIO_RATE
            wave = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(samples_per_frame)
            block = np.repeat(wave[None].astype(np.float32), 2, 0)  # (channels, samples)
            aframe = av.AudioFrame.from_ndarray(block, format="fltp", layout="stereo")
            aframe.sample_rate, aframe.time_base = AUDIO_RATE, Fraction(1, AUDIO_RATE)
            aframe.pts = i * samples_per_frame
            out.mux(audio.encode(aframe))
        out.mux(video.encode(None))
        out.mux(audio.encode(None))
    tmp.rename(path)
    return path


def time_load(path: Path, runs: int, num_frames: int, size: int, audio: bool) -> tuple[float, list[float]]:
    load_clip(path, num_frames, size, audio=audio)  # warm the page cache and FFmpeg's first-call set-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        clip = load_clip(path, num_frames, size, audio=audio)
        times.append(time.perf_counter() - t0)
    assert clip.has_audio == audio and clip.frames.shape == (num_frames, size, size, 3)
    return statistics.median(times), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None, help="folder to keep the generated files in")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--long-seconds", type=int, default=600)
    parser.add_argument("--short-seconds", type=int, default=10)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.cache or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, seconds in (("short", args.short_seconds), ("long", args.long_seconds)):
            paths[name] = folder / f"bench_{seconds}s_{HEIGHT}p.mp4"
            t0 = time.perf_counter()
            write_clip(paths[name], seconds)
            print(f"{name}: {seconds} s {WIDTH}x{HEIGHT} {FPS} fps H.264 + AAC stereo "
                  f"({paths[name].stat().st_size / 1e6:.1f} MB, ready in {time.perf_counter() - t0:.1f} s)")
        print(f"{_cpu_count()} CPU cores; {args.num_frames} frames of {args.size} px; median of {args.runs} runs")
        for audio, what in ((True, "frames + whole audio track"), (False, "frames only (audio=False)")):
            results = {}
            for name, path in paths.items():
                results[name], times = time_load(path, args.runs, args.num_frames, args.size, audio)
                print(f"  {what:28s} {name:5s}: {results[name]:.3f} s ({', '.join(f'{t:.3f}' for t in times)})")
            print(f"  {what:28s} ratio long/short: {results['long'] / results['short']:.2f}")


if __name__ == "__main__":
    main()
