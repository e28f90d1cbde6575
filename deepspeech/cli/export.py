"""``deepspeech export``: copy a trained model with a model card (command, config, WER/CER); ``--quantize`` stores
it as int8 or bf16 (:mod:`deepspeech.model.quantize`, the card's figures measured on the stored model), ``--onnx``
adds ``model.onnx`` (:mod:`deepspeech.model.onnx_export`, the float model's offline forward)."""

from __future__ import annotations

import argparse
import json
import tempfile
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
    p.add_argument("--quantize", choices=["int8", "bf16"],
                   help="store a quantized model for CPU inference: int8 (dynamic int8 GRU and output layer) or "
                        "bf16 (bfloat16 weights and products); see docs/quantization.md")
    p.add_argument("--onnx", action="store_true",
                   help="also write model.onnx: the float model's offline forward (features -> log-probs)")
    add_common(p)


def run(args: argparse.Namespace) -> int:
    from deepspeech.checkpoint import load_model_dir, quantize_model_dir
    from deepspeech.model.onnx_export import ONNX_FILE, export_onnx
    from deepspeech.modelcard import export_model

    evals = dict(e.split("=", 1) for e in args.eval or [])
    notes = Path(args.notes).read_text() if args.notes else ""
    half = {"auto": None, "fp16": True, "fp32": False}[args.precision]
    if args.quantize and half:
        raise SystemExit("deepspeech export: --quantize and --precision fp16 exclude each other")
    Path(args.to).resolve().parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="export-", dir=Path(args.to).resolve().parent) as tmp:
        src = args.model
        if args.quantize:  # the card's figures are measured on what is stored: quantize first, then export
            src = str(Path(tmp) / "quantized")
            quantize_model_dir(args.model, src, args.quantize)
            half = False
        metrics = export_model(src, args.to, args.command_line, evals, notes, progress=not args.no_progress,
                               half=half)
    if args.onnx:
        export_onnx(load_model_dir(args.model).model, Path(args.to) / ONNX_FILE)
    print(json.dumps(metrics))
    return 0
