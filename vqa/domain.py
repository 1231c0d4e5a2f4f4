"""Is a clip like the ones a bundle was trained on? Two simple out-of-domain signals.

Training ends by describing its clips twice:

- their tokens as the LLM gets them: per token position and dimension, the training clips' mean and
  standard deviation, and the distance (root mean squared z-score over every position and dimension)
  below which `QUANTILE` of them fall, times a margin. A clip farther than that `threshold` has tokens
  unlike anything the projector and LoRA learned to read.
- their pictures as the pretrained image network sees them (`Concepts.embedding`, where sight is
  installed): the training clips' embeddings, and how far a picture may lie from the nearest of them,
  relative to how far that one lies from its own nearest (`Pictures.distance`), as `QUANTILE` of the
  training clips do from the rest (times the margin). A small encoder trained on synthetic clips can
  map camera footage close to a plain training picture, so its tokens alone miss what the image
  network, trained on photographs, tells apart (the README has the figures). Pictures that look like
  photographs or camera footage (`Concepts.photographic`) are judged against the training pictures that
  do, drawn or computer-made ones against those: an isolated drawing lies as far from the other drawings
  as camera footage does from it, so with one set of pictures footage near a drawing counted as familiar.

A clip outside either is out of domain: answers about it are guesses. The API and the web page say so.

Notation: N clips, K clip tokens, H width, D picture embedding size.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

DOMAIN_NAME = "domain.safetensors"
QUANTILE = 0.99
MARGIN = 1.15  # the threshold is this times the training clips' QUANTILE distance: room for unseen clips
_LOOKS = {True: "like a photograph or camera footage", False: "drawn or computer-made"}


@dataclass
class Pictures:
    """The training clips' picture embeddings, each with the radius of its neighbourhood, and how far
    (relative to that radius) a familiar picture lies from the nearest of them."""

    points: torch.Tensor  # (N, D) unit length
    radius: torch.Tensor  # (N,) cosine distance to the nearest other training picture, at least the median
    threshold: float  # relative distance: to the nearest training picture, over that picture's radius

    @classmethod
    def fit(cls, embeddings: torch.Tensor) -> "Pictures":
        """From the training clips' embeddings (N, D)."""
        if embeddings.shape[0] < 2:
            raise ValueError(f"describing a domain needs at least 2 clips, got {embeddings.shape[0]}")
        points = F.normalize(embeddings.float(), dim=-1)
        apart = 1 - points @ points.T  # (N, N)
        apart.fill_diagonal_(float("inf"))
        nearest, which = apart.min(dim=1)  # each training clip's nearest other one
        # the median floor: a photograph shown in many clips would otherwise count only its own pans as
        # familiar (and the same picture twice, nothing at all)
        radius = nearest.clamp(min=max(float(nearest.median()), 1e-3))
        relative = nearest / radius[which]  # each training clip, left out, against the rest
        # at least 1: a picture within a training picture's radius is familiar
        return cls(points, radius, max(MARGIN * float(torch.quantile(relative, QUANTILE)), 1.0))

    def distance(self, embedding: torch.Tensor) -> float:
        """A picture's relative distance from the training pictures, for its embedding (D,): its cosine
        distance to the nearest one over that one's radius. Training pictures come as dense groups (one
        photograph panned in many clips) and as sparse ones (a different drawing in each clip), and a
        new drawing lies as far from its nearest drawing as camera footage from its nearest photograph."""
        if embedding.numel() != self.points.shape[1]:
            raise ValueError(f"the picture embedding has {embedding.numel()} values, the domain {self.points.shape[1]}")
        point = F.normalize(embedding.float().reshape(1, -1), dim=-1)
        apart, which = (1 - point @ self.points.T)[0].min(dim=0)
        return float(apart / self.radius[which])


