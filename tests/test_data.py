"""vqa.data: reading qa.jsonl, the feature cache (decoded once), sample packing and the resumable order."""
from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import tiny_config
from vqa import data
from vqa.data import EpochOrder, FeatureCache, load_features, qa_samples, rank_share, read_qa


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """A 4-clip AVSynth split, generated in one process."""
    from vqa.synth.generate import generate

    folder = tmp_path_factory.mktemp("avsynth")
    generate(folder, 4, seed=11, workers=1, progress=False)
    return folder


@pytest.fixture
def config():
    cfg = tiny_config()
    cfg.encoder.audio_frames = 64
    return cfg


def test_read_qa_normalises_llava_turns(split):
    records = read_qa(split)
    assert records and all(r["messages"][0]["role"] == "user" for r in records)
    assert records[0]["messages"][1] == {"role": "assistant", "content": records[0]["answer"]}


@pytest.mark.parametrize("line, message", [
    ('{"conversations": []}', "needs `video` and `conversations`"),
    ('{"video": "a.mp4", "conversations": [{"from": "robot", "value": "hi"}]}', "unknown conversation role"),
    ("{not json", "qa.jsonl:1: not a JSON object"),
])
def test_read_qa_names_the_problem(tmp_path, line, message):
    (tmp_path / "qa.jsonl").write_text(line + "\n")
    with pytest.raises(ValueError, match=message):
        read_qa(tmp_path)


def test_missing_split_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="vqa synth --out"):
        data.ensure_split(tmp_path / "nothing", clips=0, seed=0)


def test_cache_matches_the_decoding_path(split, config):
    from vqa.features import frames_to_tensor, log_mel
    from vqa.media import load_clip

    cache = load_features(split, config, workers=1, progress=False)
    m = config.media
    assert cache.frames.shape == (4, m.num_frames, m.size, m.size, 3) and cache.frames.dtype == torch.uint8
    assert cache.mel.shape == (4, m.n_mels, config.encoder.audio_frames) and cache.mel.dtype == torch.float16
    video = cache.videos[2]
    clip = load_clip(split / video, num_frames=m.num_frames, size=m.size)
    frames, mel = cache.inputs([2])
    torch.testing.assert_close(frames[0], frames_to_tensor(clip.frames))
    expected = log_mel(clip.audio, m, duration=clip.duration, num_frames=config.encoder.audio_frames)
    torch.testing.assert_close(mel[0], expected, atol=2e-2, rtol=1e-2)  # float16 storage


def test_cache_is_decoded_once_and_extended_with_only_new_clips(split, config, monkeypatch):
    load_features(split, config, workers=1, progress=False)
    decoded = []
    real = data._decode

    def counting(job):
        decoded.append(job[0])
        return real(job)

    monkeypatch.setattr(data, "_decode", counting)
    cache = load_features(split, config, workers=1, progress=False)
    assert decoded == [] and len(cache) == 4
    # a changed media option is a different cache
    config.media.n_mels = 24
    load_features(split, config, videos=cache.videos[:1], workers=1, progress=False)
    assert len(decoded) == 1
    load_features(split, config, workers=1, progress=False)
    assert len(decoded) == 4  # the three missing clips only


def test_unknown_clip_is_a_clear_error(split, config):
    cache = load_features(split, config, workers=1, progress=False)
    with pytest.raises(KeyError, match="not in the feature cache"):
        cache.row("clips/nope.mp4")


def _records(clips: int, per_clip: int) -> list[dict]:
    return [
        {"video": f"c{c}.mp4", "messages": [{"role": "user", "content": f"<video>\nq{c}-{q}"},
                                            {"role": "assistant", "content": f"a{c}-{q}"}]}
        for c in range(clips) for q in range(per_clip)
    ]


@pytest.mark.parametrize("turns, expected", [(1, 15), (2, 9), (5, 3), (9, 3)])
def test_packing_shows_each_clip_once_and_keeps_every_answer(turns, expected):
    cache = FeatureCache([f"c{c}.mp4" for c in range(3)], torch.zeros(3, 1), torch.zeros(3, 1))
    samples = qa_samples(_records(3, 5), cache, turns=turns, seed=0)
    assert len(samples) == expected
    answers = sorted(m["content"] for s in samples for m in s.messages if m["role"] == "assistant")
    assert answers == sorted(f"a{c}-{q}" for c in range(3) for q in range(5))
    for s in samples:
        users = [m["content"] for m in s.messages if m["role"] == "user"]
        assert users[0].startswith("<video>\n") and not any("<video>" in u for u in users[1:])
        assert {u.split("q")[-1].split("-")[0] for u in users} == {str(s.row)}  # one clip per conversation


def test_epoch_order_is_a_permutation_per_epoch_and_a_function_of_position():
    order = EpochOrder(10, seed=3)
    first, second = order.take(0, 10), order.take(10, 10)
    assert sorted(first) == sorted(second) == list(range(10)) and first != second
    assert EpochOrder(10, seed=3).take(7, 6) == (first + second)[7:13]  # resume anywhere


def test_ranks_split_each_global_batch():
    order = EpochOrder(12, seed=0)
    shares = [rank_share(order, 4, 3, rank, 2) for rank in range(2)]
    assert shares[0] + shares[1] == order.take(4, 6)


def test_cache_file_records_its_clips(split, config):
    from safetensors import safe_open

    cache = load_features(split, config, workers=1, progress=False)
    path = split / f"features-{data.cache_key(config.media, config.encoder.audio_frames)}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["videos"]) == cache.videos


def test_describe_samples_show_each_clip_with_its_description(split, config):
    from vqa.synth.describe import DESCRIBE_QUESTIONS, describe

    cache = load_features(split, config, workers=1, progress=False)
    meta = data.read_meta(split)
    samples = data.describe_samples(meta, cache, count=10, seed=3)
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
    assert samples == data.describe_samples(meta, cache, count=10, seed=3)
    with pytest.raises(ValueError, match="no clip of the feature cache has metadata"):
        data.describe_samples({}, cache, count=1)
