"""vqa: ask questions about what is seen and heard in a video clip.

    from vqa import VideoQA, load_clip
    qa = VideoQA.from_pretrained()          # adapters/real
    qa.ask("clip.mp4", "What does the speaker say?")
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module; imported on first use so that `vqa --help` does not load torch
_EXPORTS = {
    "VideoQA": "vqa.api",
    "Chat": "vqa.api",
    "load_clip": "vqa.media",
    "load_views": "vqa.media",
    "Clip": "vqa.media",
    "MediaError": "vqa.media",
    "BundleError": "vqa.bundle",
    "ModelConfig": "vqa.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vqa' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
