"""Load a clip: T upright square RGB frames sampled evenly over it, and its sound at 16 kHz mono.

Notation: T sampled frames, S side of the square output.

Sampling. Frame i is the frame on screen at t_i = (i + 0.5) * D / T seconds after the
video's start, D the video's duration: the centre of the i-th of T equal slots. A clip with
fewer than T frames repeats them evenly (3 frames for T = 16 gives each 5 or 6 times).

Decoding. Reading a clip front to back costs all its frames up to t_{T-1}; seeking costs,
per sampled frame, a jump to the keyframe before t_i and the frames from there to t_i.
The loader estimates both from the stream's keyframe index and takes the cheaper. When it
seeks, a keyframe that already lies in frame i's own slot (within D / 2T before t_i) is
taken as it is rather than decoding on to t_i, so a long clip costs about T keyframes
whatever its length. `Clip.timestamps` give the true time of every returned frame.

Geometry. Frames are turned upright by the stream's display matrix (rotation metadata),
resized so the short side is S (pixel aspect ratio applied), then centre-cropped to S x S.

Audio. The default audio stream (the richest of several) is decoded whole inside one FFmpeg filter graph (amovie ->
aresample -> aformat: the same resampler as av.AudioResampler, down-mixing to mono), in a
thread beside the frame sampling; a track over two minutes is cut into 60 s pieces decoded
in parallel. A track the graph cannot decode (a damaged packet) goes through PyAV's frame
loop instead, which skips what it cannot read.
"""
from __future__ import annotations

import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import av
import av.filter
import numpy as np

from vqa.config import MediaConfig

log = logging.getLogger(__name__)

# FFmpeg reads .txt/.bin files as "video" through these text-mode-art decoders; they are not video.
_TEXT_ART_CODECS = {"ansi", "bintext", "xbin", "idf"}
# One seek (jump, decoder flush, a keyframe) counted in decoded frames, to weigh seeking against reading through.
_SEEK_COST_FRAMES = 10
# Without a keyframe index: seek only across gaps longer than this (seconds), and how far back to retry
# when a seek lands after its target.
_NO_INDEX_SEEK_GAP = 10.0
_SEEK_RETRIES = 3
# Guards against decode loops that never end: packets read per load, decode errors tolerated.
_MAX_PACKETS_BASE = 10_000
_MAX_PACKETS_PER_SECOND = 1_000
_MAX_DECODE_ERRORS = 100
_MAX_SCAN_PACKETS = 2_000_000
# Audio longer than two chunks decodes as chunks in parallel threads, each starting this far early
# so the decoder has settled by its first kept sample.
_AUDIO_CHUNK = 60.0
_AUDIO_PREROLL = 1.0


class MediaError(ValueError):
    """A file that cannot be loaded as a clip; the message names the file and the problem."""


@dataclass
class Clip:
    path: str
    frames: np.ndarray  # (T, S, S, 3) uint8 RGB, upright
    timestamps: np.ndarray  # (T,) float64: seconds from the video's start of each returned frame
    audio: np.ndarray  # (L,) float32 mono at sample_rate: the whole track, or silence of the clip's length
    sample_rate: int
    has_audio: bool
    duration: float  # seconds of video; 0 for a still image
    width: int  # source frame size after rotation (a quarter turn swaps them)
    height: int
    fps: float  # average frame rate; 0 when unknown or a still image
    rotation: int = 0  # degrees counter-clockwise applied to make the frames upright


