"""Make the Debian programs some tests use available (run by `make test` before pytest): headless
Chromium for tests/test_browser.py, espeak-ng for the spoken clips of the perception tests.

Installs what is missing where we are root and have apt-get; anywhere else it prints what to do. It
never fails the build: without a program the tests that need it skip, saying why.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

# program -> (Debian package, the tests that need it)
PROGRAMS = {"/usr/bin/chromium": ("chromium", "browser tests"), "/usr/bin/espeak-ng": ("espeak-ng", "speech tests")}


def _run(cmd: list[str]) -> bool:
    print("+", " ".join(cmd), flush=True)
    try:
        return subprocess.run(cmd, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}).returncode == 0
    except OSError as e:
        print(f"could not run {cmd[0]}: {e}")
        return False


def main() -> int:
    missing = {path: pkg for path, pkg in PROGRAMS.items() if not os.path.exists(path)}
    for path in set(PROGRAMS) - set(missing):
        print(f"{PROGRAMS[path][1]}: using {path}")
    if not missing:
        return 0
    packages = [pkg for pkg, _ in missing.values()]
    how = f"install them with `sudo apt-get install -y {' '.join(packages)}` (Debian/Ubuntu)"
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(f"{', '.join(why for _, why in missing.values())} will skip: {', '.join(missing)} missing; {how}")
        return 0
    install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if not _run(install):  # a stale package list is the usual cause
        _run(["apt-get", "update"]) and _run(install)
    for path, (_, why) in missing.items():
        print(f"{why}: installed {path}" if os.path.exists(path) else f"{why} will skip: installing failed; {how}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
