"""Serving speed with the default bundle: generation, first tokens, clip-ready time, batches and memory.

    python benchmarks/bench_generate.py [--adapter DIR] [--tokens 64] [--repeats 3]

Prints one markdown table. Generation is timed in one run for the lean decoder's fast mode (with
and without lookahead, and with fp16 weights in place of int8) and exact mode and for transformers' `generate` of the same PEFT model
(decode tokens/s after the first token, best of --repeats, the four interleaved so that a busy
machine slows them alike), with each one's ratio to `generate`; then on whole answers to the
page's example questions, fast mode with and without lookahead. A prompt, and a follow-up's tokens,
through the widened GEMMs and through the int8 kernel. First token: a new 10 s 720p clip (decode, features, encoder,
prompt), a chat's follow-up question, and the first question on a clip warmed after it was prepared (as
the page and `vqa chat` do while the user types). Clip-ready: `VideoQA.prepare` on that clip, whole and
split into decoding, features and encoder; both again with perception off, where the bundle reads it.
Batches: `ask_many` against one question at a time.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

QUESTION = "Describe this clip."


def make_clip(path: Path, seconds: float = 10.0, fps: int = 30, width: int = 1280, height: int = 720) -> Path:
    """A 720p H.264/AAC clip: a square crossing a gradient, and a tone that beeps."""
    import av

    n = int(seconds * fps)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 90)], -1).astype(np.uint8)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = out.add_stream("aac", rate=16000, layout="mono")
        for i in range(n):
            img = base.copy()
            x = int(i * (width - 160) / (n - 1))
            img[height // 2 - 80: height // 2 + 80, x: x + 160] = (220, 40, 40)
            for packet in video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        t = np.arange(int(seconds * 16000)) / 16000
        wave = (0.3 * np.sin(2 * np.pi * 660 * t) * ((t % 2) < 0.3)).astype(np.float32)
        for start in range(0, len(wave), 1024):
            frame = av.AudioFrame.from_ndarray(wave[None, start:start + 1024], format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in audio.encode(frame):
                out.mux(packet)
        for packet in audio.encode():
            out.mux(packet)
    return path


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def decode_rate(model, embeds, ids, n: int, how: str) -> float:
    """Tokens/s after the first token, for exactly n new tokens (no stop token)."""
    if how == "transformers":
        from transformers import StoppingCriteria, StoppingCriteriaList

        first: list[float] = []

        class Clock(StoppingCriteria):  # called once per new token
            def __call__(self, input_ids, scores, **kwargs):
                if not first:
                    first.append(time.perf_counter())
                return False

        model.llm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                           max_new_tokens=n, min_new_tokens=n, do_sample=False, temperature=None, top_p=None,
                           top_k=None, pad_token_id=model.tokenizer.pad_token_id,
                           stopping_criteria=StoppingCriteriaList([Clock()]))
        return (n - 1) / (time.perf_counter() - first[0])
    model.decoding = how.split(",")[0]
    dec = fp16_decoder(model) if "fp16" in how else model.decoder()
    lookahead, dec.lookahead = dec.lookahead, 0 if "no lookahead" in how else dec.lookahead
    cache = dec.new_cache(capacity=len(ids) + n)
    stream = dec.stream(dec.prefill(ids, embeds, cache), cache, [], n)
    next(stream)
    t0 = time.perf_counter()
    count = sum(1 for _ in stream)
    dec.lookahead = lookahead
    return count / (time.perf_counter() - t0)


def fp16_decoder(model, built={}):
    """Fast mode with fbgemm's fp16 weights in place of int8, built once, to time against the default."""
    from vqa.decoder import Decoder

    if id(model) not in built:
        built[id(model)] = Decoder(model.llm, "fast", weights="fp16")
    return built[id(model)]


def answer_rates(qa, dec, repeats: int) -> list[tuple[str, str, str]]:
    """Tokens/s after the first token of whole answers (to their stop token) about the page's example
    clips, fast mode with and without lookahead; the replies must be the same."""
    from vqa.api import PrefixPool
    from vqa.spoken.examples import spoken_examples

    pairs = [(path, q) for path, _ in spoken_examples() for q in ("What does the speaker say?", "Describe this clip.")]
    best, replies = {}, {}
    for _ in range(repeats):
        for lookahead in (dec.lookahead, 0):
            saved, dec.lookahead = dec.lookahead, lookahead
            tokens, seconds, texts = 0, 0.0, []
            for path, question in pairs:
                qa.prefixes = PrefixPool(qa.prefixes.max_bytes)
                stream = qa.stream(path, question, max_new_tokens=96)
                pieces = [next(stream)]
                t0 = time.perf_counter()
                pieces += list(stream)
                seconds += time.perf_counter() - t0
                texts.append("".join(pieces))
                tokens += len(qa.model.tokenizer("".join(pieces), add_special_tokens=False)["input_ids"]) - 1
            dec.lookahead = saved
            best[lookahead] = max(best.get(lookahead, 0.0), tokens / seconds)
            replies[lookahead] = texts
    same = "same replies" if replies[dec.lookahead] == replies[0] else "REPLIES DIFFER"
    return [(f"tokens/s answering the page's {len(pairs)} example questions, fast mode", f"{best[dec.lookahead]:.1f}",
             f"{best[dec.lookahead] / best[0]:.2f}x without lookahead ({same})"),
            ("tokens/s answering them, fast mode without lookahead", f"{best[0]:.1f}", "")]


