"""Sentences with slots (places, names, numbers, clock times, days) and questions whose answers are what fills them.

The fixed sentences of vqa.spoken.sentences teach a question per sentence; these teach the skill behind them:
find the place, name, number or time in a transcript and quote it ("In which city is the conference?" "In
Lisbon, according to the speaker."). Beside them, the same kinds of question about what the sentence does not
say ("Which number does the speaker say?" over a sentence with no number) get "I can't tell", so that the model
reads the transcript instead of refusing, or answering, a kind of question wholesale.

A slot's answer is taken from the transcript where it holds the slot in one of its written forms (Whisper writes
"7:30" or "seven thirty", "555-0142" or digits apart), so the model learns to copy what it reads.
"""
from __future__ import annotations

import re

import numpy as np

from .check import normalise

CITIES = ("Madrid", "Lisbon", "Chicago", "Denver", "Toronto", "Dublin", "Glasgow", "Vienna", "Prague", "Oslo",
          "Sydney", "Seattle", "Manchester", "Lyon", "Geneva", "Austin", "Houston", "Portland", "Cairo", "Mumbai",
          "Montreal", "Edinburgh", "Bristol", "Leeds", "Atlanta", "Helsinki", "Warsaw", "Berlin", "Rome", "Tokyo")
TOWNS = ("Springfield", "Riverside", "Fairview", "Georgetown", "Ashford", "Milford", "Oakdale", "Newport",
         "Salem", "Franklin", "Kingston", "Bedford")
REGIONS = ("Ohio", "Texas", "Oregon", "Ontario", "Kent", "Florida", "Nevada", "Quebec", "Arizona", "Virginia")
NAMES = ("Anna", "David", "Maria", "James", "Peter", "Laura", "Daniel", "Emma", "Thomas", "Sarah", "Michael",
         "Julia", "Robert", "Helen", "Oliver", "Grace", "Samuel", "Alice", "Victor", "Rachel")
SURNAMES = ("Miller", "Garcia", "Brown", "Wilson", "Clark", "Lewis", "Walker", "Young", "Turner", "Morgan")
FACILITIES = ("research centre", "science museum", "children's hospital", "space laboratory", "weather station",
              "city library", "art gallery", "football stadium")
ROOMS = ("main hall", "control room", "workshop", "visitor centre", "laboratory", "archive")
LANDMARKS = ("Lakeside", "Northgate", "Westbrook", "Hillcrest", "Pinewood", "Stonebridge")  # a named site's first word
SITES = ("Research Center", "Medical Center", "Science Institute", "Technology Park", "Memorial Hospital",
         "Engineering Campus")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
KINDS = ("place", "name", "number", "time", "day")
# the same kinds of question over every templated sentence: answered where it says one, else "I can't tell"
GENERIC = {
    "place": ("Which city does the speaker mention?", "Which place is named in the speech?",
              "What town or city is mentioned?"),
    "name": ("Which person does the speaker name?", "What name is mentioned?", "Whose name do you hear?"),
    "number": ("Which number does the speaker say?", "What number is mentioned?", "Is a number said? Which one?"),
    "time": ("What time does the speaker mention?", "Which clock time is said?"),
    "day": ("Which day of the week is mentioned?", "What day does the speaker name?"),
}
_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_words(n: int) -> str:
    """0-99 in words, as espeak-ng reads them and Whisper may write them."""
    if n < 20:
        return _ONES[n]
    return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])


def _number(rng: np.random.Generator, low: int, high: int) -> tuple[str, tuple[str, ...]]:
    n = int(rng.integers(low, high + 1))
    return number_words(n), (str(n), number_words(n))


def _digits(rng: np.random.Generator) -> tuple[str, tuple[str, ...]]:
    """A phone-style number read digit by digit in two groups."""
    digits = "".join(str(int(d)) for d in rng.integers(0, 10, 7))
    spoken = " ".join(_ONES[int(d)] for d in digits[:3]) + ", " + " ".join(_ONES[int(d)] for d in digits[3:])
    return spoken, (digits, spoken)


def _time(rng: np.random.Generator) -> tuple[str, tuple[str, ...]]:
    hour = int(rng.integers(1, 13))
    if rng.random() < 0.5:
        return f"{_ONES[hour]} o'clock", (f"{hour} o'clock", f"{_ONES[hour]} o'clock", f"{hour}:00", f"{hour}")
    return f"{_ONES[hour]} thirty", (f"{hour}:30", f"{_ONES[hour]} thirty", f"{hour} 30")


