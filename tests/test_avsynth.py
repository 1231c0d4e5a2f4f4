"""AVSynth against its contract (avsynth-spec.md): scene rules from the metadata, questions and balance,
determinism across worker counts, and the decoded MP4s themselves (pixels and sound)."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from vqa.cli import main as vqa_main
from vqa.avsynth import scene as S
from vqa.avsynth.generate import generate
from vqa.avsynth.questions import (
    CHANCE, FAMILIES, FAMILY_GROUP, NUMBER_WORDS, VOCABULARY, answer_distribution, balance_problems, build_qa, questions_for,
    score_reply,
)
from vqa.avsynth.render import render_audio, render_frames

SEED = 5
NUM_RENDERED = 18
NUM_PLANNED = 600
SPEC_COLORS = {
    "red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 230),
    "yellow": (230, 210, 40), "white": (235, 235, 235), "purple": (160, 60, 200),
}
SPEC_SIZES = {"small": 18, "large": 30}
META_KEYS = ["id", "video", "duration", "fps", "size", "sample_rate", "pitch", "objects"]
OBJECT_KEYS = ["color", "shape", "size", "motion", "start", "end", "pulses", "beeps"]
# family: (group, canonical question, answers), as in the spec's table
SPEC_FAMILIES = {
    "count_objects": ("visual", "How many objects are there?", {"one", "two", "three"}),
    "shape_of": ("visual", "What shape is the {color} object?", {"circle", "square", "triangle"}),
    "color_of": ("visual", "What color is the {shape}?", set(SPEC_COLORS)),
    "motion_of": ("visual", "Which way does the {color} object move?", {"left", "right", "up", "down", "none"}),
    "beep_exists": ("audio", "Is there a beep?", {"yes", "no"}),
    "count_beeps": ("audio", "How many beeps are there?", {"zero", "one", "two", "three"}),
    "pitch": ("audio", "Is the beep high or low?", {"high", "low"}),
    "source_color": ("audio-visual", "What color is the object that beeps?", set(SPEC_COLORS)),
    "source_shape": ("audio-visual", "What shape is the object that beeps?", {"circle", "square", "triangle"}),
    "source_motion": ("audio-visual", "Which way does the object that beeps move?",
                      {"left", "right", "up", "down", "none"}),
    "beeps_of": ("audio-visual", "How many times does the {color} object beep?", {"zero", "one", "two", "three"}),
}
NUMBERS = ["zero", "one", "two", "three"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("avs") / "two-workers"
    generate(out, NUM_RENDERED, SEED, workers=2, progress=False)
    return out


@pytest.fixture(scope="module")
def split_one_worker(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("avs") / "one-worker"
    generate(out, NUM_RENDERED, SEED, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def planned() -> list[dict]:
    """Metadata of a test-sized split, without rendering."""
    return [S.clip_meta(SEED, i) for i in range(NUM_PLANNED)]


# ---- metadata format


def test_meta_records_follow_the_spec(split):
    metas = read_jsonl(split / "meta.jsonl")
    assert len(metas) == NUM_RENDERED
    for i, m in enumerate(metas):
        assert list(m) == META_KEYS
        assert m["id"] == f"avs-{i:06d}" and m["video"] == f"clips/avs-{i:06d}.mp4"
        assert (m["duration"], m["fps"], m["size"], m["sample_rate"]) == (3.0, 24, 128, 16000)
        assert (split / m["video"]).is_file()
        for o in m["objects"]:
            assert list(o) == OBJECT_KEYS
            assert isinstance(o["beeps"], bool)
            assert all(isinstance(v, float) for v in o["start"] + o["end"])


# ---- scene rules, checked independently of the sampler's own checks


def boxes(obj: dict, t: np.ndarray, pulsed_at_frames: bool) -> tuple[np.ndarray, np.ndarray]:
    """Centres (n, 2) and half widths (n,) at times t."""
    start, end = np.array(obj["start"]), np.array(obj["end"])
    centres = start + (end - start) * t[:, None] / 3.0
    half = np.full(len(t), SPEC_SIZES[obj["size"]] / 2)
    if pulsed_at_frames:
        on = np.zeros(len(t), bool)
        for a, b in obj["pulses"]:
            on |= (t >= a - 1e-9) & (t < b - 1e-9)
        half[on] *= 1.4
    return centres, half


FINE = np.linspace(0, 3.0, 1201)  # every 2.5 ms, between frames too
FRAMES = np.arange(72) / 24


@pytest.mark.parametrize("times, pulsed", [(FINE, False), (FRAMES, True)], ids=["continuous", "frames-pulsed"])
def test_objects_stay_inside_and_apart(planned, times, pulsed):
    for m in planned:
        placed = [boxes(o, times, pulsed) for o in m["objects"]]
        for c, h in placed:
            assert np.all(c - h[:, None] >= 0) and np.all(c + h[:, None] <= 128), m["id"]
        for i in range(len(placed)):
            for j in range(i + 1, len(placed)):
                (ci, hi), (cj, hj) = placed[i], placed[j]
                apart = np.any(np.abs(ci - cj) >= (hi + hj)[:, None], axis=1)
                assert apart.all(), f"{m['id']}: objects {i} and {j} overlap"


def test_objects_attributes_and_motion(planned):
    for m in planned:
        objs = m["objects"]
        assert 1 <= len(objs) <= 3
        assert len({o["color"] for o in objs}) == len(objs), "colours must be distinct within a clip"
        for o in objs:
            assert o["color"] in SPEC_COLORS and o["shape"] in {"circle", "square", "triangle"}
            assert o["size"] in SPEC_SIZES
            dx, dy = np.subtract(o["end"], o["start"])
            expected = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}[o["motion"]]
            travel = abs(dx) + abs(dy)
            if o["motion"] == "still":
                assert travel == 0
            else:
                assert 40 <= travel <= 60, (m["id"], o)
                assert (np.sign(dx), np.sign(dy)) == expected


def test_attributes_are_drawn_uniformly(planned):
    objs = [o for m in planned for o in m["objects"]]
    for key, values in [("color", SPEC_COLORS), ("shape", ("circle", "square", "triangle")),
                        ("size", SPEC_SIZES), ("motion", ("left", "right", "up", "down", "still"))]:
        counts = Counter(o[key] for o in objs)
        expected = len(objs) / len(values)
        assert set(counts) == set(values)
        # about 4 standard deviations: fails for a biased sampler, not for chance
        assert all(abs(counts[v] - expected) < 4 * np.sqrt(expected) for v in values), (key, counts)
    num = Counter(len(m["objects"]) for m in planned)
    assert all(abs(num[k] - NUM_PLANNED / 3) < 4 * np.sqrt(NUM_PLANNED / 3) for k in (1, 2, 3)), num


def test_pulse_timing(planned):
    for m in planned:
        all_pulses = sorted(p for o in m["objects"] for p in o["pulses"])
        for a, b in all_pulses:
            assert 0.1 - 1e-9 <= a <= 2.6 + 1e-9
            assert b - a == pytest.approx(0.30)
            assert round(a * 100) == pytest.approx(a * 100, abs=1e-6), "times on a 0.01 s grid"
        for (_, end), (start, _) in zip(all_pulses, all_pulses[1:]):
            assert start - end >= 0.15 - 1e-9, (m["id"], all_pulses)


def test_beeps_pitch_and_pulse_counts(planned):
    beeping = 0
    sounding_counts, pitches = Counter(), Counter()
    for m in planned:
        sounding = [o for o in m["objects"] if o["beeps"]]
        assert len(sounding) <= 1
        assert (m["pitch"] is None) == (not sounding)
        for o in m["objects"]:
            allowed = (1, 2, 3) if o["beeps"] else (0, 1, 2)
            assert len(o["pulses"]) in allowed
        if sounding:
            beeping += 1
            sounding_counts[len(sounding[0]["pulses"])] += 1
            pitches[m["pitch"]] += 1
    assert beeping == NUM_PLANNED * 2 // 3, "two clips in three beep"
    assert set(pitches) == {"high", "low"} and abs(pitches["high"] - beeping / 2) < 4 * np.sqrt(beeping / 4)
    assert all(abs(sounding_counts[k] - beeping / 3) < 4 * np.sqrt(beeping / 3) for k in (1, 2, 3)), sounding_counts


@pytest.mark.parametrize("beeps", [True, False])
def test_sample_scene_forced_beeps(beeps):
    rng = np.random.default_rng(0)
    for _ in range(50):
        scene = S.sample_scene(rng, beeps=beeps)
        assert sum(o["beeps"] for o in scene["objects"]) == int(beeps)
        assert (scene["pitch"] in ("high", "low")) == beeps


def test_sample_scene_beep_fraction():
    rng = np.random.default_rng(1)
    n = 900
    beeping = sum(S.sample_scene(rng)["pitch"] is not None for _ in range(n))
    assert abs(beeping - n * 2 / 3) < 4 * np.sqrt(n * 2 / 9)


# ---- questions


def test_families_match_the_spec_table():
    assert set(FAMILIES) == set(SPEC_FAMILIES)
    assert VOCABULARY == tuple("zero one two three yes no circle square triangle red green blue yellow "
                               "white purple left right up down none high low".split())
    for name, (group, canonical, answers) in SPEC_FAMILIES.items():
        fam = FAMILIES[name]
        assert FAMILY_GROUP[name] == group
        assert fam.canonical == canonical
        assert set(fam.answers) == answers and set(fam.answers) <= set(VOCABULARY)
        assert CHANCE[name] == pytest.approx(1 / len(answers))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_phrasings_vary_in_wording_and_order(name):
    phrasings = FAMILIES[name].phrasings
    assert len(set(phrasings)) >= 5
    slots = set(re.findall(r"{(\w+)}", phrasings[0]))
    assert all(set(re.findall(r"{(\w+)}", p)) == slots for p in phrasings), "every phrasing fills the same slots"
    assert len({p.split()[0].lower() for p in phrasings}) >= 4, "phrasings must not all start alike"
    words = [set(re.findall(r"[a-z]+", p.lower())) for p in phrasings]
    assert all(words[i] != words[j] for i in range(len(words)) for j in range(i + 1, len(words)))


def answer_from_meta(meta: dict, family: str, question: str) -> str:
    """The true answer, worked out from the metadata and the object the question names."""
    objs = meta["objects"]
    source = next((o for o in objs if o["beeps"]), None)
    named = [o for o in objs if re.search(rf"\b{o['color']}\b", question)]
    motion = {"still": "none"}
    if family == "count_objects":
        return NUMBERS[len(objs)]
    if family == "beep_exists":
        return "yes" if source else "no"
    if family == "count_beeps":
        return NUMBERS[len(source["pulses"]) if source else 0]
    if family == "pitch":
        return meta["pitch"]
    if family == "source_color":
        return source["color"]
    if family == "source_shape":
        return source["shape"]
    if family == "source_motion":
        return motion.get(source["motion"], source["motion"])
    if family == "color_of":
        (obj,) = [o for o in objs if re.search(rf"\b{o['shape']}\b", question)]
        return obj["color"]
    (obj,) = named
    if family == "shape_of":
        return obj["shape"]
    if family == "motion_of":
        return motion.get(obj["motion"], obj["motion"])
    if family == "beeps_of":
        return NUMBERS[len(obj["pulses"]) if obj["beeps"] else 0]
    raise AssertionError(family)


def test_questions_are_complete_and_correct(planned):
    records = build_qa(planned, SEED)
    by_clip = {}
    for r in records:
        by_clip.setdefault(r["clip"], []).append(r)
    for m in planned:
        shapes = Counter(o["shape"] for o in m["objects"])
        expected = {"count_objects", "shape_of", "motion_of", "beep_exists", "count_beeps", "beeps_of"}
        if 1 in shapes.values():
            expected.add("color_of")
        if m["pitch"] is not None:
            expected |= {"pitch", "source_color", "source_shape", "source_motion"}
        got = by_clip[m["id"]]
        assert [r["family"] for r in got] == [f for f in FAMILIES if f in expected], m["id"]
        for r in got:
            human, gpt = r["conversations"]
            assert human["from"] == "human" and human["value"].startswith("<video>\n")
            assert gpt == {"from": "gpt", "value": r["answer"]}
            assert r["id"] == f"{m['id']}-{r['family']}" and r["video"] == m["video"]
            assert r["group"] == FAMILY_GROUP[r["family"]]
            assert r["answer"] == answer_from_meta(m, r["family"], human["value"]), r


def test_answers_are_balanced(planned):
    dist = answer_distribution(build_qa(planned, SEED))
    assert balance_problems(dist) == []
    for name, counts in dist.items():
        total = sum(counts.values())
        assert max(counts.values()) / total <= 1 / len(FAMILIES[name].answers) + 0.20, (name, counts)
    # beeps_of names a sounding object often, a silently pulsing one sometimes
    assert 0.34 < dist["beeps_of"]["zero"] / sum(dist["beeps_of"].values()) < 0.45


def test_balance_problems_reports_a_skewed_family():
    dist = {name: Counter({a: 1 for a in fam.answers}) for name, fam in FAMILIES.items()}
    dist["pitch"] = Counter({"high": 8, "low": 2})
    problems = balance_problems(dist)
    assert len(problems) == 1 and problems[0].startswith("pitch") and "80.0%" in problems[0]


def test_questions_for_uses_varied_and_canonical_phrasings(planned):
    rng = np.random.default_rng(0)
    seen = {name: set() for name in FAMILIES}
    for m in planned[:200]:
        canon = questions_for(m, rng, canonical=True)
        for q in canon:
            template = FAMILIES[q["family"]].canonical
            pattern = re.escape(template).replace(r"\{color\}", r"\w+").replace(r"\{shape\}", r"\w+")
            assert re.fullmatch(pattern, q["question"])
        for q in questions_for(m, rng):
            seen[q["family"]].add(re.sub(r"\b(" + "|".join(VOCABULARY) + r")\b", "_", q["question"]))
    assert all(len(s) >= 5 for s in seen.values()), {k: len(v) for k, v in seen.items()}


@pytest.mark.parametrize("reply, word", [
    ("Two.", "two"),
    ("2", "two"),
    ("It is RED", "red"),
    ("none of them", "none"),
    ("No, it is red.", "no"),
    ("I heard 3 beeps", "three"),
    ("0", "zero"),
    ("The object moves up-left", "up"),
    ("it's high!", "high"),
    ("Someone noted nothing", None),
    ("10 objects", None),
    ("", None),
    ("PURPLE", "purple"),
])
def test_score_reply(reply, word):
    assert score_reply(reply) == word


# ---- determinism


def test_same_split_for_any_worker_count(split, split_one_worker):
    for name in ("meta.jsonl", "qa.jsonl"):
        assert (split / name).read_bytes() == (split_one_worker / name).read_bytes(), name
    for i in (0, NUM_RENDERED - 1):
        clip = f"clips/avs-{i:06d}.mp4"
        assert (split / clip).read_bytes() == (split_one_worker / clip).read_bytes(), clip


def test_rendered_split_matches_planned_metadata(split, planned):
    metas = read_jsonl(split / "meta.jsonl")
    assert metas == planned[:NUM_RENDERED], "a prefix of a split is the smaller split"
    assert read_jsonl(split / "qa.jsonl") == build_qa(metas, SEED)


def test_other_seed_other_split(planned):
    other = [S.clip_meta(SEED + 1, i) for i in range(20)]
    assert other != planned[:20]


# ---- the MP4 files themselves


def decode(path: Path) -> tuple[list[np.ndarray], np.ndarray, dict]:
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        info = {
            "video_codec": v.codec_context.name, "pix_fmt": v.codec_context.pix_fmt,
            "width": v.codec_context.width, "height": v.codec_context.height, "fps": float(v.average_rate),
            "audio_codec": a.codec_context.name, "rate": a.codec_context.sample_rate,
            "channels": len(a.codec_context.layout.channels),
            "duration": c.duration / 1e6,
        }
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        samples = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)
    return frames, samples, info


@pytest.fixture(scope="module")
def decoded(split) -> dict[str, tuple]:
    metas = read_jsonl(split / "meta.jsonl")
    return {m["id"]: (m, *decode(split / m["video"])) for m in metas[:8]}


def test_mp4_streams(decoded):
    for m, frames, samples, info in decoded.values():
        assert info == {**info, "video_codec": "h264", "pix_fmt": "yuv420p", "width": 128, "height": 128,
                        "fps": 24.0, "audio_codec": "aac", "rate": 16000, "channels": 1}
        assert info["duration"] == pytest.approx(3.0, abs=0.05)
        assert len(frames) == 72 and frames[0].shape == (128, 128, 3)
        assert samples.shape[0] == 1 and 48000 <= samples.shape[1] <= 48000 + 1024


def nearest_color(pixel: np.ndarray) -> str:
    palette = {**SPEC_COLORS, "background": (32, 32, 32)}
    return min(palette, key=lambda k: np.abs(np.subtract(palette[k], pixel, dtype=float)).sum())


def test_objects_are_where_the_metadata_says(decoded):
    checked = 0
    for m, frames, _, _ in decoded.values():
        for o in m["objects"]:
            for index in (0, 71):
                cx, cy = np.array(o["start"]) + (np.subtract(o["end"], o["start"])) * (index / 24) / 3.0
                x, y = int(cx), int(cy)
                patch = frames[index][y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).mean(0)
                assert nearest_color(patch) == o["color"], (m["id"], o, index, patch)
                assert np.abs(patch - SPEC_COLORS[o["color"]]).max() < 30, (m["id"], o, patch)
                checked += 1
    assert checked >= 8


def colored_pixels(frame: np.ndarray, obj: dict, t: float) -> int:
    """Pixels near the object's colour within a window around its centre at time t."""
    cx, cy = np.array(obj["start"]) + np.subtract(obj["end"], obj["start"]) * t / 3.0
    r = int(SPEC_SIZES[obj["size"]] * 0.7) + 3
    win = frame[max(int(cy) - r, 0):int(cy) + r, max(int(cx) - r, 0):int(cx) + r].astype(float)
    return int((np.abs(win - SPEC_COLORS[obj["color"]]).sum(-1) < 60).sum())


