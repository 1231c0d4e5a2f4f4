"""Questions about a spoken clip and their sentence answers, from what the generator put in it.

A clip's `sound` is one of SOUNDS; speech has a `language` and the `text` said; the picture is an AVSynth
scene (`objects`, as in AVSynth metadata), a gradient (`objects` None) or a real picture (`picture`, with
`seen`, the image classifier's concepts from the perception text, where known). Every answer states only what the
clip holds; questions nothing in the clip can answer get UNKNOWN. A clip marked `unfamiliar` reads as a served clip
that the bundle's domain finds unlike its training clips (vqa.perception.UNFAMILIAR): what is seen comes from the
image classifier alone, and what only the clip tokens could tell (objects, colours, shapes, motion) gets UNSEEN.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from vqa.avsynth.describe import describe
from vqa.avsynth.questions import NUMBER_WORDS
from vqa.config import VIDEO_PLACEHOLDER

from .check import normalise
from .sentences import ASKED, LANGUAGES
from .templated import answers as slot_answers

SOUNDS = ("speech", "music", "noise", "silence", "no-audio")
UNKNOWN = "I can't tell from this clip."
UNSEEN = "I can't tell: the picture is unlike the clips I was trained on."
NO_CONTENT_SHARE = 0.6  # of clips without speech, asked a content question that only a transcript could answer

ASK = {
    "said": ("What does the speaker say?", "What is said in this clip?", "What are the spoken words?",
             "Transcribe the speech.", "What does the voice say?", "Can you tell me what the person says?",
             "Quote what is said.", "What words do you hear?"),
    "language": ("Which language is spoken?", "What language is the speaker using?", "In what language is the speech?",
                 "What language do you hear?", "Which language does the voice speak?"),
    "speaking": ("Is anyone speaking?", "Does someone talk in this clip?", "Is there a voice?", "Can you hear speech?",
                 "Is somebody saying something?", "Are there any spoken words?"),
    "music": ("Is there music?", "Can you hear music?", "Is music playing?", "Is there a melody in the audio?",
              "Does the clip have music in it?"),
    "silent": ("Is the clip silent?", "Is this video silent?", "Is it quiet?", "Is there any sound at all?",
               "Does the clip have sound?"),
    "hear": ("What do you hear?", "What can you hear?", "What sounds are in the clip?", "Describe the audio.",
             "What is the sound like?"),
    "describe": ("Describe this clip.", "What happens in this video?", "Describe what you see and hear.",
                 "Tell me about this video.", "Give a short description of the clip."),
    "seen": ("What is shown?", "What can you see?", "What is in the picture?", "What object is shown?",
             "What is in this video?", "What does the picture show?", "What do you see?", "What is visible?",
             "Which objects appear in the video?", "What is the main thing in the frame?", "Name what you see.",
             "What animal or object is in the clip?", "What is on screen?"),
    "count": ("How many objects are there?", "How many shapes can you see?", "Count the objects on screen.",
              "How many things are shown?"),
    "color": ("What color is the {shape}?", "Which colour is the {shape}?", "What is the colour of the {shape}?"),
    "shape": ("What shape is the {color} object?", "Which shape is {color}?", "What is the {color} thing?"),
    "motion": ("Which way does the {color} object move?", "Where is the {color} shape going?",
               "Does the {color} object move?"),
    "unanswerable": ("What is the speaker's name?", "Who is speaking?", "In which city was this filmed?",
                     "What is the weather like?", "What brand is the camera?", "How old is the speaker?",
                     "What year was this recorded?", "Which country is this?", "What is the name of this song?",
                     "Who composed the music?", "What time of day is it?",
                     "How much does it cost?", "What is the phone number of the shop?", "Whose voice is it?",
                     "What is the address?", "Which team won?", "What is the dog's name?"),
}
# unanswerable questions that a templated sentence of a kind may answer after all: not asked over one
SAYS = {"name": ("What is the speaker's name?", "Who is speaking?", "Whose voice is it?", "What is the dog's name?"),
        "place": ("In which city was this filmed?", "Which country is this?", "What is the address?"),
        "number": ("What is the phone number of the shop?", "How much does it cost?"),
        "time": ("What time of day is it?",), "day": ()}
ANSWER_SOUND = {  # what is heard, as the end of a description (in the perception text's words)
    "music": "There is music, a melody of tones; nobody speaks.",
    "noise": "There is only background noise: no speech and no music.",
    "silence": "There is only silence.",
    "no-audio": "The clip has no audio track.",
}
_MOTION = {"left": "It moves left.", "right": "It moves right.", "up": "It moves up.", "down": "It moves down.",
           "still": "It stays still; it does not move."}


def _said(clip: dict) -> str:
    """The words quoted: what perception transcribed where the generator checked it (`quote`), else the text read."""
    return f"\u201c{clip.get('quote') or clip['text']}\u201d"


def _content(clip: dict) -> tuple[str, str] | None:
    """A question about what an English sentence says and its answer, where the quoted transcript holds the answer;
    of two sentences, the last one asked about (the first segment is not all there is to read)."""
    if clip["sound"] != "speech":
        return None
    for sentence in reversed(clip.get("sentences") or [clip["text"]]):
        if sentence in ASKED:
            question, span = ASKED[sentence]
            if normalise(span) in normalise(clip.get("quote") or clip["text"]):
                return question, according(span)
    return None


def according(span: str) -> str:
    """An answer quoted from what is said: "The salt, according to the speaker."."""
    return f"{span[0].upper()}{span[1:]}, according to the speaker."


def _sound_answers(clip: dict) -> dict[str, str]:
    """An answer for each sound kind, in the words of the perception text (speech, music, silence, no audio track)."""
    sound = clip["sound"]
    speech = sound == "speech"
    language = LANGUAGES[clip["language"]] if speech else None
    no_speech = {"music": "Nobody speaks; there is only music.", "noise": "Nobody speaks; there is only background noise.",
                 "silence": "Nobody speaks: there is only silence.",
                 "no-audio": "Nobody speaks: the clip has no audio track."}
    return {
        "said": f"The speaker says: {_said(clip)}" if speech else no_speech[sound],
        "language": f"The speaker speaks {language}." if speech else
        f"No one speaks, so there is no language to name. {ANSWER_SOUND[sound]}",
        "speaking": f"Yes, there is speech: someone speaks {language}." if speech else f"No. {no_speech[sound]}",
        "music": "Yes, there is music: a melody is playing." if sound == "music" else
        {"speech": "No, there is no music, only speech.", "noise": "No, there is no music, only background noise.",
         "silence": "No, there is no music, only silence.", "no-audio": "No, the clip has no audio track."}[sound],
        "silent": {"speech": "No, there is speech.", "music": "No, there is music.",
                   "noise": "No, there is background noise.", "silence": "Yes, there is only silence.",
                   "no-audio": "Yes, the clip has no audio track."}[sound],
        "hear": f"Speech in {language}: {_said(clip)}" if speech else
        {"music": "Music: a melody of tones, with no speech.", "noise": "Only background noise, no speech or music.",
         "silence": "Nothing: there is only silence.", "no-audio": "Nothing: the clip has no audio track."}[sound],
    }


def _invert_sound(question: str, answer: str, sound: str) -> str:
    """'Is there any sound at all?' and 'Does the clip have sound?' ask the opposite of 'Is it silent?'."""
    if question in ("Is there any sound at all?", "Does the clip have sound?"):
        quiet = sound in ("silence", "no-audio")
        return ("No: " + answer[len("Yes, "):]) if quiet else ("Yes: " + answer[len("No, "):])
    return answer


def _picture(clip: dict) -> str | None:
    """What the picture shows, or None for a real (or unfamiliar) picture whose perception text is not known."""
    if clip.get("unfamiliar"):
        if "seen" not in clip:
            return None
        if not clip["seen"]:
            return ("I can't tell what is shown: the picture is unlike the clips I was trained on, and the image "
                    "classifier recognises nothing with confidence.")
        return (f"The picture is unlike the clips I was trained on; the image classifier suggests: "
                f"{', '.join(name for name, _ in clip['seen'][:3])} (it can be wrong).")
    if clip.get("picture"):
        if "seen" not in clip:
            return None
        if not clip["seen"]:
            return "I can't tell what is shown: the image classifier recognises nothing with confidence."
        return f"The image classifier suggests: {', '.join(name for name, _ in clip['seen'][:3])} (it can be wrong)."
    if clip["objects"] is None:
        return "The picture is a smooth colour gradient drifting across the frame, with no distinct objects."
    return describe({"objects": clip["objects"], "pitch": None}).replace(" Nothing beeps.", "")


def _visual(clip: dict, rng: np.random.Generator, hold_back: bool = False) -> list[tuple[str, str, str]]:
    """(type, question, answer) about the picture; `hold_back`: an unfamiliar clip gets UNSEEN for every one of
    the objects' questions, not one (the contrast recipe, where the same clip also comes unmarked)."""
    objects = clip["objects"]
    pick = lambda kind: ASK[kind][int(rng.integers(len(ASK[kind])))]  # noqa: E731
    picture = _picture(clip)
    seen = [("seen", pick("seen"), picture)] if picture is not None else []
    if clip.get("unfamiliar"):  # one of the objects' questions (made up where there are none) gets UNSEEN:
        # one, so that each kind of question keeps its familiar answer most of the time and the line decides
        o = objects[int(rng.integers(len(objects)))] if objects else {
            "shape": str(rng.choice(("circle", "square", "triangle"))), "color": str(rng.choice(("red", "blue")))}
        unseen = [("count", pick("count"), UNSEEN), ("color", pick("color").format(shape=o["shape"]), UNSEEN),
                  ("shape", pick("shape").format(color=o["color"]), UNSEEN),
                  ("motion", pick("motion").format(color=o["color"]), UNSEEN)][:2 + int(objects is not None) * 2]
        return (unseen if hold_back else [unseen[int(rng.integers(len(unseen)))]]) + seen
    if clip.get("picture"):
        return seen
    if objects is None:
        none = "I can't see any distinct objects, only a colour gradient drifting across the frame."
        return [("count", pick("count"), none)] + seen
    n = len(objects)
    out = [("count", pick("count"), f"There {'is' if n == 1 else 'are'} {NUMBER_WORDS[n]} "
                                    f"object{'' if n == 1 else 's'}.")]
    o = objects[int(rng.integers(n))]
    shapes = Counter(x["shape"] for x in objects)
    if shapes[o["shape"]] == 1:
        out.append(("color", pick("color").format(shape=o["shape"]), f"It is {o['color']}."))
    out.append(("shape", pick("shape").format(color=o["color"]), f"It is a {o['shape']}."))
    out.append(("motion", pick("motion").format(color=o["color"]), _MOTION[o["motion"]]))
    return out + seen


