"""Is a clip like the ones a bundle was trained on? A simple out-of-domain signal over the clip tokens.

Training ends by describing its clips' tokens as the LLM gets them: per token position and dimension,
the training clips' mean and standard deviation, and the distance (root mean squared z-score over every
position and dimension) below which `QUANTILE` of them fall, times a margin. A new clip farther than
that `threshold` is out of domain: its tokens are unlike anything the projector and LoRA learned to read, so
answers drawn from them are guesses. The API and the web page say so.

Notation: N clips, K clip tokens, H width.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

DOMAIN_NAME = "domain.safetensors"
QUANTILE = 0.99
MARGIN = 1.15  # the threshold is this times the training clips' QUANTILE distance: room for unseen clips


@dataclass
class Domain:
    mean: torch.Tensor  # (K*H,)
    std: torch.Tensor  # (K*H,)
    threshold: float

    @classmethod
    def fit(cls, tokens: torch.Tensor) -> "Domain":
        """From the training clips' tokens (N, K, H)."""
        if tokens.shape[0] < 2:
            raise ValueError(f"describing a domain needs at least 2 clips, got {tokens.shape[0]}")
        flat = tokens.float().flatten(1)  # (N, K*H)
        mean, std = flat.mean(0), flat.std(0).clamp_min(1e-6)
        d = _distance(flat, mean, std)
        return cls(mean, std, MARGIN * float(torch.quantile(d, QUANTILE)))

    def distance(self, tokens: torch.Tensor) -> float:
        """A clip's distance from the training clips, for its tokens (K, H)."""
        flat = tokens.float().reshape(1, -1)  # (1, K*H)
        if flat.shape[1] != self.mean.shape[0]:
            raise ValueError(f"the clip has {flat.shape[1]} token values, the domain describes {self.mean.shape[0]}")
        return float(_distance(flat, self.mean, self.std)[0])

    def contains(self, tokens: torch.Tensor) -> bool:
        return self.distance(tokens) <= self.threshold

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        tensors = {"mean": self.mean.contiguous(), "std": self.std.contiguous()}
        save_file(tensors, str(Path(folder) / DOMAIN_NAME), metadata={"threshold": repr(self.threshold)})

    @classmethod
    def load(cls, folder: str | Path) -> "Domain | None":
        """The bundle's domain, or None where it has none (bundles made before this signal)."""
        from safetensors import SafetensorError, safe_open

        from .bundle import BundleError

        path = Path(folder) / DOMAIN_NAME
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                threshold = float(f.metadata()["threshold"])
                return cls(f.get_tensor("mean"), f.get_tensor("std"), threshold)
        except (SafetensorError, KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{path}: not a valid domain description: {e}") from e


def _distance(flat: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(N,) root mean squared z-score of each row of flat (N, K*H)."""
    return ((flat - mean) / std).pow(2).mean(-1).sqrt()


@torch.no_grad()
def fit_domain(model, cache, clips: int = 512, batch_size: int = 32) -> Domain:
    """The domain of the first `clips` clips of a feature cache, through the model's encoder and projector."""
    from .evaluate import clip_tokens
    from .data import FeatureCache

    n = min(clips, len(cache))
    subset = FeatureCache(cache.videos[:n], cache.frames[:n], cache.mel[:n])
    was_training = model.training
    model.eval()
    tokens = clip_tokens(model, subset, batch_size=batch_size)
    model.train(was_training)
    return Domain.fit(tokens)


def main(argv: list[str] | None = None) -> int:
    """Describe a bundle's domain from a dataset of its training clips:
    python -m vqa.domain --adapter adapters/avsynth --data data/avsynth-train --clips 256"""
    import argparse

    from .api import VideoQA
    from .data import load_features, read_qa

    parser = argparse.ArgumentParser(prog="python -m vqa.domain", description=main.__doc__)
    parser.add_argument("--adapter", required=True, help="bundle folder to write domain.safetensors into")
    parser.add_argument("--data", required=True, help="dataset folder of the bundle's training clips")
    parser.add_argument("--clips", type=int, default=512)
    args = parser.parse_args(argv)
    qa = VideoQA.from_pretrained(args.adapter)
    videos = sorted({r["video"] for r in read_qa(args.data)})[: args.clips]
    domain = fit_domain(qa.model, load_features(args.data, qa.model.config, videos=videos))
    domain.save(args.adapter)
    print(f"wrote {Path(args.adapter) / DOMAIN_NAME}: {len(videos)} clips, threshold {domain.threshold:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