def test_pulses_are_seen(decoded):
    checked = 0
    for m, frames, _, _ in decoded.values():
        for o in m["objects"]:
            if not o["pulses"]:
                continue
            a, b = o["pulses"][0]
            on = int(np.ceil((a + b) / 2 * 24))  # a frame inside the pulse
            busy = [(p0, p1) for q in m["objects"] for p0, p1 in q["pulses"]]
            off = next(i for i in range(72) if all(not (p0 - 0.05 <= i / 24 < p1 + 0.05) for p0, p1 in busy))
            n_on, n_off = colored_pixels(frames[on], o, on / 24), colored_pixels(frames[off], o, off / 24)
            # area grows by 1.4^2 = 1.96
            assert 1.6 < n_on / n_off < 2.3, (m["id"], o, n_on, n_off)
            checked += 1
    assert checked >= 3


def tone(samples: np.ndarray, freq: float, a: float, b: float, sr: int = 16000) -> float:
    """Amplitude of a sine at `freq` in [a, b) s."""
    x = samples[int(a * sr):int(b * sr)]
    t = np.arange(len(x)) / sr
    return float(2 * np.abs(np.dot(x, np.exp(-2j * np.pi * freq * t))) / len(x))


def test_decoded_sound_is_the_synthesised_track(decoded):
    """AAC's priming samples are trimmed on decoding: the track lines up with what was synthesised, to the sample."""
    for m, _, samples, _ in decoded.values():
        index = int(m["id"].split("-")[1])
        rng = S.clip_rng(SEED, index, S.RENDER)
        render_frames(m, rng)  # the frames draw from the same generator first
        ref = render_audio(m, rng)
        x = samples[0, :48000]
        lags = range(-64, 65)
        best = max(lags, key=lambda lag: float(np.dot(np.roll(ref, lag), x)))
        assert best == 0, (m["id"], best)
        assert np.abs(x - ref).max() < 0.1


