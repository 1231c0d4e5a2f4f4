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
