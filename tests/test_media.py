"""Clip loading: containers x codecs, timing of sampled frames, rotation, audio, damaged files, real clips.

Generated clips encode each frame's index in its colour (tests/media_factory.py), so every check
below is about content: which source frame came back, at what time, which way up, what sound.
"""
from __future__ import annotations

import time

import av
import numpy as np
import pytest

from tests import media_factory as mf
from tests.conftest import shared_media
from vqa import media
from vqa.media import (
    _AUDIO_CHUNK, Clip, MediaError, _audio_frame_by_frame, _audio_through_graph, _keyframe_lookup, _prefer_seek,
    load_clip, load_views,
)

T, S, FPS, N = 8, 32, 10, 20  # sampled frames, output side; generated clips: 10 fps, 20 frames
SR = 16000


def expected_codes(clip: Clip, fps: float = FPS, n: int = N) -> list[int]:
    """Index of the frame on screen at t_i = (i + 0.5) * duration / T, for a constant-rate clip."""
    t = (np.arange(len(clip.frames)) + 0.5) * clip.duration / len(clip.frames)
    return [min(int(np.floor(x * fps + 1e-6)), n - 1) for x in t]


def on_screen(path, clip: Clip) -> list[tuple[float, int]]:
    """Reference: decode every frame plainly and take, for each target, the last frame at or before it
    (the first frame when none is): (time from the stream's start, colour code)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        start = float(s.start_time * s.time_base) if s.start_time is not None else 0.0
        frames = [(f.time - start, mf.color_code(f.to_ndarray(format="rgb24"))) for f in c.decode(s)]
    targets = (np.arange(len(clip.frames)) + 0.5) * clip.duration / len(clip.frames)
    picked = []
    for t in targets:
        shown = [f for f in frames if f[0] <= t + 1e-6]
        picked.append(shown[-1] if shown else frames[0])
    return picked


def codes(clip: Clip) -> list[int]:
    return [mf.color_code(f) for f in clip.frames]


def peak_hz(audio: np.ndarray, rate: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[spectrum.argmax()])


# container suffix, video encoder, pixel format, audio (encoder, rate, layout) or None
CASES = [
    ("mp4", "libx264", "yuv420p", ("aac", 44100, "stereo")),
    ("mov", "libx264", "yuv420p", ("pcm_s16le", 22050, "mono")),
    ("mkv", "libx264", "yuv420p", ("libopus", 48000, "stereo")),
    ("mp4", "libx265", "yuv420p", ("aac", 48000, "mono")),
    ("mkv", "libx265", "yuv420p10le", ("flac", 16000, "mono")),
    ("ts", "libx265", "yuv420p", ("mp2", 48000, "stereo")),
    ("mp4", "libsvtav1", "yuv420p", ("aac", 44100, "stereo")),
    ("mkv", "libsvtav1", "yuv420p", ("libopus", 48000, "mono")),
    ("webm", "libsvtav1", "yuv420p", ("libopus", 48000, "mono")),
    ("webm", "libvpx", "yuv420p", ("libopus", 48000, "stereo")),
    ("webm", "libvpx-vp9", "yuv420p", ("libopus", 48000, "mono")),
    ("mp4", "libvpx-vp9", "yuv420p", None),
    ("avi", "mpeg4", "yuv420p", ("pcm_s16le", 22050, "stereo")),
    ("mp4", "libx264", "yuv420p", ("libmp3lame", 44100, "stereo")),
    ("avi", "libx264", "yuv420p", ("pcm_s16le", 16000, "mono")),
    ("ts", "libx264", "yuv420p", ("aac", 48000, "stereo")),
    ("ts", "mpeg2video", "yuv420p", ("mp2", 44100, "stereo")),
    ("gif", "gif", "rgb8", None),
]
DECODER = {"libx264": "h264", "libx265": "hevc", "libsvtav1": "libdav1d", "libvpx": "vp8",
           "libvpx-vp9": "vp9", "mpeg4": "mpeg4", "mpeg2video": "mpeg2video", "gif": "gif"}


def case_id(case) -> str:
    return f"{case[0]}-{case[1]}-{case[2]}" + (f"-{case[3][0]}" if case[3] else "")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def table(folder):
    """Every case's file, written once; a reason string where this PyAV build cannot make it."""
    files = {}
    for case in CASES:
        suffix, codec, pix_fmt, audio = case
        missing = [c for c in (codec, audio[0] if audio else None) if c and not mf.encoder_available(c)]
        if missing or not mf.decoder_available(DECODER[codec]):
            files[case_id(case)] = f"this PyAV build lacks {missing or DECODER[codec]}"
            continue
        spec = None if audio is None else dict(codec=audio[0], rate=audio[1], layout=audio[2], freq=440.0)
        files[case_id(case)] = mf.write_video(folder / f"{case_id(case)}.{suffix}", codec=codec, pix_fmt=pix_fmt,
                                              num_frames=N, fps=FPS, audio=spec)
    return files


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_containers_and_codecs(table, case):
    path = table[case_id(case)]
    if isinstance(path, str):
        pytest.skip(path)
    clip = load_clip(path, T, S)
    assert clip.frames.shape == (T, S, S, 3) and clip.frames.dtype == np.uint8
    assert 1.95 <= clip.duration <= 2.1, clip.duration
    assert (clip.width, clip.height) == (96, 64) and clip.fps == pytest.approx(FPS)
    reference = on_screen(path, clip)
    assert codes(clip) == [code for _, code in reference]
    np.testing.assert_allclose(clip.timestamps, [t for t, _ in reference], atol=1e-3)
    # the file's own timeline aside (AVI with H.264 shows frame 0 at 0.1 s), that is the frame index
    assert all(abs(c - e) <= 1 for c, e in zip(codes(clip), expected_codes(clip)))
    assert clip.sample_rate == SR and clip.audio.dtype == np.float32 and clip.audio.ndim == 1
    if case[3] is None:
        assert not clip.has_audio and len(clip.audio) == round(clip.duration * SR) and not clip.audio.any()
    else:
        assert clip.has_audio
        assert abs(len(clip.audio) - 2.0 * SR) < 0.06 * SR, len(clip.audio)  # encoder padding aside
        assert peak_hz(clip.audio) == pytest.approx(440, abs=8)