def prompt_rows(dec, ids: list[int], embeds, repeats: int, tail: int = 20) -> list[tuple[str, str, str]]:
    """A prompt less its last `tail` tokens, then those tokens (as a follow-up's), through the widened
    GEMMs and through the int8 kernel, interleaved, best of `repeats`."""
    import vqa.decoder as decoder

    ways = (True, False) if decoder.WIDEN else (False,)
    best = {w: [float("inf")] * 2 for w in ways}
    for _ in range(repeats):
        for widen in ways:
            saved, decoder.WIDEN = decoder.WIDEN, widen
            cache = dec.new_cache(capacity=len(ids) + 8)
            for k, (n_ids, n_embeds) in enumerate(((ids[:-tail], embeds[:, :-tail]), (ids, embeds))):
                t = time.perf_counter()
                dec.prefill(n_ids, n_embeds, cache)
                best[widen][k] = min(best[widen][k], time.perf_counter() - t)
            decoder.WIDEN = saved
    rows = []
    for k, what in enumerate((f"prompt of {len(ids) - tail} tokens", f"{tail} more tokens (a follow-up)")):
        kernel = best[False][k]
        if True in best:
            rows.append((f"{what}, fast mode (widened GEMMs)", f"{best[True][k] * 1e3:.0f} ms",
                         f"{kernel / best[True][k]:.2f}x the int8 kernel"))
        rows.append((f"{what}, the int8 kernel", f"{kernel * 1e3:.0f} ms", ""))
    return rows


