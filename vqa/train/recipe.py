"""Recipes: what one benchmark or task plugs into the generic training loop and evaluation.

The loop trains on any dataset folder. A recipe (a module exposing `RECIPE`, a `Recipe` subclass,
named by `train.recipe` in a training config, or by a dataset's `dataset.json`) adds what only
its data can give: generating missing splits, completing the model config, pre-training heads
on the clips' own targets, extra conversations mixed into align stages, and its own scoring. Every
hook has a do-nothing default, so a recipe overrides only what it adds.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

DATASET_FILE = "dataset.json"  # {"recipe": "vqa.avsynth"}: which recipe scores a dataset folder


class Recipe:
    """The do-nothing recipe: a dataset of conversations, nothing more."""

    name = "generic"
    options: tuple[str, ...] = ()  # the option names `recipe_options` may set

    def __init__(self, **options: Any):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(f"recipe {self.name!r} has no options {unknown}; it takes {sorted(self.options)}")
        self.settings = options

    def configure_model(self, model_config) -> None:
        """Complete a model config in place (e.g. a pointer layout the recipe knows)."""

    def prepare_data(self, data, workers: int | None, progress: bool) -> None:
        """Make the dataset folders `data` names where the recipe can (e.g. generate them)."""

    def pretrain(self, model, model_config, config, train_cache, val_cache, val_records):
        """A `PretrainTask` for pretrain stages, or None where the recipe has no clip targets."""
        return None

    def samples(self, name: str, folder: str, cache, count: int, seed: int) -> list:
        """`count` extra conversations from the source `name` (a stage's `mix`)."""
        raise ValueError(f"recipe {self.name!r} has no sample source {name!r} (a stage's `mix`)")

    def score(self, records: list[dict], replies: list[str]) -> dict | None:
        """The recipe's own scores of replies (with an "accuracy"), or None to keep the generic ones."""
        return None

    def report(self, score: dict | None, blind: dict | None) -> str | None:
        """A Markdown table of `score` (and the blind model's) for `vqa eval`, or None."""
        return None

    def max_new_tokens(self, default: int) -> int:
        """How long an answer to score may be."""
        return default


class PretrainTask:
    """What a pretrain stage runs: heads over the encoder's tokens, each clip's targets, their loss."""

    heads = None  # an nn.Module; the part "heads"

    def batch(self, cache, rows: list[int]) -> dict:
        raise NotImplementedError

    def loss(self, model, batch: dict, train_pointer: bool):
        raise NotImplementedError

    def validate(self, model, config, precision: str) -> dict:
        raise NotImplementedError


def load_recipe(name: str | None, options: dict[str, Any] | None = None) -> Recipe:
    """The recipe a module exposes as `RECIPE` (None: the generic one), built with its options."""
    if not name:
        if options:
            raise ValueError(f"recipe_options {sorted(options)} given without a recipe")
        return Recipe()
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        raise ValueError(f"recipe {name!r} is not an importable module: {e}") from e
    cls = getattr(module, "RECIPE", None)
    if not (isinstance(cls, type) and issubclass(cls, Recipe)):
        raise ValueError(f"module {name!r} has no RECIPE (a vqa.train.recipe.Recipe subclass)")
    return cls(**(options or {}))


def dataset_recipe(folder: str | Path) -> str | None:
    """The recipe a dataset folder names in its dataset.json, if any."""
    path = Path(folder) / DATASET_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("recipe")
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{path}: not a JSON object naming a recipe: {e}") from e
