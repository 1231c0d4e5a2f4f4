"""The audio-visual encoder: video branch, audio branch, fusion, time-ordered output tokens."""
from .audio import AudioBranch
from .fusion import AVEncoder, OutputTokens
from .pretrained import checkpoint_filter_fn, load_ast_into_audio, load_vit_into_video
from .video import VideoBranch

__all__ = [
    "AVEncoder",
    "AudioBranch",
    "OutputTokens",
    "VideoBranch",
    "checkpoint_filter_fn",
    "load_ast_into_audio",
    "load_vit_into_video",
]
