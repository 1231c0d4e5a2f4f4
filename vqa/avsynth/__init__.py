"""AVSynth, the project's diagnostic audio-visual benchmark (avsynth-spec.md), and its training recipe:
scenes, clips, questions, the caption and pre-training heads, scoring, the web examples.

Light to import: PyAV is loaded only by `vqa.avsynth.render` (and `generate` while it renders), torch only
by the recipe (`RECIPE`, loaded on first use).
"""
from vqa.avsynth.questions import (
    CHANCE, FAMILIES, FAMILY_GROUP, GROUPS, VOCABULARY, Balancer, answer_distribution, balance_problems,
    build_qa, is_correct, questions_for, score_reply,
)
from vqa.avsynth.scene import clip_meta, sample_scene

__all__ = [
    "CHANCE", "FAMILIES", "FAMILY_GROUP", "GROUPS", "VOCABULARY", "Balancer", "answer_distribution",
    "balance_problems", "build_qa", "clip_meta", "is_correct", "questions_for", "sample_scene", "score_reply",
]


def __getattr__(name: str):
    if name == "RECIPE":  # vqa.train.recipe.load_recipe("vqa.avsynth")
        from .recipe import AVSynthRecipe

        return AVSynthRecipe
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
