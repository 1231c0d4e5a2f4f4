"""The web chat's example clips: generated once into the cache, each with a question the adapter knows."""
from __future__ import annotations

import json

from vqa.avsynth.examples import INDEX, example_clips
from vqa.avsynth.describe import DESCRIBE_QUESTIONS


def test_examples_are_generated_once_with_varied_questions(tmp_path):
    folder = tmp_path / "examples"
    pairs = example_clips(folder, n=4, seed=5)
    assert len(pairs) == 4
    assert all(clip.is_file() and clip.suffix == ".mp4" and clip.parent == folder for clip, _ in pairs)
    questions = [q for _, q in pairs]
    assert len(set(questions)) == 4, questions
    assert DESCRIBE_QUESTIONS[0] in questions
    assert all(q.strip() for q in questions)
    index = folder / INDEX
    stamp = index.stat().st_mtime_ns
    assert example_clips(folder, n=4, seed=5) == pairs  # read back, not generated again
    assert index.stat().st_mtime_ns == stamp
    assert len(json.loads(index.read_text())) == 4


def test_a_broken_index_is_regenerated_and_a_failed_generation_gives_none(tmp_path, monkeypatch):
    folder = tmp_path / "examples"
    folder.mkdir()
    (folder / INDEX).write_text("{not json")
    assert len(example_clips(folder, n=2, seed=5)) == 2

    import vqa.avsynth.examples as examples

    monkeypatch.setattr(examples, "_generate", lambda *a: (_ for _ in ()).throw(RuntimeError("no encoder")))
    assert example_clips(tmp_path / "other", n=2, seed=5) == []
