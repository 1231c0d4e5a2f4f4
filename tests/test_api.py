"""The Python API over the real bundled LLM and a tiny untrained encoder."""
import threading

import pytest

import vqa.api
from tests.helpers import tiny_config, write_clip
from vqa.api import VideoQA
from vqa.media import MediaError


@pytest.fixture(scope="module")
def qa():
    return VideoQA.untrained(tiny_config())


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clips") / "clip.mp4")


def test_ask_and_stream_agree(qa, clip):
    pieces = list(qa.stream(clip, "What is in the video?", max_new_tokens=12))
    assert len(pieces) >= 2
    answer = qa.ask(clip, "What is in the video?", max_new_tokens=12)
    assert answer and answer == "".join(pieces).strip()


def test_second_question_reuses_the_encoded_clip(qa, clip, monkeypatch):
    qa.prepare(clip)
    calls = []
    real = vqa.api.load_clip
    monkeypatch.setattr(vqa.api, "load_clip", lambda *a, **k: calls.append(a) or real(*a, **k))
    first = qa.prepare(clip)
    assert qa.prepare(clip) is first
    qa.ask(clip, "Is there a sound?", max_new_tokens=4)
    assert calls == []


def test_cache_is_bounded(clip, tmp_path):
    small = VideoQA(VideoQA.untrained(tiny_config()).model, cache_size=2)
    paths = [write_clip(tmp_path / f"c{i}.mp4", tone_hz=200.0 + 100 * i) for i in range(3)]
    for p in paths:
        small.prepare(p)
    assert len(small._cache) == 2


def test_chat_keeps_history_and_encodes_once(qa, clip, monkeypatch):
    chat = qa.chat(clip)
    encoded = []
    monkeypatch.setattr(qa, "prepare", lambda v: encoded.append(v))
    a1 = chat.ask("Describe the clip.", max_new_tokens=8)
    a2 = chat.ask("And the sound?", max_new_tokens=8)
    assert a1 and a2
    assert [t["role"] for t in chat.history] == ["user", "assistant", "user", "assistant"]
    assert encoded == []
    chat.reset()
    assert chat.history == []


def test_threads_get_the_same_answers_as_serial_calls(qa, clip):
    questions = ["What is in the video?", "Is there a beep?", "What color is the square?"]
    serial = [qa.ask(clip, q, max_new_tokens=8) for q in questions]
    results = [None] * len(questions)

    def worker(i):
        results[i] = qa.ask(clip, questions[i], max_new_tokens=8)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == serial


def test_bad_inputs_raise_media_error(qa, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all")
    with pytest.raises(MediaError, match="notes.mp4"):
        qa.ask(text, "What is this?")
    with pytest.raises(MediaError, match="no such file"):
        qa.ask(tmp_path / "missing.mp4", "What is this?")


@pytest.fixture
def exact(qa):
    qa.model.decoding = "exact"
    yield qa
    qa.model.decoding = "fast"


def count_new_positions(qa, monkeypatch):
    """Positions the lean decoder computes per call."""
    dec = qa.model.decoder()
    calls = []
    real = dec.forward
    monkeypatch.setattr(dec, "forward", lambda e, c, **k: calls.append(e.shape[1]) or real(e, c, **k))
    return calls


def test_follow_up_computes_only_its_new_tokens(exact, clip, monkeypatch):
    qa = exact
    calls = count_new_positions(qa, monkeypatch)
    chat = qa.chat(clip)
    first = chat.ask("Describe the clip.", max_new_tokens=6)
    prompt_len = calls[0]
    assert prompt_len > qa.model.num_video_tokens
    calls.clear()
    follow = chat.ask("And the sound?", max_new_tokens=6)
    assert 0 < calls[0] < 20, calls  # "...<|im_end|>\n<|im_start|>user\nAnd the sound?..." only
    # the same answers as a model that computes every prompt whole
    pool, qa.prefixes = qa.prefixes, vqa.api.PrefixPool(0)
    try:
        assert qa.ask(clip, "Describe the clip.", max_new_tokens=6) == first
        calls.clear()
        assert qa.ask(clip, "And the sound?", history=chat.history[:2], max_new_tokens=6) == follow
        assert calls[0] > prompt_len
    finally:
        qa.prefixes = pool


def test_prefix_pool_is_bounded(exact, tmp_path):
    qa = exact
    paths = [write_clip(tmp_path / f"p{i}.mp4", tone_hz=300.0 + 100 * i) for i in range(3)]
    pool, qa.prefixes = qa.prefixes, vqa.api.PrefixPool(vqa.api.PREFIX_CACHE_BYTES)
    try:
        qa.ask(paths[0], "Is there a beep?", max_new_tokens=2)
        one = qa.prefixes.nbytes()
        assert one > 0
        qa.prefixes.max_bytes = 2 * one
        for p in paths:
            qa.ask(p, "Is there a beep?", max_new_tokens=2)
        assert len(qa.prefixes) == 2 and qa.prefixes.nbytes() <= 2 * one
    finally:
        qa.prefixes = pool


def test_ask_many_equals_one_at_a_time(exact, clip, tmp_path):
    qa = exact
    other = write_clip(tmp_path / "other.mp4", tone_hz=None)
    pairs = [(clip, "What is in the video?"), (other, "Is there a sound?"), (clip, "What color is the square?")]
    assert qa.ask_many(pairs, batch_size=2, max_new_tokens=6) == [qa.ask(v, q, max_new_tokens=6) for v, q in pairs]
    with pytest.raises(ValueError, match="batch_size"):
        qa.ask_many(pairs, batch_size=0)
