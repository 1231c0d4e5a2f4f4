"""Make headless Chromium available for tests/test_browser.py (run by `make test` before pytest).

Installs Debian's `chromium` where /usr/bin/chromium is missing and we are root; anywhere else
it prints what to do. It never fails the build: without a browser the browser tests skip, saying why.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

CHROMIUM = "/usr/bin/chromium"


def _run(cmd: list[str]) -> bool:
    print("+", " ".join(cmd), flush=True)
    try:
        return subprocess.run(cmd, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}).returncode == 0
    except OSError as e:
        print(f"could not run {cmd[0]}: {e}")
        return False


def main() -> int:
    if os.path.exists(CHROMIUM):
        print(f"browser tests: using {CHROMIUM}")
        return 0
    how = "install it with `sudo apt-get install -y chromium` (Debian/Ubuntu) to run the browser tests"
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(f"browser tests will skip: {CHROMIUM} is missing; {how}")
        return 0
    ok = _run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"])
    if not ok:  # a stale package list is the usual cause
        ok = _run(["apt-get", "update"]) and _run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"])
    if ok and os.path.exists(CHROMIUM):
        print(f"browser tests: installed {CHROMIUM}")
    else:
        print(f"browser tests will skip: installing chromium failed; {how}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
