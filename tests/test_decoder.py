"""The lean decoder against transformers: tiny random Llama and Qwen2 models with LoRA, and the real bundle."""
import logging

import pytest
import torch
import torch.nn as nn

from tests.helpers import tiny_config, tiny_llm, write_clip
from vqa.decoder import Decoder, _rotate_half, _rotation, common_prefix, lookup, pick, unsupported_reason
from vqa.model import VideoLLM


def lora_model(tokenizer, kind="llama"):
    """A VideoLLM over a tiny random LLM whose LoRA weights are non-zero (so merging matters)."""
    torch.manual_seed(0)
    if kind == "llama":
        llm = tiny_llm(tokenizer)
    else:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        llm = Qwen2ForCausalLM(Qwen2Config(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, initializer_range=0.5))
    model = VideoLLM(tiny_config(), llm, tokenizer).eval()
    with torch.no_grad():
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    return model


def prompt_embeds(model, question="What is in the clip?", seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(model.num_video_tokens, model.llm.config.hidden_size, generator=g)
    prompt = model.encode_prompt([{"role": "user", "content": f"<video>\n{question}"}])
    embeds = model.embed(prompt.input_ids[None], prompt.video_mask[None], tokens[None])
    return prompt.input_ids.tolist(), embeds, tokens


def hf_greedy(model, embeds, n):
    out = model.llm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                             max_new_tokens=n, eos_token_id=model.stop_ids, pad_token_id=model.tokenizer.pad_token_id,
                             do_sample=False, temperature=None, top_p=None, top_k=None)
    ids = out[0].tolist()
    return ids[:next((i for i, t in enumerate(ids) if t in model.stop_ids), len(ids))]


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_exact_mode_matches_the_peft_model(tokenizer, kind):
    model = lora_model(tokenizer, kind)
    ids, embeds, _ = prompt_embeds(model)
    dec = Decoder(model.llm, "exact")
    cache = dec.new_cache()
    logits = dec.forward(embeds, cache, all_logits=True)  # (1, L, V)
    with torch.no_grad():
        ref = model.llm(inputs_embeds=embeds).logits
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-4)
    cache = dec.new_cache()
    tokens = list(dec.stream(dec.prefill(ids, embeds, cache), cache, model.stop_ids, 12))
    assert tokens == hf_greedy(model, embeds, 12)[:len(tokens)] and len(tokens) >= 1


@pytest.mark.parametrize("weights", ["fp16", "int8", "bf16"])
def test_fast_weights_stay_close(tokenizer, weights):
    model = lora_model(tokenizer)
    _, embeds, _ = prompt_embeds(model)
    exact = Decoder(model.llm, "exact").forward(embeds, Decoder(model.llm, "exact").new_cache())
    dec = Decoder(model.llm, "fast", weights)
    fast = dec.forward(embeds, dec.new_cache())
    # relative to the logits' spread; fp16 weights are ~16x finer than bf16
    tol = {"fp16": 0.01, "int8": 0.3, "bf16": 0.3}[weights]
    assert (fast - exact).abs().max() < tol * exact.std()


