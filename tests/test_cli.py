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
