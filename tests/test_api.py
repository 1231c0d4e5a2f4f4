"""The Python API over the real bundled LLM and a tiny untrained encoder."""
import re
import threading

import pytest

import vqa.api
from tests import media_factory as mf
from tests.helpers import tiny_config, write_clip
from vqa.api import VideoQA
from vqa.limits import MAX_CONVERSATION_TOKENS, HistoryError, QuestionError
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
    again = qa.chat(chat.prepared)  # a prepared clip starts a chat as it is
    assert again.prepared is chat.prepared and encoded == []
    assert again.ask("Describe the clip.", max_new_tokens=8) == a1


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
    with pytest.raises(MediaError, match="https://example.com/clip.mp4 is a web address"):
        qa.ask("https://example.com/clip.mp4", "What is this?")


def test_max_duration_refuses_a_clip_whose_header_has_no_duration(qa, tmp_path, monkeypatch):
    path = mf.write_streamed_mkv(tmp_path / "streamed.mkv", seconds=60)
    limited = VideoQA(qa.model, max_duration=10)
    monkeypatch.setattr(vqa.api, "clip_features", lambda *a, **k: pytest.fail("a clip over the limit was encoded"))
    with pytest.raises(MediaError, match="streamed.mkv lasts more than 10 s; clips up to 10 s are accepted"):
        limited.ask(path, "What is seen?")
    assert limited._cache == {}


def test_max_duration_also_holds_for_a_clip_cached_without_it(qa, clip):
    qa.prepare(clip)  # 1 s, cached by the unlimited object; the same model and cache under a tighter limit:
    qa_limit, qa.max_duration = qa.max_duration, 0.5
    try:
        with pytest.raises(MediaError, match="lasts 1 s; clips up to 0 s"):
            qa.prepare(clip)
    finally:
        qa.max_duration = qa_limit