def load_clip(
    path: str | Path,
    num_frames: int = MediaConfig.num_frames,
    size: int = MediaConfig.size,
    sample_rate: int = MediaConfig.sample_rate,
    audio: bool = True,
    max_duration: float | None = None,
) -> Clip:
    """Decode `num_frames` frames sampled evenly over the clip at `path`, and its audio.

    Frames: the frame on screen at t_i = (i + 0.5) * duration / num_frames, i = 0..T-1
    (see the module docstring for how long clips are seeked), turned upright by the
    rotation metadata, resized so the short side is `size`, centre-cropped to size x size.
    Audio: the default audio stream, down-mixed to mono, resampled to `sample_rate` and
    aligned to the video's start; if there is none, silence of the clip's length and
    `has_audio=False`. A still image (PNG, JPEG...) is a clip of duration 0 whose one frame
    is repeated, with no audio. A damaged file gives the frames that can be decoded.
    `audio=False` skips the sound (for video-only models): silence and `has_audio=False`.
    `max_duration` (seconds) refuses longer clips before their frames and sound are decoded;
    where the header gives no duration, the packet scan stops as soon as it passes the limit,
    and a sound track longer than the limit is decoded only as far as the clip can use.

    Raises `MediaError` for a missing, empty, truncated or non-media file, one with no
    video stream or no decodable frame, or one longer than `max_duration`.
    """
    return load_views(path, [(num_frames, size)], sample_rate, audio, max_duration)[0]


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def local_path(path: str | Path) -> Path:
    """`path` as a Path; a web address (which Path would quietly turn into a file name) is refused plainly."""
    if isinstance(path, str) and _URL.match(path) and not Path(path).exists():
        raise MediaError(f"{path} is a web address: vqa reads video files on this machine, so download it first")
    return Path(path)


def load_views(
    path: str | Path,
    views: list[tuple[int, int]],
    sample_rate: int = MediaConfig.sample_rate,
    audio: bool = True,
    max_duration: float | None = None,
) -> list[Clip]:
    """`load_clip` for several (num_frames, size) views of one file, decoding it once: the first view
    is sampled exactly as `load_clip` samples it; each other view takes, for each of its times, the
    frame on screen then where that decoding runs through it, else the nearest frame it decoded
    (a clip that is sought through, see the module docstring). The clips share one audio array.
    For a model's small frames beside an image network's larger ones."""
    if not views:
        raise ValueError("views must name at least one (num_frames, size)")
    for num_frames, size in views:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
    if max_duration is not None and not max_duration > 0:
        raise ValueError(f"max_duration must be > 0 seconds, got {max_duration}")
    path = local_path(path)
    if not path.exists():
        raise MediaError(f"{path}: no such file")
    if not path.is_file():
        raise MediaError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: the file is empty (0 bytes)")
    try:
        return _load(path, views, sample_rate, audio, max_duration)
    except av.FFmpegError as e:
        raise MediaError(f"{path}: cannot be decoded: {e}") from e


def _load(path: Path, views: list[tuple[int, int]], sample_rate: int, with_audio: bool,
          max_duration: float | None = None) -> list[Clip]:
    with _open(path) as container:
        video = _pick_stream(container.streams.video, "video")
        if video is None:
            kinds = ", ".join(s.type for s in container.streams) or "none"
            raise MediaError(f"{path}: no video stream (streams: {kinds})")
        if video.codec_context is None:
            raise MediaError(f"{path}: this FFmpeg build has no decoder for its video codec")
        codec = video.codec_context.name
        if codec in _TEXT_ART_CODECS:
            raise MediaError(f"{path}: not a video (FFmpeg can read it only as text, format {container.format.name!r})")
        still = container.format.name == "image2" or container.format.name.endswith("_pipe")
        audio = _pick_stream(container.streams.audio, "audio") if with_audio else None
        start = float(video.start_time * video.time_base) if video.start_time is not None else 0.0
        fps = 0.0 if still else float(video.average_rate or video.guessed_rate or 0)
        duration = 0.0 if still else _header_duration(container, video)
        timed, scanned = True, False
        if not still and duration <= 0:
            scanned = True
            duration, count, timed = _scan_duration(container, video, start, fps, max_duration)
            if not timed and duration > 0:
                fps = count / duration  # frames without timestamps are taken as evenly spaced
        if max_duration is not None and duration > max_duration:
            seconds = f"more than {max_duration:.0f}" if scanned else f"{duration:.0f}"
            raise MediaError(f"{path} lasts {seconds} s; clips up to {max_duration:.0f} s are accepted")
        width, height = video.width, video.height
        video_index = video.index
        audio_info = None if audio is None else _AudioInfo(
            index=audio.index,
            start=float(audio.start_time * audio.time_base) if audio.start_time is not None else start,
            duration=float(audio.duration * audio.time_base) if audio.duration else (
                container.duration / av.time_base if container.duration else 0.0),
            format_start=container.start_time / av.time_base if container.start_time else 0.0,
            indexed=len(audio.index_entries) > 0 or len(video.index_entries) > 0,
        )

    (num_frames, size), others = views[0], views[1:]
    targets = (np.arange(num_frames) + 0.5) * duration / num_frames  # (T,) seconds
    riders = [_Riders((np.arange(n) + 0.5) * duration / n, s) for n, s in others]
    # The audio decodes in a second thread while the frames are sampled: FFmpeg releases the GIL.
    with ThreadPoolExecutor(max_workers=1) as pool:
        sound = None if audio_info is None else pool.submit(
            _read_audio_or_none, path, audio_info, sample_rate, start, duration, max_duration)
        picks, rotation = _sample_frames(path, video_index, start, duration, fps, targets, size, allow_seek=timed,
                                         riders=riders)
        if not picks:
            raise MediaError(f"{path}: no video frame could be decoded ({codec})")
        sound = None if sound is None else sound.result()
    if rotation % 180:
        width, height = height, width
    has_audio = sound is not None
    if sound is None:
        sound = np.zeros(int(round(duration * sample_rate)), dtype=np.float32)
    return [
        Clip(path=str(path), frames=np.stack([img for _, img in view]), timestamps=np.array([t for t, _ in view]),
             audio=sound, sample_rate=sample_rate, has_audio=has_audio, duration=duration, width=width,
             height=height, fps=fps, rotation=rotation)
        for view in [picks] + [r.picks for r in riders]
    ]