def test_beeps_are_heard_at_the_pulses(decoded):
    beeping = [v for v in decoded.values() if v[0]["pitch"] is not None]
    silent = [v for v in decoded.values() if v[0]["pitch"] is None]
    assert beeping and silent
    for m, _, samples, _ in beeping:
        x = samples[0]
        freq, other = (1320.0, 330.0) if m["pitch"] == "high" else (330.0, 1320.0)
        pulses = next(o for o in m["objects"] if o["beeps"])["pulses"]
        for a, b in pulses:
            assert tone(x, freq, a + 0.02, b - 0.02) > 0.4, (m["id"], a, b)
            assert tone(x, other, a + 0.02, b - 0.02) < 0.05
            # silent until the pulse starts, full soon after: nothing is shifted
            assert tone(x, freq, a - 0.02, a - 0.002) < 0.05 and tone(x, freq, a + 0.005, a + 0.03) > 0.4, (m["id"], a)
        quiet = [(s, s + 0.1) for s in np.arange(0.0, 2.9, 0.05)
                 if all(s + 0.1 <= a - 0.01 or s >= b + 0.01 for a, b in pulses)]
        assert quiet and all(tone(x, freq, s, e) < 0.05 for s, e in quiet)
    for m, _, samples, _ in silent:
        x = samples[0, :48000]
        assert np.abs(x).max() < 0.1, "only noise of amplitude 0.02"
        assert 0.005 < x.std() < 0.02
        assert all(tone(x, f, s, s + 0.3) < 0.05 for f in (330.0, 1320.0) for s in np.arange(0, 2.7, 0.3))