def test_int8_layers_widen_their_weights_for_a_prompt(monkeypatch):
    import torch.nn.functional as F

    import vqa.decoder as decoder

    monkeypatch.setattr(decoder, "WIDEN", True)  # the branch runs (slowly) where the CPU lacks bf16 instructions
    torch.manual_seed(0)
    layer = decoder.Linear(torch.randn(48, 64), None, "int8")
    x = torch.randn(69, 64)
    wide = layer.w.to(torch.bfloat16)
    xb = x.to(torch.bfloat16)
    prompt = layer.raw(x, calls=(40, 29))
    widened = torch.cat([F.linear(xb[:40], wide), F.linear(xb[40:], wide)]) * layer.scale
    torch.testing.assert_close(prompt, widened, rtol=0, atol=0)  # bf16 GEMMs, one per call
    # each call's rows as a prompt of their own: what a cached start followed by the rest computes
    parts = torch.cat([layer.raw(x[:40], calls=(40,)), layer.raw(x[40:], calls=(29,))])
    assert torch.equal(parts, prompt)
    torch.testing.assert_close(layer.raw(x, calls=(69,)), prompt, rtol=1e-2, atol=1e-2)
    kernel = torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), layer.w, layer.scale)
    assert torch.equal(layer.raw(x), kernel)  # decode steps: the int8 kernel
    # the two compute the same products: they differ by the bf16 rounding of the output
    assert not torch.equal(prompt, kernel)
    torch.testing.assert_close(prompt.float(), kernel.float(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_fast_steps_compute_what_exact_steps_do(tokenizer, kind):
    # fast mode's own step (q/k/v from one GEMM, rope on q and k together, one position's attention with
    # each key/value head's queries as rows), run on fp32 weights: the arithmetic of exact mode, up to rounding
    model = lora_model(tokenizer, kind)
    _, embeds, _ = prompt_embeds(model)
    exact, fast = Decoder(model.llm, "exact"), Decoder(model.llm, "fast", "fp32")
    caches = exact.new_cache(), fast.new_cache()
    for dec, cache in zip((exact, fast), caches):
        dec.forward(embeds[:, :-3], cache)
    for i in range(3, 0, -1):  # one position a call
        step = embeds[:, -i:embeds.shape[1] - i + 1]
        torch.testing.assert_close(fast.forward(step, caches[1]), exact.forward(step, caches[0]),
                                   rtol=1e-4, atol=1e-4)


def test_building_the_decoder_leaves_the_model_alone(tokenizer):
    model = lora_model(tokenizer)
    before = {n: p.detach().clone() for n, p in model.llm.named_parameters()}
    Decoder(model.llm, "exact")
    Decoder(model.llm, "fast")
    for n, p in model.llm.named_parameters():
        assert torch.equal(p, before[n]), n


def test_model_rebuilds_the_decoder_when_weights_change(tokenizer):
    model = lora_model(tokenizer)
    model.decoding = "exact"
    first = model.decoder()
    assert model.decoder() is first
    with torch.no_grad():
        next(p for n, p in model.llm.named_parameters() if "lora_B" in n).add_(0.5)  # as an optimizer step does
    assert model.decoder() is not first


def test_model_rebuilds_the_decoder_when_layers_change_without_a_tensor_written(tokenizer):
    # between such changes the modules are not walked again (model._walk); each must still be seen
    model = lora_model(tokenizer)
    model.decoding = "exact"
    first = model.decoder()
    with model.llm.disable_adapter():  # PEFT flips a switch on each LoRA layer
        off = model.decoder()
        assert off is not first and model.decoder() is off
    back = model.decoder()
    assert back is not off
    layer = next(m for m in model.llm.modules() if hasattr(m, "lora_A"))
    layer.base_layer.weight = nn.Parameter(layer.base_layer.weight.detach() + 1.0)  # a parameter replaced
    replaced = model.decoder()
    assert replaced is not back and model.decoder() is replaced
    del layer.lora_A["default"]  # an adapter removed from one layer (no registration)
    assert model.decoder() is not replaced


def test_a_cached_prefix_gives_the_same_logits(tokenizer):
    model = lora_model(tokenizer)
    ids, embeds, _ = prompt_embeds(model)
    dec = Decoder(model.llm, "exact")
    whole = dec.prefill(ids, embeds, dec.new_cache())
    cache = dec.new_cache()
    dec.prefill(ids[:-5], embeds[:, :-5], cache)
    computed = []
    real = dec.forward
    dec.forward = lambda e, c, **k: computed.append(e.shape[1]) or real(e, c, **k)
    resumed = dec.prefill(ids, embeds, cache)
    assert computed == [5]
    torch.testing.assert_close(resumed, whole, rtol=1e-4, atol=1e-4)
    # a prompt that branches off earlier reuses only the shared part
    computed.clear()
    dec.prefill(ids[:-8] + ids[-3:], torch.cat([embeds[:, :-8], embeds[:, -3:]], 1), cache)
    assert computed == [3]


def test_marks_split_a_prompt_into_the_same_calls_whatever_the_cache_holds(tokenizer):
    model = lora_model(tokenizer)
    ids, embeds, _ = prompt_embeds(model)
    dec = Decoder(model.llm, "fast")
    mark = len(ids) - 9  # where the prompt's own question starts, say
    calls = []
    real = dec.forward
    dec.forward = lambda e, c, **k: calls.append(e.shape[1]) or real(e, c, **k)
    whole = dec.prefill(ids, embeds, dec.new_cache(), (mark,))
    assert calls == [len(ids)]  # computed whole, with attention split at the mark
    cache = dec.new_cache()
    dec.prefill(ids[:mark], embeds[:, :mark], cache)  # the start, warmed alone
    calls.clear()
    warmed = dec.prefill(ids, embeds, cache, (mark,))
    assert calls == [9] and torch.equal(warmed, whole)
    calls.clear()
    again = dec.prefill(ids, embeds, cache, (mark,))  # the same prompt asked again: back to the mark
    assert calls == [9] and torch.equal(again, whole)
    calls.clear()  # a prompt that shares part of the question: from the mark, not from where they part
    other = ids[:-3] + ids[-2:]
    dec.prefill(other, torch.cat([embeds[:, :-3], embeds[:, -2:]], 1), cache, (mark,))
    assert calls == [len(other) - mark]
    calls.clear()  # no marks: only what is not cached
    dec.prefill(ids, embeds, cache)
    assert calls == [3]


def test_cache_grows_and_copies(tokenizer):
    model = lora_model(tokenizer)
    ids, embeds, _ = prompt_embeds(model)
    dec = Decoder(model.llm, "exact")
    cache = dec.new_cache(capacity=1)
    dec.prefill(ids, embeds, cache)
    assert cache.capacity >= len(ids) == cache.length
    copy = cache.copy(10)
    assert copy.length == 10 and copy.ids == ids[:10]
    torch.testing.assert_close(copy.k[0][:, :, :10], cache.k[0][:, :, :10])


def test_batch_equals_one_at_a_time(tokenizer):
    model = lora_model(tokenizer)
    model.decoding = "exact"
    questions = ["What is in the clip?", "Is there a sound in it at all?", "Colour?"]
    tokens = torch.randn(len(questions), model.num_video_tokens, model.llm.config.hidden_size)
    prompts = [model.encode_prompt([{"role": "user", "content": f"<video>\n{q}"}]) for q in questions]
    batched = model.generate_batch(tokens, prompts, max_new_tokens=6)
    single = [model.generate_batch(tokens[i:i + 1], [p], max_new_tokens=6)[0] for i, p in enumerate(prompts)]
    assert batched == single


def test_shared_prefix_batch_equals_one_at_a_time(tokenizer):
    model = lora_model(tokenizer)
    model.decoding = "exact"
    questions = ["What is in the clip?", "Is there a sound in it at all, or is it silent?", "Colour?"]
    tokens = torch.randn(model.num_video_tokens, model.llm.config.hidden_size)
    prompts = [model.encode_prompt([{"role": "user", "content": f"<video>\n{q}"}]) for q in questions]
    shared = model.generate_shared(tokens, prompts, max_new_tokens=6)
    single = [model.generate_batch(tokens[None], [p], max_new_tokens=6)[0] for p in prompts]
    assert shared == single
    computed = []
    dec = model.decoder()
    real = dec.forward
    dec.forward = lambda e, c, **k: computed.append(tuple(e.shape[:2])) or real(e, c, **k)
    model.generate_shared(tokens, prompts, max_new_tokens=1)
    prefix = computed[0][1]
    assert computed[0][0] == 1 and prefix > model.num_video_tokens  # the clip's prompt once, for all three
    assert computed[1] == (3, max(len(p.input_ids) for p in prompts) - prefix)  # then only each question


def test_stream_stops_when_the_reader_goes_away(tokenizer):
    model = lora_model(tokenizer)
    model.stop_ids = []  # nothing ends it early
    dec = model.decoder()
    steps = []
    real = dec.forward
    dec.forward = lambda e, c, **k: steps.append(e.shape[1]) or real(e, c, **k)
    _, _, tokens = prompt_embeds(model)
    msgs = [{"role": "user", "content": "<video>\nHi"}]
    assert len(list(model.stream(tokens, msgs, max_new_tokens=20))) >= 1
    full = len(steps)
    steps.clear()
    stream = model.stream(tokens, msgs, max_new_tokens=20)
    next(stream)
    stream.close()
    assert len(steps) < full // 2, (len(steps), full)


def test_stop_token_ends_the_answer(tokenizer):
    model = lora_model(tokenizer)
    ids, embeds, _ = prompt_embeds(model)
    dec = Decoder(model.llm, "exact")
    cache = dec.new_cache()
    logits = dec.prefill(ids, embeds, cache)
    first = int(logits.argmax())
    assert list(dec.stream(logits, cache, [first], 10)) == []


def test_looking_ahead_keeps_greedy_tokens(tokenizer, monkeypatch):
    import vqa.decoder

    model = lora_model(tokenizer)
    dec = Decoder(model.llm, "fast")
    calls = []
    real = dec.forward
    dec.forward = lambda e, c, **k: calls.append(e.shape[1]) or real(e, c, **k)

    def greedy(stops, n, lookahead):
        dec.lookahead = lookahead
        cache = dec.new_cache()
        calls.clear()
        out = list(dec.stream(dec.prefill(ids, embeds, cache), cache, stops, n))
        assert cache.length == len(cache.ids)  # wrong guesses are forgotten: a chat's next turn reuses the rest
        return out

    ids, embeds, _ = prompt_embeds(model)
    plain = greedy([], 40, 0)
    assert len(calls) == 40  # the prompt, then one call a token
    # guesses that are greedy's own next tokens (each kept: fewer calls), then wrong ones (each dropped)
    for wrong in (0, 1):
        oracle = lambda seen, n: [(t + wrong) % len(tokenizer) for t in plain[len(seen) - len(ids):][:n]]  # noqa: E731
        monkeypatch.setattr(vqa.decoder, "lookup", oracle)
        assert greedy([], 40, 2) == plain
        assert len(calls) == (14 if not wrong else 40) and max(calls[1:]) == 3, calls
        if wrong:  # each miss in a row pauses guessing for 2, 4, 8, 16 steps: 5 guesses in 39 steps, not 39
            assert calls.count(3) == 5, calls
        for stop in {plain[4], plain[5], plain[-1]}:  # stop tokens inside and at the end of a kept guess
            assert greedy([stop], 40, 2) == plain[:plain.index(stop)]
        assert greedy([], 7, 2) == plain[:7]


def test_a_decode_steps_rope_as_one_product_turns_as_rope_does():
    g = torch.Generator().manual_seed(0)
    angles = torch.rand(2, 1, 3, 4, generator=g) * 100  # (B, 1, L, hs / 2): positions times frequencies
    emb = torch.cat((angles, angles), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    x = torch.randn(2, 3, 5, 8, generator=g)  # (B, L, heads, hs)
    turned = torch.matmul(x[:, :, :, None], _rotation(cos, sin)[:, :, None])[:, :, :, 0]
    expected = x.transpose(1, 2) * cos + _rotate_half(x.transpose(1, 2)) * sin  # (B, heads, L, hs)
    torch.testing.assert_close(turned.transpose(1, 2), expected, rtol=0, atol=1e-6)


def test_lookup_finds_what_followed_the_last_tokens():
    assert lookup([1, 2, 3, 9, 8, 1, 2, 3], 2) == [9, 8]
    assert lookup([5, 1, 2, 7, 1, 2], 3) == [7, 1, 2]  # the latest earlier occurrence of the last two
    assert lookup([1, 2, 3, 4], 2) == [] and lookup([1], 2) == []


def test_sampling(tokenizer):
    logits = torch.tensor([[0.0, 5.0, 4.9, -3.0]])
    g = torch.Generator().manual_seed(0)
    assert all(int(pick(logits, 1.0, 0.01, g)) == 1 for _ in range(20))  # top-p keeps the top token only
    drawn = {int(pick(logits, 1.0, 0.99, g)) for _ in range(200)}
    assert {1, 2} <= drawn and 3 not in drawn
    model = lora_model(tokenizer)
    _, _, tokens = prompt_embeds(model)
    msgs = [{"role": "user", "content": "<video>\nHi"}]
    torch.manual_seed(0)
    samples = {"".join(model.stream(tokens, msgs, max_new_tokens=5, temperature=2.0)) for _ in range(4)}
    assert len(samples) > 1


def test_other_models_fall_back_to_generate_once(tokenizer, caplog):
    from transformers import GPT2Config, GPT2LMHeadModel

    from vqa.config import LoraConfig

    llm = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=256))
    cfg = tiny_config()
    cfg.lora = LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=("c_attn",))
    model = VideoLLM(cfg, llm, tokenizer).eval()
    assert "gpt2" in unsupported_reason(model.llm)
    _, _, tokens = prompt_embeds(model)
    msgs = [{"role": "user", "content": "<video>\nHi"}]
    with caplog.at_level(logging.WARNING, logger="vqa.model"):
        for _ in range(2):
            assert list(model.stream(tokens, msgs, max_new_tokens=3))
    assert sum("transformers' generate" in r.message for r in caplog.records) == 1


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([], [1]) == 0