def test_cache_is_bounded_by_bytes_and_holds_no_sound(qa, tmp_path):
    paths = [write_clip(tmp_path / f"c{i}.mp4", seconds=2.0, tone_hz=200.0 + 100 * i) for i in range(4)]
    one = VideoQA(qa.model).prepare(paths[0])
    assert one.clip.audio.size == 0 and one.mel.shape[0] == qa.config.media.n_mels  # the log-mel stays
    small = VideoQA(qa.model, cache_bytes=int(2.5 * one.nbytes))
    for p in paths:
        small.prepare(p)
    assert len(small._cache) == 2 and sum(p.nbytes for p in small._cache.values()) <= 2.5 * one.nbytes
    tiny = VideoQA(qa.model, cache_bytes=one.nbytes // 2)  # an entry over the whole budget is not kept
    assert tiny.prepare(paths[0]).tokens.shape == one.tokens.shape and len(tiny._cache) == 0


@pytest.mark.parametrize("question", ["", "   ", "\n\t "])
def test_blank_questions_are_refused_before_any_work(qa, clip, question, monkeypatch):
    monkeypatch.setattr(qa, "prepare", lambda v: pytest.fail("a blank question decoded the clip"))
    with pytest.raises(QuestionError, match="^Give a question.$"):
        qa.ask(clip, question)
    with pytest.raises(QuestionError, match="^Give a question.$"):
        list(qa.stream(clip, question))


def test_long_question_is_refused_with_the_limit(qa, clip, monkeypatch):
    monkeypatch.setattr(qa, "prepare", lambda v: pytest.fail("a too long question decoded the clip"))
    with pytest.raises(QuestionError, match=r"too long \(\d+ tokens\); the limit is 256 tokens"):
        qa.ask(clip, "why " * 300)
    with pytest.raises(QuestionError, match=r"too long \(5000 tokens\); the limit is 256 tokens"):
        qa.ask(clip, "x" * 20_000)  # 4 characters a token
    with pytest.raises(QuestionError, match=r"too long \(1,000,000 characters\); the limit is 256 tokens"):
        qa.ask(clip, "x" * 1_000_000)  # refused without tokenising it all


def test_long_history_keeps_its_newest_turns_within_the_budget(qa, clip, monkeypatch):
    history = []
    for i in range(400):
        history += [{"role": "user", "content": f"Question number {i} about the clip?"},
                    {"role": "assistant", "content": f"Answer number {i}, which is long enough to count."}]
    question, kept, dropped = qa.check_request("What now?", history)
    assert dropped > 0 and kept == history[dropped:] and kept[0]["role"] == "user"
    tokens = sum(len(qa.model.tokenizer(t["content"])["input_ids"]) for t in kept)
    assert MAX_CONVERSATION_TOKENS // 2 < tokens <= MAX_CONVERSATION_TOKENS
    seen = []  # the model sees exactly the kept turns, then the question
    monkeypatch.setattr(qa.model, "stream", lambda tokens, messages, **kw: seen.append(messages) or iter(["ok"]))
    assert qa.ask(clip, "What now?", history=history) == "ok"
    assert seen[0][1:] == [{"role": t["role"], "content": t["content"]} for t in kept[1:]] + [
        {"role": "user", "content": "What now?"}]
    assert seen[0][0]["content"].endswith(kept[0]["content"])  # after the clip's placeholder
    assert qa.check_request("What now?", history[-4:])[2] == 0  # a short history is kept whole


@pytest.mark.parametrize("history, problem", [
    ("not a list", "must be a list"),
    ([{"role": "user"}], "turn 0 is not a {role, content} message"),
    ([{"role": "user", "content": "hi"}, ["a", "b"]], "turn 1 is not"),
    ([{"role": "system", "content": "obey"}], "turn 0 has role 'system'"),
    ([{"role": "user", "content": 5}], "turn 0 has content of type int"),
])
def test_malformed_history_gets_a_specific_message(qa, clip, history, problem):
    with pytest.raises(HistoryError, match=re.escape(problem)):
        qa.ask(clip, "What is seen?", history=history)


def test_a_folder_is_called_a_folder(qa, tmp_path):
    with pytest.raises(MediaError, match="is a folder, not a video file"):
        qa.ask(tmp_path, "What is this?")


@pytest.fixture
def exact(qa):
    before, qa.model.decoding = qa.model.decoding, "exact"
    yield qa
    qa.model.decoding = before


def count_new_positions(qa, monkeypatch):
    """Positions the lean decoder computes per call for a prompt (not the answer's steps)."""
    dec = qa.model.decoder()
    calls = []
    real = dec.forward
    monkeypatch.setattr(dec, "forward", lambda e, c, **k: (k.get("prompt") and calls.append(e.shape[1]))
                        or real(e, c, **k))
    return calls


def test_follow_up_computes_only_its_new_tokens(exact, clip, monkeypatch):
    qa = exact
    monkeypatch.setattr(qa, "prefixes", vqa.api.PrefixPool(vqa.api.PREFIX_CACHE_BYTES))  # nothing left by others
    calls = count_new_positions(qa, monkeypatch)
    chat = qa.chat(clip)
    first = chat.ask("Describe the clip.", max_new_tokens=6)
    prompt_len = sum(calls)
    assert len(calls) == 1 and prompt_len > qa.model.num_video_tokens
    calls.clear()
    follow = chat.ask("And the sound?", max_new_tokens=6)
    assert len(calls) == 1 and 0 < calls[0] < 20, calls  # "...<|im_end|>\n<|im_start|>user\nAnd the sound?..."
    # the same answers as a model that computes every prompt whole
    monkeypatch.setattr(qa, "prefixes", vqa.api.PrefixPool(0))
    calls.clear()
    assert qa.ask(clip, "Describe the clip.", max_new_tokens=6) == first
    assert sum(calls) == prompt_len
    calls.clear()
    assert qa.ask(clip, "And the sound?", history=chat.history[:2], max_new_tokens=6) == follow
    assert sum(calls) > prompt_len  # the whole conversation again


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


def test_the_unfamiliar_line_is_read_by_bundles_that_learned_it(qa, monkeypatch):
    from types import SimpleNamespace as NS

    from vqa.perception import UNFAMILIAR, Perception, sight

    p = Perception(None, sight.Concepts([], [], 0.4), None, 3.0)
    unlike, like = NS(perception=p, unfamiliar="its picture is unlike theirs"), NS(perception=p, unfamiliar=None)
    assert UNFAMILIAR not in qa._context(unlike)  # the tiny config did not learn it
    monkeypatch.setattr(qa.model.config, "unfamiliar_line", True)
    assert UNFAMILIAR in qa._context(unlike) and UNFAMILIAR not in qa._context(like)
    assert qa._context(NS(perception=None, unfamiliar="why")) == ""  # perception off: no text at all


def test_a_warmed_clip_leaves_its_first_question_only_its_own_tokens(qa, clip, monkeypatch):
    decoder = qa.model.decoder()
    if decoder is None:
        pytest.skip("the lean decoder does not run this LLM")
    prepared = qa.prepare(clip)
    question = "What is in the video?"
    monkeypatch.setattr(qa, "prefixes", vqa.api.PrefixPool(1 << 28))
    cold = qa.ask(prepared, question, max_new_tokens=12)
    monkeypatch.setattr(qa, "prefixes", vqa.api.PrefixPool(1 << 28))
    n = qa.warm(prepared)
    assert n > qa.model.num_video_tokens and qa.warm(prepared) == 0  # computed once
    rows = []
    forward = decoder.forward
    monkeypatch.setattr(decoder, "forward", lambda embeds, cache, **kw: rows.append(embeds.shape[1]) or
                        forward(embeds, cache, **kw))
    assert qa.ask(prepared, question, max_new_tokens=12) == cold  # the same answer
    ids = qa.model.encode_prompt(vqa.api._messages([], question, qa._context(prepared))).input_ids
    assert rows[0] == len(ids) - n < 16  # the prompt computed only the question's own tokens
    rows.clear()
    assert qa.ask(prepared, question, max_new_tokens=12) == cold  # asked again: the pool holds the first answer
    assert rows[0] == len(ids) - n  # cut back to the clip's start, so the question is computed as before


def test_warm_up_runs_the_clip_path_once_and_caches_nothing(qa, monkeypatch):
    import vqa.perception as perception
    from vqa.perception import sight, speech

    encoded, perceived, whispered = [], [], []
    encode = qa.model.get_video_features
    monkeypatch.setattr(qa.model, "get_video_features", lambda f, m: encoded.append((f.shape, m.shape)) or encode(f, m))
    monkeypatch.setattr(perception, "perceive", lambda clip: perceived.append(clip.frames.shape))
    monkeypatch.setattr(speech, "missing", lambda: None)
    monkeypatch.setattr(speech, "warm_up", lambda: whispered.append(True))
    media = qa.config.media
    seeing = VideoQA(qa.model, perception=True)
    assert seeing.warm_up() > 0
    assert encoded == [((1, media.num_frames, 3, media.size, media.size), encoded[0][1])]
    assert perceived == [(perception.SIGHT_FRAMES, sight.SIZE, sight.SIZE, 3)]  # at sight's own size
    assert whispered == [True]
    assert len(seeing._cache) == 0
    encoded.clear(), perceived.clear()
    VideoQA(qa.model, perception=False).warm_up()
    assert len(encoded) == 1 and perceived == []  # perception off: the encoder alone


def test_perception_sees_the_frames_decoded_beside_the_model(qa, clip, monkeypatch):
    from vqa import media
    from vqa.perception import perceive, sight

    if sight.missing():
        pytest.skip(sight.missing())
    seeing = VideoQA(qa.model, perception=True)
    passes, sample = [], media._sample_frames
    monkeypatch.setattr(media, "_sample_frames", lambda *a, **k: passes.append(a[6]) or sample(*a, **k))
    prepared = seeing.prepare(clip)
    assert passes == [qa.config.media.size]  # one pass over the file for the model's frames and sight's
    alone = perceive(clip)  # perception on its own decodes the file again, at its own size
    assert passes[1:] == [sight.SIZE]
    assert prepared.perception.to_text() == alone.to_text() and prepared.perception.concepts.frame_top
