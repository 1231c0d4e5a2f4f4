"""Shared fixtures: the real media folder beside the checkout, skipped where absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Real clips made elsewhere; CI has them beside the checkout, a user's clone does not.
SHARED_MEDIA = Path(os.environ.get("VQA_SHARED_MEDIA", ROOT.parent / "shared" / "media"))


def shared_media(name: str) -> Path:
    """Path of a real clip in ../shared/media, or skip the test with the reason."""
    path = SHARED_MEDIA / name
    if not path.is_file():
        pytest.skip(f"real media file {path} is absent (only CI and the project's machines have ../shared/media)")
    return path


@pytest.fixture
def media_dir() -> Path:
    if not SHARED_MEDIA.is_dir():
        pytest.skip(f"real media folder {SHARED_MEDIA} is absent (only CI and the project's machines have it)")
    return SHARED_MEDIA


@pytest.fixture(scope="session")
def bundled_llm():
    """The real bundled SmolLM2 and its tokenizer, loaded once for the whole run."""
    from vqa.llm import load_llm

    return load_llm()


@pytest.fixture(scope="session")
def tokenizer(bundled_llm):
    return bundled_llm[1]
