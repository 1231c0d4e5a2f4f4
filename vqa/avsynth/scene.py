"""AVSynth scenes: what each clip shows and sounds like, as metadata (see avsynth-spec.md).

A scene is drawn without any pixels: object attributes and pulse counts first
(uniform), then positions and pulse times (on a 0.01 s grid, so the metadata
is exact) by rejection until nothing leaves the frame or overlaps. Coordinates are pixels, x right,
y down; pixel j covers [j, j + 1), so an 18 px object centred on an integer
covers exactly 18 pixels.
"""
from __future__ import annotations

import numpy as np

# the clip
DURATION = 3.0
FPS = 24
SIZE = 128
SAMPLE_RATE = 16000
NUM_FRAMES = int(round(DURATION * FPS))
BACKGROUND = (32, 32, 32)
PIXEL_NOISE = 6.0

# objects
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 230),
    "yellow": (230, 210, 40),
    "white": (235, 235, 235),
    "purple": (160, 60, 200),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 18, "large": 30}
MOTIONS = ("left", "right", "up", "down", "still")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}
MAX_OBJECTS = 3
TRAVEL = (40, 60)  # px over the whole clip, integers drawn uniformly
GAP = 2  # px kept between the boxes of two objects (pulsed where they pulse), so they never touch

# pulses and sound, times in centiseconds so metadata is exact
PULSE_SCALE = 1.4
PULSE_CS = 30
PULSE_START_CS = (10, 260)
PULSE_GAP_CS = 15
BEEP_COUNTS = (1, 2, 3)
DISTRACTOR_COUNTS = (0, 1, 2)
BEEP_FRACTION = 2 / 3  # clips with a sounding object; exact per block of 3 clips
PITCHES = {"low": 330.0, "high": 1320.0}
BEEP_AMPLITUDE = 0.5
RAMP_S = 0.010
NOISE_AMPLITUDE = 0.02  # white noise, uniform in [-a, a]

# random streams of one clip, all derived from (seed, index)
SCENE, RENDER, QUESTIONS, STRATA = range(4)
_PLACEMENT_BATCH = 256
_PLACEMENT_BATCHES = 40
_PULSE_TRIES = 16  # pulse timings tried per valid placement


def clip_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """The clip's own generator for one purpose: the same for any worker count or split size."""
    return np.random.default_rng(np.random.SeedSequence([seed, index], spawn_key=(stream,)))


def clip_id(index: int) -> str:
    return f"avs-{index:06d}"


