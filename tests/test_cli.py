"""The `vqa` command, run as a user would."""
import os
import subprocess
import sys

import pytest

from tests.conftest import shared_media
from tests.helpers import tiny_config
from vqa.api import VideoQA

VQA = [sys.executable, "-m", "vqa.cli"]


def run(*args, timeout=300):
    return subprocess.run([*VQA, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_help_lists_every_command():
    out = run("--help")
    assert out.returncode == 0
    for command in ("ask", "chat", "synth", "train", "eval", "serve"):
        assert command in out.stdout


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundle") / "untrained"
    VideoQA.untrained(tiny_config()).save_pretrained(folder)
    return folder


def test_ask_on_a_real_clip_streams_an_answer(bundle_dir):
    clip = shared_media("chaplin.mp4")
    out = run("ask", str(clip), "What is happening in this video?", "--adapter", str(bundle_dir),
              "--max-new-tokens", "16")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()


def test_ask_on_a_non_video_says_what_is_wrong(bundle_dir, tmp_path):
    bad = tmp_path / "report.mp4"
    bad.write_text("this is text")
    out = run("ask", str(bad), "What is this?", "--adapter", str(bundle_dir))
    assert out.returncode == 2
    assert "report.mp4" in out.stderr and "Traceback" not in out.stderr


def test_chat_loop(bundle_dir):
    clip = shared_media("chaplin.mp4")
    proc = subprocess.run([*VQA, "chat", str(clip), "--adapter", str(bundle_dir), "--max-new-tokens", "8"],
                          input="Who is there?\n/reset\nWhat do you hear?\n/quit\n",
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("> ") >= 3


@pytest.mark.parametrize("question", ["", "   "])
def test_ask_refuses_a_blank_question_with_the_pages_message(tmp_path, question):
    out = run("ask", str(tmp_path / "clip.mp4"), question)
    assert out.returncode == 2 and out.stderr.strip() == "vqa: Give a question." and out.stdout == ""


def test_ask_refuses_a_long_question_and_names_a_folder(bundle_dir, tmp_path):
    from tests.helpers import write_clip

    clip = write_clip(tmp_path / "clip.mp4")
    out = run("ask", clip, "why " * 2000, "--adapter", str(bundle_dir))
    assert out.returncode == 2 and "too long" in out.stderr and "256 tokens" in out.stderr
    assert "Traceback" not in out.stderr and out.stdout.strip() == ""
    out = run("ask", str(tmp_path), "What is this?", "--adapter", str(bundle_dir))
    assert out.returncode == 2 and "is a folder, not a video file" in out.stderr and "Traceback" not in out.stderr


def test_max_new_tokens_must_be_positive(tmp_path):
    out = run("ask", str(tmp_path / "clip.mp4"), "What?", "--max-new-tokens", "0")
    assert out.returncode == 2 and "must be at least 1" in out.stderr


def test_ask_says_when_a_clip_is_unlike_the_training_clips(bundle_dir, tmp_path):
    import shutil

    import torch

    from tests.helpers import write_clip
    from vqa.domain import Domain

    folder = tmp_path / "narrow"
    shutil.copytree(bundle_dir, folder)
    k, h = VideoQA.untrained(tiny_config()).model.num_video_tokens, 576
    Domain(torch.zeros(k * h), torch.full((k * h,), 1e-3), threshold=0.5).save(folder)  # nothing real fits
    clip = write_clip(tmp_path / "clip.mp4")
    out = run("ask", str(clip), "What is this?", "--adapter", str(folder), "--max-new-tokens", "4")
    assert out.returncode == 0, out.stderr
    assert "looks unlike the clips this model was trained on: its clip tokens lie" in out.stderr
    out = run("ask", str(clip), "What is this?", "--adapter", str(bundle_dir), "--max-new-tokens", "4")
    assert "looks unlike" not in out.stderr  # a bundle without a domain says nothing


def test_transcription_progress_goes_to_a_terminal_only():
    import io

    from vqa.api_cli import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen, log = Terminal(), io.StringIO()
    for stream in (screen, log):
        with Progress(stream) as progress:
            progress(12.4, 60.0)
            progress(29.0, 60.0)
    assert screen.getvalue() == ("\rvqa: transcribing the speech: 12 of 60 s"
                                 "\rvqa: transcribing the speech: 29 of 60 s\n")
    assert log.getvalue() == ""
    quiet = Terminal()
    with Progress(quiet):  # a clip without speech: nothing to say, no empty line
        pass
    assert quiet.getvalue() == ""