def questions(clip: dict, rng: np.random.Generator, per_clip: int = 6, skip: tuple[str, ...] = (),
              hold_back: bool = False) -> list[tuple[str, str, str]]:
    """Up to `per_clip` (type, question, answer): what is said (speech clips always), the sound, the picture,
    a description (half the clips) and an unanswerable question, phrasings drawn at random; none of the kinds
    in `skip`. `hold_back`: see _visual."""
    pick = lambda kind: ASK[kind][int(rng.integers(len(ASK[kind])))]  # noqa: E731
    sound = _sound_answers(clip)
    pool = []
    for kind, answer in sound.items():
        q = pick(kind)
        pool.append((kind, q, _invert_sound(q, answer, clip["sound"]) if kind == "silent" else answer))
    heard = f"There is speech in {LANGUAGES[clip['language']]}: {_said(clip)}" if clip["sound"] == "speech" \
        else ANSWER_SOUND[clip["sound"]]
    if _picture(clip) is not None:
        pool.append(("describe", pick("describe"), f"{_picture(clip)} {heard}"))
    if clip.get("templated"):
        clash = {q for slot in clip["templated"]["slots"] for q in SAYS[slot["kind"]]}
        free = [q for q in ASK["unanswerable"] if q not in clash]
        pool.append(("unanswerable", free[int(rng.integers(len(free)))], UNKNOWN))
        pool += slot_answers(clip, clip.get("quote") or clip["text"], rng)
    else:
        pool.append(("unanswerable", pick("unanswerable"), UNKNOWN))
    content = _content(clip)
    if content is not None:
        pool.append(("content", *content))
    elif clip["sound"] != "speech" and rng.random() < NO_CONTENT_SHARE:  # nobody says it: no answer to quote
        question = list(ASKED.values())[int(rng.integers(len(ASKED)))][0]
        pool.append(("unanswerable", question, UNKNOWN))
    pool += _visual(clip, rng, hold_back)
    pool = [p for p in pool if p[0] not in skip]
    first = [p for p in pool if p[0] in (("said", "content", "unsaid", "language") if clip["sound"] == "speech"
                                         else ("hear",))]
    first += [p for p in pool if p[0] == "unanswerable" or (p[0] == "describe" and rng.random() < 0.5)
              or (p[0] == "seen" and (clip.get("picture") or clip.get("unfamiliar")))]
    rest = [p for p in pool if p not in first]
    order = rng.permutation(len(rest))
    return (first + [rest[i] for i in order])[:per_clip]


def records(clip: dict, rng: np.random.Generator, per_clip: int = 6, skip: tuple[str, ...] = (),
            hold_back: bool = False) -> list[dict]:
    """qa.jsonl records of one clip: LLaVA-style, one question each, `type` the question kind."""
    mark = {"unfamiliar": True} if clip.get("unfamiliar") else {}
    return [{
        "id": f"{clip['id']}-{k}", "video": clip["video"], "type": kind, "sound": clip["sound"],
        "conversations": [{"from": "human", "value": f"{VIDEO_PLACEHOLDER}\n{q}"}, {"from": "gpt", "value": a}],
        **mark,
    } for k, (kind, q, a) in enumerate(questions(clip, rng, per_clip, skip, hold_back))]