def _one(rng: np.random.Generator, options: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    value = str(options[int(rng.integers(len(options)))])
    return value, (value,)


# (sentence, {slot: drawing}, [(kind, slot, questions, answer with {} for the transcript's span)])
TEMPLATES = (
    ("The conference will take place in {city} next {day}.", {"city": CITIES, "day": DAYS},
     [("place", "city", ("Where will the conference take place?", "In which city is the conference?"), "In {}"),
      ("day", "day", ("When is the conference?", "On which day is the conference?"), "Next {}")]),
    ("The {facility} is in {town}, {region}.", {"facility": FACILITIES, "town": TOWNS, "region": REGIONS},
     [("place", "town region", ("Where is the {facility}?", "In which town is the {facility}?"), "In {}")]),
    ("My name is {name} and I will be your guide today.", {"name": NAMES},
     [("name", "name", ("What is the speaker's name?", "Who will be the guide?"), "{}")]),
    ("Please welcome our next speaker, {name} {surname}.", {"name": NAMES, "surname": SURNAMES},
     [("name", "name surname", ("Who is the next speaker?", "Who is being welcomed?"), "{}")]),
    ("{name} called to say the parcel arrives on {day}.", {"name": NAMES, "day": DAYS},
     [("name", "name", ("Who called?", "Who called about the parcel?"), "{}"),
      ("day", "day", ("When does the parcel arrive?", "On which day does the parcel arrive?"), "On {}")]),
    ("The store opens at {time} every morning.", {"time": "time"},
     [("time", "time", ("When does the store open?", "What time does the store open?"), "At {}")]),
    ("The ferry to {city} leaves in {minutes} minutes.", {"city": CITIES, "minutes": (5, 45)},
     [("place", "city", ("Where is the ferry going?", "Where does the ferry go?"), "To {}"),
      ("number", "minutes", ("When does the ferry leave?", "In how many minutes does the ferry leave?"),
       "In {} minutes")]),
    ("Your table for {people} is ready.", {"people": (2, 12)},
     [("number", "people", ("How many people is the table for?", "For how many is the table?"), "For {}")]),
    ("The tickets cost {price} dollars each.", {"price": (3, 95)},
     [("number", "price", ("How much do the tickets cost?", "What is the price of a ticket?"), "{} dollars")]),
    ("You can reach the front desk on {phone}.", {"phone": "digits"},
     [("number", "phone", ("What number can you call?", "How can you reach the front desk?"), "On {}")]),
    ("We moved from {city} to {city2} last year.", {"city": CITIES, "city2": CITIES},
     [("place", "city2", ("Where did they move to?", "Which city did they move to?"), "To {}"),
      ("place", "city", ("Where did they move from?", "Which city did they leave?"), "From {}")]),
    ("The package was sent by {name} from {city}.", {"name": NAMES, "city": CITIES},
     [("name", "name", ("Who sent the package?",), "{}"),
      ("place", "city", ("Where was the package sent from?", "From which city was the package sent?"), "From {}")]),
    ("Doctor {surname} will see you at {time}.", {"surname": SURNAMES, "time": "time"},
     [("name", "surname", ("Which doctor will see you?", "Who will see you?"), "Doctor {}"),
      ("time", "time", ("When is the appointment?", "At what time will the doctor see you?"), "At {}")]),
    ("The {facility} in {city} opens again on {day}.", {"facility": FACILITIES, "city": CITIES, "day": DAYS},
     [("place", "city", ("Where is the {facility}?", "In which city is the {facility}?"), "In {}"),
      ("day", "day", ("When does the {facility} open again?",), "On {}")]),
    # a place inside a place: asked where the named site is, the answer is the town around it
    ("We are standing in the {room} of the {landmark} {site} in {town}, {region}.",
     {"room": ROOMS, "landmark": LANDMARKS, "site": SITES, "town": TOWNS, "region": REGIONS},
     [("place", "town region", ("Where is the {landmark} {site}?", "In which town is the {room}?",
                                "Which town is the {landmark} {site} in?"), "In {}")]),
    # two numbers, or a number and a time: each asked by its role
    ("Please call us back on {phone} before {time}.", {"phone": "digits", "time": "time"},
     [("number", "phone", ("Which number should you call back?", "What number should you call?"), "On {}"),
      ("time", "time", ("By what time should you call back?", "Before when should you call?"), "Before {}")]),
    ("Gate {gate} closes in {minutes} minutes.", {"gate": (2, 40), "minutes": (5, 30)},
     [("number", "gate", ("Which gate is closing?", "Which gate does the speaker mean?"), "Gate {}"),
      ("number", "minutes", ("When does the gate close?", "In how many minutes does the gate close?"),
       "In {} minutes")]),
    ("{name} bought {count} tickets for the {time} show.", {"name": NAMES, "count": (2, 9), "time": "time"},
     [("name", "name", ("Who bought the tickets?",), "{}"),
      ("number", "count", ("How many tickets were bought?", "How many tickets did {name} buy?"), "{}"),
      ("time", "time", ("Which show are the tickets for?", "What time is the show?"), "The {} show")]),
)


def draw(rng: np.random.Generator) -> dict:
    """A templated sentence: {"text", "slots": [{"kind", "question", "forms", "answer"}]}. Each slot's `forms`
    are the ways a transcript may write it; `answer` frames the span found."""
    template, fills, asks = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    said, forms = {}, {}
    for slot, how in fills.items():
        if how == "time":
            said[slot], forms[slot] = _time(rng)
        elif how == "digits":
            said[slot], forms[slot] = _digits(rng)
        elif isinstance(how[0], int):
            said[slot], forms[slot] = _number(rng, *how)
            while said[slot] in list(said.values())[:-1]:  # two numbers: two different ones, each found by its role
                said[slot], forms[slot] = _number(rng, *how)
        else:
            options = tuple(x for x in how if x not in said.values())  # two cities: two different ones
            said[slot], forms[slot] = _one(rng, options)
    text = template.format(**said)
    text = text[0].upper() + text[1:]
    slots = []
    for kind, names, questions, answer in asks:
        parts = names.split()
        slot_forms = forms[parts[0]] if len(parts) == 1 else (" ".join(said[p] for p in parts),)
        question = questions[int(rng.integers(len(questions)))].format(**said)
        slots.append({"kind": kind, "question": question, "forms": list(slot_forms), "answer": answer})
    return {"text": text, "slots": slots}


def find(transcript: str, form: str) -> str | None:
    """The run of the transcript's words that is `form` once both are normalised and their spaces dropped
    ("555-0142" for "5550142", "7 o'clock" for "seven o'clock" written as digits), as the transcript writes it,
    or None."""
    words = transcript.split()
    key = normalise(form).replace(" ", "")
    if not key:
        return None
    for start in range(len(words)):
        joined = ""
        for end in range(start, len(words)):
            joined += normalise(words[end]).replace(" ", "")
            if joined == key:
                return re.sub(r"[.,;:!?\"\u201d]+$", "", " ".join(words[start:end + 1]))
            if not key.startswith(joined):
                break
    return None


def answers(clip: dict, transcript: str, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """(type, question, answer) for a templated clip: each slot the transcript holds, quoted from it
    ("content"); where the clip says one sentence alone, a generic question of a kind it says ("content") and
    one of a kind it does not say ("unsaid", answered "I can't tell from this clip.")."""
    from .questions import UNKNOWN, according

    out = []
    kinds = [slot["kind"] for slot in clip["templated"]["slots"]]
    found: dict[str, str] = {}  # kind -> span, for the kinds said once
    for slot in clip["templated"]["slots"]:
        span = next((s for s in (find(transcript, f) for f in slot["forms"]) if s), None)
        if span is None:
            continue
        frame = slot["answer"].replace("{} dollars", "{}") if span.startswith("$") else slot["answer"]  # "$75"
        out.append(("content", slot["question"], according(frame.format(span))))
        if kinds.count(slot["kind"]) == 1:
            found[slot["kind"]] = span
    if len(clip.get("sentences") or [clip["text"]]) > 1:  # another sentence may say any kind: no generic ones
        return out
    pick = lambda kind: GENERIC[kind][int(rng.integers(len(GENERIC[kind])))]  # noqa: E731
    if found:
        kind = list(found)[int(rng.integers(len(found)))]
        out.append(("content", pick(kind), according(found[kind])))
    unsaid = [k for k in KINDS if k not in kinds]
    out.append(("unsaid", pick(unsaid[int(rng.integers(len(unsaid)))]), UNKNOWN))
    return out
