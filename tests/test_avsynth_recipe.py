"""vqa.avsynth.recipe: AVSynth's part of training (splits, descriptions, scoring), and the core's independence."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import tiny_config
from vqa.avsynth.recipe import AVSynthRecipe, describe_samples, ensure_split, read_meta
from vqa.data import load_features


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """A 4-clip AVSynth split, generated in one process."""
    from vqa.avsynth.generate import generate

    folder = tmp_path_factory.mktemp("avsynth")
    generate(folder, 4, seed=11, workers=1, progress=False)
    return folder


@pytest.fixture
def config():
    cfg = tiny_config()
    cfg.encoder.audio_frames = 64
    return cfg


def test_importing_the_core_imports_no_benchmark():
    core = ("vqa", "vqa.api", "vqa.bundle", "vqa.config", "vqa.data", "vqa.encoder", "vqa.evaluate", "vqa.features",
            "vqa.finetune", "vqa.llm", "vqa.media", "vqa.model", "vqa.prompt", "vqa.train.loop", "vqa.webapp",
            "vqa.cli")
    code = f"import importlib, sys\nfor m in {core!r}: importlib.import_module(m)\n" \
           "print(sorted(m for m in sys.modules if m.startswith('vqa.avsynth')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_generated_splits_name_their_recipe(split):
    from vqa.train.recipe import dataset_recipe, load_recipe

    assert dataset_recipe(split) == "vqa.avsynth"
    assert isinstance(load_recipe("vqa.avsynth"), AVSynthRecipe)


def test_unknown_recipe_options_are_named():
    with pytest.raises(ValueError, match=r"no options \['dense_wieght'\]"):
        AVSynthRecipe(dense_wieght=0.1)


def test_source_pointer_is_written_into_the_model_config(config):
    from vqa.avsynth.caption import CAPTION, source_pointer

    config.encoder.summary_tokens = len(CAPTION)
    AVSynthRecipe(source_pointer=True).configure_model(config)
    assert config.encoder.pointer == source_pointer()
    config.encoder.summary_tokens = 3
    config.encoder.pointer = None
    with pytest.raises(ValueError, match=f"source_pointer needs summary_tokens >= {len(CAPTION)}"):
        AVSynthRecipe(source_pointer=True).configure_model(config)


def test_missing_split_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="vqa synth --out"):
        ensure_split(tmp_path / "nothing", clips=0, seed=0)


def test_describe_samples_show_each_clip_with_its_description(split, config):
    from vqa.avsynth.describe import DESCRIBE_QUESTIONS, describe

    cache = load_features(split, config, workers=1, progress=False)
    meta = read_meta(split)
    samples = describe_samples(meta, cache, count=10, seed=3)
    assert len(samples) == 10
    by_row = {cache.row(v): v for v in cache.videos}
    first_pass = [s.row for s in samples[:len(cache.videos)]]
    assert sorted(first_pass) == sorted(by_row)  # every clip once before any twice
    for s in samples:
        question, answer = s.messages
        assert question["content"].startswith("<video>\n")
        assert question["content"].removeprefix("<video>\n") in DESCRIBE_QUESTIONS
        assert answer == {"role": "assistant", "content": describe(meta[by_row[s.row]])}
    assert len({s.messages[0]["content"] for s in samples}) > 1
    assert samples == describe_samples(meta, cache, count=10, seed=3)
    with pytest.raises(ValueError, match="no clip of the feature cache has metadata"):
        describe_samples({}, cache, count=1)
