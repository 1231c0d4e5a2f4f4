"""The web chat: its handlers in-process, then the real app in a subprocess through gradio_client.

The served app runs the real bundled LLM on the untrained model (no adapter needs to exist),
with a 20 s duration limit so a real clip can be refused for length.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, shared_media

MAX_NEW_TOKENS = 16
STARTUP_TIMEOUT_S = 600


# ---- handlers, in-process ----

def test_frames_strip_lays_out_every_frame_with_its_time():
    from vqa.webapp import frames_strip

    frames = np.zeros((10, 32, 32, 3), np.uint8)
    frames[:, :, :, 0] = np.linspace(0, 250, 10, dtype=np.uint8)[:, None, None]  # red rises frame by frame
    strip = frames_strip(frames, np.linspace(0, 4.5, 10), tile=40, per_row=8)
    caption = 18
    assert strip.shape == (2 * (40 + caption), 8 * 44 - 4, 3)
    # frame i sits at row i // 8, column i % 8, in order
    for i in range(10):
        r, c = divmod(i, 8)
        assert strip[r * (40 + caption) + 20, c * 44 + 20, 0] == frames[i, 0, 0, 0]
    # captions are drawn: dark text pixels under the first tile
    assert (strip[40:40 + caption, :40] < 128).any()


def test_mel_image_says_when_there_is_no_sound():
    from vqa.webapp import mel_image

    mel = np.random.default_rng(0).normal(size=(16, 50)).astype(np.float32)
    with_sound, silent = mel_image(mel, 2.0, True), mel_image(mel, 2.0, False)
    assert with_sound.ndim == 3 and with_sound.shape[2] == 3 and with_sound.dtype == np.uint8
    assert with_sound.shape == silent.shape
    assert not np.array_equal(with_sound, silent)  # the title differs


@pytest.mark.parametrize("content, text", [
    ("plain", "plain"),
    ([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "ab"),
    ({"type": "text", "text": "one part"}, "one part"),
    ([{"type": "file", "file": {"path": "x.png"}}], ""),
])
def test_text_of_reads_every_message_form(content, text):
    from vqa.webapp import text_of

    assert text_of({"role": "user", "content": content}) == text


def test_respond_ignores_blank_questions():
    from vqa.webapp import respond

    history = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert list(respond("   ", history, None, "untrained", 8, 0.0)) == [(history, "")]


def test_respond_without_a_clip_shows_the_question_then_asks_for_a_clip():
    from vqa.webapp import NOTICE, respond

    out = list(respond("  What is seen? ", [], None, "untrained", 8, 0.0))
    assert out[0] == ([{"role": "user", "content": "What is seen?"}], "")  # the question shows at once
    chat, box = out[-1]
    assert box == "" and chat[-1]["role"] == "assistant"
    assert chat[-1]["content"].startswith(NOTICE) and "Upload a clip" in chat[-1]["content"]


def test_check_clip_refuses_large_files(tmp_path, monkeypatch):
    import vqa.webapp as webapp

    path = tmp_path / "big.mp4"
    path.write_bytes(b"\0" * (2 * 2**20))
    monkeypatch.setattr(webapp, "MAX_UPLOAD_MB", 1)
    with pytest.raises(webapp.ClipRejected, match=r"big.mp4 is 2 MB; the limit is 1 MB"):
        webapp.check_clip(str(path))


def test_check_clip_refuses_long_clips(monkeypatch):
    import vqa.webapp as webapp

    monkeypatch.setattr(webapp, "MAX_DURATION_S", 20.0)
    with pytest.raises(webapp.ClipRejected, match=r"testvideo.mp4 lasts 24 s; clips up to 20 s"):
        webapp.check_clip(str(shared_media("testvideo.mp4")))
    webapp.check_clip(str(shared_media("chaplin.mp4")))  # 9.6 s passes


def test_models_list_bundles_and_resolve_names(tmp_path, monkeypatch):
    from vqa.webapp import UNTRAINED, Models

    for name in ("b-model", "a-model"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "vqa_config.json").write_text("{}")
    (tmp_path / "not-a-bundle").mkdir()
    monkeypatch.setenv("VQA_ADAPTERS_DIR", str(tmp_path))
    models = Models()
    assert models.choices() == ["a-model", "b-model", UNTRAINED]
    assert models.resolve("a-model") == str((tmp_path / "a-model").resolve())
    assert models.resolve(str(tmp_path / "b-model")) == str((tmp_path / "b-model").resolve())
    assert models.resolve(UNTRAINED) == models.resolve(None) == UNTRAINED
    with pytest.raises(ValueError, match=r"no model 'not-a-bundle': pick one of \['a-model', 'b-model', 'untrained'\]"):
        models.resolve("not-a-bundle")


def test_models_load_each_model_once_when_sessions_ask_together():
    from vqa.webapp import Models

    class Counting(Models):  # the real cache and lock, around a slow stand-in loader
        loads = 0

        def _load(self, key):
            Counting.loads += 1
            time.sleep(0.2)
            return object()

    models = Counting()
    got = []
    threads = [threading.Thread(target=lambda: got.append(models.get("untrained"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Counting.loads == 1 and len(got) == 8 and all(g is got[0] for g in got)


# ---- the served app ----

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(log_path: Path, command: list[str], **env) -> tuple[subprocess.Popen, str]:
    """Start the app on a free port; return the process and its URL once it prints it."""
    port = free_port()
    full_env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "VQA_ADAPTER": "untrained",
                "VQA_ADAPTERS_DIR": str(log_path.parent / "no-adapters"), **env}
    log = open(log_path, "w")
    proc = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log_path.read_text()
        if "running at http" in text:
            url = text.split("running at ", 1)[1].split()[0]
            return proc, url
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    stop_server(proc)
    pytest.fail(f"the app did not start in {STARTUP_TIMEOUT_S} s; its output:\n{log_path.read_text()[-4000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """app.py on the untrained default model, with a tiny bundle `tiny` to pick."""
    pytest.importorskip("gradio_client")
    from tests.helpers import tiny_config
    from vqa.api import VideoQA

    root = tmp_path_factory.mktemp("app")
    VideoQA.untrained(tiny_config()).save_pretrained(root / "adapters" / "tiny")
    proc, url = start_server(root / "app.log", [sys.executable, "app.py"], VQA_MAX_DURATION_S="20",
                             VQA_ADAPTERS_DIR=str(root / "adapters"))
    yield url
    stop_server(proc)


def _client(url):
    from gradio_client import Client

    return Client(url, verbose=False)


def _load(client, path, model: str = "untrained", frames_size: tuple[int, int] | None = None) -> str:
    """Upload a clip through the page's own upload event; returns the clip info Markdown."""
    from gradio_client import handle_file
    from PIL import Image

    frames, mel, info, chat = client.predict(handle_file(str(path)), model, api_name="/load_clip")
    if frames_size is not None:
        assert Image.open(frames).size == frames_size
        assert Image.open(mel).size[0] > 300
    return info