@dataclass
class Domain:
    mean: torch.Tensor  # (K*H,)
    std: torch.Tensor  # (K*H,)
    threshold: float
    # the training pictures, where sight was installed when the bundle was made: with `split`, those drawn or
    # computer-made here and the photographic ones in `photographs` (None where fewer than 2 training clips are
    # of that kind); without it (bundles made before the split), every picture here
    pictures: Pictures | None = None
    photographs: Pictures | None = None
    split: bool = False

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

    def judge(self, tokens: torch.Tensor, embedding: torch.Tensor | None = None, photographic: bool = False
              ) -> tuple[float, float | None, str | None]:
        """(token distance, picture distance or None, why the clip is unlike the training clips or None)
        for a clip's tokens (K, H) and, where sight ran, its picture embedding (D,) and whether the picture
        looks photographic."""
        distance = self.distance(tokens)
        why = []
        picture, group = None, self.group(photographic)
        if embedding is not None and self.split and group is None:
            picture = float("inf")
            why.append(f"its picture looks {_LOOKS[photographic]}, and fewer than 2 of theirs do")
        elif embedding is not None and group is not None:
            picture = group.distance(embedding)
            if picture > group.threshold:
                why.append(f"its picture is unlike theirs to the image network (relative distance {picture:.1f}; "
                           f"training clips: within {group.threshold:.1f})")
        if distance > self.threshold:
            why.append(f"its clip tokens lie {distance:.2f} from theirs (training clips: within {self.threshold:.2f})")
        return distance, picture, "; ".join(why) or None

    def group(self, photographic: bool) -> Pictures | None:
        """The training pictures a picture of this kind is judged against."""
        return self.photographs if self.split and photographic else self.pictures

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        tensors = {"mean": self.mean.contiguous(), "std": self.std.contiguous()}
        metadata = {"threshold": repr(self.threshold)}
        if self.split:
            metadata["split"] = "1"
        for name, group in (("picture", self.pictures), ("photograph", self.photographs)):
            if group is not None:  # half precision: a cosine distance needs no more
                tensors[f"{name}s"] = group.points.half().contiguous()
                tensors[f"{name}_radius"] = group.radius.contiguous()
                metadata[f"{name}_threshold"] = repr(group.threshold)
        save_file(tensors, str(Path(folder) / DOMAIN_NAME), metadata=metadata)

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
                meta = f.metadata()
                groups = {}
                for name in ("picture", "photograph"):
                    if f"{name}s" in f.keys():
                        points = F.normalize(f.get_tensor(f"{name}s").float(), dim=-1)
                        groups[name] = Pictures(points, f.get_tensor(f"{name}_radius"),
                                                float(meta[f"{name}_threshold"]))
                return cls(f.get_tensor("mean"), f.get_tensor("std"), float(meta["threshold"]),
                           groups.get("picture"), groups.get("photograph"), meta.get("split") == "1")
        except (SafetensorError, KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{path}: not a valid domain description: {e}") from e


def _distance(flat: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(N,) root mean squared z-score of each row of flat (N, K*H)."""
    return ((flat - mean) / std).pow(2).mean(-1).sqrt()


@torch.no_grad()
def fit_domain(model, cache, clips: int = 512, batch_size: int = 32, folder: str | Path | None = None) -> Domain:
    """The domain of the first `clips` clips of a feature cache, through the model's encoder and projector,
    and, where sight is installed and `folder` holds the clip files, through the image network."""
    from .data import FeatureCache
    from .evaluate import clip_tokens

    n = min(clips, len(cache))
    subset = FeatureCache(cache.videos[:n], cache.frames[:n], cache.mel[:n])
    was_training = model.training
    model.eval()
    tokens = clip_tokens(model, subset, batch_size=batch_size)
    model.train(was_training)
    domain = Domain.fit(tokens)
    if folder is not None:
        kinds = fit_pictures([Path(folder) / v for v in subset.videos])
        if kinds is not None:
            domain.pictures, domain.photographs = kinds
            domain.split = True
    return domain


def fit_pictures(paths: list[Path]) -> tuple[Pictures | None, Pictures | None] | None:
    """The picture domains of these clip files (those that decode): (drawn or computer-made, photographic),
    each None where fewer than 2 clips are of that kind; None where sight is not installed."""
    from .media import MediaError
    from .perception import picture_embedding, sight

    why = sight.missing()
    if why is not None:
        logger.warning("%s; the bundle's out-of-domain signal reads the clip tokens alone", why)
        return None
    kinds: dict[bool, list[torch.Tensor]] = {False: [], True: []}
    for path in paths:
        try:
            embedding, photographic = picture_embedding(path)
        except (MediaError, OSError) as e:  # the bundle is trained already: a clip left out costs little
            logger.warning("out-of-domain signal: %s left out: %s", path, e)
            continue
        kinds[photographic].append(torch.from_numpy(embedding))
    return tuple(Pictures.fit(torch.stack(e)) if len(e) >= 2 else None for e in (kinds[False], kinds[True]))


def main(argv: list[str] | None = None) -> int:
    """Describe a bundle's domain from a dataset of its training clips:
    python -m vqa.domain --adapter adapters/avsynth --data data/avsynth-train --clips 256"""
    import argparse

    from . import bundle
    from .api import VideoQA
    from .data import load_features, read_qa

    parser = argparse.ArgumentParser(prog="python -m vqa.domain", description=main.__doc__)
    parser.add_argument("--adapter", required=True, help="bundle folder to write domain.safetensors into")
    parser.add_argument("--data", required=True, help="dataset folder of the bundle's training clips")
    parser.add_argument("--clips", type=int, default=512)
    args = parser.parse_args(argv)
    qa = VideoQA.untrained(bundle.read_config(args.adapter))  # the bundle's model; its old domain is not read
    bundle.load_weights(qa.model, args.adapter)
    videos = sorted({r["video"] for r in read_qa(args.data)})[: args.clips]
    domain = fit_domain(qa.model, load_features(args.data, qa.model.config, videos=videos), folder=args.data)
    domain.save(args.adapter)
    pictures = "".join(f", {name} threshold {group.threshold:.3f} ({len(group.points)} clips)" for name, group in
                       (("picture", domain.pictures), ("photograph", domain.photographs)) if group is not None)
    print(f"wrote {Path(args.adapter) / DOMAIN_NAME}: {len(videos)} clips, threshold {domain.threshold:.3f}{pictures}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