@dataclass
class _AudioInfo:
    index: int
    start: float  # stream timestamp of its first sample, seconds
    duration: float  # seconds; 0 when unknown
    format_start: float  # the container's start time, which amovie's seek_point counts from
    indexed: bool  # the demuxer keeps an index, so seeking lands where asked


def _read_audio_or_none(path: Path, audio: _AudioInfo, sample_rate: int, start: float, duration: float,
                        max_duration: float | None = None):
    try:
        return _read_audio(path, audio, sample_rate, start, duration, max_duration)
    except av.FFmpegError as e:  # the pictures are still worth having
        log.warning("%s: the audio stream cannot be decoded, using silence: %s", path, e)
        return None


def _url(path: Path) -> str:
    """An explicit file URL, so a name like "concat:x.mp4" or "http:x.mp4" is never read as a protocol."""
    return "file:" + str(path.resolve())


def _open(path: Path):
    try:
        return av.open(_url(path), metadata_errors="ignore")
    except av.FFmpegError as e:
        raise MediaError(f"{path}: not a media file FFmpeg can read ({e.strerror or e})") from e


def _pick_stream(streams, kind: str):
    """The stream a player would play: the first with the default disposition, else the first.

    Audio: among those, the highest sample rate (then most channels), so a low-rate copy
    (an 8 kHz track beside a 16 kHz one, both marked default) is not the one heard."""
    usable = [s for s in streams if not s.disposition & av.stream.Disposition.attached_pic]
    if kind == "audio":
        usable = [s for s in usable if s.codec_context is not None and s.rate and s.channels]
    default = [s for s in usable if s.disposition & av.stream.Disposition.default]
    pool = default or usable
    if kind == "audio" and pool:
        return max(pool, key=lambda s: (s.rate, s.channels))  # max keeps the first of equals
    return (pool or [None])[0]


def _header_duration(container, video) -> float:
    """The video stream's duration, else the container's, in seconds; 0 when neither is known."""
    if video.duration and video.time_base:
        seconds = float(video.duration * video.time_base)
        if seconds > 0:
            return seconds
    if container.duration and container.duration > 0:
        return container.duration / av.time_base
    return 0.0


