"""vqa.data: reading qa.jsonl (line numbers, missing and broken clips skipped), the feature cache (decoded once), sample packing and the resumable order."""
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
    from vqa.avsynth.generate import generate

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
    ('{"conversations": []}', "qa.jsonl:1: a record needs `video`"),
    ('{"video": "a.mp4", "conversations": [{"from": "human", "value": "hi"}]}', "holds an answer"),
    ('{"video": "a.mp4", "conversations": [{"from": "human"}]}', "qa.jsonl:1: malformed conversation"),
    ('[1, 2]', "qa.jsonl:1: expected a JSON object"),
    ('{"video": "a.mp4", "conversations": [{"from": "robot", "value": "hi"}]}', "unknown conversation role"),
    ("{not json", "qa.jsonl:1: not a JSON object"),
])
def test_read_qa_names_the_problem(tmp_path, line, message):
    (tmp_path / "qa.jsonl").write_text(line + "\n")
    with pytest.raises(ValueError, match=message):
        read_qa(tmp_path)


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
    real = data.cache._decode

    def counting(job):
        decoded.append(job[0])
        return real(job)

    monkeypatch.setattr(data.cache, "_decode", counting)
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


def test_packing_reads_the_perception_text_once():
    from vqa.data.perception import with_perception

    cache = FeatureCache(["c0.mp4"], torch.zeros(1, 1), torch.zeros(1, 1))
    records = with_perception(_records(1, 3), {"c0.mp4": "Sound: music."})
    (sample,) = qa_samples(records, cache, turns=3, seed=0)
    users = [m["content"] for m in sample.messages if m["role"] == "user"]
    assert users[0].startswith("<video>\nSound: music.\nq0-") and len(users) == 3
    assert all(u.startswith("q0-") for u in users[1:])


def test_records_marked_unfamiliar_read_their_clips_text_with_the_unfamiliar_line(tmp_path, monkeypatch):
    from vqa import perception
    from vqa.data import perception as data_perception
    from vqa.perception import Perception, sight

    perceived = []

    def fake_perceive(path):
        perceived.append(path.name)
        return Perception(None, sight.Concepts([], [], 0.0), None, 3.0)

    monkeypatch.setattr(perception, "perceive", fake_perceive)
    records = [{**r, "unfamiliar": True} if r["video"] == "c1.mp4" else r for r in _records(2, 2)]
    words = lambda text, add_special_tokens=False: {"input_ids": text.split()}  # noqa: E731 (a tokenizer)
    texts = data_perception.perception_texts(tmp_path, [r["video"] for r in records], 80, words, "llm",
                                             progress=False, unfamiliar={"c1.mp4"})
    assert sorted(perceived) == ["c0.mp4", "c1.mp4"]  # each clip perceived once, for both of its texts
    assert set(texts) == {"c0.mp4", "c1.mp4", "c1.mp4#unfamiliar"}
    assert perception.UNFAMILIAR in texts["c1.mp4#unfamiliar"] and perception.UNFAMILIAR not in texts["c1.mp4"]
    out = data_perception.with_perception(records, texts)
    for r in out:
        assert (perception.UNFAMILIAR in r["messages"][0]["content"]) == (r["video"] == "c1.mp4")
        assert (perception.UNFAMILIAR in r["perception"]) == (r["video"] == "c1.mp4")
    again = data_perception.perception_texts(tmp_path, ["c0.mp4", "c1.mp4"], 80, words, "llm", progress=False,
                                             unfamiliar={"c1.mp4"})
    assert again == texts and len(perceived) == 2  # read back from the file beside the dataset


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
    path = split / f"features-{data.cache.cache_key(config.media, config.encoder.audio_frames)}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["videos"]) == cache.videos


