"""Soak test: N clients for M minutes against a fresh web app on loopback, normal use mixed with hostile.

    nice python benchmarks/soak.py --clients 4 --minutes 3 [--hostile 0.5] [--adapter untrained]

Starts `app.py` on a free 127.0.0.1 port with its own upload folder, writes the clips it needs
(a 5 s clip with sound, a Matroska with no duration in its header lasting 20 minutes, a text
file posing as a video), then runs the clients, each its own gradio_client session. Each action is
normal (load a clip and chat two turns; `/ask`) or, with probability --hostile, one of the
hostile cases: the long header-less clip on `/ask` and `/load_clip`, a 50,000-character
question, a 400-turn history, a blank question, a malformed history, a non-video file, and a
raw 5 MB POST to the upload route that no endpoint ever uses. Prints latency percentiles by
action, outcomes by kind (answered / refused with the expected message / anything else), and
the server's resident memory and upload-folder size over time. Loopback only, bounded in
time (at most 60 minutes) and clients (at most 32).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MAX_NEW_TOKENS = 16
# hostile action -> the text its refusal must contain
EXPECTED = {
    "ask_long_headerless": "lasts more than",
    "load_long_headerless": "lasts more than",
    "ask_long_question": "too long",
    "chat_long_history": "no longer sees its oldest",  # answered, with a notice
    "ask_blank_question": "Give a question.",
    "chat_malformed_history": "Malformed chat history",
    "ask_not_a_video": "not a media file",
    "raw_upload": "",  # accepted (200) or refused when the folder is full (503): both bounded
}
NORMAL = ("chat_two_turns", "ask")


# ---- files ----

def write_normal_clip(path: Path, seconds: float = 5.0, fps: int = 12, size: int = 160) -> Path:
    """A square moving over grey, with a 440 Hz tone."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = size, size * 3 // 4, "yuv420p"
        audio = out.add_stream("aac", rate=16000, layout="mono")
        for i in range(int(seconds * fps)):
            img = np.full((video.height, size, 3), 90, np.uint8)
            x = i * (size - 20) // int(seconds * fps)
            img[40:60, x:x + 20] = (230, 50, 40)
            for packet in video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * 16000)) / 16000)).astype(np.float32)
        for start in range(0, len(wave), 1024):
            frame = av.AudioFrame.from_ndarray(wave[None, start:start + 1024], format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in audio.encode(frame):
                out.mux(packet)
        for packet in audio.encode():
            out.mux(packet)
    return path


class _Pipe:
    """A write-only stream that cannot seek: the Matroska muxer cannot go back to write the duration."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        return self.f.write(data)

    def seekable(self):
        return False


def write_headerless_clip(path: Path, seconds: float, fps: int = 2, size: int = 16, rate: int = 8000) -> Path:
    with open(path, "wb") as raw, av.open(_Pipe(raw), "w", format="matroska") as out:
        video = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        audio = out.add_stream("pcm_s16le", rate=rate, layout="mono")
        img = np.zeros((size, size, 3), np.uint8)
        for i in range(int(seconds * fps)):
            for packet in video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, rate // fps), np.int16), format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, i * (rate // fps)
            for packet in audio.encode(frame):
                out.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode():
                out.mux(packet)
    return path


# ---- the server ----

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(work: Path, args) -> tuple[subprocess.Popen, str, Path]:
    uploads = work / "uploads"
    uploads.mkdir()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(free_port()), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_TEMP_DIR": str(uploads), "VQA_UPLOAD_BUDGET_MB": str(args.upload_budget_mb)}
    if args.adapter:
        env["VQA_ADAPTER"] = args.adapter
    log_path = work / "server.log"
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=open(log_path, "w"),
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        text = log_path.read_text()
        if "running at http" in text:
            url = text.split("running at ", 1)[1].split()[0]
            if not url.startswith("http://127.0.0.1:"):
                proc.terminate()
                raise SystemExit(f"the server is not on loopback: {url}")
            return proc, url, uploads
        if proc.poll() is not None:
            break
        time.sleep(1)
    proc.terminate()
    raise SystemExit(f"the app did not start; its log:\n{log_path.read_text()[-3000:]}")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def folder_mb(folder: Path) -> float:
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total / 2**20


# ---- the clients ----

def text_of(message) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or [] if isinstance(part, dict))


class Client:
    def __init__(self, url: str, files: dict[str, Path], rng: random.Random):
        from gradio_client import Client as GradioClient

        self.url, self.files, self.rng = url, files, rng
        self.client = GradioClient(url, verbose=False)

    def run(self, action: str) -> str:
        """Do one action; returns what the server's reply says (for the expectation check)."""
        from gradio_client import handle_file

        c, f = self.client, self.files
        if action == "chat_two_turns":
            info = c.predict(handle_file(str(f["normal"])), api_name="/load_clip")[2]
            if "Could not" in info:
                raise RuntimeError(info)
            chat = []
            for question in ("What is in the clip?", "And what do you hear?"):
                chat, _ = c.predict(question, chat, api_name="/chat", max_new_tokens=MAX_NEW_TOKENS)
            return text_of(chat[-1])
        if action == "ask":
            return c.predict(handle_file(str(f["normal"])), "What color is the square?", api_name="/ask")
        if action == "ask_long_headerless":
            return c.predict(handle_file(str(f["headerless"])), "What is seen?", api_name="/ask")
        if action == "load_long_headerless":
            return c.predict(handle_file(str(f["headerless"])), api_name="/load_clip")[2]
        if action == "ask_long_question":
            return c.predict(handle_file(str(f["normal"])), "why " * 12_500, api_name="/ask")
        if action == "ask_blank_question":
            return c.predict(handle_file(str(f["normal"])), "   ", api_name="/ask")
        if action == "ask_not_a_video":
            return c.predict(handle_file(str(f["text"])), "What is this?", api_name="/ask")
        if action == "chat_long_history":
            c.predict(handle_file(str(f["normal"])), api_name="/load_clip")
            history = []
            for i in range(200):
                history += [{"role": "user", "content": [{"type": "text", "text": f"Question {i}?"}]},
                            {"role": "assistant", "content": [{"type": "text", "text": f"Answer {i}."}]}]
            chat, _ = c.predict("And now?", history, api_name="/chat", max_new_tokens=MAX_NEW_TOKENS)
            return " ".join(text_of(m) for m in chat[-3:])
        if action == "chat_malformed_history":
            return str(c.predict("Hi?", [{"role": "robot", "content": 5}], api_name="/chat"))
        if action == "raw_upload":
            import httpx

            r = httpx.post(self.url + "gradio_api/upload", files={"files": ("blob.mp4", os.urandom(5 * 2**20))},
                           timeout=60)
            if r.status_code not in (200, 503):
                raise RuntimeError(f"upload answered {r.status_code}")
            return f"HTTP {r.status_code}"
        raise ValueError(action)


def client_loop(url, files, seed, deadline, hostile, results, lock):
    rng = random.Random(seed)
    client = Client(url, files, rng)
    while time.monotonic() < deadline:
        action = rng.choice(list(EXPECTED)) if rng.random() < hostile else rng.choice(NORMAL)
        start = time.perf_counter()
        try:
            reply, error = client.run(action), None
        except Exception as e:  # the kind of failure is what we count
            reply, error = str(e), type(e).__name__
        seconds = time.perf_counter() - start
        if action in NORMAL:
            outcome = "answered" if error is None and reply.strip() else f"failed ({error or 'empty answer'})"
        elif EXPECTED[action] in reply:
            outcome = "bounded as expected"
        else:
            outcome = f"unexpected ({error or 'no refusal'}): {reply[:80]}"
        with lock:
            results.append({"action": action, "seconds": seconds, "outcome": outcome})


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--hostile", type=float, default=0.5, help="share of actions that are hostile")
    parser.add_argument("--adapter", default=None, help="VQA_ADAPTER for the server (default: its own default)")
    parser.add_argument("--upload-budget-mb", type=int, default=200, help="VQA_UPLOAD_BUDGET_MB for the server")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between memory samples")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (1 <= args.clients <= 32 and 0 < args.minutes <= 60 and 0 <= args.hostile <= 1):
        parser.error("--clients must be 1..32, --minutes 0..60, --hostile 0..1")

    work = Path(tempfile.mkdtemp(prefix="vqa-soak-"))
    files = {"normal": write_normal_clip(work / "clip.mp4"),
             "headerless": write_headerless_clip(work / "long_headerless.mkv", seconds=20 * 60),
             "text": work / "notes.mp4"}
    files["text"].write_text("this is not a video\n" * 100)
    proc, url, uploads = start_server(work, args)
    print(f"server {url} (pid {proc.pid}), log {work / 'server.log'}; {args.clients} clients for "
          f"{args.minutes:g} min, {args.hostile:.0%} hostile", flush=True)
    samples, results, lock = [], [], threading.Lock()
    started = time.monotonic()
    deadline = started + args.minutes * 60
    stop = threading.Event()

    def sample():
        while True:
            samples.append((time.monotonic() - started, rss_mb(proc.pid), folder_mb(uploads)))
            if stop.wait(args.sample_every):
                samples.append((time.monotonic() - started, rss_mb(proc.pid), folder_mb(uploads)))
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    threads = [threading.Thread(target=client_loop, args=(url, files, args.seed * 1000 + i, deadline, args.hostile,
                                                          results, lock)) for i in range(args.clients)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        stop.set()
        sampler.join()
        log_text = (work / "server.log").read_text()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()

    wall = time.monotonic() - started
    print(f"\n{len(results)} actions in {wall:.0f} s\n")
    print(f"{'action':24s} {'n':>4s} {'p50 s':>7s} {'p90 s':>7s} {'p99 s':>7s} {'max s':>7s}")
    by_action = collections.defaultdict(list)
    for r in results:
        by_action[r["action"]].append(r["seconds"])
    for action in [*NORMAL, *EXPECTED]:
        t = by_action.get(action)
        if t:
            print(f"{action:24s} {len(t):4d} {percentile(t, 50):7.2f} {percentile(t, 90):7.2f} "
                  f"{percentile(t, 99):7.2f} {max(t):7.2f}")
    print("\noutcomes:")
    for (action, outcome), n in sorted(collections.Counter((r["action"], r["outcome"]) for r in results).items()):
        print(f"  {action:24s} {outcome}: {n}")
    print(f"\nserver log: {log_text.count('Traceback')} tracebacks, "
          f"{sum(' vqa.' in line for line in log_text.splitlines())} vqa log lines")
    print("\n  time s   RSS MB   uploads MB")
    for t, rss, up in samples:
        print(f"  {t:6.0f}   {rss:6.0f}   {up:8.1f}")
    rss = [s[1] for s in samples]
    up = [s[2] for s in samples]
    print(f"\nRSS: start {rss[0]:.0f} MB, max {max(rss):.0f} MB, end {rss[-1]:.0f} MB; "
          f"uploads: max {max(up):.1f} MB, end {up[-1]:.1f} MB (budget {args.upload_budget_mb} MB)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, "samples": samples}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
