"""Training: configs, the staged loop (`vqa train`), encoder pre-training heads, schedule, checkpoints, plots."""
from .config import DataConfig, StageConfig, TrainConfig, load_config

__all__ = ["DataConfig", "StageConfig", "TrainConfig", "load_config", "train"]


def train(*args, **kwargs):
    """See `vqa.train.loop.train` (imported lazily: it pulls in accelerate)."""
    from .loop import train as run

    return run(*args, **kwargs)
