"""The spoken-clips generator (vqa.spoken): valid qa.jsonl records, clips whose sound is what their record says,
answers checked against the perception text, and `vqa finetune --perception-tokens`."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vqa.data import read_qa
from vqa.media import load_clip
from vqa.spoken import check, questions
from vqa.spoken.audio import espeak_missing
from vqa.spoken.sentences import ASKED, LANGUAGES, SENTENCES, VOICES
from vqa.spoken.templated import TEMPLATES

needs_espeak = pytest.mark.skipif(espeak_missing() is not None, reason=str(espeak_missing()))


@pytest.fixture(scope="module")
def spoken(tmp_path_factory):
    from vqa.spoken.generate import generate

    out = tmp_path_factory.mktemp("spoken")
    counts = generate(out, num_clips=9, seed=4, avsynth=0.12, per_clip=6, perception_tokens=0, progress=False)
    return out, counts


@needs_espeak
def test_records_are_valid_and_typed(spoken):
    out, counts = spoken
    records = read_qa(out)  # raises on a malformed record
    assert sum(counts.values()) == len(records)
    clips = [json.loads(line) for line in (out / "clips.jsonl").read_text().splitlines()]
    assert len(clips) == 8 and all((out / c["video"]).is_file() for c in clips)
    assert all((out / r["video"]).is_file() for r in records)
    spoken_types = set(questions.ASK) | {"content", "unsaid"}
    avsynth = [r for r in records if r["video"].startswith("avsynth/")]
    assert avsynth and all(r["conversations"][1]["value"] == r["answer"] for r in avsynth)
    for r in records:
        if r in avsynth:
            continue
        assert r["type"] in spoken_types, r
        q, a = r["conversations"][0]["value"], r["conversations"][1]["value"]
        assert q.startswith("<video>\n") and a.endswith((".", "\u201d")), r
        if r["type"] == "unanswerable":
            assert a == questions.UNKNOWN


@needs_espeak
def test_clips_sound_as_their_records_say(spoken):
    out, _ = spoken
    clips = [json.loads(line) for line in (out / "clips.jsonl").read_text().splitlines()]
    assert len({c["sound"] for c in clips}) >= 3  # several kinds even in a tiny split
    qa = read_qa(out)
    for c in clips:
        clip = load_clip(out / c["video"], num_frames=4, size=32)
        level = 20 * np.log10(np.sqrt(np.mean(clip.audio.astype(np.float64) ** 2)) + 1e-9)
        said = [r["conversations"][1]["value"] for r in qa if r["video"] == c["video"] and r["type"] == "said"]
        if c["sound"] == "no-audio":
            assert not clip.has_audio
        elif c["sound"] == "silence":
            assert clip.has_audio and level < -55
        else:
            assert clip.has_audio and level > -45, (c, level)
        if c["sound"] == "speech":
            assert c["language"] in LANGUAGES
            assert c["voice"].startswith("recording:") or (
                all(x in SENTENCES[c["language"]] or x == c.get("templated", {}).get("text") for x in c["sentences"])
                and c["text"] == " ".join(c["sentences"]))
            assert all(c["text"] in s for s in said) and said
        else:
            assert all("Nobody speaks" in s for s in said)


def _text(sound: str, language: str | None = None, words: str = "") -> str:
    lines = ["What pretrained models perceived (they can be wrong):", f"Sound: {sound}, moderate (-20 dBFS).",
             "Seen (ImageNet classes, mean probability): nothing with confidence."]
    lines += [f"Speech ({language}, 90%):", f"[0.0-2.0 s] {words}"] if language else ["Speech: no words heard."]
    return "\n".join(lines)


def test_answers_kept_only_where_perception_supports_them():
    clip = {"sound": "speech", "language": "fr", "text": "Le chat dort sur le canapé."}
    assert check.supported(clip, _text("speech", "fr", "Le chat dort sur le canapé.")) == \
        ((), "Le chat dort sur le canapé.")
    skip, quote = check.supported(clip, _text("speech", "fr", "Un homme marche vers la mer."))
    assert quote is None and "said" in skip and "language" not in skip
    skip, _ = check.supported(clip, _text("speech", "th", "Le chat dort sur le canapé."))
    assert "language" in skip and "said" in skip and "music" not in skip
    assert "speaking" in skip  # "someone speaks French" names what the text does not say
    skip, _ = check.supported({"sound": "music"}, _text("other sound"))
    assert set(skip) == set(check.SOUND_KINDS)
    assert check.supported({"sound": "music"}, _text("music")) == ((), None)


def test_questions_quote_the_checked_transcript_and_skip_unsupported_kinds():
    clip = {"id": "x", "video": "clips/x.mp4", "sound": "speech", "language": "de", "text": "Der Bus kommt heute.",
            "quote": "Der Bus kommt heute!", "objects": None}
    rng = np.random.default_rng(0)
    got = {kind: a for kind, _, a in questions.questions(clip, rng, per_clip=20)}
    assert got["said"] == "The speaker says: \u201cDer Bus kommt heute!\u201d"
    assert got["language"] == "The speaker speaks German."
    assert got["unanswerable"] == questions.UNKNOWN
    kinds = [kind for kind, _, _ in questions.questions(clip, rng, per_clip=20, skip=check.SOUND_KINDS)]
    assert kinds and not set(kinds) & set(check.SOUND_KINDS)


def test_content_questions_are_answered_from_the_transcript_only_where_it_holds_the_answer():
    text = "The flight to London is delayed by two hours."
    clip = {"id": "x", "video": "clips/x.mp4", "sound": "speech", "language": "en", "text": text,
            "quote": "The flight to London is delayed by two hours.", "objects": None}
    got = {kind: (q, a) for kind, q, a in questions.questions(clip, np.random.default_rng(0), per_clip=20)}
    assert got["content"] == ("How long is the flight delayed?", "Two hours, according to the speaker.")
    misheard = {**clip, "quote": "The flight to London is delayed by a few hours."}
    kinds = {kind for kind, _, _ in questions.questions(misheard, np.random.default_rng(0), per_clip=20)}
    assert "content" not in kinds and "said" in kinds
    kinds = {kind for kind, _, _ in questions.questions(clip, np.random.default_rng(0), 20, skip=check.QUOTE_KINDS)}
    assert "content" not in kinds
    spanish = {**clip, "language": "es", "text": "El museo está cerrado los lunes.", "quote": None}
    assert "content" not in {kind for kind, _, _ in questions.questions(spanish, np.random.default_rng(0), 20)}
    # without speech, the same kind of question has no answer: nobody said anything to quote
    music = {**clip, "sound": "music", "language": None, "text": None, "quote": None}
    asked = {q for q, _ in ASKED.values()}
    got = [(q, a) for seed in range(20) for _, q, a in questions.questions(music, np.random.default_rng(seed), 20)
           if q in asked]
    assert got and all(a == questions.UNKNOWN for _, a in got)


def test_two_sentence_clips_ask_about_the_second_sentence():
    first, second = "Watch out, the floor is wet.", "The baby finally fell asleep."
    clip = {"id": "x", "video": "clips/x.mp4", "sound": "speech", "language": "en", "text": f"{first} {second}",
            "sentences": [first, second], "quote": f"{first} {second}", "objects": None}
    got = {kind: (q, a) for kind, q, a in questions.questions(clip, np.random.default_rng(0), per_clip=20)}
    assert got["content"] == ("Who fell asleep?", "The baby, according to the speaker.")
    assert got["said"][1] == f"The speaker says: \u201c{first} {second}\u201d"
    # the second sentence misheard: the question is about the first, which the transcript holds
    misheard = {**clip, "quote": f"{first} The bay be finally fell a sleep."}
    got = {kind: (q, a) for kind, q, a in questions.questions(misheard, np.random.default_rng(0), per_clip=20)}
    assert got["content"] == ("What is wet?", "The floor, according to the speaker.")


def test_a_slot_is_found_in_the_transcript_however_whisper_writes_it():
    from vqa.spoken.templated import find

    assert find("You can reach the front desk on 555-0142.", "5550142") == "555-0142"
    assert find("You can reach the front desk on 555 0142.", "5550142") == "555 0142"
    assert find("Doctor Lewis will see you at 7 o'clock.", "7 o'clock") == "7 o'clock"
    assert find("The store opens at 7.30 every morning.", "7:30") == "7.30"
    assert find("Your table for twenty-one is ready.", "twenty one") == "twenty-one"
    assert find("The ferry to Austin leaves soon.", "Boston") is None
    assert find("The ferry leaves in 35 minutes.", "3") is None  # whole words only


def _templated_clip(seed: int, kind: str, slots: int = 1, starts: str = "") -> dict:
    """The first sentence `seed` draws with `slots` slots of `kind` (and that starts so)."""
    from vqa.spoken.templated import draw

    rng = np.random.default_rng(seed)
    while True:
        said = draw(rng)
        if [slot["kind"] for slot in said["slots"]] == [kind] * slots and said["text"].startswith(starts):
            text = said["text"]
            return {"id": "x", "video": "clips/x.mp4", "sound": "speech", "language": "en", "text": text,
                    "sentences": [text], "quote": text, "objects": None, "templated": said}


def test_templated_clips_quote_their_slots_and_cannot_tell_what_the_sentence_does_not_say():
    from vqa.spoken.templated import GENERIC, number_words

    clip = _templated_clip(0, "number")
    said = clip["templated"]
    number = said["slots"][0]["forms"][0]  # in digits, as Whisper writes most numbers
    words = said["slots"][0]["forms"][1]
    quote = clip["text"].replace(words, number)
    clip["quote"] = quote
    assert number in quote and number_words(12) == "twelve" and number_words(35) == "thirty five"
    got = [(kind, q, a) for kind, q, a in questions.questions(clip, np.random.default_rng(1), per_clip=20)]
    content = [(q, a) for kind, q, a in got if kind == "content"]
    reply = said["slots"][0]["answer"].format(number)
    assert (said["slots"][0]["question"], f"{reply[0].upper()}{reply[1:]}, according to the speaker.") in content
    generic = [(q, a) for q, a in content if q in GENERIC["number"]]
    assert generic == [(generic[0][0], f"{number}, according to the speaker.")]
    unsaid = [(q, a) for kind, q, a in got if kind == "unsaid"]
    assert len(unsaid) == 1 and unsaid[0][1] == questions.UNKNOWN
    assert unsaid[0][0] not in GENERIC["number"] and any(unsaid[0][0] in v for v in GENERIC.values())
    # the unanswerable questions a number could answer are not asked over it, on any draw
    asked = {q for seed in range(40) for kind, q, _ in questions.questions(clip, np.random.default_rng(seed), 20)
             if kind == "unanswerable"}
    assert asked and not asked & set(questions.SAYS["number"])
    # a slot the transcript does not hold is not asked about; the unsaid kind still is (nothing else is heard)
    misheard = {**clip, "quote": quote.replace(number, "many")}
    kinds = [kind for kind, _, _ in questions.questions(misheard, np.random.default_rng(1), per_clip=20)]
    assert "content" not in kinds and "unsaid" in kinds
    # a transcript not supported at all: no slot questions (the quote kinds are skipped)
    kinds = [kind for kind, _, _ in questions.questions(clip, np.random.default_rng(1), 20, skip=check.QUOTE_KINDS)]
    assert "content" not in kinds and "unsaid" not in kinds


def test_two_sentences_around_a_templated_one_ask_only_about_its_slots():
    clip = _templated_clip(3, "name")
    other = "Watch out, the floor is wet."
    both = {**clip, "text": f"{other} {clip['text']}", "sentences": [other, clip["text"]],
            "quote": f"{other} {clip['text']}"}
    got = [(kind, q) for kind, q, _ in questions.questions(both, np.random.default_rng(0), per_clip=20)]
    slot_question = clip["templated"]["slots"][0]["question"]
    assert ("content", slot_question) in got and ("content", "What is wet?") in got
    assert "unsaid" not in {kind for kind, _ in got}  # the other sentence might say any kind


def _content_answers(clip: dict) -> dict[str, str]:
    asked = questions.questions(clip, np.random.default_rng(1), per_clip=20)
    return {q: a for kind, q, a in asked if kind == "content"}


def test_two_numbers_in_one_sentence_are_each_quoted_by_their_role_and_never_asked_as_one():
    from vqa.spoken.templated import GENERIC

    clip = _templated_clip(0, "number", slots=2, starts="Gate")  # asked as which gate and how many minutes
    said = clip["templated"]
    gate, minutes = (slot["forms"][0] for slot in said["slots"])
    assert gate != minutes
    quote = said["text"]
    for slot in said["slots"]:  # Whisper writes the numbers in digits
        quote = quote.replace(f" {slot['forms'][1]} ", f" {slot['forms'][0]} ")
    clip["quote"] = quote
    got = _content_answers(clip)
    assert got[said["slots"][0]["question"]] == f"Gate {gate}, according to the speaker."
    assert got[said["slots"][1]["question"]] == f"In {minutes} minutes, according to the speaker."
    assert not set(got) & set(GENERIC["number"])  # "Which number does the speaker say?" has two answers here


def test_a_price_written_with_its_currency_sign_is_not_given_the_unit_twice():
    clip = _templated_clip(0, "number", starts="The tickets cost")
    slot = clip["templated"]["slots"][0]
    clip["quote"] = f"The tickets cost ${slot['forms'][0]} each."
    assert _content_answers(clip)[slot["question"]] == f"${slot['forms'][0]}, according to the speaker."
    clip["quote"] = clip["text"]  # in words: the unit is said after the number
    in_words = slot["forms"][1].capitalize()
    assert _content_answers(clip)[slot["question"]] == f"{in_words} dollars, according to the speaker."


def _speech_index(tmp_path, seed: int) -> int:
    """The first clip of `seed` that speaks, with output folders a and b made for two versions of it."""
    from vqa.spoken.generate import make_clip

    for name in ("a", "b"):
        (tmp_path / name / "clips").mkdir(parents=True)
    return next(i for i in range(200) if make_clip(tmp_path / "a", seed, i, [], 0.0)["sound"] == "speech")


@needs_espeak
def test_templated_speech_is_its_own_draw_and_says_its_sentence(tmp_path):
    from vqa.spoken.generate import make_clip

    index = _speech_index(tmp_path, 5)
    plain = make_clip(tmp_path / "a", 5, index, [], 0.0)
    slots = make_clip(tmp_path / "b", 5, index, [], 0.0, templated=1.0)
    assert "templated" not in plain and slots["templated"]["text"] == slots["text"] == slots["sentences"][0]
    assert slots["language"] == "en" and slots["voice"].split("+")[0] in VOICES["en"]
    assert slots.get("objects") == plain.get("objects") and slots.get("picture") == plain.get("picture")
    again = make_clip(tmp_path / "b", 5, index, [], 0.0, templated=1.0)
    assert again == slots  # clip i depends only on (seed, i)


@needs_espeak
def test_a_second_sentence_follows_a_pause_and_leaves_the_other_draws_alone(tmp_path):
    from vqa.spoken.generate import make_clip

    index = _speech_index(tmp_path, 5)
    one = make_clip(tmp_path / "a", 5, index, [], 0.0)
    two = make_clip(tmp_path / "b", 5, index, [], 1.0)
    assert one["sentences"] == [one["text"]] and len(two["sentences"]) == 2
    assert two["sentences"][0] == one["text"] and two["sentences"][1] in SENTENCES[one["language"]]
    assert two["text"] == " ".join(two["sentences"]) and two["voice"] == one["voice"]
    assert two["duration"] > one["duration"] and two.get("objects") == one.get("objects")
    audio = load_clip(tmp_path / "b" / two["video"], num_frames=4, size=32).audio
    frames = audio[: len(audio) // 400 * 400].reshape(-1, 400)  # 25 ms
    quiet = np.sqrt((frames.astype(np.float64) ** 2).mean(1)) < 1e-3
    runs, longest = 0, 0
    for q in quiet[int(0.6 / 0.025):]:  # after the lead-in
        runs = runs + 1 if q else 0
        longest = max(longest, runs)
    assert longest * 0.025 >= 0.7  # the pause between the sentences


def test_seen_line_parsed_and_picture_answers_name_its_concepts():
    text = _text("music").replace("nothing with confidence", "Egyptian cat 0.77, tiger cat 0.10")
    assert check.seen(text) == [("Egyptian cat", 0.77), ("tiger cat", 0.10)]
    assert check.seen(_text("music")) == []
    clip = {"id": "x", "video": "clips/x.mp4", "sound": "music", "objects": None, "picture": "cat.png",
            "seen": check.seen(text)}
    got = {kind: a for kind, _, a in questions.questions(clip, np.random.default_rng(0), per_clip=20)}
    assert got["seen"] == "The image classifier suggests: Egyptian cat, tiger cat (it can be wrong)."
    assert got["describe"].startswith(got["seen"]) and "count" not in got
    got = {kind: a for kind, _, a in questions.questions({**clip, "seen": []}, np.random.default_rng(0), 20)}
    assert got["seen"].startswith("I can't tell what is shown")
    del clip["seen"]  # perception off: nothing to say about a real picture
    kinds = {kind for kind, _, _ in questions.questions(clip, np.random.default_rng(0), per_clip=20)}
    assert not kinds & {"seen", "describe"} and "music" in kinds


def test_unfamiliar_clips_say_what_the_classifier_sees_and_not_what_the_tokens_would():
    scene = [{"shape": "circle", "color": "red", "size": "small", "motion": "left", "beeps": False},
             {"shape": "square", "color": "blue", "size": "large", "motion": "still", "beeps": False}]
    clip = {"id": "x", "video": "clips/x.mp4", "sound": "music", "objects": scene, "unfamiliar": True,
            "seen": [("envelope", 0.2), ("web site", 0.1)]}
    asked = [questions.questions(clip, np.random.default_rng(k), per_clip=30) for k in range(12)]
    unseen = [[kind for kind, _, a in qs if a == questions.UNSEEN] for qs in asked]
    assert all(len(kinds) == 1 for kinds in unseen)  # one a clip, each kind of them in turn
    assert {kinds[0] for kinds in unseen} == {"count", "color", "shape", "motion"}
    assert not any(kind in ("count", "color", "shape", "motion") for qs in asked for kind, _, a in qs
                   if a != questions.UNSEEN)  # and never the answer the clip tokens would give
    got = {kind: a for kind, _, a in asked[0]}
    assert got["seen"] == ("The picture is unlike the clips I was trained on; the image classifier suggests: "
                           "envelope, web site (it can be wrong).")
    assert got["describe"] == f"{got['seen']} {questions.ANSWER_SOUND['music']}"
    assert "circle" not in got["describe"] and got["music"].startswith("Yes")  # the sound is still answered
    records = questions.records(clip, np.random.default_rng(0), per_clip=30)
    assert records and all(r["unfamiliar"] is True for r in records)
    # a familiar clip: the scene's own answers, and no mark on its records
    familiar = {**clip, "unfamiliar": False}
    got = {kind: a for kind, _, a in questions.questions(familiar, np.random.default_rng(0), per_clip=30)}
    assert got["count"] == "There are two objects." and questions.UNSEEN not in got.values()
    assert not any("unfamiliar" in r for r in questions.records(familiar, np.random.default_rng(0), 30))
    # a gradient, nothing recognised: no objects to ask about beyond whether there are any
    gradient = {**clip, "objects": None, "seen": []}
    kinds = {kind for k in range(12) for kind, _, a in questions.questions(gradient, np.random.default_rng(k), 30)
             if a == questions.UNSEEN}
    assert kinds == {"count", "color"}
    got = {kind: a for kind, _, a in questions.questions(gradient, np.random.default_rng(0), per_clip=30)}
    assert got["seen"].startswith("I can't tell what is shown: the picture is unlike the clips I was trained on")


@needs_espeak
def test_the_contrast_recipe_holds_back_on_every_object_question_and_repeats_the_clip_unmarked(tmp_path):
    from vqa.spoken.generate import generate

    scene = [{"shape": "circle", "color": "red", "size": "small", "motion": "left", "beeps": False}]
    clip = {"id": "x", "video": "clips/x.mp4", "sound": "music", "objects": scene, "unfamiliar": True, "seen": []}
    held = {kind for kind, _, a in questions.questions(clip, np.random.default_rng(0), 30, hold_back=True)
            if a == questions.UNSEEN}
    assert held == {"count", "color", "shape", "motion"}
    gradient = {**clip, "objects": None}
    assert {kind for kind, _, a in questions.questions(gradient, np.random.default_rng(0), 30, hold_back=True)
            if a == questions.UNSEEN} == {"count", "color"}
    if espeak_missing() is not None:
        pytest.skip(espeak_missing())
    generate(tmp_path, num_clips=6, seed=2, avsynth=0.0, per_clip=30, perception_tokens=0, progress=False,
             unfamiliar=0.5, contrast=True)
    rows = [json.loads(line) for line in (tmp_path / "qa.jsonl").read_text().splitlines()]
    marked = {r["video"] for r in rows if r.get("unfamiliar")}
    plain = [r for r in rows if r["id"].endswith("-plain")]
    assert marked and {r["video"] for r in plain} == marked  # each marked clip again, unmarked
    assert not any(r.get("unfamiliar") or r["conversations"][1]["value"] == questions.UNSEEN for r in plain)
    assert len({r["id"] for r in rows}) == len(rows)


def test_the_unfamiliar_mark_is_its_own_draw(tmp_path):
    from vqa.spoken.generate import make_clip

    for name in ("a", "b"):
        (tmp_path / name / "clips").mkdir(parents=True)
    plain = [make_clip(tmp_path / "a", 6, i, [], 0.0, unfamiliar=0.0) for i in range(6)]
    marked = [make_clip(tmp_path / "b", 6, i, [], 0.0, unfamiliar=1.0) for i in range(6)]
    assert all(m == {**p, "unfamiliar": True} for p, m in zip(plain, marked))
    for p in plain:  # the same pictures
        a, b = (load_clip(tmp_path / name / p["video"], num_frames=3, size=32, audio=False) for name in "ab")
        assert np.abs(a.frames.astype(int) - b.frames.astype(int)).mean() < 1.0


def test_picture_frames_pan_over_a_real_picture(tmp_path):
    from PIL import Image

    from vqa.spoken.pictures import SIZE, picture_frames

    image = np.zeros((90, 160, 3), np.uint8)
    image[:, 80:] = (250, 20, 20)  # right half red
    Image.fromarray(image).save(tmp_path / "half.png")
    frames = picture_frames(str(tmp_path / "half.png"), np.random.default_rng(1), seconds=1.0)
    assert frames.shape[1:] == (SIZE, SIZE, 3) and frames.dtype == np.uint8 and len(frames) > 10
    assert frames[..., 0].max() > 200 and frames[..., 0].min() < 50  # both halves in view
    assert not np.array_equal(frames[0], frames[-1])  # it moves


def test_a_picture_too_large_or_broken_is_passed_over(tmp_path, monkeypatch):
    import struct
    import zlib

    import vqa.spoken.pictures as pictures

    Image = pytest.importorskip("PIL.Image")

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # a PNG whose header declares 30000 x 30000 pixels (clip art like this exists), and a file that is not a PNG
    huge = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    (tmp_path / "huge.png").write_bytes(huge)
    (tmp_path / "broken.png").write_bytes(b"not a picture")
    Image.new("RGB", (8, 8)).save(tmp_path / "fine.png")
    assert not pictures._readable(str(tmp_path / "huge.png")) and not pictures._readable(str(tmp_path / "broken.png"))
    names = tuple(str(tmp_path / n) for n in ("broken.png", "huge.png", "fine.png"))
    monkeypatch.setattr(pictures, "pictures", lambda: ((), names))
    rng = np.random.default_rng(0)
    assert {pictures.draw_picture(rng) for _ in range(20)} == {str(tmp_path / "fine.png")}
    monkeypatch.setattr(pictures, "pictures", lambda: ((), names[:2]))
    assert pictures.draw_picture(rng) is None  # nothing usable: no picture rather than a crash


def test_missing_picture_sources_are_named(tmp_path, monkeypatch):
    import vqa.spoken.pictures as pictures

    folder = tmp_path / "png" / "animals"
    folder.mkdir(parents=True)
    Image = pytest.importorskip("PIL.Image")
    Image.new("RGB", (8, 8)).save(folder / "cat.png")
    monkeypatch.setattr(pictures, "CLIPART", tmp_path / "png")
    monkeypatch.setattr(pictures, "PACKAGE_PHOTOS", {"no_such_package_here": ("a.png",), "numpy": ("__init__.py",)})
    pictures.pictures.cache_clear()
    try:
        assert pictures.missing_sources() == ["1 of the 2 photographs (pip install --no-deps scikit-image for seven)"]
        monkeypatch.setattr(pictures, "CLIPART", tmp_path / "absent")
        pictures.pictures.cache_clear()
        notices = pictures.missing_sources()
        assert len(notices) == 2 and "openclipart-png" in notices[0]
    finally:
        pictures.pictures.cache_clear()


def test_finetune_perception_tokens_sets_the_model_config(tmp_path):
    from vqa.finetune import finetune_configs

    data = tmp_path / "data"
    data.mkdir()
    (data / "qa.jsonl").write_text(json.dumps({"video": "a.mp4", "conversations": [
        {"from": "human", "value": "<video>\nQ?"}, {"from": "gpt", "value": "A."}]}) + "\n")
    model_config, _ = finetune_configs(str(data), str(tmp_path / "out"), perception_tokens=160)
    assert model_config.perception_tokens == 160
    from vqa import bundle

    model_config, _ = finetune_configs(str(data), str(tmp_path / "out"))  # the default bundle's budget
    assert model_config.perception_tokens == bundle.read_config(bundle.default_bundle()).perception_tokens > 0
    model_config, _ = finetune_configs(str(data), str(tmp_path / "out"), base=str(bundle.adapters_dir() / "avsynth"))
    assert model_config.perception_tokens == 0  # the base bundle's: adapters/avsynth reads no perception
    model_config, _ = finetune_configs(str(data), str(tmp_path / "out"), perception_tokens=0)
    assert model_config.perception_tokens == 0
    with pytest.raises(ValueError, match="perception-tokens"):
        finetune_configs(str(data), str(tmp_path / "out"), perception_tokens=-1)


def test_committed_page_examples_are_small_and_hold_what_they_ask_about():
    from vqa.spoken.examples import EXAMPLES, EXAMPLES_DIR, spoken_examples

    pairs = spoken_examples()
    assert [p.name for p, _ in pairs] == [e[0] for e in EXAMPLES]
    assert sum(p.stat().st_size for p in EXAMPLES_DIR.iterdir()) < 2 * 1024 * 1024
    for (path, question), (_, said, _, _) in zip(pairs, EXAMPLES):
        clip = load_clip(path, num_frames=4, size=32)
        assert clip.has_audio and np.abs(clip.audio).max() > 0.01, path
        assert question.endswith("?") and (said is None) == ("music" in question)


def test_the_real_clip_benchmark_is_well_formed_and_kept_apart_from_the_recipe():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    items = [json.loads(line) for line in (root / "benchmarks" / "real_clips.jsonl").read_text().splitlines()]
    kinds = ("speech", "sound", "sight", "unknown", "describe")
    assert len({i["id"] for i in items}) == len(items) and {i["kind"] for i in items} == set(kinds)
    recipe = {s for sentences in SENTENCES.values() for s in sentences}
    for item in items:
        re.compile(item["reply"]), item["answer"] is None or re.compile(item["answer"])
        assert ("clip" in item) + ("speak" in item) + ("make" in item) == 1 and item["checked"]
        assert "speak" not in item or item["speak"]["text"] not in recipe  # never trained on
        assert "speak" not in item or not any(re.fullmatch(re.sub(r"\\\{\w+\\\}", ".+", re.escape(t[0])),
                                                            item["speak"]["text"], re.I) for t in TEMPLATES)
    invented = "There are two objects: a white circle staying still and a purple triangle. There is only music."
    honest = ("The picture is unlike the clips I was trained on; the image classifier suggests: suit (it can be "
              "wrong). There is music, a melody of tones; nobody speaks.")
    chaplin = next(i for i in items if i["id"] == "chaplin-describe")
    assert not re.search(chaplin["reply"], invented, re.I) and re.search(chaplin["reply"], honest, re.I)
    assert not re.search(chaplin["reply"], "A colour gradient. There is background noise: no speech and no music.", re.I)
