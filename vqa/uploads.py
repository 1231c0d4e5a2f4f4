"""The server's upload folder, bounded: a total byte budget, and each session's clips removed when it ends.

Gradio keeps every upload (and every image it renders for the page) in one folder, and anyone who
can reach the port can POST files there without calling an endpoint. Three things bound it:

- `UploadBudget`, an ASGI middleware in front of the upload route: before an upload is read, the
  folder plus the upload must fit the budget; if not, the oldest files no live session holds are
  deleted until they do, and if even that is not enough the upload is refused (503) until room frees.
- `SessionFiles`: the clips each browser session loaded; when the session ends (its page is
  closed), its clips are deleted unless another live session holds the same file. The page examples'
  copies (Gradio copies each example into the folder once, at start-up, and every session's click gets
  that copy's path) are kept for all sessions, and put back from the example when Gradio's age sweep
  removed them.
- Gradio's `delete_cache` sweep, which removes whatever is left after an age.

Only files inside the upload folder are ever deleted (the example clips themselves live elsewhere).
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

log = logging.getLogger(__name__)

FULL = "The server's upload space is full; try again in a few minutes."


def inside(path: str | Path, folder: str | Path) -> bool:
    """Whether `path` lies inside `folder` (both resolved: no `..` or link leads out)."""
    try:
        return Path(path).resolve().is_relative_to(Path(folder).resolve())
    except OSError:
        return False


def folder_files(folder: str | Path) -> list[tuple[float, int, str]]:
    """(modification time, bytes, path) of every file under `folder`, oldest first."""
    found = []
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            try:
                st = os.stat(path)
            except OSError:  # deleted meanwhile
                continue
            found.append((st.st_mtime, st.st_size, path))
    return sorted(found)


def folder_bytes(folder: str | Path) -> int:
    return sum(size for _, size, _ in folder_files(folder))


def remove(path: str | Path, folder: str | Path) -> bool:
    """Delete a file inside `folder`, and its parent if that leaves it empty (Gradio gives each upload
    its own subfolder); anything outside `folder` is left alone. Returns whether it was deleted."""
    path = Path(path)
    if not inside(path, folder):
        return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    parent = path.parent
    if parent.resolve() != Path(folder).resolve():
        try:
            parent.rmdir()
        except OSError:  # not empty
            pass
    return True


class SessionFiles:
    """Which live sessions hold which uploaded files; a file goes when the last session holding it ends."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._held: dict[str, set[str]] = {}  # session -> files
        self._kept: dict[str, str] = {}  # a copy every session may load -> its original
        self._lock = threading.Lock()

    def keep(self, copy: str | Path, original: str | Path) -> None:
        """`copy` (a page example's copy in the folder) belongs to no session: never deleted here."""
        with self._lock:
            self._kept[str(Path(copy).resolve())] = str(original)

    def restore(self, path: str) -> None:
        """Put a kept copy back from its original where something else removed it."""
        original = self._kept.get(str(Path(path).resolve()))
        if original is not None and not Path(path).is_file() and Path(original).is_file():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(original, path)
            log.info("put back the example %s", Path(path).name)

    def hold(self, session: str | None, path: str) -> None:
        if not session or not inside(path, self.folder):
            return
        resolved = str(Path(path).resolve())
        with self._lock:
            if resolved not in self._kept:
                self._held.setdefault(session, set()).add(resolved)

    def held(self) -> set[str]:
        """Files the folder's budget must not delete: live sessions' and the kept copies."""
        with self._lock:
            return set(self._kept).union(*self._held.values())

    def end(self, session: str | None) -> list[str]:
        """The session is over: delete the files it held that no other session holds; returns them."""
        with self._lock:
            mine = self._held.pop(session, set()) if session else set()
            others = set().union(*self._held.values()) if self._held else set()
        gone = [p for p in sorted(mine - others) if remove(p, self.folder)]
        if gone:
            log.info("session ended: deleted %d uploaded file(s)", len(gone))
        return gone


class UploadBudget:
    """ASGI middleware: keep the upload folder under `budget` bytes (see the module docstring)."""

    def __init__(self, app, folder: str | Path, budget: int, max_upload: int, sessions: SessionFiles | None = None):
        self.app = app
        self.folder = Path(folder)
        self.budget = budget
        self.max_upload = max_upload  # assumed for an upload that does not say its length
        self.sessions = sessions
        self._lock = threading.Lock()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].rstrip("/").endswith("/upload"):
            import anyio

            headers = dict(scope.get("headers") or [])
            try:
                size = int(headers.get(b"content-length", b""))
            except ValueError:
                size = self.max_upload
            if not await anyio.to_thread.run_sync(self.make_room, size):
                from starlette.responses import PlainTextResponse

                response = PlainTextResponse(FULL, status_code=503, headers={"Retry-After": "60"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def make_room(self, size: int) -> bool:
        """Whether `size` more bytes fit, after deleting the oldest files no session holds if need be."""
        with self._lock:
            files = folder_files(self.folder)
            total = sum(n for _, n, _ in files)
            if total + size <= self.budget:
                return True
            held = self.sessions.held() if self.sessions else set()
            unheld = [(n, path) for _, n, path in files if str(Path(path).resolve()) not in held]
            if total - sum(n for n, _ in unheld) + size > self.budget:  # deleting cannot make room: keep them
                log.warning("upload of %.0f MB refused: the upload folder holds %.0f MB of live sessions' files, "
                            "the budget is %d MB", size / 2**20, total / 2**20, self.budget // 2**20)
                return False
            freed = 0
            for n, path in unheld:
                if total - freed + size <= self.budget:
                    break
                if remove(path, self.folder):
                    freed += n
            log.info("upload folder at its %d MB budget: deleted %.0f MB of the oldest files no session holds",
                     self.budget // 2**20, freed / 2**20)
            return total - freed + size <= self.budget
