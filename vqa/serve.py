"""`vqa serve`: the web chat of app.py, from the installed package."""
from __future__ import annotations

import os


def cli(args) -> int:
    adapter = getattr(args, "adapter", None)
    if getattr(args, "untrained", False):
        adapter = "untrained"
    if adapter:
        os.environ["VQA_ADAPTER"] = adapter  # also the default a restarted worker would pick

    from .webapp import launch

    launch(host=args.host, port=args.port)
    return 0
