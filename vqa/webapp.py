"""The web chat: upload or pick a clip, see what the model takes in, ask, read the answer as it streams, ask again.

Handlers are plain module-level functions (testable without a browser); `build_demo` wires them
into a Blocks app and `launch` serves it. Everything about one user (clip, chat, picked model)
lives in that session's gr.State and components; the only thing sessions share is the server-wide
cache of loaded models, and inside each model the bounded cache of encoded clips.

Every request's work is bounded before the model runs (clip size and duration, question and
history tokens: vqa.limits), and so is the upload folder (vqa.uploads). A user's mistake gets a
message on the page or from the API and one line in the server's log, never a traceback.
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported: no calls home

import importlib
import logging
import re
import threading
import time
from pathlib import Path

import gradio as gr
import numpy as np
from gradio import processing_utils

from . import bundle
from .limits import EMPTY_QUESTION, MAX_CONVERSATION_TOKENS, HistoryError, QuestionError
from .media import MediaError
from .uploads import SessionFiles, UploadBudget

log = logging.getLogger(__name__)

UNTRAINED = "untrained"
# Serving limits; environment variables override them.
MAX_UPLOAD_MB = int(os.environ.get("VQA_MAX_UPLOAD_MB", 200))
# a function giving the page's (clip, question) examples, as "module:function" (empty: none)
EXAMPLES = os.environ.get("VQA_EXAMPLES", "vqa.spoken.examples:example_clips")
MAX_DURATION_S = float(os.environ.get("VQA_MAX_DURATION_S", 600))
CONCURRENCY = int(os.environ.get("VQA_CONCURRENCY", 2))  # model calls at once; more wait in the queue
QUEUE_SIZE = 64
UPLOAD_BUDGET_MB = int(os.environ.get("VQA_UPLOAD_BUDGET_MB", 2048))  # the whole upload folder
DELETE_CACHE = (600, 3600)  # every 10 minutes, delete uploads and rendered images older than an hour
NOTICE = "⚠️ "  # marks messages of the app itself, which are not shown to the model as chat turns


class ClipRejected(ValueError):
    """A clip the server will not take: too large or too long."""


# what a user can cause: these get a message and one log line; anything else also a traceback in the log
USER_ERRORS = (MediaError, ClipRejected, bundle.BundleError, QuestionError, HistoryError)


# ---- models: loaded once, shared by every session ----

class Models:
    """Loaded VideoQA objects by bundle path ("untrained" for the base LLM with a fresh encoder)."""

    def __init__(self):
        self._loaded: dict[str, object] = {}
        self._lock = threading.Lock()  # two sessions picking the same bundle load it once

    def choices(self) -> list[str]:
        return [p.name for p in bundle.find_bundles()] + [UNTRAINED]

    def resolve(self, name: str | None) -> str:
        """A picker value or folder -> the key a model is cached under."""
        if not name or name == UNTRAINED:
            return UNTRAINED
        for folder in (bundle.adapters_dir() / name, Path(name)):
            if (folder / bundle.CONFIG_NAME).is_file():
                return str(folder.resolve())
        raise bundle.BundleError(f"no model {name!r}: pick one of {self.choices()} or give a bundle folder")

    def get(self, name: str | None):
        key = self.resolve(name)
        qa = self._loaded.get(key)
        if qa is None:
            with self._lock:
                qa = self._loaded.get(key)
                if qa is None:
                    qa = self._loaded[key] = self._load(key)
        return qa

    def _load(self, key: str):
        from .api import VideoQA

        start = time.perf_counter()
        qa = VideoQA.untrained() if key == UNTRAINED else VideoQA.from_pretrained(key)
        qa.max_duration = MAX_DURATION_S  # enforced while decoding, so a file without a duration header is bounded too
        log.info("loaded model %s in %.1f s", key, time.perf_counter() - start)
        return qa


MODELS = Models()
SESSIONS = SessionFiles(gr.utils.get_upload_folder())  # the clips each live session loaded
DEFAULT = {"model": UNTRAINED}  # the model loaded at start (set by build_demo); `/ask` uses it


def default_model() -> str:
    """$VQA_ADAPTER (a bundle name, folder, or "untrained"), else the default bundle if present, else untrained."""
    chosen = os.environ.get("VQA_ADAPTER")
    if chosen:
        return chosen
    return bundle.default_bundle().name if (bundle.default_bundle() / bundle.CONFIG_NAME).is_file() else UNTRAINED


def model_notice(name: str | None) -> str:
    if MODELS.resolve(name) != UNTRAINED:
        return f"Model: **{name}**."
    where = ("pick a trained one under *Model and generation*" if bundle.find_bundles()
             else f"none is in `{bundle.adapters_dir()}` yet: train one with `vqa train` (see the README)")
    return (
        f"{NOTICE}**Untrained model.** No trained adapter is loaded, so the encoder is random: answers about "
        f"the clip are untrained and say nothing true about it ({where})."
    )


# ---- what the model takes in ----

def frames_strip(frames: np.ndarray, timestamps: np.ndarray, tile: int = 112, per_row: int = 8) -> np.ndarray:
    """The sampled frames in time order, each captioned with its time, as one RGB image."""
    from PIL import Image, ImageDraw, ImageFont

    t = len(frames)
    cols = min(per_row, t)
    rows = -(-t // cols)
    caption, gap = 18, 4
    canvas = Image.new("RGB", (cols * (tile + gap) - gap, rows * (tile + caption)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=13)
    for i, (frame, ts) in enumerate(zip(frames, timestamps)):
        r, c = divmod(i, cols)
        x, y = c * (tile + gap), r * (tile + caption)
        canvas.paste(Image.fromarray(frame).resize((tile, tile), Image.BILINEAR), (x, y))
        draw.text((x + tile // 2, y + tile + caption // 2), f"{float(ts):.2f} s", fill=(40, 40, 40), font=font,
                  anchor="mm")
    return np.asarray(canvas)  # (rows*(tile+caption), W, 3)


def mel_image(mel: np.ndarray, duration: float, has_audio: bool) -> np.ndarray:
    """The log-mel the encoder sees, as an RGB image (matplotlib, Agg: no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_mels, n_frames = mel.shape
    fig = Figure(figsize=(9, 2.6), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    img = ax.imshow(mel, origin="lower", aspect="auto", cmap="magma", extent=(0, max(duration, 1e-3), 0, n_mels))
    fig.colorbar(img, ax=ax, pad=0.01, label="log power")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mel bin")
    title = f"log-mel spectrogram: {n_mels} mel bins x {n_frames} frames"
    ax.set_title(title if has_audio else title + " (no sound track: the model hears silence)")
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3)


def clip_info(name: str, clip, seconds: float, prepared=None) -> str:
    sound = (
        "sound: yes" if clip.has_audio
        else f"**{NOTICE}no sound: this clip has no audio track, so the model hears silence.**"
    )
    text = (
        f"**{name}**: {clip.duration:.1f} s, {clip.width}x{clip.height}, {clip.fps:.1f} fps; "
        f"the model takes in {len(clip.frames)} frames and the log-mel below; {sound}  \n"
        f"Ready in {seconds:.1f} s: decoded and encoded once, follow-up questions reuse it."
    )
    if prepared is not None and prepared.in_domain is False:
        text += (f"\n\n**{NOTICE}this clip looks unlike the clips this model was trained on**: {prepared.unfamiliar}. "
                 "What it says from the picture and sound may be guesses.")
    if prepared is not None and prepared.perception is not None:
        text += "\n\n" + perception_markdown(prepared.perception)
    return text


def perception_markdown(perception) -> str:
    """What the pretrained models found, as the page shows it: transcript with times, sounds, concepts."""
    lines = ["**What pretrained models perceived** (the model reads this as text; it can be wrong):"]
    if perception.sound is not None:
        lines.append(f"- sound: {', '.join(perception.sound.labels)}")
    if perception.transcript is not None:
        t = perception.transcript
        if t.segments:
            lines.append(f"- speech ({t.language}):")
            lines += [f"    - {seg.start:.1f}-{seg.end:.1f} s: {seg.text.strip()}" for seg in t.segments]
        else:
            lines.append("- speech: no words heard")
    concepts = perception.concepts
    if concepts is not None:
        seen = ", ".join(f"{c.name} ({c.prob:.2f})" for c in concepts.concepts)
        lines.append(f"- seen (ImageNet classes): {seen or 'nothing with confidence'}")
        lines.append(f"- picture: looks {concepts.looks} (fine detail in {concepts.detail:.0%} of pixels)")
    lines += [f"- {why}" for why in perception.notices]
    return "\n".join(lines)


# ---- checks ----

def check_clip(path: str) -> None:
    """Refuse files over the size limit, and clips over the duration limit where the container says."""
    name = Path(path).name
    if not Path(path).is_file():
        raise ClipRejected(f"{name}: the file is gone (uploads are kept {DELETE_CACHE[1] // 3600} h); upload it again")
    size_mb = Path(path).stat().st_size / 2**20
    if size_mb > MAX_UPLOAD_MB:
        raise ClipRejected(f"{name} is {size_mb:.0f} MB; the limit is {MAX_UPLOAD_MB} MB")
    duration = _container_duration(path)
    if duration is not None and duration > MAX_DURATION_S:
        raise ClipRejected(f"{name} lasts {duration:.0f} s; clips up to {MAX_DURATION_S:.0f} s are accepted")


def _container_duration(path: str) -> float | None:
    """Duration from the container header (no decoding); None where unknown or unreadable."""
    import av

    try:
        with av.open(path) as container:
            if container.duration is not None:
                return container.duration / av.time_base
            durations = [float(s.duration * s.time_base) for s in container.streams.video if s.duration]
            return max(durations) if durations else None
    except Exception:  # not a media file: decoding will say so with the specific reason
        return None


# an absolute path's folders (not a URL's): "/srv/app/adapters/x/config.json" -> "config.json"
_FOLDERS = re.compile(r"(?<![\w.:/~])/(?:[^\s/'\"]+/)+")


def readable(error: Exception, path: str | None = None) -> str:
    """One line for the page: the engine's message with no server path in it (each is cut to its file name)."""
    message = str(error)
    if path:
        message = message.replace(str(path), Path(path).name)
    message = _FOLDERS.sub("", message)
    if isinstance(error, USER_ERRORS):
        return message
    return f"{type(error).__name__}: {message}"


def _log_failure(what: str, error: Exception, path: str | None = None) -> None:
    """One line for a user's mistake; the traceback for anything else (a bug to look at)."""
    if isinstance(error, USER_ERRORS):
        log.warning("%s: %s", what, readable(error, path))
    else:
        log.error("%s", what, exc_info=error)


# ---- handlers ----

def load_clip(video: str | None, model: str, request: gr.Request | None = None, progress=gr.Progress()):
    """New clip: check it, decode and encode it once, show the frames and log-mel, start a new chat.
    A long clip's transcription shows its progress on the page.

    Returns (clip state, frames strip, log-mel image, clip info Markdown, chat history).
    """
    if not video:
        return None, None, None, "", []
    SESSIONS.restore(video)  # an example's copy that Gradio's age sweep removed
    SESSIONS.hold(getattr(request, "session_hash", None), video)  # deleted when this session ends
    try:
        check_clip(video)
        qa = MODELS.get(model)
        start = time.perf_counter()
        prepared = qa.prepare(video, progress=lambda done, total: progress(
            done / total, desc=f"Transcribing the speech: {done:.0f} of {total:.0f} s"))
        clip = prepared.clip
        seconds = time.perf_counter() - start
        qa.warm(prepared)  # the first question then waits as a follow-up does
    except Exception as e:  # the page shows a line; the log keeps one line, or the trace of a bug
        _log_failure(f"could not load {Path(video).name}", e, video)
        message = readable(e, video)
        gr.Warning(message)
        return None, None, None, f"{NOTICE}**Could not use this clip.** {message}", []
    mel = prepared.mel.float().cpu().numpy()
    return (
        {"video": video},
        frames_strip(clip.frames, clip.timestamps),
        mel_image(mel, clip.duration, clip.has_audio),
        clip_info(Path(video).name, clip, seconds, prepared),
        [],
    )


def select_model(model: str) -> str:
    """Load a picked bundle (once per server) and say what it is."""
    try:
        MODELS.get(model)
    except Exception as e:
        _log_failure(f"could not load model {model}", e)
        gr.Warning(readable(e))
        return f"{NOTICE}**Could not load {model}:** {readable(e)}"
    return model_notice(model)


def respond(question: str, history: list[dict], clip: dict | None, model: str, max_new_tokens: float,
            temperature: float):
    """Put the question into the chat at once, then stream the answer; yields (chat, emptied question box)."""
    question = (question or "").strip()
    if not question:
        yield history, ""
        return
    history = history + [{"role": "user", "content": question}]
    yield history, ""
    for chat in answer(history, clip, model, max_new_tokens, temperature):
        yield chat, ""


def answer(history: list[dict], clip: dict | None, model: str, max_new_tokens: float, temperature: float):
    """Stream the answer to the last user turn, yielding the growing chat (the clip is encoded already)."""
    if not history or history[-1]["role"] != "user":
        yield history
        return
    question = text_of(history[-1])
    if clip is None:
        yield history + [_notice("Upload a clip, record one, or click an example first; then ask again.")]
        return
    earlier = [{"role": m["role"], "content": text_of(m)} for m in history[:-1]
               if m["role"] in ("user", "assistant") and not text_of(m).startswith(NOTICE)]
    reply = ""
    try:
        check_clip(clip["video"])
        qa = MODELS.get(model)
        question, kept, dropped = qa.check_request(question, earlier)  # before any decoding
        if dropped:
            history = history[:-1] + [_notice(
                f"The chat is over {MAX_CONVERSATION_TOKENS} tokens: the model no longer sees its oldest "
                f"{dropped} turns. Clear the chat to start afresh."), history[-1]]
            yield history
        for piece in qa.stream(clip["video"], question, history=kept, max_new_tokens=int(max_new_tokens),
                               temperature=float(temperature)):
            reply += piece
            yield history + [{"role": "assistant", "content": reply}]
    except Exception as e:
        _log_failure(f"could not answer about {Path(clip['video']).name}", e, clip["video"])
        yield history + ([{"role": "assistant", "content": reply}] if reply else []) + [
            _notice(f"Could not answer: {readable(e, clip['video'])}")]
        return
    if not reply.strip():
        yield history + [_notice("The model gave an empty answer.")]


def ask(video: str | None, question: str) -> str:
    """One question about one clip with the default model: the `/ask` endpoint."""
    if not video:
        raise gr.Error("Give a video file.", print_exception=False)
    if not (question or "").strip():
        raise gr.Error(EMPTY_QUESTION, print_exception=False)
    try:
        check_clip(video)
        qa = MODELS.get(DEFAULT["model"])
        question, _, _ = qa.check_request(question)  # a too long question costs nothing
        return qa.ask(video, question)
    except Exception as e:
        _log_failure(f"could not answer about {Path(video).name}", e, video)
        raise gr.Error(readable(e, video), print_exception=False) from None


def end_session(request: gr.Request) -> None:
    """The page was closed: delete the clips this session uploaded (unless another session holds them)."""
    SESSIONS.end(getattr(request, "session_hash", None))


def history_problem(payload, error=None) -> str:
    """A specific message for a `/chat` history that is not a list of role/content messages
    (`error`: Gradio's validation error, whose first problem is named when no simpler one is found)."""
    turns = payload.get("root", payload) if isinstance(payload, dict) else payload
    head = "Malformed chat history:"
    if not isinstance(turns, list):
        return f"{head} expected a list of {{role, content}} messages, got {type(turns).__name__}."
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            return f"{head} message {i} is not a {{role, content}} message: {str(turn)[:60]!r}."
        if turn["role"] not in ("user", "assistant", "system"):
            return f"{head} message {i} has role {str(turn['role'])[:30]!r}; expected user or assistant."
        if not isinstance(turn["content"], (str, list, dict)):
            return f"{head} message {i} has content of type {type(turn['content']).__name__}; expected text."
    problems = error.errors() if error is not None else []
    if problems:
        loc = ".".join(str(part) for part in problems[0].get("loc", ()))
        return f"{head} at {loc or 'the top'}: {problems[0].get('msg', 'invalid')}."
    return f"{head} a message's content is neither text nor Gradio message parts."


def _strict_history(chatbot: gr.Chatbot) -> None:
    """Make a malformed `/chat` history fail with `history_problem`'s message, not Gradio's generic one."""
    import pydantic

    base = chatbot.data_model

    class History(base):
        @classmethod
        def model_validate(cls, obj, *args, **kwargs):
            try:
                return base.model_validate(obj, *args, **kwargs)
            except pydantic.ValidationError as e:
                message = history_problem(obj, e)
                log.warning("/chat: %s", message)
                raise gr.Error(message, print_exception=False) from None

    chatbot.data_model = History


def refresh_models(model: str):
    """The picker's choices as the adapters folder holds them now (bundles trained since start appear)."""
    choices = MODELS.choices()
    return gr.Dropdown(choices=choices if model in choices else [model] + choices, value=model)


def new_clip():
    """Start over: clear the clip (which clears what depends on it) and the chat."""
    return None, [], ""


def text_of(message: dict) -> str:
    """A message's text: gradio hands content over as a string or as a list of typed parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    return "".join(part.get("text", "") for part in content or [] if isinstance(part, dict))


def _notice(text: str) -> dict:
    return {"role": "assistant", "content": NOTICE + text}


# ---- the app ----

def build_demo(model: str | None = None) -> gr.Blocks:
    """Load the start-up model and lay out the page.

    The model: `model`, else $VQA_ADAPTER, else the default bundle if present, else untrained.
    """
    model = model or default_model()
    try:
        MODELS.get(model)
    except Exception as e:  # a broken default bundle should not keep the app down
        log.warning("could not load %s (%s); starting on the untrained model", model, e)
        model = UNTRAINED
        MODELS.get(model)
    DEFAULT["model"] = model
    try:  # one-time costs now, not on the first user's clip
        log.info("clip path warmed up in %.1f s", MODELS.get(model).warm_up())
    except Exception as e:  # only an optimisation: whatever failed shows on a clip, with its own message
        log.warning("could not warm the clip path up (%s); the first clip pays its one-time costs", e)
    examples = page_examples()
    for path, _ in examples:  # the copy gr.Examples hands every session: no session's to delete
        SESSIONS.keep(processing_utils.save_file_to_cache(path, str(SESSIONS.folder)), path)
    choices = MODELS.choices()
    if model not in choices:
        choices.insert(0, model)

    with gr.Blocks(title="vqa: ask about a video", analytics_enabled=False, delete_cache=DELETE_CACHE) as demo:
        gr.Markdown(
            "# Ask about a video\n"
            "Upload a clip (or record one, or click an example), then ask about what is seen and heard. "
            "Ask follow-ups: the clip is encoded once. "
            f"Clips up to {MAX_UPLOAD_MB} MB and {MAX_DURATION_S:.0f} s."
        )
        notice = gr.Markdown(model_notice(model), label="notice")
        clip = gr.State(None)
        question = gr.Textbox(label="Question", placeholder="Ask about the clip, e.g. What does the speaker "
                              "say? Is there music?", show_label=False, scale=5, elem_id="question", render=False)
        with gr.Row():
            with gr.Column(scale=2):
                video = gr.Video(label="Clip", sources=["upload", "webcam"], include_audio=True, height=300)
                new_btn = gr.Button("New clip", variant="secondary")
                if examples:
                    gr.Examples([[str(p), q] for p, q in examples], inputs=[video, question],
                                label="Examples: click one", cache_examples=False)
                with gr.Accordion("Model and generation", open=False):
                    picker = gr.Dropdown(choices, value=model, label="Model (bundles in adapters/)")
                    max_new_tokens = gr.Slider(1, 512, value=128, step=1, label="Max new tokens")
                    temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature (0: greedy)")
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Chat", height=420, placeholder="Answers stream in here.")
                _strict_history(chatbot)
                with gr.Row():
                    question.render()
                    send = gr.Button("Ask", variant="primary", scale=1, elem_id="send")
                clear = gr.Button("Clear chat", size="sm")
        gr.Markdown("## What the model takes in")
        info = gr.Markdown(label="clip", elem_id="clip-info")
        frames = gr.Image(label="Sampled frames (time under each)", interactive=False, type="numpy",
                          elem_id="frames")
        mel = gr.Image(label="Log-mel spectrogram", interactive=False, type="numpy", elem_id="mel")
        with gr.Row(visible=False):  # inputs and output of the programmatic `/ask` endpoint
            ask_video = gr.Video(label="video")
            ask_question = gr.Textbox(label="question")
            ask_answer = gr.Textbox(label="answer")
            ask_btn = gr.Button()

        shown = [clip, frames, mel, info, chatbot]
        video.change(load_clip, [video, picker], shown, api_name="load_clip", concurrency_id="model")
        new_btn.click(new_clip, None, [video, chatbot, question], api_visibility="private")
        picker.change(select_model, picker, notice, api_name="select_model", concurrency_id="model").then(
            load_clip, [video, picker], shown, api_visibility="private", concurrency_id="model")
        gr.on([question.submit, send.click], respond,
              [question, chatbot, clip, picker, max_new_tokens, temperature], [chatbot, question],
              api_name="chat", concurrency_id="model")
        clear.click(lambda: [], None, chatbot, api_visibility="private")
        demo.load(refresh_models, picker, picker, api_visibility="private", queue=False)
        ask_btn.click(ask, [ask_video, ask_question], ask_answer, api_name="ask", concurrency_id="model")
        demo.unload(end_session)

    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    return demo


def page_examples() -> list[tuple[Path, str]]:
    """The (clip, question) pairs the page offers, from the EXAMPLES function; none where it fails."""
    if not EXAMPLES:
        return []
    module, _, func = EXAMPLES.partition(":")
    try:
        return list(getattr(importlib.import_module(module), func)())
    except Exception as e:  # examples are a convenience: never stop the app for them
        log.warning("no examples: %s failed: %s", EXAMPLES, e)
        return []


def launch(demo: gr.Blocks | None = None, host: str | None = None, port: int | None = None) -> None:
    """Serve the app (port: `port`, else $GRADIO_SERVER_PORT, else 7860), print its URL, and block."""
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("vqa").setLevel(logging.INFO)
    from starlette.middleware import Middleware

    demo = demo or build_demo()
    budget = Middleware(UploadBudget, folder=SESSIONS.folder, budget=UPLOAD_BUDGET_MB * 2**20,
                        max_upload=MAX_UPLOAD_MB * 2**20, sessions=SESSIONS)
    _, url, _ = demo.launch(
        server_name=host, server_port=port, share=False, max_file_size=f"{MAX_UPLOAD_MB}mb",
        allowed_paths=sorted({str(p.parent) for p, _ in page_examples()}), ssr_mode=False, run_history=False,
        prevent_thread_lock=True, quiet=True, app_kwargs={"middleware": [budget]},
    )
    print(f"vqa web chat running at {url}", flush=True)
    demo.block_thread()
