"""Real pictures for spoken clips: photographs and clip art from installed packages, slowly panned and zoomed.

Where they are installed, a share of the spoken clips show one of these instead of an AVSynth scene or a
gradient, so a bundle learns to name what the image classifier saw (vqa.perception.sight) on pictures
unlike AVSynth's. Sources, both optional:

- Debian's `openclipart-png` (/usr/share/openclipart/png, about 8,000 drawings; public domain);
- the colour photographs shipped in scikit-image's wheel (`pip install --no-deps scikit-image`; BSD-3);
- three photographs shipped with installed dependencies: matplotlib's `grace_hopper.jpg` (public domain)
  and scikit-learn's `china.jpg` and `flower.jpg` (CC-BY 2.0, see that folder's README.txt).

Notation: T frames, S = SIZE pixels a side, C = 3 colour channels.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from vqa.avsynth.scene import FPS

CLIPART = Path("/usr/share/openclipart/png")
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                  "camera.png", "coins.png")
PACKAGE_PHOTOS = {"skimage": tuple(f"data/{name}" for name in SKIMAGE_PHOTOS),
                  "matplotlib": ("mpl-data/sample_data/grace_hopper.jpg",),
                  "sklearn": ("datasets/images/china.jpg", "datasets/images/flower.jpg")}
SIZE = 224  # the image classifier's input side: pictures are written at it, not at AVSynth's 128
MAX_PIXELS = 50_000_000  # larger files are passed over: decoding one takes seconds and gigabytes


PHOTO_SHARE = 0.4  # of pictures drawn, where both sources are installed: the few photographs, else clip art


@lru_cache(maxsize=1)
def pictures() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(photograph paths, clip art paths) installed, each sorted; empty where a source is not installed."""
    clipart = tuple(sorted(str(p) for p in CLIPART.rglob("*.png"))) if CLIPART.is_dir() else ()
    photos = []
    for package, names in PACKAGE_PHOTOS.items():
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            root = Path(next(iter(spec.submodule_search_locations)))
            photos += [str(root / name) for name in names if (root / name).is_file()]
    return tuple(photos), clipart


def missing_sources() -> list[str]:
    """A notice for each picture source that is not installed: data made without it has fewer kinds of picture."""
    photos, clipart = pictures()
    notices = [] if clipart else [f"no clip art in {CLIPART} (apt-get install openclipart-png)"]
    expected = sum(len(names) for names in PACKAGE_PHOTOS.values())
    if len(photos) < expected:
        notices.append(f"{len(photos)} of the {expected} photographs (pip install --no-deps scikit-image for seven)")
    return notices


def draw_picture(rng: np.random.Generator) -> str | None:
    """A random installed picture's path, or None where none is installed; a file that cannot be read as a
    picture of a sane size (a few clip art files declare billions of pixels) is passed over for another draw."""
    photos, clipart = pictures()
    pool = photos if photos and (not clipart or rng.random() < PHOTO_SHARE) else clipart
    for _ in range(20):
        if not pool:
            return None
        path = str(pool[int(rng.integers(len(pool)))])
        if _readable(path):
            return path
    return None


def _readable(path: str) -> bool:
    try:
        with Image.open(path) as im:  # reads the header only; refuses a decompression bomb
            return im.width * im.height <= MAX_PIXELS
    except (OSError, Image.DecompressionBombError):
        return False


def _load(path: str, rng: np.random.Generator) -> np.ndarray:
    """(H, W, C) float32 in 0..255; transparent drawings over a random light background."""
    with Image.open(path) as im:
        im.thumbnail((2 * SIZE, 2 * SIZE))
        rgba = np.asarray(im.convert("RGBA"), np.float32)
    alpha = rgba[..., 3:] / 255.0
    background = rng.uniform(170, 255, size=3).astype(np.float32)
    return rgba[..., :3] * alpha + background * (1 - alpha)


def picture_frames(path: str, rng: np.random.Generator, seconds: float) -> np.ndarray:
    """(T, S, S, C) uint8: the picture padded to a square, zoomed from one crop to another over `seconds`."""
    image = _load(path, rng)
    h, w = image.shape[:2]
    side = max(h, w)
    square = np.empty((side, side, 3), np.float32)
    square[:] = image[0, 0] if h == side else image[:, 0].mean(0)  # pad with an edge colour
    square[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = image
    if rng.random() < 0.5:
        square = square[:, ::-1]
    pil = Image.fromarray(square.astype(np.uint8))
    n = max(int(round(seconds * FPS)), 1)
    crops = rng.uniform(0.75, 1.0, size=2) * side  # crop side at the start and the end
    corners = rng.uniform(0, 1, size=(2, 2))  # (start, end) x (x, y): where the crop sits, as a share of the slack
    frames = np.empty((n, SIZE, SIZE, 3), np.uint8)
    for i in range(n):
        a = i / max(n - 1, 1)
        crop = crops[0] + (crops[1] - crops[0]) * a
        x0, y0 = (corners[0] + (corners[1] - corners[0]) * a) * (side - crop)
        box = (x0, y0, x0 + crop, y0 + crop)
        frames[i] = np.asarray(pil.resize((SIZE, SIZE), Image.BILINEAR, box=box))
    return frames
