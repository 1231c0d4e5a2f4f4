"""The `vqa` command. Each subcommand imports its module only when run, so `--help` is instant."""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> "module:function"; each function takes the parsed args and returns an exit code
COMMANDS = {
    "ask": "vqa.api_cli:ask",
    "chat": "vqa.api_cli:chat",
    "synth": "vqa.synth.generate:cli",
    "train": "vqa.train.loop:cli",
    "eval": "vqa.evaluate:cli",
    "serve": "vqa.serve:cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vqa", description="Ask questions about what is seen and heard in a video clip."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("ask", help="answer one question about a clip, streamed")
    p.add_argument("clip", help="a video file")
    p.add_argument("question")
    _model_options(p)

    p = sub.add_parser("chat", help="an interactive chat about one clip")
    p.add_argument("clip", help="a video file")
    _model_options(p)

    p = sub.add_parser("synth", help="generate an AVSynth split")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--clips", type=int, required=True, help="number of clips")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes (default: every core)")

    p = sub.add_parser("train", help="train an adapter from a YAML config (also under `accelerate launch`)")
    p.add_argument("--config", required=True, help="YAML training config")

    p = sub.add_parser("eval", help="per-family accuracy on an AVSynth split")
    p.add_argument("--adapter", default=None, help="bundle folder (default: adapters/avsynth)")
    p.add_argument("--data", required=True, help="AVSynth folder with meta.jsonl")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N clips only")
    p.add_argument("--no-blind", action="store_true", help="skip the blind baseline")
    p.add_argument("--card", action="store_true",
                   help="also write the table and this command into the adapter's model card (README.md)")

    p = sub.add_parser("serve", help="start the web chat")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None, help="default: $GRADIO_SERVER_PORT or 7860")
    p.add_argument("--adapter", default=None, help="bundle name in adapters/ or folder (default: adapters/avsynth)")
    p.add_argument("--untrained", action="store_true", help="serve the base LLM with an untrained encoder")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", default=None, help="bundle folder (default: adapters/avsynth)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 for greedy decoding")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module, func = COMMANDS[args.command].split(":")
    return int(getattr(importlib.import_module(module), func)(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
