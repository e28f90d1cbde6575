"""``deepspeech export``: copy a trained model with a model card (command, config, WER/CER)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from deepspeech.cli.common import Subparsers, add_command, add_common


def add_parser(subparsers: Subparsers, argv: Sequence[str] | None = None) -> None:
    p = add_command(subparsers, "export", "copy a trained model with a model card (command, config, WER/CER)",
                    argv, run)
    if p is None:
        return
    p.add_argument("--model", required=True, help="trained model directory, e.g. runs/NAME/best")
    p.add_argument("--to", required=True, help="destination model directory")
    p.add_argument("--command-line", required=True, help="the command that produced the model (for the card)")
    p.add_argument("--eval", action="append", metavar="NAME=MANIFEST", help="evaluation set for the card")
    p.add_argument("--notes", help="a Markdown file appended to the card")
    p.add_argument("--precision", choices=["auto", "fp16", "fp32"], default="auto",
                   help="stored weights (auto: float16 if the float32 weights exceed 20 MB)")
    add_common(p)


def run(args: argparse.Namespace) -> int:
    from deepspeech.modelcard import export_model

    evals = dict(e.split("=", 1) for e in args.eval or [])
    notes = Path(args.notes).read_text() if args.notes else ""
    half = {"auto": None, "fp16": True, "fp32": False}[args.precision]
    metrics = export_model(args.model, args.to, args.command_line, evals, notes, progress=not args.no_progress,
                           half=half)
    print(json.dumps(metrics))
    return 0
