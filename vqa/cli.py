"""The `vqa` command. Each subcommand imports its module only when run, so `--help` is instant."""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> "module:function"; each function takes the parsed args and returns an exit code
COMMANDS = {
    "ask": "vqa.api_cli:ask",
    "chat": "vqa.api_cli:chat",
    "synth": "vqa.avsynth.generate:cli",
    "finetune": "vqa.finetune:cli",
    "train": "vqa.train.loop:cli",
    "eval": "vqa.evaluate:cli",
    "serve": "vqa.serve:cli",
    "data": "vqa.convert:cli",
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

    p = sub.add_parser("finetune", help="fine-tune a bundle on a folder of your own clips and questions (qa.jsonl)")
    p.add_argument("data", help="dataset folder with qa.jsonl")
    p.add_argument("--out", required=True, help="folder for the new bundle (and its training/ run)")
    p.add_argument("--base", default=None, help="bundle to start from (default: adapters/real)")
    p.add_argument("--val", default=None, help="validation dataset folder (default: hold out 10%% of the clips)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default: about 3 passes over DATA)")
    p.add_argument("--batch-size", type=int, default=8, help="conversations per step")
    p.add_argument("--turns", type=int, default=1,
                   help="pack up to N questions about the same clip into one conversation (the clip read once)")
    p.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate (projector and encoder: a tenth)")
    p.add_argument("--train-encoder", action="store_true", help="train the encoder too")
    p.add_argument("--chat", type=float, default=0.0,
                   help="share of general chat (the base LLM's own replies) mixed in to keep its language")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: every core)")
    p.add_argument("--perception-tokens", type=int, default=None,
                   help="token budget of the perception text read after the clip tokens (0: off; default: the base's)")

    p = sub.add_parser("train", help="train an adapter from a YAML config (also under `accelerate launch`)")
    p.add_argument("--config", required=True, help="YAML training config")

    p = sub.add_parser("eval", help="answer accuracy and loss on a dataset, beside the blind baseline")
    p.add_argument("--adapter", default=None, help="bundle folder (default: adapters/real)")
    p.add_argument("--data", required=True, help="dataset folder with qa.jsonl")
    p.add_argument("--recipe", default=None,
                   help="a recipe that scores the dataset too (default: the one its dataset.json names)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="longest reply (default: the recipe's, or 48)")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N clips only")
    p.add_argument("--no-blind", action="store_true", help="skip the blind baseline")
    p.add_argument("--card", action="store_true",
                   help="also write the table and this command into the adapter's model card (README.md)")

    p = sub.add_parser("serve", help="start the web chat")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None, help="default: $GRADIO_SERVER_PORT or 7860")
    p.add_argument("--adapter", default=None, help="bundle name in adapters/ or folder (default: adapters/real)")
    p.add_argument("--untrained", action="store_true", help="serve the base LLM with an untrained encoder")

    from .convert import FORMATS  # standard library only: --help stays instant

    p = sub.add_parser("data", help="dataset tools (`vqa data convert`: public QA sets or a CSV -> qa.jsonl)")
    data = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = data.add_parser("convert", help="write a dataset folder's qa.jsonl from a public QA set or a CSV",
                        description="Formats and where their videos come from: docs/datasets.md")
    p.add_argument("format", choices=list(FORMATS), metavar="FORMAT", help=", ".join(FORMATS))
    p.add_argument("src", metavar="SRC", help="the annotation file (ActivityNet-QA: its *_q.json or *_a.json)")
    p.add_argument("out", metavar="OUT", help="dataset folder to write (OUT/qa.jsonl)")
    p.add_argument("--videos", metavar="DIR", default=None, help="folder holding the clips (default: SRC's folder)")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", default=None, help="bundle folder (default: adapters/real)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 for greedy decoding")
    p.add_argument("--perception", action=argparse.BooleanOptionalAction, default=None,
                   help="also give the LLM what pretrained models hear and see (default: where the bundle was "
                        "trained with it)")


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
