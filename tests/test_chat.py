"""vqa.train.chat: general chat mixed into the LLM stages, answered with the base LLM's own replies."""
from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import tiny_config, tiny_llm
from vqa.config import VIDEO_PLACEHOLDER
from vqa.data import FeatureCache, PromptEncoder, Sample
from vqa.model import VideoLLM
from vqa.train.chat import base_replies, chat_prompts, chat_samples, load_or_make_replies


@pytest.fixture
def model(tokenizer):
    torch.manual_seed(0)
    return VideoLLM(tiny_config(), tiny_llm(tokenizer), tokenizer)


def _cache(model, clips: int) -> FeatureCache:
    media = model.config.media
    frames = torch.randint(0, 255, (clips, media.num_frames, media.size, media.size, 3), dtype=torch.uint8)
    mel = torch.randn(clips, media.n_mels, model.config.encoder.audio_frames).half()
    return FeatureCache([f"c{i}.mp4" for i in range(clips)], frames, mel)


def test_prompts_are_distinct_and_many():
    prompts = chat_prompts()
    assert len(prompts) >= 200 and len(set(prompts)) == len(prompts)
    assert not any(VIDEO_PLACEHOLDER in p for p in prompts)


def test_samples_alternate_clip_shown_and_not():
    rows = [{"prompt": f"p{i}", "reply": f"r{i}"} for i in range(3)] + [{"prompt": "empty", "reply": ""}]
    samples = chat_samples(rows, count=12, clips=5, seed=0)
    assert len(samples) == 12
    for s in samples:
        question, answer = s.messages[0]["content"], s.messages[1]["content"]
        assert (s.row is not None) == question.startswith(VIDEO_PLACEHOLDER)
        assert s.row is None or 0 <= s.row < 5
        assert answer == "r" + question.split("p")[-1]  # each prompt keeps its own reply; empty ones dropped
    shown = {(s.messages[0]["content"].split("p")[-1], s.row is not None) for s in samples}
    assert shown == {(str(i), flag) for i in range(3) for flag in (False, True)}  # every prompt both ways
    with pytest.raises(ValueError, match="no reply"):
        chat_samples([{"prompt": "p", "reply": ""}], count=2, clips=5, seed=0)


def test_base_replies_ignore_the_lora_and_are_cached(model, tmp_path):
    prompts = ["What is the capital of Italy?", "Tell me a joke."]
    before = base_replies(model, prompts, max_new_tokens=6)
    with torch.no_grad():  # a trained adapter: its replies differ, the base model's do not
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1.0)
    adapted = model.generate_batch(None, [model.encode_prompt([{"role": "user", "content": q}], blind=True)
                                          for q in prompts], max_new_tokens=6)
    assert base_replies(model, prompts, max_new_tokens=6) == before
    assert [a.strip() for a in adapted] != before
    path = tmp_path / "chat.jsonl"
    rows = load_or_make_replies(path, model, prompts, max_new_tokens=6)
    assert [r["prompt"] for r in rows] == prompts and path.is_file()
    rows[0]["reply"] = "kept from the file"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_or_make_replies(path, model, prompts, max_new_tokens=6)[0]["reply"] == "kept from the file"
    assert load_or_make_replies(path, model, prompts, max_new_tokens=5)[0]["reply"] != "kept from the file"


def test_batches_mix_conversations_with_and_without_a_clip(model):
    cache = _cache(model, 3)
    ask = lambda q, a: [{"role": "user", "content": q}, {"role": "assistant", "content": a}]  # noqa: E731
    samples = [Sample(2, ask("<video>\nWhat color is the circle?", "red")),
               Sample(None, ask("What is the capital of Italy?", "Rome.")),
               Sample(0, ask("<video>\nWhat is 2 plus 2?", "Four."))]
    encoder = PromptEncoder(model, samples)
    batch = encoder.batch([0, 1, 2], cache)
    assert batch["frames"].shape[0] == 2  # only the conversations that show a clip
    assert torch.equal(batch["frames"], cache.inputs([2, 0])[0])
    loss = model(**batch)
    assert torch.isfinite(loss)
    alone = encoder.batch([1], cache)
    assert "frames" not in alone and torch.isfinite(model(**alone))
    with pytest.raises(ValueError, match="names no clip"):
        PromptEncoder(model, [Sample(None, ask("<video>\nq", "a"))]).batch([0], cache)