def first_piece(stream) -> float:
    t0 = time.perf_counter()
    next(iter(stream))
    elapsed = time.perf_counter() - t0
    stream.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", default=None, help="bundle folder (default: adapters/real)")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per generation timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--questions", type=int, default=16, help="pairs for ask_many against one at a time")
    args = parser.parse_args()

    from vqa.api import PrefixPool, VideoQA, _messages
    from vqa.features import clip_features
    from vqa.media import load_views
    from vqa.perception import SIGHT_FRAMES, sight, speech

    rows = []
    t0 = time.perf_counter()
    qa = VideoQA.from_pretrained(args.adapter)
    rows.append(("load the bundle (LLM, weights, fast decoder)", f"{time.perf_counter() - t0:.2f} s", ""))
    rss_loaded = rss_mb()
    model = qa.model
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "clip720p.mp4")
        prepared = qa.prepare(clip)

        # ---- generation ----
        # the prompt the API builds (with the perception text where the bundle reads it)
        prompt = model.encode_prompt(_messages([], QUESTION, qa._context(prepared)))
        ids = prompt.input_ids.tolist()
        with torch.no_grad():
            embeds = model.embed(prompt.input_ids[None], prompt.video_mask[None], prepared.tokens[None])
        hows = ("fast", "fast, no lookahead", "fast, fp16 weights", "exact", "transformers")
        best = {h: 0.0 for h in hows}
        for how in ("fast", "exact"):  # build every decoder before timing
            model.decoding = how
            model.decoder()
        fp16_decoder(model)
        for _ in range(args.repeats):
            for how in hows:
                best[how] = max(best[how], decode_rate(model, embeds, ids, args.tokens, how))
        for how in hows:
            ratio = f"{best[how] / best['transformers']:.2f}x generate"
            rows.append((f"tokens/s, {how}" + (" (generate, fp32)" if how == "transformers" else " mode"),
                         f"{best[how]:.1f}", ratio if how != "transformers" else ""))
        model.decoding = "fast"
        dec = model.decoder()
        rows += answer_rates(qa, dec, args.repeats)
        rows += prompt_rows(dec, ids, embeds, args.repeats)

        # ---- clip-ready and first tokens ----
        media = model.config.media
        ready, dec_s, feat_s, enc_s, first_new, first_follow, warm_s, first_warm = ([] for _ in range(8))
        ready_blind, first_blind = [], []  # perception off: the clip tokens alone
        views = [(media.num_frames, media.size)] + ([(SIGHT_FRAMES, sight.SIZE)] if qa.perception else [])
        for _ in range(args.repeats):
            qa._cache.clear()
            qa.prefixes = PrefixPool(qa.prefixes.max_bytes)
            speech.forget()  # each time a new clip: Whisper keeps its last encoder output
            t = time.perf_counter()
            qa.prepare(clip)
            ready.append(time.perf_counter() - t)
            t = time.perf_counter()
            c = load_views(clip, views)[0]
            dec_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            frames, mel = clip_features(c, media, mel_frames=model.config.encoder.audio_frames)
            feat_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            with torch.no_grad():
                model.get_video_features(frames[None], mel[None])
            enc_s.append(time.perf_counter() - t)
            qa._cache.clear()
            speech.forget()
            first_new.append(first_piece(qa.stream(clip, QUESTION, max_new_tokens=32)))
            chat = qa.chat(clip)
            chat.ask(QUESTION, max_new_tokens=32)
            first_follow.append(first_piece(chat.stream("And what is heard?", max_new_tokens=32)))
            qa._cache.clear()  # as the page and `vqa chat` do: prepare, warm, then the user's first question
            qa.prefixes = PrefixPool(qa.prefixes.max_bytes)
            speech.forget()
            prepared = qa.prepare(clip)
            t = time.perf_counter()
            qa.warm(prepared)
            warm_s.append(time.perf_counter() - t)
            first_warm.append(first_piece(qa.stream(prepared, QUESTION, max_new_tokens=32)))
            if qa.perception:
                qa.perception = False
                qa._cache.clear()
                qa.prefixes = PrefixPool(qa.prefixes.max_bytes)
                t = time.perf_counter()
                qa.prepare(clip)
                ready_blind.append(time.perf_counter() - t)
                qa._cache.clear()
                first_blind.append(first_piece(qa.stream(clip, QUESTION, max_new_tokens=32)))
                qa.perception = True
        rows += [
            ("clip ready, 10 s 720p (prepare)", f"{min(ready) * 1e3:.0f} ms", ""),
            ("  decode (load_views: the model's frames, sight's, the audio)" if qa.perception
             else "  decode (load_clip)", f"{min(dec_s) * 1e3:.0f} ms", ""),
            ("  features (frames, log-mel)", f"{min(feat_s) * 1e3:.0f} ms", ""),
            ("  encoder + projector", f"{min(enc_s) * 1e3:.0f} ms", ""),
            ("first token, new 10 s 720p clip", f"{min(first_new) * 1e3:.0f} ms", ""),
            ("first token, follow-up question", f"{min(first_follow) * 1e3:.0f} ms", ""),
            ("prefix warmed after clip ready (`VideoQA.warm`)", f"{min(warm_s) * 1e3:.0f} ms", ""),
            ("first token, first question on a warmed clip", f"{min(first_warm) * 1e3:.0f} ms", ""),
        ]
        if ready_blind:
            rows += [("perception off: clip ready, 10 s 720p", f"{min(ready_blind) * 1e3:.0f} ms", ""),
                     ("perception off: first token, new 10 s 720p clip", f"{min(first_blind) * 1e3:.0f} ms", "")]

        # ---- batches ----
        questions = ["What color is the object that beeps?", "How many objects are there?", "Is there a sound?",
                     "What shape is the red object?"]
        others = [make_clip(Path(tmp) / f"small{i}.mp4", seconds=3.0 + 0.5 * i, width=320, height=240) for i in range(3)]
        for name, clips in (("one clip", [clip]), ("4 clips", [clip] + others)):
            pairs = [(clips[i % len(clips)], questions[i // len(clips) % len(questions)]) for i in range(args.questions)]
            qa.ask_many(pairs[:2], batch_size=2, max_new_tokens=8)  # every clip prepared and cached first
            for video, q in pairs:
                qa.ask(video, q, max_new_tokens=8)
            qa.prefixes = PrefixPool(qa.prefixes.max_bytes)  # both start from encoded clips and no cached prompt
            t = time.perf_counter()
            for video, q in pairs:
                qa.ask(video, q, max_new_tokens=8)
            one = len(pairs) / (time.perf_counter() - t)
            qa.prefixes = PrefixPool(qa.prefixes.max_bytes)
            t = time.perf_counter()
            qa.ask_many(pairs, batch_size=args.questions, max_new_tokens=8)
            many = len(pairs) / (time.perf_counter() - t)
            rows += [(f"questions/s about {name}, one at a time (8 new tokens)", f"{one:.2f}", ""),
                     (f"questions/s about {name}, ask_many (batch {args.questions})", f"{many:.2f}", f"{many / one:.2f}x")]

    rows += [("RSS after loading (fast decoder built)", f"{rss_loaded:.0f} MB", ""),
             ("peak RSS (both decoders built, caches)", f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB",
              "")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.tokens} new tokens per timing, "
          f"best of {args.repeats}\n")
    print("| measure | value | ratio |\n| --- | --- | --- |")
    for name, value, ratio in rows:
        print(f"| {name} | {value} | {ratio} |")


if __name__ == "__main__":
    main()