def _scan_duration(container, video, start: float, fps: float,
                   limit: float | None = None) -> tuple[float, int, bool]:
    """For headers that lack a duration, read the packets without decoding: (duration, packet count,
    whether they carry timestamps). The duration is the last timestamp, else the sum of the packets'
    durations, else the count at `fps` (a raw H.264 stream has neither). Stops as soon as the packets
    read pass `limit` seconds, giving the duration so far."""
    end, total, count = None, 0.0, 0
    packets = container.demux(video)
    for _ in range(_MAX_SCAN_PACKETS):
        try:
            packet = next(packets)
        except (StopIteration, av.FFmpegError):
            break
        if packet.size == 0:  # the flush packet at the end
            continue
        count += 1
        if packet.duration and packet.time_base:
            total += float(packet.duration * packet.time_base)
        if packet.pts is not None and packet.time_base is not None:
            t = float((packet.pts + (packet.duration or 0)) * packet.time_base)
            end = t if end is None else max(end, t)
        if limit is not None:
            so_far = end - start if end is not None else total if total > 0 else count / fps if fps > 0 else 0.0
            if so_far > limit:
                break
    if end is not None:
        return max(end - start, 0.0), count, True
    return (total if total > 0 else count / fps if fps > 0 else 0.0), count, False


class _Budget:
    """Packets one load may still read: bounds every decode loop, whatever the file claims."""

    def __init__(self, packets: int):
        self.left = packets

    def take(self) -> bool:
        self.left -= 1
        return self.left >= 0


def _decode(container, stream, budget: _Budget) -> Iterator:
    """Decoded frames of `stream` in order; packets the decoder rejects are skipped, a demuxer error ends it."""
    packets = container.demux(stream)
    errors = 0
    while budget.take():
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.FFmpegError as e:  # damaged or truncated file: keep what was decoded so far
            log.debug("demuxing %s stopped: %s", stream, e)
            return
        try:
            frames = packet.decode()
        except av.FFmpegError as e:
            errors += 1
            log.debug("skipping a packet of %s: %s", stream, e)
            if errors > _MAX_DECODE_ERRORS:
                return
            continue
        yield from frames


class _FrameReader:
    """The frames of one video stream in presentation order, as (seconds from start, frame), with seeking."""

    def __init__(self, container, stream, start: float, fps: float, budget: _Budget, watch: list[_Riders] = ()):
        self.container, self.stream, self.start, self.budget, self.watch = container, stream, start, budget, watch
        self.step = 1.0 / fps if fps > 0 else 0.0
        self.position = 0.0  # time of the last frame consumed; a fresh decoder starts at the file's start
        self._frames = self._timed(_decode(container, stream, budget))
        self._prev = self._next = None
        self._seeked = False

    def _timed(self, frames):
        last = None
        for frame in frames:
            t = frame.time - self.start if frame.time is not None else (
                last + self.step if last is not None else 0.0)
            for rider in self.watch:
                rider.see(t, frame, fresh=last is None)
            last = t
            yield t, frame

    def seek(self, t: float) -> None:
        pts = int((t + self.start) / self.stream.time_base)
        self.container.seek(pts, stream=self.stream, backward=True)
        self._frames = self._timed(_decode(self.container, self.stream, self.budget))
        self._prev = self._next = None
        self._seeked = True

    def frame_at(self, t: float, snap: float = 0.0):
        """The frame on screen at `t`: the last one at or before it, else the first after it; None if
        the stream has none left. Right after a seek, the first frame (a keyframe) is taken as it is
        when it lies within `snap` seconds before `t`."""
        while True:
            if self._next is None:
                self._next = next(self._frames, None)
                if self._next is None:
                    return self._prev
            if self._next[0] > t + 1e-6:
                return self._prev if self._prev is not None else self._next
            first_after_seek = self._seeked and self._prev is None
            self._prev, self._next = self._next, None
            self.position = self._prev[0]
            if first_after_seek and t - self._prev[0] <= snap:
                return self._prev

    def seek_frame(self, t: float, snap: float):
        """Seek to the keyframe before `t` and return the frame at `t`; retry further back when the
        demuxer lands after `t` (formats without an index seek by timestamp search)."""
        target = t
        for attempt in range(_SEEK_RETRIES):
            self.seek(target)
            got = self.frame_at(t, snap)
            if got is None or got[0] <= t + self.step + 1e-6 or target <= 0:
                return got
            target = max(target - _NO_INDEX_SEEK_GAP * 2**attempt, 0.0)
        return got