def _ask_streamed(client, history: list[dict], question: str, model: str = "untrained") -> tuple[list, list[dict]]:
    """Ask through the chat endpoint; returns every partial chat it streamed and the final chat."""
    job = client.submit(question, history, model, MAX_NEW_TOKENS, api_name="/chat")
    partials = [chat for chat, _box in job]
    chat, box = job.result()
    assert box == ""
    return partials, chat


def _text(message) -> str:
    from vqa.webapp import text_of

    return text_of(message)


@pytest.mark.slow
def test_chat_streams_answers_over_two_turns(server):
    client = _client(server)
    # 16 frames at 112 px a tile, 8 a row, under each its time
    info = _load(client, shared_media("chaplin.mp4"), frames_size=(8 * 116 - 4, 2 * 130))
    assert "chaplin.mp4" in info and "9.6 s" in info and "sound: yes" in info and "16 frames" in info

    partials, chat = _ask_streamed(client, [], "What is happening in this clip?")
    assert len(chat) == 2 and chat[-1]["role"] == "assistant" and _text(chat[-1]).strip()
    answers = [_text(p[-1]) for p in partials if len(p) == 2]
    assert len(answers) >= 2, f"expected several partial answers, got {answers}"
    assert all(b.startswith(a) for a, b in zip(answers, answers[1:])), answers  # each extends the last

    partials, chat = _ask_streamed(client, chat, "And what do you hear?")
    assert [m["role"] for m in chat] == ["user", "assistant", "user", "assistant"]
    assert _text(chat[-1]).strip() and len(partials) >= 2