QUESTIONS = [
    "What color is the object that beeps?", "How many objects are there?", "Describe this clip.",
    "Is there a sound?", "What shape is the red object?", "Which object moves?", "How many beeps are there?",
    "Is the beep high or low?", "What is heard?", "What is seen?",
]


@pytest.mark.slow
def test_exact_mode_is_token_for_token_generate(tmp_path):
    """50 prompts (5 clips x 10 questions) with the default bundle: the exact decoder's greedy tokens
    equal transformers' generate of the same PEFT model."""
    from vqa.api import VideoQA

    qa = VideoQA.from_pretrained()
    model = qa.model
    model.decoding = "exact"
    dec = model.decoder()
    differ = []
    for c in range(5):
        clip = write_clip(tmp_path / f"c{c}.mp4", seconds=1.0 + 0.5 * c, tone_hz=None if c == 2 else 300.0 + 150 * c)
        video = qa.prepare(clip).tokens
        for q in QUESTIONS:
            prompt = model.encode_prompt([{"role": "user", "content": f"<video>\n{q}"}])
            embeds = model.embed(prompt.input_ids[None], prompt.video_mask[None], video[None])
            cache = dec.new_cache()
            ours = list(dec.stream(dec.prefill(prompt.input_ids.tolist(), embeds, cache), cache, model.stop_ids, 8))
            ref = hf_greedy(model, embeds, 8)
            if ours != ref:
                differ.append((c, q, ours, ref))
    assert not differ, differ


@pytest.mark.parametrize("mode,weights", [("exact", None), ("fast", "fp16"), ("fast", "int8")])
def test_a_callers_autocast_does_not_reach_the_decoder(tokenizer, mode, weights):
    # vqa eval answers under the training precision's bf16 autocast: fbgemm's fp16 GEMM refused bf16
    # activations there, and exact mode would no longer be exact
    model = lora_model(tokenizer)
    _, embeds, _ = prompt_embeds(model)
    dec = Decoder(model.llm, mode, weights)
    plain = dec.forward(embeds, dec.new_cache())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = dec.forward(embeds, dec.new_cache())
    assert cast.dtype == torch.float32
    torch.testing.assert_close(cast, plain, rtol=0, atol=0)