def _keyframe_lookup(stream) -> Callable[[float], float] | None:
    """Time (seconds from the first frame) of the last keyframe at or before t, from the demuxer's
    index; None when the format keeps no index (MPEG-TS, GIF, streamed files)."""
    entries = stream.index_entries
    if len(entries) == 0 or not stream.time_base:
        return None
    tb = stream.time_base
    first = entries[0].timestamp  # the first entry is the first frame (its dts may precede its pts)

    def before(t: float) -> float:
        i = entries.search_timestamp(first + int(t / tb), backward=True)
        return float((entries[i].timestamp - first) * tb) if i >= 0 else 0.0

    return before


def _prefer_seek(targets: np.ndarray, keyframe_before, fps: float, snap: float) -> bool:
    """Whether seeking to each target decodes fewer frames than reading through to the last one."""
    if keyframe_before is None:
        return len(targets) > 1 and targets[1] - targets[0] > _NO_INDEX_SEEK_GAP
    read_through = targets[-1] * fps
    cost, pos = 0.0, 0.0
    for t in targets:
        k = keyframe_before(t)
        if k > pos + 1e-6:
            cost += _SEEK_COST_FRAMES
            if t - k <= snap:
                pos = k
                continue
            cost += (t - k) * fps
        else:
            cost += max(t - pos, 0.0) * fps
        pos = max(pos, t)
    return cost < read_through


def _needs_seek(t: float, position: float, keyframe_before) -> bool:
    if keyframe_before is None:
        return t - position > _NO_INDEX_SEEK_GAP
    return keyframe_before(t) > position + 1e-6