@pytest.mark.slow
def test_ask_endpoint_answers(server):
    from gradio_client import handle_file

    answer = _client(server).predict(handle_file(str(shared_media("nasa_13013.mp4"))), "What is seen?",
                                      api_name="/ask")
    assert isinstance(answer, str) and answer.strip()


@pytest.mark.slow
def test_sessions_keep_their_own_clip_and_chat(server):
    results = {}
    clips = {name: shared_media(name) for name in ("yoga.mp4", "chaplin.mp4")}  # skips here, not in a thread

    def session(name, question):
        client = _client(server)
        info = _load(client, clips[name])
        _, chat = _ask_streamed(client, [], question)
        results[name] = (info, chat)

    threads = [threading.Thread(target=session, args=a)
               for a in (("yoga.mp4", "Who is in the clip?"), ("chaplin.mp4", "What is the music like?"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert set(results) == {"yoga.mp4", "chaplin.mp4"}, "a session did not finish"
    yoga_info, yoga_chat = results["yoga.mp4"]
    chaplin_info, chaplin_chat = results["chaplin.mp4"]
    assert "yoga.mp4" in yoga_info and "no sound" in yoga_info and "chaplin" not in yoga_info
    assert "chaplin.mp4" in chaplin_info and "sound: yes" in chaplin_info
    assert _text(yoga_chat[0]) == "Who is in the clip?" and _text(chaplin_chat[0]) == "What is the music like?"
    assert _text(yoga_chat[-1]).strip() and _text(chaplin_chat[-1]).strip()

    # a third session has no clip, however many the others loaded
    _, chat = _ask_streamed(_client(server), [], "What is seen?")
    assert "Upload a clip" in _text(chat[-1])


@pytest.mark.slow
@pytest.mark.parametrize("name, make", [
    ("notes.txt", lambda: b"this is not a video\n" * 50),
    ("truncated.mp4", lambda: shared_media("chaplin.mp4").read_bytes()[:3000]),
])
def test_broken_files_get_a_message_and_the_app_keeps_serving(server, tmp_path, name, make):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    path = tmp_path / name
    path.write_bytes(make())
    client = _client(server)
    info = _load(client, path)
    assert "Could not use this clip" in info and name in info and "Traceback" not in info
    with pytest.raises(AppError) as e:
        client.predict(handle_file(str(path)), "What is seen?", api_name="/ask")
    assert name in str(e.value) and "Traceback" not in str(e.value)
    # the same client, and the server, go on working
    info = _load(client, shared_media("big_buck_bunny_432_433.webm"))
    assert "big_buck_bunny_432_433.webm" in info and "1.0 s" in info


@pytest.mark.slow
def test_picking_a_bundle_loads_it_and_answers_with_it(server):
    client = _client(server)
    assert client.predict("tiny", api_name="/select_model") == "Model: **tiny**."
    info = _load(client, shared_media("chaplin.mp4"), model="tiny", frames_size=(4 * 116 - 4, 130))
    assert "4 frames" in info  # the tiny bundle's own sampling
    _, chat = _ask_streamed(client, [], "What is seen?", model="tiny")
    assert _text(chat[-1]).strip()


@pytest.mark.slow
def test_too_long_clip_is_refused_with_the_limit(server):
    info = _load(_client(server), shared_media("testvideo.mp4"))
    assert "testvideo.mp4 lasts 24 s; clips up to 20 s are accepted" in info


# ---- bounds and errors, in-process on a tiny model ----

@pytest.fixture(scope="module")
def tiny_app():
    """The handlers on a tiny untrained model as the "untrained" entry, with the app's duration limit."""
    import vqa.webapp as webapp
    from tests.helpers import tiny_config
    from vqa.api import VideoQA

    qa = VideoQA.untrained(tiny_config())
    qa.max_duration = webapp.MAX_DURATION_S
    saved = dict(webapp.MODELS._loaded)
    webapp.MODELS._loaded[webapp.UNTRAINED] = qa
    yield webapp, qa
    webapp.MODELS._loaded.clear()
    webapp.MODELS._loaded.update(saved)


def test_the_app_loads_models_with_its_duration_limit(monkeypatch):
    import vqa.api
    import vqa.webapp as webapp

    monkeypatch.setattr(vqa.api.VideoQA, "untrained", classmethod(lambda cls: cls(torch_module())))
    assert webapp.Models()._load(webapp.UNTRAINED).max_duration == webapp.MAX_DURATION_S


def torch_module():
    """A stand-in model: a module with the config a VideoQA reads."""
    import torch

    from vqa.config import ModelConfig

    module = torch.nn.Linear(1, 1)
    module.config = ModelConfig()
    return module


def test_ask_refuses_a_long_clip_whose_header_has_no_duration_before_decoding(tiny_app, tmp_path, monkeypatch):
    import gradio as gr

    from tests import media_factory as mf

    webapp, qa = tiny_app
    path = mf.write_streamed_mkv(tmp_path / "streamed.mkv", seconds=webapp.MAX_DURATION_S + 60)
    monkeypatch.setattr("vqa.api.clip_features", lambda *a, **k: pytest.fail("a clip over the limit was encoded"))
    start = time.perf_counter()
    with pytest.raises(gr.Error, match=rf"streamed.mkv lasts more than {webapp.MAX_DURATION_S:.0f} s"):
        webapp.ask(str(path), "What is seen?")
    assert time.perf_counter() - start < 5
    info = webapp.load_clip(str(path), webapp.UNTRAINED)[3]
    assert "Could not use this clip" in info and "lasts more than" in info and str(tmp_path) not in info


@pytest.mark.parametrize("question, message", [("   ", "Give a question"), ("why " * 2000, "too long")])
def test_ask_refuses_blank_and_long_questions_before_decoding(tiny_app, tmp_path, question, message, monkeypatch):
    import gradio as gr

    from tests.helpers import write_clip

    webapp, qa = tiny_app
    monkeypatch.setattr(qa, "prepare", lambda v: pytest.fail("the clip was decoded"))
    with pytest.raises(gr.Error, match=message):
        webapp.ask(write_clip(tmp_path / "c.mp4"), question)


def test_a_long_chat_loses_its_oldest_turns_with_a_notice(tiny_app, tmp_path, monkeypatch):
    from tests.helpers import write_clip
    from vqa.webapp import NOTICE

    webapp, qa = tiny_app
    history = []
    for i in range(300):
        history += [{"role": "user", "content": f"Question {i} about the clip?"},
                    {"role": "assistant", "content": f"Answer {i}, long enough to count for something."}]
    seen = []
    monkeypatch.setattr(qa.model, "stream", lambda tokens, messages, **kw: seen.append(messages) or iter(["yes"]))
    out = list(webapp.answer(history + [{"role": "user", "content": "And now?"}],
                             {"video": write_clip(tmp_path / "c.mp4")}, webapp.UNTRAINED, 8, 0.0))
    chat = out[-1]
    notice = chat[-3]["content"]
    assert notice.startswith(NOTICE) and "no longer sees its oldest" in notice
    dropped = int(notice.split("oldest ")[1].split()[0])
    assert 0 < dropped < len(history) and len(seen[0]) == len(history) - dropped + 1
    assert chat[-2] == {"role": "user", "content": "And now?"} and chat[-1] == {"role": "assistant", "content": "yes"}


@pytest.mark.parametrize("history, message", [
    ("not a list", "expected a list of {role, content} messages, got str"),
    ([["q", "a"]], "message 0 is not a {role, content} message"),
    ([{"role": "user", "content": "q"}, {"role": "robot", "content": "x"}], "message 1 has role 'robot'"),
    ([{"role": "user", "content": 5}], "message 0 has content of type int"),
])
def test_a_malformed_chat_history_gets_a_specific_message(history, message):
    import gradio as gr

    from vqa.webapp import _strict_history

    chatbot = gr.Chatbot()
    _strict_history(chatbot)
    chatbot.data_model.model_validate([{"role": "user", "content": [{"type": "text", "text": "fine"}]}])  # passes
    with pytest.raises(gr.Error, match=re.escape(f"Malformed chat history: {message}")):
        chatbot.data_model.model_validate(history)


def test_messages_to_clients_hold_no_server_path(tmp_path, monkeypatch):
    import vqa.webapp as webapp
    from vqa import bundle
    from vqa.bundle import BundleError

    broken = tmp_path / "adapters" / "broken"
    broken.mkdir(parents=True)
    (broken / bundle.CONFIG_NAME).write_text("{ not json")
    monkeypatch.setenv("VQA_ADAPTERS_DIR", str(tmp_path / "adapters"))
    notice = webapp.select_model("broken")
    assert "Could not load broken" in notice and str(tmp_path) not in notice and bundle.CONFIG_NAME in notice
    message = webapp.readable(BundleError(f"bundle folder {tmp_path}/x/y does not exist; see https://example.org/a/b"))
    assert message == "bundle folder y does not exist; see https://example.org/a/b"


def test_a_users_mistake_logs_one_line_and_no_traceback(tiny_app, tmp_path, caplog):
    webapp, _ = tiny_app
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    with caplog.at_level(logging.WARNING, logger="vqa"):
        webapp.load_clip(str(bad), webapp.UNTRAINED)
    records = [r for r in caplog.records if r.name.startswith("vqa")]
    assert len(records) == 1 and records[0].exc_info is None and "notes.mp4" in records[0].getMessage()


def test_a_closed_page_deletes_the_clips_its_session_loaded(tiny_app, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from tests.helpers import write_clip
    from vqa.uploads import SessionFiles

    webapp, _ = tiny_app
    monkeypatch.setattr(webapp, "SESSIONS", SessionFiles(tmp_path))
    (tmp_path / "u1").mkdir()
    clip = write_clip(tmp_path / "u1" / "clip.mp4")
    assert webapp.load_clip(clip, webapp.UNTRAINED, SimpleNamespace(session_hash="abc"))[0] == {"video": clip}
    webapp.end_session(SimpleNamespace(session_hash="other"))
    assert Path(clip).exists()
    webapp.end_session(SimpleNamespace(session_hash="abc"))
    assert not Path(clip).exists()


def test_the_page_shows_what_perception_found_and_an_unfamiliar_clip():
    from types import SimpleNamespace as NS

    import numpy as np

    import vqa.webapp as webapp
    from vqa.perception import Perception
    from vqa.perception.sound import Sound
    from vqa.perception.speech import Segment, Transcript

    words = Transcript([Segment(0.5, 2.0, " Hello there.")], "en", 0.98, [])
    sound = Sound(has_audio=True, silent=False, level_db=-20.0, peak_db=-6.0, speech=True, speech_s=1.5,
                  music=False, tonal=0.2, music_cue="")
    perception = Perception(words, None, sound, 3.0, ["sight is off: its weights package is not installed"])
    clip = NS(has_audio=True, duration=3.0, width=64, height=64, fps=24.0, frames=np.zeros((4, 8, 8, 3)))
    why = "its picture is unlike theirs to the image network (distance 0.58; training clips lie within 0.21 of one another)"
    text = webapp.clip_info("a.mp4", clip, 0.5, NS(perception=perception, in_domain=False, unfamiliar=why))
    assert "0.5-2.0 s: Hello there." in text and "speech (en)" in text and f"sound: {', '.join(sound.labels)}" in text
    assert "sight is off" in text
    assert f"looks unlike the clips this model was trained on**: {why}." in text
    assert "unlike" not in webapp.clip_info("a.mp4", clip, 0.5, NS(perception=None, in_domain=True, unfamiliar=None))


def test_the_page_warms_the_clip_path_up_and_starts_when_that_fails(tiny_app, monkeypatch, caplog):
    webapp, qa = tiny_app
    calls = []
    monkeypatch.setattr(qa, "warm_up", lambda: calls.append(True) or 0.5)
    with caplog.at_level("INFO", logger="vqa.webapp"):
        webapp.build_demo(webapp.UNTRAINED)
    assert calls == [True] and "clip path warmed up in 0.5 s" in caplog.text
    caplog.clear()

    def broken():
        raise RuntimeError("a sense's weights are unreadable")

    monkeypatch.setattr(qa, "warm_up", broken)
    with caplog.at_level("WARNING", logger="vqa.webapp"):
        demo = webapp.build_demo(webapp.UNTRAINED)  # the page still starts
    assert demo is not None and "could not warm the clip path up (a sense's weights are unreadable)" in caplog.text