# ---- renderer units


@pytest.mark.parametrize("shape, size, pulsed, width", [
    ("square", "small", False, 18), ("square", "large", False, 30), ("circle", "small", False, 18),
    ("triangle", "large", False, 30), ("square", "small", True, 26), ("circle", "large", True, 42),
])
def test_drawn_size(shape, size, pulsed, width):
    pulses = [[0.0, 3.0]] if pulsed else []
    meta = {"duration": 3.0, "fps": 24, "size": 128, "sample_rate": 16000, "pitch": None, "objects": [
        {"color": "white", "shape": shape, "size": size, "motion": "still", "start": [64.0, 64.0],
         "end": [64.0, 64.0], "pulses": pulses, "beeps": False}]}
    frame = render_frames(meta, np.random.default_rng(0))[0]
    ys, xs = np.nonzero((frame == SPEC_COLORS["white"]).all(-1))
    assert xs.max() - xs.min() + 1 == width
    if shape == "triangle":  # apex up: the apex row holds no pixel centre, the bottom row is full
        assert ys.max() - ys.min() + 1 == width - 1
        assert (ys == ys.min()).sum() <= 2 and (ys == ys.max()).sum() >= width - 1
    else:
        assert ys.max() - ys.min() + 1 == width


def test_render_audio_levels():
    meta = {"duration": 3.0, "sample_rate": 16000, "pitch": "low", "objects": [
        {"pulses": [[1.0, 1.3]], "beeps": True}]}
    x = render_audio(meta, np.random.default_rng(0))
    assert x.shape == (48000,) and x.dtype == np.float32
    assert np.abs(x[:16000]).max() <= 0.02
    assert 0.5 < np.abs(x[16000:20800]).max() <= 0.52
    assert abs(x[16000]) <= 0.02 and abs(x[20799]) <= 0.03, "raised-cosine ramps start and end near zero"