def test_frames_are_resized_by_short_side_and_centre_cropped(folder):
    # left third red, middle green, right third blue, on a 96 x 32 frame: the crop keeps the middle
    img = np.zeros((32, 96, 3), np.uint8)
    img[:, :32, 0], img[:, 32:64, 1], img[:, 64:, 2] = 255, 255, 255
    path = mf.write_video(folder / "wide.mp4", images=[img] * 4, size=(96, 32), codec_options={"crf": "0"})
    frame = load_clip(path, 2, 16).frames[0].astype(int)
    assert frame[:, 3:13, 1].min() > 200 and frame[:, 3:13, [0, 2]].max() < 60


def pattern(width: int, height: int) -> np.ndarray:
    """Upright reference: a red top band whose left half is white, green middle, blue bottom."""
    img = np.zeros((height, width, 3), np.uint8)
    img[: height // 3] = (220, 30, 30)
    img[: height // 3, : width // 2] = (240, 240, 240)
    img[height // 3: 2 * height // 3] = (30, 200, 30)
    img[2 * height // 3:] = (30, 30, 220)
    return img


def check_upright(frame: np.ndarray) -> None:
    f = frame.astype(int)
    s = len(f)
    top_left, top_right = f[s // 12, s // 8], f[s // 12, -s // 8]
    middle, bottom = f[s // 2, s // 2], f[-s // 12, s // 2]
    assert top_left.min() > 180, f"top left should be white, got {top_left}"
    assert top_right[0] > 150 and top_right[1:].max() < 100, f"top right should be red, got {top_right}"
    assert middle[1] > 150 and middle[[0, 2]].max() < 100, f"middle should be green, got {middle}"
    assert bottom[2] > 150 and bottom[:2].max() < 100, f"bottom should be blue, got {bottom}"


@pytest.mark.parametrize("suffix", ["mp4", "mov", "mkv"])
@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_metadata_makes_frames_upright(folder, suffix, rotation):
    upright = pattern(48, 96)  # portrait, as a phone shows it
    stored = np.ascontiguousarray(np.rot90(upright, -rotation // 90))  # what the camera wrote
    path = mf.write_video(folder / f"rot{rotation}.{suffix}", images=[stored] * 3,
                          size=(stored.shape[1], stored.shape[0]), rotation=rotation)
    clip = load_clip(path, 4, 48)
    assert clip.rotation == rotation
    assert (clip.width, clip.height) == (48, 96)
    for frame in clip.frames:
        check_upright(frame)


def test_variable_frame_rate_picks_the_frame_on_screen(folder):
    times = [0.0, 0.1, 0.15, 0.5, 0.55, 1.2, 1.9, 2.0, 2.6, 3.0]
    path = mf.write_video(folder / "vfr.mp4", frame_times=times)
    clip = load_clip(path, 10, S)
    targets = (np.arange(10) + 0.5) * clip.duration / 10
    want = [max(i for i, t in enumerate(times) if t <= x + 1e-6) for x in targets]
    assert codes(clip) == want
    np.testing.assert_allclose(clip.timestamps, np.array(times)[want], atol=1e-3)


def test_fragmented_mp4(folder):
    path = mf.write_video(folder / "frag.mp4", gop=5, container_options={"movflags": "frag_keyframe+empty_moov"},
                          audio=dict(codec="aac", rate=44100, layout="stereo", freq=440.0))
    clip = load_clip(path, T, S)
    assert codes(clip) == expected_codes(clip) and clip.has_audio


def test_long_clip_seeks_and_keeps_frames_near_their_targets(folder):
    # 120 s, keyframe every 2 s; the colour encodes the second
    path = mf.write_video(folder / "long.mp4", size=(32, 32), fps=FPS, gop=20,
                          codes=[i // FPS for i in range(120 * FPS)])
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        targets = (np.arange(16) + 0.5) * 120 / 16
        assert _prefer_seek(targets, _keyframe_lookup(stream), FPS, 120 / 16 / 2)
    clip = load_clip(path, 16, S)
    slot = clip.duration / 16
    targets = (np.arange(16) + 0.5) * slot
    assert np.all(clip.timestamps <= targets + 1e-6) and np.all(targets - clip.timestamps <= slot / 2 + 1e-6)
    assert codes(clip) == [int(t + 1e-6) for t in clip.timestamps]


def test_views_read_through_match_separate_loads(folder):
    # read through (one keyframe): every view gets exactly the frames its own load_clip would
    path = mf.write_video(folder / "views.mp4", num_frames=40, audio=dict(codec="aac", rate=44100, layout="mono",
                                                                           freq=440.0))
    small, large = load_views(path, [(T, S), (5, 48)])
    alone_small, alone_large = load_clip(path, T, S), load_clip(path, 5, 48)
    assert small.frames.shape == (T, S, S, 3) and large.frames.shape == (5, 48, 48, 3)
    for view, alone in ((small, alone_small), (large, alone_large)):
        assert np.array_equal(view.frames, alone.frames) and np.array_equal(view.timestamps, alone.timestamps)
    assert large.audio is small.audio and np.array_equal(small.audio, alone_small.audio)
    assert codes(large) == expected_codes(large, n=40)


def test_views_of_a_sought_clip_keep_the_first_exact(folder):
    # seeking through a long clip: the first view is load_clip's, the other takes frames near its own times
    path = mf.write_video(folder / "long_views.mp4", size=(32, 32), fps=FPS, gop=20,
                          codes=[i // FPS for i in range(120 * FPS)])
    first, other = load_views(path, [(16, S), (6, 48)], audio=False)
    alone = load_clip(path, 16, S, audio=False)
    assert np.array_equal(first.frames, alone.frames) and np.array_equal(first.timestamps, alone.timestamps)
    slot = first.duration / 6
    targets = (np.arange(6) + 0.5) * slot
    assert np.all(np.abs(other.timestamps - targets) <= slot / 2 + 1e-6)
    assert codes(other) == [int(t + 1e-6) for t in other.timestamps]


def test_views_of_a_still_image_and_bad_arguments(folder):
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, :30] = 255
    path = mf.write_image(folder / "still.png", image)
    small, large = load_views(path, [(3, 8), (2, 20)])
    assert small.frames.shape == (3, 8, 8, 3) and large.frames.shape == (2, 20, 20, 3) and large.duration == 0
    assert np.array_equal(large.frames[0], large.frames[1])
    with pytest.raises(ValueError, match="at least one"):
        load_views(path, [])
    with pytest.raises(ValueError, match="size must be"):
        load_views(path, [(3, 8), (2, 0)])


def test_long_clip_without_index_seeks_by_timestamp(folder):
    # MPEG-TS keeps no index: seeks search by timestamp and must still land before each target
    path = mf.write_video(folder / "long.ts", size=(32, 32), fps=FPS, gop=20,
                          codes=[i // FPS for i in range(120 * FPS)])
    clip = load_clip(path, 6, S)
    slot = clip.duration / 6
    targets = (np.arange(6) + 0.5) * slot
    assert np.all(np.abs(targets - clip.timestamps) <= slot / 2 + 0.2)
    assert codes(clip) == [int(t + 1e-6) for t in clip.timestamps]


def test_short_clip_repeats_its_frames_evenly(folder):
    path = mf.write_video(folder / "three.mp4", num_frames=3, fps=30)
    clip = load_clip(path, 16, S)
    got = codes(clip)
    assert got == sorted(got) and set(got) == {0, 1, 2}
    assert all(5 <= got.count(k) <= 6 for k in range(3))


def test_multichannel_audio_is_down_mixed(folder):
    samples = np.zeros((6, 2 * 44100), np.float32)  # 5.1: 440 Hz front left, 1000 Hz front right
    samples[0], samples[1] = mf.tone(2.0, 44100, 440)[0], mf.tone(2.0, 44100, 1000)[0]
    path = mf.write_video(folder / "surround.mp4", audio=dict(codec="aac", rate=44100, layout="5.1", samples=samples))
    clip = load_clip(path, T, S)
    spectrum = np.abs(np.fft.rfft(clip.audio))
    freqs = np.fft.rfftfreq(len(clip.audio), 1 / SR)
    for f in (440, 1000):
        assert spectrum[np.abs(freqs - f) < 5].max() > 20 * np.median(spectrum)
    assert abs(len(clip.audio) - 2 * SR) < 0.06 * SR


def test_several_streams_pick_the_default_ones(folder):
    path = mf.write_streams(folder / "streams.mkv", [dict(code=5, default=False), dict(code=9, default=True)],
                            [dict(freq=440.0, default=False), dict(freq=1000.0, default=True)])
    clip = load_clip(path, T, S)
    assert set(codes(clip)) == {9}
    assert peak_hz(clip.audio) == pytest.approx(1000, abs=8)
    path = mf.write_streams(folder / "streams0.mkv", [dict(code=5, default=False), dict(code=9, default=False)],
                            [dict(freq=440.0, default=False), dict(freq=1000.0, default=False)])
    clip = load_clip(path, T, S)  # no default anywhere: the first of each
    assert set(codes(clip)) == {5} and peak_hz(clip.audio) == pytest.approx(440, abs=8)


def test_audio_is_aligned_with_the_video(folder):
    samples = mf.tone(2.0, 48000, 1000, start=1.0, stop=1.5)
    path = mf.write_video(folder / "beep.mp4", audio=dict(codec="aac", rate=48000, layout="mono", samples=samples))
    clip = load_clip(path, T, S)
    loud = np.nonzero(np.abs(clip.audio) > 0.1)[0] / SR
    assert loud[0] == pytest.approx(1.0, abs=0.03) and loud[-1] == pytest.approx(1.5, abs=0.03)


def test_audio_can_be_skipped(table):
    path = table[case_id(CASES[0])]
    clip = load_clip(path, T, S, audio=False)
    assert not clip.has_audio and not clip.audio.any() and len(clip.audio) == round(clip.duration * SR)


def test_no_audio_track_gives_silence_of_the_clip_length(folder):
    path = mf.write_video(folder / "silent.mp4", num_frames=25)
    clip = load_clip(path, T, S)
    assert not clip.has_audio and clip.audio.dtype == np.float32
    assert len(clip.audio) == round(2.5 * SR) and not clip.audio.any()


def test_start_without_keyframe_decodes_what_it_can(folder):
    source = mf.write_video(folder / "gop10.mp4", gop=10, num_frames=30)
    path = mf.drop_first_keyframe(source, folder / "nokey.mp4")
    clip = load_clip(path, 6, S)
    assert clip.frames.shape == (6, S, S, 3)
    got = codes(clip)
    # frames 1-9 reference the dropped keyframe and do not decode; from frame 10 on everything does
    assert got == [code for _, code in on_screen(path, clip)]
    assert min(got) == 10 and got[-1] >= 25


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_still_image_is_a_repeated_frame(folder, suffix):
    img = pattern(64, 48)
    clip = load_clip(mf.write_image(folder / f"still.{suffix}", img), 4, 24)
    assert clip.duration == 0 and clip.fps == 0 and not clip.has_audio and len(clip.audio) == 0
    assert (clip.width, clip.height) == (64, 48) and not clip.timestamps.any()
    assert all((f == clip.frames[0]).all() for f in clip.frames)
    assert clip.frames[0, 1, 1].min() > 180  # top left white, centre green
    assert clip.frames[0, 12, 12, 1] > 150 and clip.frames[0, 12, 12, [0, 2]].max() < 100


@pytest.fixture(scope="module")
def bad_files(folder):
    valid = mf.write_video(folder / "valid.mp4", num_frames=20)
    rng = np.random.default_rng(0)
    (folder / "random.mp4").write_bytes(rng.integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    (folder / "random.bin").write_bytes(rng.integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    (folder / "notes.txt").write_text("not a video\n" * 200)
    (folder / "empty.mp4").write_bytes(b"")
    return {
        "random bytes": (folder / "random.mp4", "not a media file"),
        "random bytes named .bin": (folder / "random.bin", "not a (video|media file)"),
        "text": (folder / "notes.txt", "not a video"),
        "empty": (folder / "empty.mp4", "empty"),
        "truncated": (mf.truncate(valid, folder / "truncated.mp4"), "not a media file"),
        "audio only": (mf.write_audio_only(folder / "audio_only.mp4"), "no video stream"),
        "missing": (folder / "missing.mp4", "no such file"),
        "folder": (folder, "not a file"),
        "web address": ("https://example.com/clip.mp4", "is a web address: .* download it first"),
    }


@pytest.mark.parametrize("kind", ["random bytes", "random bytes named .bin", "text", "empty", "truncated",
                                  "audio only", "missing", "folder", "web address"])
def test_bad_files_raise_media_error_quickly(bad_files, kind):
    path, message = bad_files[kind]
    t0 = time.perf_counter()
    with pytest.raises(MediaError, match=message) as err:
        load_clip(path, T, S)
    assert str(path) in str(err.value)
    assert time.perf_counter() - t0 < 5
    assert isinstance(err.value, ValueError)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_frames"):
        load_clip("x.mp4", 0)
    with pytest.raises(ValueError, match="size"):
        load_clip("x.mp4", 4, 0)


# Real clips (../shared/media): every one loads; the ones with a known quirk are checked for it.
REAL = {
    "nasa_13013.mp4": dict(width=320, height=180, has_audio=True, duration=13.0),
    "chaplin.mp4": dict(width=640, height=360, has_audio=True, duration=9.64),
    "yoga.mp4": dict(width=568, height=320, has_audio=False, duration=10.0),
    "testvideo.mp4": dict(width=1280, height=720, has_audio=False, duration=24.02),
    "video_270.mov": dict(width=320, height=568, has_audio=False, duration=0.1),
    "flipping_a_pancake.mkv": dict(width=426, height=240, has_audio=True, duration=10.38),
    "big_buck_bunny_432_433.webm": dict(width=1280, height=720, has_audio=True, duration=1.0),
    "pigs_in_a_polka.gif": dict(width=314, height=273, has_audio=False, duration=3.0),
    "corrupted.mp4": dict(width=1280, height=720, has_audio=False, duration=5.0),
}


@pytest.mark.parametrize("name", list(REAL))
def test_real_clips_load(name):
    clip = load_clip(shared_media(name), 16, 64)
    want = REAL[name]
    assert (clip.width, clip.height, clip.has_audio) == (want["width"], want["height"], want["has_audio"])
    assert clip.duration == pytest.approx(want["duration"], abs=0.02)
    assert clip.frames.shape == (16, 64, 64, 3)
    assert np.all(np.diff(clip.timestamps) >= 0) and clip.timestamps[-1] <= clip.duration
    if clip.has_audio:
        assert abs(len(clip.audio) / SR - clip.duration) < 0.1 and np.abs(clip.audio).max() > 0.05
    if name != "video_270.mov":
        assert len({f.tobytes() for f in clip.frames}) >= 8  # frames from across the clip, not one repeated


def test_real_rotated_clip_is_upright_portrait():
    path = shared_media("video_270.mov")
    clip = load_clip(path, 16, 64)
    assert clip.rotation == 90 and (clip.width, clip.height) == (320, 568)
    assert len({f.tobytes() for f in clip.frames}) == 3 and np.all(np.diff(clip.timestamps) >= 0)
    # the same picture made independently: decode, turn a quarter counter-clockwise, scale, crop
    with av.open(str(path)) as c:
        raw = next(c.decode(video=0)).to_ndarray(format="rgb24")  # (320, 568, 3): stored sideways
    from PIL import Image

    upright = Image.fromarray(np.ascontiguousarray(np.rot90(raw))).resize((64, 114), Image.BILINEAR)
    expected = np.asarray(upright)[25:89].astype(int)
    assert np.abs(clip.frames[0].astype(int) - expected).mean() < 12
    assert np.abs(clip.frames[0].astype(int) - np.rot90(expected, 2)).mean() > 20  # upside down is far


def test_real_corrupted_clip_loads_what_decodes():
    clip = load_clip(shared_media("corrupted.mp4"), 50, 32)
    assert len(set(np.round(clip.timestamps, 2))) >= 48  # 49 of its 50 frames decode


def test_real_clip_with_two_streams_each_picks_the_first_default():
    clip = load_clip(shared_media("nasa_13013.mp4"), 4, 32)
    assert (clip.width, clip.height, clip.fps) == (320, 180, 25.0)  # not the 480x270 29.97 fps stream
    assert len(clip.audio) == pytest.approx(13.056 * SR, abs=SR * 0.01)
    # of its two default audio streams (8 kHz and 16 kHz) the 16 kHz one: energy above 4 kHz
    spectrum = np.abs(np.fft.rfft(clip.audio)) ** 2
    freqs = np.fft.rfftfreq(len(clip.audio), 1 / SR)
    assert spectrum[freqs > 4200].sum() > 1e-3 * spectrum.sum()


def test_file_names_that_look_like_urls(folder, table):
    odd = folder / "http:a'b,c=d [1].mp4"  # a protocol prefix and filter-graph metacharacters
    odd.write_bytes(table[case_id(CASES[0])].read_bytes())
    clip = load_clip(odd, T, S)
    assert clip.has_audio and codes(clip) == expected_codes(clip)


@pytest.mark.parametrize("fmt, codec", [("h264", "libx264"), ("hevc", "libx265"), ("ivf", "libvpx-vp9")])
def test_elementary_streams_without_duration_or_timestamps(folder, fmt, codec):
    # raw H.264/HEVC carry no duration and no timestamps: frames are counted and taken as evenly spaced
    path = mf.write_video(folder / f"raw.{fmt}", codec=codec, format=fmt, num_frames=N)
    clip = load_clip(path, T, S)
    assert clip.duration == pytest.approx(2.0, abs=0.05) and clip.fps == pytest.approx(FPS, abs=0.3)
    assert codes(clip) == expected_codes(clip)


@pytest.mark.parametrize("suffix", ["mp4", "mkv"])
def test_long_audio_decodes_in_parallel_chunks_seamlessly(folder, suffix, monkeypatch):
    seconds = 2.5 * _AUDIO_CHUNK
    samples = mf.tone(seconds, 16000, 1000, start=_AUDIO_CHUNK - 0.2, stop=_AUDIO_CHUNK + 0.3)  # across a seam
    samples += mf.tone(seconds, 16000, 500, start=125.0, stop=125.5)
    path = mf.write_video(folder / f"long_audio.{suffix}", size=(16, 16), fps=1, num_frames=int(seconds), gop=10,
                          audio=dict(codec="aac", rate=16000, layout="mono", samples=samples))
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return _audio_through_graph(*args, **kwargs)

    monkeypatch.setattr(media, "_audio_through_graph", spy)
    clip = load_clip(path, 4, 16)
    assert len(calls) == 3 and calls[1]["start"] == pytest.approx(_AUDIO_CHUNK)  # three pieces, one thread each
    one_pass, _ = _audio_through_graph(path, 1, SR)
    assert len(clip.audio) == pytest.approx(seconds * SR, rel=0.01) and len(clip.audio) == len(one_pass)
    loud = np.abs(clip.audio) > 0.1
    for start, stop in ((_AUDIO_CHUNK - 0.2, _AUDIO_CHUNK + 0.3), (125.0, 125.5)):
        inside = loud[int(start * SR) + 160: int(stop * SR) - 160]
        assert inside.mean() > 0.5 and not loud[int(stop * SR) + 800: int(stop * SR) + 8000].any()
    diff = np.abs(clip.audio - one_pass)
    seams = np.nonzero(diff > 1e-3)[0] / SR
    assert np.all(np.min(np.abs(seams[:, None] - np.array([60.0, 120.0])[None]), axis=1) < 0.002)


def test_graph_and_frame_loop_decode_the_same_audio(table):
    path = table[case_id(CASES[0])]  # AAC stereo 44.1 kHz
    fast, first_fast = _audio_through_graph(path, 1, SR)
    slow, first_slow = _audio_frame_by_frame(path, 1, SR, 2.0)
    assert first_fast == first_slow and len(fast) == len(slow)
    np.testing.assert_allclose(fast, slow, atol=1e-6)


# ---- the duration limit ----

def test_max_duration_stops_the_scan_of_a_header_without_duration(folder, monkeypatch):
    path = mf.write_streamed_mkv(folder / "streamed_120s.mkv", seconds=120)
    with av.open(str(path)) as c:
        assert c.duration is None and c.streams.video[0].duration is None  # the case under test
    assert load_clip(path, 4, 16).duration == pytest.approx(120, abs=1)  # no limit: scanned whole
    packets = []
    real_demux = av.container.InputContainer.demux

    def counting_demux(self, *args, **kwargs):
        for packet in real_demux(self, *args, **kwargs):
            packets.append(packet.pts)
            yield packet

    monkeypatch.setattr(av.container.InputContainer, "demux", counting_demux)
    monkeypatch.setattr(media, "_sample_frames", lambda *a, **k: pytest.fail("frames decoded past the limit"))
    monkeypatch.setattr(media, "_read_audio", lambda *a, **k: pytest.fail("audio decoded past the limit"))
    with pytest.raises(MediaError, match=r"streamed_120s.mkv lasts more than 10 s; clips up to 10 s are accepted"):
        load_clip(path, 4, 16, max_duration=10)
    assert len(packets) < 2 * 12 + 5  # the scan stopped at about 10 s of 2 fps video


def test_max_duration_refuses_from_the_header_and_keeps_shorter_clips(folder):
    path = mf.write_video(folder / "header_2s.mp4", size=(16, 16), fps=10, num_frames=20)
    with pytest.raises(MediaError, match=r"header_2s.mp4 lasts 2 s; clips up to 1 s are accepted"):
        load_clip(path, 4, 16, max_duration=1)
    assert load_clip(path, 4, 16, max_duration=5).duration == pytest.approx(2.0, abs=0.1)
    with pytest.raises(ValueError, match="max_duration"):
        load_clip(path, 4, 16, max_duration=0)


def test_max_duration_bounds_a_sound_track_longer_than_the_video(folder):
    path = mf.write_streamed_mkv(folder / "long_sound.mkv", seconds=2, audio_seconds=300)
    assert len(load_clip(path, 4, 16).audio) == pytest.approx(300 * SR, rel=0.01)  # no limit: all of it
    clip = load_clip(path, 4, 16, max_duration=10)
    assert clip.duration == pytest.approx(2, abs=0.6) and clip.has_audio
    assert 2 * SR <= len(clip.audio) <= (2 * 10 + 1) * SR + 10 * SR  # decoding stopped; one 10 s block over at most
