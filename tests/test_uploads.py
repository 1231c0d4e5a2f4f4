"""The upload folder's budget and per-session cleanup."""
from __future__ import annotations

import asyncio
import os
import time

from vqa.uploads import FULL, SessionFiles, UploadBudget, folder_bytes


def put(folder, name: str, size: int, age: float = 0.0):
    path = folder / name / "clip.mp4"  # Gradio gives each upload its own subfolder
    path.parent.mkdir(parents=True)
    path.write_bytes(os.urandom(size))
    t = time.time() - age
    os.utime(path, (t, t))
    return path


def test_the_oldest_unheld_files_make_room_and_held_ones_stay(tmp_path):
    sessions = SessionFiles(tmp_path)
    old, held, new = put(tmp_path, "a", 400, age=30), put(tmp_path, "b", 400, age=20), put(tmp_path, "c", 400)
    sessions.hold("s1", str(held))
    budget = UploadBudget(None, tmp_path, budget=1000, max_upload=500, sessions=sessions)
    assert budget.make_room(150)  # 1200 + 150 > 1000: the oldest unheld file goes, and its subfolder
    assert not old.exists() and not old.parent.exists() and held.exists() and new.exists()
    assert not budget.make_room(700) and new.exists()  # deleting `new`, the only unheld file, would not be enough
    assert folder_bytes(tmp_path) == 800


def test_a_full_folder_refuses_uploads_with_503_before_reading_them(tmp_path):
    put(tmp_path, "a", 900)
    sessions = SessionFiles(tmp_path)
    sessions.hold("s", str(tmp_path / "a" / "clip.mp4"))
    sent, reached = [], []

    async def app(scope, receive, send):
        reached.append(scope["path"])

    async def send(message):
        sent.append(message)

    middleware = UploadBudget(app, tmp_path, budget=1000, max_upload=500, sessions=sessions)

    def call(path, length):
        scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"content-length", str(length).encode())]}
        sent.clear()
        asyncio.run(middleware(scope, None, send))

    call("/gradio_api/upload", 50)
    assert reached == ["/gradio_api/upload"] and sent == []
    call("/gradio_api/upload", 200)
    assert sent[0]["status"] == 503 and sent[1]["body"].decode() == FULL and len(reached) == 1
    call("/gradio_api/queue/join", 10**9)  # other routes pass, whatever their size
    assert reached[-1] == "/gradio_api/queue/join"


def test_an_ended_session_deletes_its_uploads_unless_another_holds_them(tmp_path):
    sessions = SessionFiles(tmp_path)
    mine, shared = put(tmp_path, "a", 10), put(tmp_path, "b", 10)
    outside = tmp_path.parent / f"{tmp_path.name}-example.mp4"
    outside.write_bytes(b"x")
    sessions.hold("s1", str(mine))
    sessions.hold("s1", str(shared))
    sessions.hold("s2", str(shared))
    sessions.hold("s1", str(outside))  # an example clip outside the folder is never held nor deleted
    assert sessions.end("s1") == [str(mine.resolve())]
    assert not mine.exists() and shared.exists() and outside.exists()
    assert sessions.end("s2") == [str(shared.resolve())] and not shared.exists()
    assert sessions.end("never-seen") == [] and sessions.end(None) == []


def test_an_examples_copy_outlives_every_session_and_is_put_back_after_a_sweep(tmp_path):
    # gr.Examples copies each example into the folder once and hands every session that copy's path
    folder, originals = tmp_path / "uploads", tmp_path / "examples"
    originals.mkdir()
    original = originals / "clip.mp4"
    original.write_bytes(os.urandom(30))
    sessions = SessionFiles(folder)
    copy = put(folder, "h", 30, age=100)
    sessions.keep(copy, original)
    sessions.hold("s1", str(copy))
    assert sessions.end("s1") == [] and copy.exists()
    budget = UploadBudget(None, folder, budget=60, max_upload=60, sessions=sessions)
    old = put(folder, "old", 20, age=50)
    assert budget.make_room(25) and copy.exists() and not old.exists()  # the budget deletes others first
    copy.unlink()  # Gradio's age sweep
    sessions.restore(str(copy))
    assert copy.read_bytes() == original.read_bytes()
    mine = put(folder, "mine", 5)
    sessions.restore(str(mine))  # not a kept copy: left alone
    sessions.hold("s2", str(mine))
    assert sessions.end("s2") == [str(mine.resolve())]