def write_dataset(folder, clips: dict[str, dict], records: list[dict]):
    """A qa.jsonl over clips made with tests.helpers.write_clip ({name: its options}; None: no file)."""
    from tests.helpers import write_clip

    (folder / "clips").mkdir(parents=True, exist_ok=True)
    for name, options in clips.items():
        if options is not None:
            write_clip(folder / "clips" / name, **options)
    (folder / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def record(video: str, *turns: str) -> dict:
    convs = [{"from": "human" if i % 2 == 0 else "gpt", "value": ("<video>\n" if i == 0 else "") + t}
             for i, t in enumerate(turns)]
    return {"video": f"clips/{video}", "conversations": convs}


def test_a_missing_or_broken_clip_is_reported_once_with_its_lines_and_skipped(tmp_path, config, caplog):
    folder = write_dataset(tmp_path, {"good.mp4": {}, "gone.mp4": None}, [
        record("good.mp4", "What moves?", "A square."), record("gone.mp4", "Q1?", "A1."),
        record("gone.mp4", "Q2?", "A2."), record("broken.mp4", "Q3?", "A3."),
    ])
    (folder / "clips" / "broken.mp4").write_bytes(b"not a video at all")
    records = read_qa(folder)
    with caplog.at_level("WARNING", logger="vqa"):
        cache = load_features(folder, config, records=records, workers=1, progress=False)
    assert cache.videos == ["clips/good.mp4"]
    assert data.usable(records, cache) == records[:1]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert any("qa.jsonl:2,3: skipping clip clips/gone.mp4 (2 records): the file does not exist" in m for m in messages)
    assert any("qa.jsonl:4: skipping clip clips/broken.mp4" in m for m in messages)


def test_a_dataset_with_no_decodable_clip_says_so(tmp_path, config):
    folder = write_dataset(tmp_path, {"gone.mp4": None}, [record("gone.mp4", "Q?", "A.")])
    with pytest.raises(ValueError, match="none of its 1 clips could be decoded"):
        load_features(folder, config, workers=1, progress=False)


def test_multi_turn_records_label_every_answer(bundled_llm, tmp_path):
    from tests.helpers import tiny_llm
    from vqa.model import VideoLLM
    from vqa.prompt import IGNORE_INDEX

    _, tokenizer = bundled_llm
    folder = write_dataset(tmp_path, {}, [record("a.mp4", "What is it?", "A red ball.", "And the sound?", "A bell.")])
    (r,) = read_qa(folder)
    model = VideoLLM(tiny_config(), tiny_llm(tokenizer), tokenizer)
    prompt = model.encode_prompt(r["messages"])
    answered = tokenizer.decode(prompt.input_ids[prompt.labels != IGNORE_INDEX])
    assert "A red ball." in answered and "A bell." in answered and "sound" not in answered


def test_holdout_splits_by_clip_with_at_least_one_and_never_all():
    records = [{"video": f"c{i // 3}.mp4"} for i in range(30)]  # 10 clips, 3 questions each
    train, held = data.split_holdout(records, 0.1, seed=0)
    assert len(held) == 3 and len(train) == 27
    assert not {r["video"] for r in train} & {r["video"] for r in held}
    assert data.split_holdout(records, 0.1, seed=0) == (train, held)
    train, held = data.split_holdout(records[:6], 0.1, seed=0)  # 2 clips: one held out
    assert len({r["video"] for r in held}) == 1 and train
    with pytest.raises(ValueError, match="pass --val"):
        data.split_holdout(records[:3], 0.1)


def test_a_folder_of_clips_without_qa_jsonl_is_told_what_to_write(tmp_path):
    from vqa.data.records import DatasetError, read_qa

    (tmp_path / "clips").mkdir()
    for name in ("b.MOV", "a.mp4", "notes.txt"):
        (tmp_path / "clips" / name).write_bytes(b"x")
    with pytest.raises(DatasetError) as e:
        read_qa(tmp_path)
    message = str(e.value)
    assert "has no qa.jsonl" in message and "2 clips (clips/a.mp4, clips/b.MOV)" in message
    example = json.loads(message.split("\n")[1])  # the example line is a record for the first clip
    assert example["video"] == "clips/a.mp4" and example["conversations"][0]["value"].startswith("<video>\n")
    with pytest.raises(DatasetError, match="dataset folder .* does not exist"):
        read_qa(tmp_path / "nowhere")