def clip_has_beep(seed: int, index: int) -> bool:
    """Two clips in three beep, exactly: each block of 3 consecutive clips holds one silent clip."""
    silent = int(clip_rng(seed, index // 3, STRATA).integers(3))
    return index % 3 != silent


def half_extent(size: str, pulsed: bool = False) -> float:
    """Half the width of an object's box (its bounding box, for every shape)."""
    return SIZES[size] * (PULSE_SCALE if pulsed else 1.0) / 2


def frame_times() -> np.ndarray:
    return np.arange(NUM_FRAMES) / FPS


def position(obj: dict, t: float | np.ndarray) -> np.ndarray:
    """Centre (x, y) at time t: constant velocity from `start` (t = 0) to `end` (t = DURATION)."""
    start, end = np.asarray(obj["start"], float), np.asarray(obj["end"], float)
    t = np.asarray(t, float)[..., None]
    return start + (end - start) * t / DURATION


def pulsing(obj: dict, t: np.ndarray) -> np.ndarray:
    """Whether the object is drawn pulsed at each time t (pulses are half-open [start, end))."""
    t = np.asarray(t, float)
    on = np.zeros(t.shape, bool)
    for a, b in obj["pulses"]:
        on |= (t >= a - 1e-9) & (t < b - 1e-9)
    return on


def frame_boxes(objects: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, every object's centre (K, T, 2) and half extent (K, T), pulses included."""
    t = frame_times()
    centres = np.stack([position(o, t) for o in objects])
    halves = np.stack([
        np.where(pulsing(o, t), half_extent(o["size"], pulsed=True), half_extent(o["size"])) for o in objects
    ])
    return centres, halves


def _frames_ok(objects: list[dict]) -> bool:
    """Every object wholly inside the frame and apart from the others (by GAP) in every frame, pulsing or not."""
    centres, halves = frame_boxes(objects)
    if np.any(centres - halves[..., None] < 0) or np.any(centres + halves[..., None] > SIZE):
        return False
    for a in range(len(objects)):
        for b in range(a + 1, len(objects)):
            reach = (halves[a] + halves[b] + GAP)[:, None]
            if np.any(np.all(np.abs(centres[a] - centres[b]) < reach, axis=-1)):
                return False
    return True


def _sample_placements(rng: np.random.Generator, sizes: list[str], motions: list[str], n: int):
    """n candidate placements: integer starts (n, K, 2) and travels (n, K), each box inside the frame throughout."""
    k = len(sizes)
    starts = np.empty((n, k, 2))
    travels = np.zeros((n, k))
    for j, (size, motion) in enumerate(zip(sizes, motions)):
        lo, hi = int(np.ceil(half_extent(size))), int(np.floor(SIZE - half_extent(size)))
        dx, dy = DIRECTIONS[motion]
        if motion != "still":
            travels[:, j] = rng.integers(TRAVEL[0], TRAVEL[1] + 1, size=n)
        for axis, d in ((0, dx), (1, dy)):
            # start so that start + d * travel stays in [lo, hi]
            low = lo + np.maximum(-d * travels[:, j], 0)
            high = hi - np.maximum(d * travels[:, j], 0)
            starts[:, j, axis] = np.floor(low + rng.random(n) * (high - low + 1))
    return starts, travels


def _apart_throughout(starts: np.ndarray, travels: np.ndarray, sizes: list[str], motions: list[str]) -> np.ndarray:
    """(n,) True where no two boxes (unpulsed, plus GAP) meet at any moment of the clip, solved exactly."""
    n, k = travels.shape
    ok = np.ones(n, bool)
    vel = np.array([DIRECTIONS[m] for m in motions], float)[None] * travels[..., None] / DURATION  # (n, K, 2)
    for a in range(k):
        for b in range(a + 1, k):
            reach = half_extent(sizes[a]) + half_extent(sizes[b]) + GAP
            r0 = starts[:, a] - starts[:, b]  # (n, 2) relative position at t = 0
            v = vel[:, a] - vel[:, b]
            # per axis, the open time interval where |r0 + v t| < reach, intersected over axes and the clip
            lo = np.full(n, 0.0)
            hi = np.full(n, DURATION)
            for axis in range(2):
                r, w = r0[:, axis], v[:, axis]
                moving = w != 0
                safe_w = np.where(moving, w, 1.0)
                t1, t2 = (-reach - r) / safe_w, (reach - r) / safe_w
                near = np.abs(r) < reach
                lo = np.maximum(lo, np.where(moving, np.minimum(t1, t2), np.where(near, -np.inf, np.inf)))
                hi = np.minimum(hi, np.where(moving, np.maximum(t1, t2), np.where(near, np.inf, -np.inf)))
            ok &= ~(lo < hi)
    return ok


def _pulse_starts(rng: np.random.Generator, total: int) -> list[int] | None:
    """`total` sorted pulse starts (cs) in PULSE_START_CS with the spacing rule, or None if they cannot fit."""
    step = PULSE_CS + PULSE_GAP_CS
    slack = PULSE_START_CS[1] - PULSE_START_CS[0] - step * (total - 1)
    if slack < 0:
        return None
    # sorted uniform offsets within the slack, then the minimum spacing added back
    offsets = np.sort(rng.integers(0, slack + 1, size=total))
    return [PULSE_START_CS[0] + int(o) + step * i for i, o in enumerate(offsets)]


def _pulse_counts(rng: np.random.Generator, num_objects: int, sounding: int | None) -> list[int]:
    """Pulses per object, drawn again until they fit the timing rule."""
    while True:
        counts = [int(rng.choice(BEEP_COUNTS if j == sounding else DISTRACTOR_COUNTS)) for j in range(num_objects)]
        if _pulse_starts(rng, sum(counts)) is not None:
            return counts


def _pulse_times(rng: np.random.Generator, counts: list[int]) -> list[list[list[float]]]:
    """Pulse intervals (s) per object, all pulses of the clip spaced by the timing rule."""
    starts = _pulse_starts(rng, sum(counts))
    assert starts is not None, counts
    owners = rng.permutation(np.repeat(np.arange(len(counts)), counts))
    pulses = [[] for _ in counts]
    for owner, s in zip(owners, starts):
        pulses[owner].append([s / 100, (s + PULSE_CS) / 100])
    return pulses


def sample_scene(rng: np.random.Generator, beeps: bool | None = None) -> dict:
    """A scene: {"pitch": "high" | "low" | None, "objects": [...]}; `beeps` forces a sounding object or none.

    Attributes and pulse counts are drawn once; placements and pulse times are drawn
    again until every frame is valid, so the attributes stay uniform.
    """
    if beeps is None:
        beeps = bool(rng.random() < BEEP_FRACTION)
    num = int(rng.integers(1, MAX_OBJECTS + 1))
    while True:
        colors = [str(c) for c in rng.choice(list(COLORS), size=num, replace=False)]
        shapes = [str(s) for s in rng.choice(SHAPES, size=num)]
        sizes = [str(s) for s in rng.choice(list(SIZES), size=num)]
        motions = [str(m) for m in rng.choice(MOTIONS, size=num)]
        sounding = int(rng.integers(num)) if beeps else None
        pitch = str(rng.choice(list(PITCHES))) if beeps else None
        counts = _pulse_counts(rng, num, sounding)
        for _ in range(_PLACEMENT_BATCHES):
            starts, travels = _sample_placements(rng, sizes, motions, _PLACEMENT_BATCH)
            for g in np.flatnonzero(_apart_throughout(starts, travels, sizes, motions))[:_PULSE_TRIES]:
                pulses = _pulse_times(rng, counts)
                objects = []
                for j in range(num):
                    dx, dy = DIRECTIONS[motions[j]]
                    start = [float(starts[g, j, 0]), float(starts[g, j, 1])]
                    end = [start[0] + dx * float(travels[g, j]), start[1] + dy * float(travels[g, j])]
                    objects.append({
                        "color": colors[j], "shape": shapes[j], "size": sizes[j], "motion": motions[j],
                        "start": start, "end": end, "pulses": pulses[j], "beeps": j == sounding,
                    })
                if _frames_ok(objects):
                    return {"pitch": pitch, "objects": objects}
        # these attributes leave no room in practice: draw them again (rare, see docs/avsynth.md)


def clip_meta(seed: int, index: int) -> dict:
    """The metadata record of clip `index` of the split drawn with `seed`, keys in the spec's order."""
    scene = sample_scene(clip_rng(seed, index, SCENE), beeps=clip_has_beep(seed, index))
    cid = clip_id(index)
    return {
        "id": cid, "video": f"clips/{cid}.mp4",
        "duration": DURATION, "fps": FPS, "size": SIZE, "sample_rate": SAMPLE_RATE,
        "pitch": scene["pitch"], "objects": scene["objects"],
    }


def sounding_object(meta: dict) -> dict | None:
    return next((o for o in meta["objects"] if o["beeps"]), None)
