"""vqa.evaluate: scoring free-form replies, batched answering with and without the clip, the answer loss,
evaluation of any dataset and the `vqa eval` command (with a recipe's table where the dataset names one)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import tiny_config, tiny_llm
from vqa.evaluate import answer, evaluate, key_words, normalize, question_messages, score_replies

ROOT = Path(__file__).resolve().parent.parent


def rec(answer: str, type_: str | None = None) -> dict:
    return {"messages": [{"role": "user", "content": "<video>\nQ?"}, {"role": "assistant", "content": answer}],
            **({"type": type_} if type_ else {})}


def test_normalising_ignores_case_punctuation_articles_and_number_words():
    assert normalize("The Dog, barking!") == normalize("dog barking") == ["dog", "barking"]
    assert normalize("Two cats.") == normalize("2 cats") == ["2", "cats"]
    assert key_words("A man is playing the drums.") == {"man", "playing", "drums"}
    assert key_words("Yes.") == {"yes"}  # nothing but a function word: it is the key word


def test_match_and_keywords_overall_and_per_type():
    records = [rec("A dog.", "sound"), rec("two", "count"), rec("He plays the drums.", "action"), rec("no", "sound")]
    replies = ["a DOG", "There are 2.", "A man is playing the drums loudly.", "yes"]
    result = score_replies(records, replies)
    assert result["overall"] == {"n": 4, "match": 0.25, "keywords": 0.5}
    assert result["types"]["sound"] == {"n": 2, "match": 0.5, "keywords": 0.5}
    assert result["types"]["count"] == {"n": 1, "match": 0.0, "keywords": 1.0}
    assert result["types"]["action"]["keywords"] == 0.0  # "plays" is not in the reply


def test_question_messages_drop_the_last_answer_only():
    r = {"messages": [{"role": "user", "content": "<video>\nIs there a beep?"}, {"role": "assistant", "content": "no"}]}
    assert question_messages(r) == r["messages"][:1]
    turns = r["messages"] + [{"role": "user", "content": "And a light?"}, {"role": "assistant", "content": "yes"}]
    assert question_messages({"messages": turns}) == turns[:3]


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    from vqa.avsynth.generate import generate

    folder = tmp_path_factory.mktemp("split")
    generate(folder, 3, seed=21, workers=1, progress=False)
    return folder


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    from vqa.model import VideoLLM

    torch.manual_seed(0)
    cfg = tiny_config()
    return VideoLLM(cfg, tiny_llm(tokenizer), tokenizer).eval()


def test_batching_and_padding_do_not_change_replies(tiny_model, split):
    from vqa.data import load_features, read_qa

    records = read_qa(split)
    cache = load_features(split, tiny_model.config, workers=1, progress=False)
    one = answer(tiny_model, cache, records, batch_size=1, max_new_tokens=3, progress=False)
    many = answer(tiny_model, cache, records, batch_size=7, max_new_tokens=3, progress=False)
    assert one == many
    blind = answer(tiny_model, cache, records, blind=True, batch_size=7, max_new_tokens=3, progress=False)
    assert len(blind) == len(records) and blind != many  # the clip's tokens change what it says


def test_evaluate_counts_every_question_of_the_first_clips(tiny_model, split):
    from vqa.avsynth import is_correct
    from vqa.data import read_qa

    result = evaluate(tiny_model, split, batch_size=8, limit=2, precision="fp32", progress=False, workers=1)
    records = read_qa(split)
    first = list(dict.fromkeys(r["video"] for r in records))[:2]
    expected = [r for r in records if r["video"] in first]
    assert result["clips"] == 2 and result["questions"] == len(expected) == len(result["replies"])
    assert result["overall"]["n"] == len(expected) and result["loss"] > 0
    assert set(result["types"]) == {r["family"] for r in expected}  # AVSynth's records carry their family as type
    # the split's dataset.json names the AVSynth recipe, whose family table scores the same replies
    correct = sum(is_correct(r["reply"], r["reference"]) for r in result["replies"])
    assert sum(f["correct"] for f in result["recipe_score"]["families"].values()) == correct
    assert result["blind"]["overall"]["n"] == len(expected) and result["blind"]["loss"] > 0


def test_eval_command_prints_the_table_and_writes_json(tiny_model, split, tmp_path, capsys, tokenizer):
    from vqa.bundle import save_bundle
    from vqa.cli import main

    llm_dir = tmp_path / "llm"
    tiny_model.llm.get_base_model().save_pretrained(llm_dir)
    tokenizer.save_pretrained(llm_dir)
    base_llm, tiny_model.config.llm = tiny_model.config.llm, str(llm_dir)
    save_bundle(tiny_model, tmp_path / "bundle")
    tiny_model.config.llm = base_llm
    out = tmp_path / "result.json"
    code = main(["eval", "--adapter", str(tmp_path / "bundle"), "--data", str(split), "--json", str(out),
                 "--limit", "1", "--batch-size", "4"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| type | n | match | keywords | blind match | blind keywords |" in printed and "Answer loss" in printed
    assert "| family | group | n | accuracy | blind | chance |" in printed  # the AVSynth recipe's table
    result = json.loads(out.read_text())
    assert result["clips"] == 1 and set(result) >= {"overall", "types", "loss", "blind", "replies", "recipe_score"}

    # --card puts the table and the command into the bundle's model card, once, before its config
    card = tmp_path / "bundle" / "README.md"
    assert main(["eval", "--adapter", str(tmp_path / "bundle"), "--data", str(split), "--card"]) == 2
    assert "needs a bundle folder with a model card" in capsys.readouterr().err
    card.write_text("# bundle\n\n## Training\n\ntext\n\n## Config\n\n```json\n{}\n```\n")
    for limit in ("2", "1"):  # run twice: the second table replaces the first
        assert main(["eval", "--adapter", str(tmp_path / "bundle"), "--data", str(split), "--limit", limit,
                     "--no-blind", "--card"]) == 0
    text = card.read_text()
    assert text.count("## Test split") == 1 and text.index("## Training") < text.index("## Test split") \
        < text.index("## Config")
    assert f"vqa eval --adapter {tmp_path / 'bundle'} --data {split} --limit 1 --no-blind" in text
    assert "| **overall**" in text and "--limit 2" not in text and text.endswith("```\n")


def test_eval_command_explains_a_missing_split(tmp_path, capsys):
    from vqa.cli import main

    assert main(["eval", "--data", str(tmp_path / "none")]) == 2
    assert "a dataset is a folder with a qa.jsonl" in capsys.readouterr().err


