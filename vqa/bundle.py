"""A trained model on disk: everything beyond the base LLM, in one folder.

    vqa_config.json                 ModelConfig: base LLM, every encoder option, the prompt
    encoder_projector.safetensors   encoder and projector weights
    adapter_config.json             the LoRA, in PEFT's format
    adapter_model.safetensors
    README.md                       the model card (written by training)

Only safetensors are read, so loading a bundle never runs code from it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .config import ModelConfig

CONFIG_NAME = "vqa_config.json"
WEIGHTS_NAME = "encoder_projector.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT_VERSION = 1

REPO_ROOT = Path(__file__).resolve().parent.parent


class BundleError(ValueError):
    """A bundle folder is missing, incomplete, corrupt or does not fit its config."""


def adapters_dir() -> Path:
    """Where bundles live: $VQA_ADAPTERS_DIR, else adapters/ beside the package (a source checkout)."""
    return Path(os.environ.get("VQA_ADAPTERS_DIR", REPO_ROOT / "adapters"))


def default_bundle() -> Path:
    return adapters_dir() / "real"


def find_bundles(root: Path | None = None) -> list[Path]:
    """Every bundle folder directly under `root` (default: the adapters folder), by name."""
    root = adapters_dir() if root is None else Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / CONFIG_NAME).is_file())


def read_config(folder: Path) -> ModelConfig:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise BundleError(f"{folder} is not a vqa bundle: {CONFIG_NAME} is missing")
    try:
        data = json.loads(path.read_text())
        version = data.pop("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise BundleError(f"{path}: format version {version} is newer than this vqa reads ({FORMAT_VERSION})")
        return ModelConfig.from_dict(data)
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        if isinstance(e, BundleError):
            raise
        raise BundleError(f"{path}: not a valid vqa config: {e}") from e


def write_config(folder: Path, config: ModelConfig) -> None:
    data = {"format_version": FORMAT_VERSION, **config.to_dict()}
    (Path(folder) / CONFIG_NAME).write_text(json.dumps(data, indent=2) + "\n")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; any damage raises BundleError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise BundleError(f"{path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise BundleError(f"{path} is corrupt or truncated: {e}") from e


def check_state_dict(path: Path, expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> None:
    """Raise BundleError listing every missing, unexpected or mis-shaped tensor."""
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        problems.append(f"missing {len(missing)} tensors (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensors (e.g. {unexpected[:3]})")
    for k in sorted(set(expected) & set(found)):
        if tuple(expected[k].shape) != tuple(found[k].shape):
            problems.append(f"{k}: shape {tuple(found[k].shape)} in the file, {tuple(expected[k].shape)} in the model")
    if problems:
        raise BundleError(f"{path} does not match the model its config describes: " + "; ".join(problems[:6]))


def save_bundle(model, folder: str | Path) -> Path:
    """Write the config, encoder/projector weights and the LoRA (PEFT format) into `folder`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_config(folder, model.config)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.av_state_dict().items()}
    _atomic(folder / WEIGHTS_NAME, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    if model.config.lora is not None:
        from peft import get_peft_model_state_dict

        # the LoRA leaves the embeddings alone; "auto" would look the base model up on the Hub to check its vocabulary
        state = get_peft_model_state_dict(model.llm, save_embedding_layers=False)
        lora = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        _atomic(folder / ADAPTER_WEIGHTS_NAME, lambda tmp: save_file(lora, str(tmp), metadata={"format": "pt"}))
        peft_config = model.llm.peft_config["default"]
        peft_config.base_model_name_or_path = model.config.llm
        peft_config.save_pretrained(str(folder))
    return folder


def load_weights(model, folder: str | Path) -> None:
    """Load a bundle's weights into a model built from its config, checking every tensor."""
    folder = Path(folder)
    path = folder / WEIGHTS_NAME
    found = read_safetensors(path)
    expected = model.av_state_dict()
    check_state_dict(path, expected, found)
    model.encoder.load_state_dict({k[len("encoder."):]: v for k, v in found.items() if k.startswith("encoder.")})
    model.projector.load_state_dict({k[len("projector."):]: v for k, v in found.items() if k.startswith("projector.")})
    if model.config.lora is not None:
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        if not (folder / ADAPTER_CONFIG_NAME).is_file():
            raise BundleError(f"{folder / ADAPTER_CONFIG_NAME} is missing (the config names a LoRA)")
        path = folder / ADAPTER_WEIGHTS_NAME
        lora = read_safetensors(path)
        check_state_dict(path, get_peft_model_state_dict(model.llm), lora)
        set_peft_model_state_dict(model.llm, lora)


def _atomic(target: Path, write) -> None:
    """Write through a temporary name then rename, so an interrupted save never leaves half a file."""
    tmp = target.with_name(target.name + ".tmp")
    write(tmp)
    os.replace(tmp, target)
