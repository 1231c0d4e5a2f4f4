import pytest
import torch
import torch.nn.functional as F

from tests.helpers import tiny_config, tiny_llm
from vqa.model import VideoLLM
from vqa.prompt import IGNORE_INDEX, pad_batch


@pytest.fixture
def model(tokenizer):
    torch.manual_seed(0)
    cfg = tiny_config()
    return VideoLLM(cfg, tiny_llm(tokenizer), tokenizer)


def clip_inputs(cfg, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = cfg.media
    frames = torch.randn(batch, m.num_frames, 3, m.size, m.size, generator=g)
    mel = torch.randn(batch, m.n_mels, cfg.encoder.audio_frames, generator=g)
    return frames, mel


def qa_batch(model, pairs):
    prompts = [
        model.encode_prompt([{"role": "user", "content": f"<video>\n{q}"}, {"role": "assistant", "content": a}])
        for q, a in pairs
    ]
    return pad_batch(prompts, model.tokenizer.pad_token_id)


def test_video_features_shape(model):
    frames, mel = clip_inputs(model.config)
    tokens = model.get_video_features(frames, mel)
    assert tokens.shape == (2, model.config.encoder.num_tokens, model.llm.config.hidden_size)


def test_token_count_mismatch_names_both_numbers(model):
    frames, mel = clip_inputs(model.config)
    batch = qa_batch(model, [("Is there a beep?", "yes"), ("How many objects?", "two")])
    tokens = model.get_video_features(frames, mel)[:, :-1]  # one feature short per clip
    n = int(batch["video_mask"].sum())
    with pytest.raises(ValueError, match=f"tokens: {n}, features {n - 2}"):
        model(**batch, video_tokens=tokens)


def test_loss_is_answer_tokens_only(model):
    frames, mel = clip_inputs(model.config)
    batch = qa_batch(model, [("Is there a beep?", "yes"), ("How many objects are there?", "three")])
    loss = model(**batch, frames=frames, mel=mel)
    # reference: full logits everywhere, cross-entropy on the shifted labels
    embeds = model.embed(batch["input_ids"], batch["video_mask"], model.get_video_features(frames, mel))
    logits = model.llm(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
    ref = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)


def test_a_few_steps_lower_the_loss(model):
    frames, mel = clip_inputs(model.config)
    batch = qa_batch(model, [("Is there a beep?", "yes"), ("What shape is the red object?", "circle")])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(**batch, frames=frames, mel=mel)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_lora_targets_attention_and_mlp_of_every_layer(model):
    names = [n for n, p in model.llm.named_parameters() if p.requires_grad]
    for layer in range(2):
        for module in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
            assert any(f"layers.{layer}." in n and f"{module}.lora_A" in n for n in names), (layer, module)
    # the base LLM stays frozen
    assert not any(p.requires_grad for n, p in model.llm.named_parameters() if "lora_" not in n)


def test_stream_yields_text_greedy_and_sampled(model):
    frames, mel = clip_inputs(model.config, batch=1)
    tokens = model.get_video_features(frames, mel)[0]
    pieces = list(model.stream(tokens, [{"role": "user", "content": "<video>\nHi"}], max_new_tokens=6))
    assert pieces and all(isinstance(p, str) for p in pieces)
    sampled = list(model.stream(tokens, [{"role": "user", "content": "<video>\nHi"}], max_new_tokens=6, temperature=1.0))
    assert sampled


def test_closing_the_stream_stops_generation(model, monkeypatch):
    model.decoding = "transformers"  # the lean decoder's own test is in test_decoder.py
    frames, mel = clip_inputs(model.config, batch=1)
    tokens = model.get_video_features(frames, mel)[0]
    lengths = []
    real = model.llm.generate
    monkeypatch.setattr(model.llm, "generate", lambda **kw: lengths.append(real(**kw).shape[1]))
    msgs = [{"role": "user", "content": "<video>\nHi"}]
    list(model.stream(tokens, msgs, max_new_tokens=200))
    stream = model.stream(tokens, msgs, max_new_tokens=200)
    next(stream)
    stream.close()  # returns once the generation thread has ended
    full, closed = lengths
    assert closed < full, lengths