# ---- command line


def test_cli_writes_a_split(tmp_path, capsys):
    out = tmp_path / "cli"
    assert vqa_main(["synth", "--out", str(out), "--clips", "3", "--seed", "9", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 3 clips" in printed and all(name in printed for name in FAMILIES)
    assert len(read_jsonl(out / "meta.jsonl")) == 3 and len(list((out / "clips").glob("*.mp4"))) == 3


@pytest.mark.parametrize("clips, seed, workers, message", [
    (0, 1, 1, "--clips must be at least 1, got 0"),
    (2, -1, 1, "--seed must be a non-negative integer, got -1"),
    (2, 1, -2, "--workers must be at least 1, got -2"),
])
def test_generate_rejects_bad_arguments(tmp_path, clips, seed, workers, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        generate(tmp_path, clips, seed, workers=workers, progress=False)


# ---- descriptions


def test_description_states_every_fact_the_caption_holds(planned):
    from vqa.avsynth.describe import describe, facts

    texts = [describe(m) for m in planned]
    assert len(set(texts)) > len(planned) // 2  # clips differ, so do their descriptions
    order = list(S.COLORS)
    for meta, text in zip(planned, texts):
        objects = sorted(meta["objects"], key=lambda o: order.index(o["color"]))  # the caption's order
        n = len(objects)
        assert text.startswith("There is one object: " if n == 1 else f"There are {NUMBER_WORDS[n]} objects: ")
        source = S.sounding_object(meta)
        times = {1: "once", 2: "twice", 3: "three times"}
        assert facts(text) == {
            "count": NUMBER_WORDS[n],
            "objects": [(o["color"], o["shape"], "staying still" if o["motion"] == "still" else f"moving {o['motion']}")
                        for o in objects],
            "sound": "none" if source is None else
            (source["color"], source["shape"], times[len(source["pulses"])], meta["pitch"]),
        }, text
        assert text.endswith(" Nothing beeps.") == (source is None)
    assert facts("I see a dog.") == {"count": None, "objects": [], "sound": None}
