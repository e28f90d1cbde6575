"""``deepspeech eval``: WER and CER of a model on a manifest."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from deepspeech.cli.common import (
    Subparsers,
    add_command,
    add_common,
    add_decoder_args,
    add_segment_args,
    chunk_from_args,
    decoder_from_args,
)


def add_parser(subparsers: Subparsers, argv: Sequence[str] | None = None) -> None:
    p = add_command(subparsers, "eval", "WER/CER of a model on a manifest", argv, run)
    if p is None:
        return
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--manifest", required=True)
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument("--hypotheses", help="write per-utterance references and hypotheses (JSON Lines) here")
    add_segment_args(p)
    p.add_argument("--device", default="cpu")
    add_decoder_args(p)
    add_common(p)


def run(args: argparse.Namespace) -> int:
    from deepspeech.checkpoint import load_model_dir
    from deepspeech.data.manifest import read_manifest
    from deepspeech.inference.evaluate import evaluate_manifest

    chunk = chunk_from_args(args)
    am = load_model_dir(args.model, device=args.device)
    decoder = decoder_from_args(args, args.model, am.tokenizer, am)
    utts = read_manifest(args.manifest)
    with open(args.manifest, encoding="utf-8") as f:
        skipped = sum(1 for line in f if line.strip()) - len(utts)  # bad lines, missing audio: reported by the reader
    counts, records = evaluate_manifest(am, utts, args.device, progress=not args.no_progress, decoder=decoder,
                                        chunk=chunk)
    if args.hypotheses:
        with open(args.hypotheses, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    summary = {"manifest": args.manifest, "model": args.model, **counts.summary(),
               "failed": sum(1 for r in records if r["hyp"] is None), "skipped": skipped}
    if am.hanzi is not None:  # pinyin model: also its syllable (WER) and letter (CER) error rates
        from deepspeech.metrics import error_rates

        done = [r for r in records if r["hyp_pinyin"] is not None]
        py = error_rates([str(r["ref_pinyin"]) for r in done], [str(r["hyp_pinyin"]) for r in done], "en")
        summary.update({"pinyin_wer": py.wer, "pinyin_cer": py.cer})
    if args.format == "json":
        print(json.dumps(summary))
    else:
        print(f"WER {100 * counts.wer:.2f}%  CER {100 * counts.cer:.2f}%  on {counts.n} utterances"
              + (f"  (pinyin: syllables {100 * summary['pinyin_wer']:.2f}%, letters {100 * summary['pinyin_cer']:.2f}%)"
                 if "pinyin_wer" in summary else "")
              + f"; not scored: {summary['failed']} unreadable, {skipped} manifest lines skipped")
    return 0