class _Squarer:
    """Decoded frame -> (S, S, 3) uint8 upright RGB; remembers the last frame, which repeats in short clips."""

    def __init__(self, stream, size: int):
        self.size = size
        sar = stream.sample_aspect_ratio
        self.sar = float(sar) if sar else 1.0
        # Older files carry a clockwise `rotate` tag instead of a display matrix.
        self.tag_rotation = -int(float(stream.metadata.get("rotate", 0) or 0))
        self.rotation = None
        self._last = (None, None)

    def __call__(self, frame) -> np.ndarray:
        if frame is self._last[0]:
            return self._last[1]
        if self.rotation is None:
            self.rotation = int(round((frame.rotation or self.tag_rotation) / 90)) * 90 % 360
        s = self.size
        scale = s / min(frame.width * self.sar, frame.height)  # short side -> S
        w = max(s, int(round(frame.width * self.sar * scale)))
        h = max(s, int(round(frame.height * scale)))
        img = frame.reformat(width=w, height=h, format="rgb24", interpolation="BILINEAR").to_ndarray()  # (h, w, 3)
        img = np.rot90(img, self.rotation // 90)  # counter-clockwise, as the display matrix says
        top, left = (img.shape[0] - s) // 2, (img.shape[1] - s) // 2
        img = np.ascontiguousarray(img[top:top + s, left:left + s])  # (S, S, 3)
        self._last = (frame, img)
        return img


class _Riders:
    """Another view's frames, taken from what the first view's decoding passes: for each time, the frame on
    screen then where the decoder runs through it (the last frame at or before it, decoded just before one
    after it), else the decoded frame nearest to it."""

    def __init__(self, targets: np.ndarray, size: int):
        self.targets, self.size = targets, size

    def reset(self) -> None:
        self.exact: list = [None] * len(self.targets)  # (time, frame)
        self.near: list = [None] * len(self.targets)  # (distance, time, frame)
        self.last = None
        self.picks: list = []

    def see(self, t: float, frame, fresh: bool) -> None:
        """Every decoded frame in decoding order; `fresh` after a seek (or at the start)."""
        if fresh:
            self.last = None
        for i, e in enumerate(self.targets):
            if self.exact[i] is None and t > e + 1e-6 and self.last is not None and self.last[0] <= e + 1e-6:
                self.exact[i] = self.last
            if self.near[i] is None or abs(t - e) < self.near[i][0]:
                self.near[i] = (abs(t - e), t, frame)
        self.last = (t, frame)

    def finish(self, stream) -> None:
        square = _Squarer(stream, self.size)
        for i in range(len(self.targets)):
            got = self.exact[i] or (self.near[i] and self.near[i][1:])
            if got is None:  # the first view decoded nothing at all
                self.picks = []
                return
            self.picks.append((got[0], square(got[1])))
        self.exact = self.near = self.last = None  # the decoder's frames are not kept


def _sample_frames(path: Path, index: int, start: float, duration: float, fps: float,
                   targets: np.ndarray, size: int, allow_seek: bool = True,
                   riders: list[_Riders] = ()) -> tuple[list, int]:
    """(time, image) for each target, and the rotation applied; [] when nothing decodes. `riders` watch
    every decoded frame for their own times and square theirs at the end."""
    budget = _Budget(_MAX_PACKETS_BASE + int(duration * _MAX_PACKETS_PER_SECOND))
    for rider in riders:
        rider.reset()
    with _open(path) as container:
        stream = container.streams[index]
        reader = _FrameReader(container, stream, start, fps, budget, watch=riders)
        square = _Squarer(stream, size)
        snap = duration / len(targets) / 2
        keyframe_before = _keyframe_lookup(stream)
        seek = allow_seek and duration > 0 and _prefer_seek(targets, keyframe_before, fps or 30.0, snap)
        picked: list = []
        for t in targets:
            if seek and _needs_seek(t, reader.position, keyframe_before):
                try:
                    got = reader.seek_frame(t, snap)
                except av.FFmpegError as e:  # the format cannot seek: read it through instead
                    log.debug("%s: seeking failed, reading through: %s", path, e)
                    return _sample_frames(path, index, start, duration, fps, targets, size, False, riders)
            else:
                got = reader.frame_at(t)
            picked.append(None if got is None else (got[0], square(got[1])))
        for rider in riders:
            rider.finish(stream)
    rotation = square.rotation or 0
    known = [i for i, p in enumerate(picked) if p is not None]
    if not known:
        return [], rotation
    # Targets past the last decodable frame keep it on screen; before the first, they take the first.
    out = []
    for i in range(len(picked)):
        j = min(known, key=lambda k: (abs(k - i), -k))
        out.append(picked[j])
    return out, rotation


def _read_audio(path: Path, audio: _AudioInfo, sample_rate: int, video_start: float, duration: float,
                max_duration: float | None = None) -> np.ndarray:
    """The whole audio stream as mono float32 at `sample_rate`, shifted so sample 0 is the video's start.
    With `max_duration`, decoding stops after 2 * max_duration + 1 s of sound: the video lasts at most
    max_duration and starts at most its own length away, so the samples the clip uses are all kept."""
    cap = None if max_duration is None else int((2 * max_duration + 1) * sample_rate)
    try:
        sound = first = None
        if audio.indexed and audio.duration > 2 * _AUDIO_CHUNK and (cap is None or audio.duration * sample_rate <= cap):
            sound, first = _audio_in_chunks(path, audio, sample_rate)
        if sound is None:
            sound, first = _audio_through_graph(path, audio.index, sample_rate, max_samples=cap)
    except av.FFmpegError as e:  # e.g. a damaged packet, which the graph cannot skip
        log.debug("%s: decoding audio frame by frame: %s", path, e)
        sound, first = _audio_frame_by_frame(path, audio.index, sample_rate, duration, max_samples=cap)
    offset = int(round(((first or 0.0) - video_start) * sample_rate))
    if abs(offset) > max(duration, 1.0) * sample_rate:  # timestamps that make no sense: do not shift
        offset = 0
    if offset > 0:
        sound = np.concatenate([np.zeros(offset, np.float32), sound])
    elif offset < 0:
        sound = sound[-offset:]
    return sound


def _audio_through_graph(path: Path, index: int, sample_rate: int, start: float | None = None,
                         end: float | None = None, seek: float = 0.0,
                         max_samples: int | None = None) -> tuple[np.ndarray, float | None]:
    """Decode, down-mix and resample inside one FFmpeg filter graph (amovie -> atrim -> aresample ->
    aformat), pulled in 10 s blocks: no Python work per audio frame, about 3x faster than frame by
    frame. `start`/`end` (stream timestamps, seconds) trim at the source rate, so cuts at whole
    seconds fall on the output's sample grid; `seek` jumps ahead first. Returns the samples and the
    time of the first one. `max_samples` stops pulling once that many are held."""
    graph = av.filter.Graph()
    chain = [graph.add("amovie", filename=_url(path), streams=str(index), seek_point=str(seek))]
    trim = {k: str(v) for k, v in (("start", start), ("end", end)) if v is not None}
    if trim:
        chain.append(graph.add("atrim", **trim))
    chain += [
        graph.add("aresample", out_sample_rate=str(sample_rate)),
        graph.add("aformat", sample_fmts="flt", channel_layouts="mono", sample_rates=str(sample_rate)),
        graph.add("asetnsamples", nb_out_samples=str(10 * sample_rate), pad="0"),
        graph.add("abuffersink"),
    ]
    for a, b in zip(chain, chain[1:]):
        a.link_to(b)
    graph.configure()
    chunks, first, held = [], None, 0
    while max_samples is None or held < max_samples:
        try:
            frame = chain[-1].pull()
        except (av.error.EOFError, av.error.BlockingIOError):
            break
        if first is None and frame.time is not None:
            first = frame.time
        chunks.append(frame.to_ndarray().reshape(-1))
        held += len(chunks[-1])
    sound = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return sound.astype(np.float32, copy=False), first


def _audio_in_chunks(path: Path, audio: _AudioInfo, sample_rate: int) -> tuple[np.ndarray | None, float | None]:
    """A long track decoded as _AUDIO_CHUNK-second pieces in parallel threads, each seeking a little
    before its piece. Chunks are fixed in length, so the result does not depend on the machine; the
    seams differ from a one-pass decode only within a millisecond. (None, None) when a piece does not
    start or end where it should (a format that seeks imprecisely)."""
    bounds = [audio.start + k * _AUDIO_CHUNK for k in range(int(np.ceil(audio.duration / _AUDIO_CHUNK)))]

    def piece(k: int):
        end = bounds[k + 1] if k + 1 < len(bounds) else None
        if k == 0:
            return _audio_through_graph(path, audio.index, sample_rate, end=end)
        seek = max(bounds[k] - _AUDIO_PREROLL - audio.format_start, 0.0)
        return _audio_through_graph(path, audio.index, sample_rate, start=bounds[k], end=end, seek=seek)

    with ThreadPoolExecutor(max_workers=min(len(bounds), _cpu_count())) as pool:
        parts = list(pool.map(piece, range(len(bounds))))
    tolerance = 2.0 / sample_rate
    for k, (samples, first) in enumerate(parts):
        if first is None:
            return None, None
        start = bounds[k] if k else first
        if k and abs(first - start) > tolerance:
            return None, None
        if k + 1 < len(bounds) and abs(len(samples) / sample_rate - (bounds[k + 1] - start)) > tolerance:
            return None, None
    return np.concatenate([samples for samples, _ in parts]), parts[0][1]


def _cpu_count() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _audio_frame_by_frame(path: Path, index: int, sample_rate: int, duration: float,
                          max_samples: int | None = None) -> tuple[np.ndarray, float | None]:
    """The same through PyAV's decode loop and av.AudioResampler, skipping packets the decoder rejects;
    `max_samples` stops it once that many are held."""
    budget = _Budget(_MAX_PACKETS_BASE + int(duration * _MAX_PACKETS_PER_SECOND))
    chunks, first, resampler, setup, held = [], None, None, None, 0
    with _open(path) as container:
        for frame in _decode(container, container.streams[index], budget):
            if first is None and frame.time is not None:
                first = frame.time
            frame_setup = (frame.format.name, frame.layout.name, frame.sample_rate)
            if frame_setup != setup:  # a mid-stream change of rate or layout needs a new resampler
                if resampler is not None:
                    chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
                resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
                setup = frame_setup
            new = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
            chunks += new
            held += sum(len(c) for c in new)
            if max_samples is not None and held >= max_samples:
                break
        if resampler is not None:
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    sound = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return sound.astype(np.float32, copy=False), first
