"""vqa.avsynth.score: AVSynth's family table (means over families), and the committed default adapter on
freshly generated clips: the benchmark, its language, its descriptions; the ablation table script."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vqa.avsynth.score import format_table, summarize
from vqa.evaluate import evaluate

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ADAPTER = ROOT / "adapters" / "avsynth"


def rec(family: str, answer: str) -> dict:
    return {"family": family, "answer": answer}


def test_overall_is_the_mean_over_families_not_questions():
    records = [rec("beep_exists", "yes")] * 3 + [rec("pitch", "high")] + [rec("count_objects", "two")] * 2
    replies = ["Yes.", "no", "yes!", "It is low", "2", "There are two objects."]
    result = summarize(records, replies)
    fam = result["families"]
    assert fam["beep_exists"]["accuracy"] == pytest.approx(2 / 3)
    assert fam["pitch"]["accuracy"] == 0.0
    assert fam["count_objects"]["accuracy"] == 1.0  # "2" scores as "two"
    assert result["groups"]["audio"]["accuracy"] == pytest.approx((2 / 3 + 0) / 2)
    assert result["groups"]["visual"]["chance"] == pytest.approx(1 / 3)
    assert result["overall"]["accuracy"] == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert result["overall"]["n"] == 6


def test_table_has_a_row_per_family_group_and_overall_with_blind_and_chance():
    records = [rec("beep_exists", "yes"), rec("source_color", "red")]
    result = summarize(records, ["yes", "red"])
    blind = summarize(records, ["no", "red"])
    table = format_table(result, blind)
    lines = table.splitlines()
    assert lines[0] == "| family | group | n | accuracy | blind | chance |"
    assert "| beep_exists | audio | 1 | 100.0 | 0.0 | 50.0 |" in lines
    assert "| source_color | audio-visual | 1 | 100.0 | 100.0 | 16.7 |" in lines
    assert any(line.startswith("| **overall** (mean of 2 families)") and "**100.0**" in line for line in lines)


def test_one_word_share_counts_bare_answer_words():
    from vqa.avsynth.score import one_word_share

    assert one_word_share(["Yes.", "two", " Red!", "It is red", "2", "banana"]) == pytest.approx(3 / 6)


@pytest.mark.slow
def test_committed_adapter_answers_a_fresh_split(tmp_path):
    """The default adapter on clips it has never seen (seed 7, away from the train/val/test seeds 1-3)."""
    if not (DEFAULT_ADAPTER / "vqa_config.json").is_file():
        pytest.skip(f"{DEFAULT_ADAPTER} is absent: train it with `vqa train --config configs/avsynth.yaml`")
    from vqa.api import VideoQA
    from vqa.avsynth.generate import generate

    generate(tmp_path, 24, seed=7, progress=False)
    qa = VideoQA.from_pretrained(DEFAULT_ADAPTER)
    result = evaluate(qa.model, tmp_path, batch_size=32, blind=False, progress=False)["recipe_score"]
    assert result["overall"]["n"] >= 200
    assert result["overall"]["accuracy"] >= 0.90, format_table(result)



# general questions outside anything trained on (vqa.train.chat holds the trained ones), each with the
# words that carry the base SmolLM2's (right) answer
PLAIN_QUESTIONS = [
    ("What is the capital of France?", ("paris",)),
    ("How many legs does a spider have?", ("eight", "8")),
    ("What is 2 plus 2?", ("4", "four")),
    ("What is the boiling point of water in Celsius?", ("100",)),
    ("How many hours are in a day?", ("24", "twenty-four")),
    ("What is the opposite of hot?", ("cold",)),
    ("What language is spoken in Brazil?", ("portuguese",)),
    ("What colour is the sky on a clear day?", ("blue",)),
]


@pytest.mark.slow
def test_committed_adapter_keeps_the_llms_language(tmp_path):
    """Questions unrelated to the clip, asked about a clip, get sentences and often the base LLM's answer,
    not one benchmark word. A LoRA trained on the benchmark's answers alone gave 8 one-word replies and
    0 right answers ("What is the capital of France?" -> "France"). The committed adapter, on this clip:
    8 sentences and 6 right ("What is 2 plus 2?" gets "Two plus two is equal to two.")."""
    if not (DEFAULT_ADAPTER / "vqa_config.json").is_file():
        pytest.skip(f"{DEFAULT_ADAPTER} is absent: train it with `vqa train --config configs/avsynth.yaml`")
    from vqa.api import VideoQA
    from vqa.avsynth.generate import generate
    from vqa.train.chat import chat_prompts

    assert not {q for q, _ in PLAIN_QUESTIONS} & set(chat_prompts())
    generate(tmp_path, 1, seed=7, progress=False)
    qa = VideoQA.from_pretrained(DEFAULT_ADAPTER)
    clip = next((tmp_path / "clips").glob("*.mp4"))
    replies = {q: qa.ask(clip, q, max_new_tokens=48) for q, _ in PLAIN_QUESTIONS}
    sentences = [q for q, r in replies.items() if len(r.split()) >= 3]
    right = [q for q, words in PLAIN_QUESTIONS if any(w in replies[q].lower() for w in words)]
    assert len(sentences) >= 7 and len(right) >= 6, replies


# the committed adapter describes 7 of these 8 clips with every fact right (one names a white triangle for a
# red one); on 200 test-split clips, 69.5 % (benchmarks/describe_accuracy.py)
DESCRIBED_CLIPS, DESCRIBED_RIGHT = 8, 6


@pytest.mark.slow
def test_committed_adapter_describes_clips_it_has_never_seen(tmp_path):
    """"Describe this clip." gets the description of what is in the clip: how many objects, each one's colour,
    shape and motion, and what beeps (vqa.avsynth.describe), read fact by fact."""
    if not (DEFAULT_ADAPTER / "vqa_config.json").is_file():
        pytest.skip(f"{DEFAULT_ADAPTER} is absent: train it with `vqa train --config configs/avsynth.yaml`")
    from vqa.api import VideoQA
    from vqa.avsynth.recipe import read_meta
    from vqa.avsynth.describe import describe, facts
    from vqa.avsynth.generate import generate

    generate(tmp_path, DESCRIBED_CLIPS, seed=7, progress=False)
    qa = VideoQA.from_pretrained(DEFAULT_ADAPTER)
    meta = read_meta(tmp_path)
    replies = {v: qa.ask(tmp_path / v, "Describe this clip.", max_new_tokens=64) for v in meta}
    right = [v for v in meta if facts(replies[v]) == facts(describe(meta[v]))]
    assert len(right) >= DESCRIBED_RIGHT, {v: (replies[v], describe(meta[v])) for v in meta if v not in right}


def test_ablation_table_reads_each_runs_last_caption_answers(tmp_path):
    import subprocess
    import sys

    from vqa.avsynth.questions import FAMILIES

    perfect = {f: 1.0 for f in FAMILIES}
    for name, last in [("a", perfect), ("b", {**perfect, "pitch": 0.5, "count_beeps": 0.0})]:
        (tmp_path / name).mkdir()
        rows = [{"type": "start"}, {"type": "val", "caption_answers": {f: 0.0 for f in FAMILIES}},
                {"type": "val", "caption_answers": last}, {"type": "val", "families": {}}]
        (tmp_path / name / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    script = str(ROOT / "benchmarks" / "ablation_table.py")
    out = subprocess.run([sys.executable, script, str(tmp_path / "a"), str(tmp_path / "b")],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    row = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[3:5]] for line in out[2:]}
    assert row["pitch"] == ["100.0", "50.0"] and row["shape_of"] == ["100.0", "100.0"]
    assert row["**audio**"] == ["100.0", "50.0"]  # beep_exists 100, count_beeps 0, pitch 50
    assert row["**overall**"] == ["**100.0**", f"**{100 * (len(FAMILIES) - 1.5) / len(FAMILIES):.1f}**"]
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "log.jsonl").write_text(json.dumps({"type": "val", "targets": {}}) + "\n")
    failed = subprocess.run([sys.executable, script, str(tmp_path / "c")], capture_output=True, text=True)
    assert failed.returncode != 0 and "no validation with caption_answers" in failed.stderr
