import pytest
import torch

from vqa.config import DEFAULT_SYSTEM_PROMPT
from vqa.prompt import IGNORE_INDEX, encode_conversation, normalize_messages, pad_batch, with_video

K = 5  # clip tokens


def encode(tokenizer, messages, k=K):
    return encode_conversation(tokenizer, DEFAULT_SYSTEM_PROMPT, messages, k, video_token_id=0)


def test_training_turn_labels_only_the_answer(tokenizer):
    msgs = normalize_messages([
        {"from": "human", "value": "<video>\nWhat color is the square?"},
        {"from": "gpt", "value": "red"},
    ])
    p = encode(tokenizer, msgs)
    assert int(p.video_mask.sum()) == K
    labelled = p.input_ids[p.labels != IGNORE_INDEX]
    text = tokenizer.decode(labelled)
    assert text.startswith("red<|im_end|>")
    # nothing before the answer is labelled, and the clip slots are not
    assert not (p.labels[p.video_mask] != IGNORE_INDEX).any()
    first = int((p.labels != IGNORE_INDEX).nonzero()[0])
    assert tokenizer.decode(p.input_ids[:first]).endswith("<|im_start|>assistant\n")


def test_inference_prompt_ends_with_generation_prompt_and_uses_our_system_prompt(tokenizer):
    p = encode(tokenizer, [{"role": "user", "content": with_video("Is there a beep?")}])
    text = tokenizer.decode(p.input_ids[~p.video_mask])
    assert text.endswith("<|im_start|>assistant\n")
    assert DEFAULT_SYSTEM_PROMPT in text
    assert "SmolLM" not in text  # the template's own long default system prompt is not used
    assert (p.labels == IGNORE_INDEX).all()


def test_multi_turn_labels_every_answer(tokenizer):
    msgs = [
        {"role": "user", "content": "<video>\nIs there a beep?"},
        {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "Is it high or low?"},
        {"role": "assistant", "content": "low"},
    ]
    p = encode(tokenizer, msgs)
    spans = tokenizer.decode(p.input_ids[p.labels != IGNORE_INDEX])
    assert "yes<|im_end|>" in spans and "low<|im_end|>" in spans
    assert "high or low" not in spans


def test_placeholder_count_follows_number_of_clip_tokens(tokenizer):
    msgs = [{"role": "user", "content": "<video>\nDescribe it."}]
    assert int(encode(tokenizer, msgs, k=9).video_mask.sum()) == 9
    assert int(encode(tokenizer, msgs, k=0).video_mask.sum()) == 0


def test_conversation_must_start_with_user(tokenizer):
    with pytest.raises(ValueError, match="start with a user turn"):
        encode(tokenizer, [{"role": "assistant", "content": "hi"}])
    with pytest.raises(ValueError, match="unknown conversation role"):
        normalize_messages([{"from": "robot", "value": "x"}])


@pytest.mark.parametrize("side", ["left", "right"])
def test_pad_batch(tokenizer, side):
    a = encode(tokenizer, [{"role": "user", "content": "<video>\nHi"}])
    b = encode(tokenizer, [{"role": "user", "content": "<video>\nA much longer question about the clip?"}])
    batch = pad_batch([a, b], pad_id=7, side=side)
    n = len(a.input_ids)
    row = batch["input_ids"][0]
    kept = row[:n] if side == "right" else row[-n:]
    assert torch.equal(kept, a.input_ids)
    assert int(batch["attention_mask"][0].sum()) == n
    assert int(batch["video_mask"].sum()) == 2 * K
