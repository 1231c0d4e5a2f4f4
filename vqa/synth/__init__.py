"""AVSynth, the project's diagnostic audio-visual benchmark (avsynth-spec.md): scenes, clips, questions, scoring.

Light to import: PyAV is loaded only by `vqa.synth.render` (and `generate` while it renders).
"""
from vqa.synth.questions import (
    CHANCE, FAMILIES, FAMILY_GROUP, GROUPS, VOCABULARY, Balancer, answer_distribution, balance_problems,
    build_qa, is_correct, questions_for, score_reply,
)
from vqa.synth.scene import clip_meta, sample_scene

__all__ = [
    "CHANCE", "FAMILIES", "FAMILY_GROUP", "GROUPS", "VOCABULARY", "Balancer", "answer_distribution",
    "balance_problems", "build_qa", "clip_meta", "is_correct", "questions_for", "sample_scene", "score_reply",
]
