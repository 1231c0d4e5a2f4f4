"""`vqa ask` and `vqa chat`: the API from a terminal, answers streamed as they come."""
from __future__ import annotations

import sys

from .bundle import BundleError
from .limits import EMPTY_QUESTION, QuestionError
from .media import MediaError

# what a user can get wrong: one line on stderr and exit status 2, never a traceback
USER_ERRORS = (MediaError, BundleError, QuestionError)


def _load(args):
    from .api import VideoQA

    return VideoQA.from_pretrained(args.adapter, perception=getattr(args, "perception", None))


def ask(args) -> int:
    try:
        if not args.question.strip():  # before loading anything
            raise QuestionError(EMPTY_QUESTION)
        qa = _load(args)
        qa.check_request(args.question)  # a question too long is refused before the clip is decoded
        with Progress(sys.stderr) as progress:
            prepared = qa.prepare(args.clip, progress=progress)
        _say_if_unfamiliar(prepared)
        for piece in qa.stream(prepared, args.question, max_new_tokens=args.max_new_tokens,
                               temperature=args.temperature):
            print(piece, end="", flush=True)
        print()
    except USER_ERRORS as e:
        print(f"vqa: {e}", file=sys.stderr)
        return 2
    return 0


def chat(args) -> int:
    try:
        from .api import Chat

        qa = _load(args)
        with Progress(sys.stderr) as progress:
            session = Chat(qa, qa.prepare(args.clip, progress=progress))
    except USER_ERRORS as e:
        print(f"vqa: {e}", file=sys.stderr)
        return 2
    clip = session.prepared.clip
    _say_if_unfamiliar(session.prepared)
    sound = "with sound" if clip.has_audio else "no sound"
    print(f"{args.clip}: {clip.duration:.1f} s, {clip.width}x{clip.height}, {sound}. "
          "Ask a question; /reset forgets the conversation, /quit or Ctrl-D ends.")
    qa.warm(session.prepared)  # while the user reads that and types: the first answer starts as a follow-up's
    while True:
        try:
            question = input("> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not question:
            continue
        if question in ("/quit", "/exit"):
            return 0
        if question == "/reset":
            session.reset()
            continue
        try:
            for piece in session.stream(question, max_new_tokens=args.max_new_tokens, temperature=args.temperature):
                print(piece, end="", flush=True)
        except QuestionError as e:
            print(f"vqa: {e}", file=sys.stderr)
            continue
        print()


def _say_if_unfamiliar(prepared) -> None:
    if prepared.in_domain is False:  # vqa.domain: unlike every clip the bundle was trained on
        print(f"vqa: note: this clip looks unlike the clips this model was trained on: {prepared.unfamiliar}; "
              "what it says from the picture and sound may be guesses",
              file=sys.stderr)


class Progress:
    """How far a long clip's transcription has got, on one terminal line that is rewritten (nothing
    where the stream is not a terminal: scripts and logs get the answer alone)."""

    def __init__(self, stream):
        self.stream = stream
        self.shown = False

    def __call__(self, done: float, total: float) -> None:
        if self.stream.isatty():
            print(f"\rvqa: transcribing the speech: {done:.0f} of {total:.0f} s", end="", file=self.stream, flush=True)
            self.shown = True

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self.shown:  # end the line the answer must not share
            print(file=self.stream, flush=True)
