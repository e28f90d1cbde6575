"""``deepspeech transcribe``: audio files, folders or glob patterns (long recordings too) to text, JSON Lines,
SRT or WebVTT; resumable (files already in the output are skipped)."""

from __future__ import annotations

import argparse
import glob
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from deepspeech.cli.common import (
    Subparsers,
    add_command,
    add_common,
    add_decoder_args,
    add_segment_args,
    chunk_from_args,
    decoder_from_args,
    log,
)


def add_parser(subparsers: Subparsers, argv: Sequence[str] | None = None) -> None:
    p = add_command(subparsers, "transcribe", "transcribe audio files, folders or globs (long recordings too)",
                    argv, run)
    if p is None:
        return
    p.add_argument("inputs", nargs="*", help="audio files, folders or glob patterns")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--manifest", help="also transcribe the audio of this manifest")
    p.add_argument("--format", choices=["txt", "jsonl", "srt", "vtt", "text", "json"], default="txt",
                   help="txt (path<TAB>text on stdout), jsonl (text, words with times, confidence), srt, vtt")
    p.add_argument("--output", help="one output file (txt or jsonl), appended to; files already in it are skipped")
    p.add_argument("--output-dir", help="one output file per audio file; existing ones are skipped")
    p.add_argument("--batch-size", type=int, default=16, help="short files per forward pass")
    add_segment_args(p)
    p.add_argument("--device", default="cpu")
    add_decoder_args(p)
    add_common(p)


def expand_inputs(items: list[str]) -> list[str]:
    """Files, folders (searched recursively for audio) and glob patterns -> a sorted, de-duplicated file list.
    A pattern that matches nothing is reported; a file that is missing or not a regular file is kept for
    :func:`deepspeech.inference.transcribe.transcribe_files` to report in its place in the output."""
    from deepspeech.frontend.audio import AUDIO_SUFFIXES

    paths: list[str] = []
    for item in items:
        if os.path.isdir(item):
            paths += sorted(str(p) for p in Path(item).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        elif any(c in item for c in "*?[") and not os.path.lexists(item):
            found = sorted(glob.glob(item, recursive=True))
            if not found:
                log.error("no files match %s", item)
            paths += found
        else:
            paths.append(item)
    seen: set[str] = set()
    return [p for p in paths if not (p in seen or seen.add(p))]


def run(args: argparse.Namespace) -> int:
    from deepspeech.checkpoint import load_model_dir
    from deepspeech.data.manifest import read_manifest
    from deepspeech.inference.transcribe import Transcript, done_in_jsonl, output_path, render, transcribe_files

    fmt = {"text": "txt", "json": "jsonl"}.get(args.format, args.format)
    if args.output and args.output_dir:
        raise SystemExit("give --output FILE or --output-dir DIR, not both")
    if args.output and fmt not in ("txt", "jsonl"):
        raise SystemExit(f"--output FILE takes txt or jsonl; use --output-dir for {fmt}")
    paths = expand_inputs(args.inputs)
    if args.manifest:
        paths += [u.audio for u in read_manifest(args.manifest)]
    if not paths:
        raise SystemExit("no input files")
    am = load_model_dir(args.model, device=args.device)
    decoder = decoder_from_args(args, args.model, am.tokenizer, am)
    lang = am.text_lang
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]) if args.output_dir else None
    out_file = Path(args.output) if args.output else None
    if out_file is not None:  # resume: skip what an earlier run wrote
        done = done_in_jsonl(out_file) if fmt == "jsonl" else (
            {ln.split("\t", 1)[0] for ln in out_file.read_text(encoding="utf-8").splitlines()}
            if out_file.is_file() else set())
    elif args.output_dir:
        done = {p for p in paths if output_path(p, Path(args.output_dir), fmt, root).is_file()}
    else:
        done = set()
    todo = [p for p in paths if str(p) not in done]
    if done:
        log.info("%d of %d files already transcribed: skipped", len(paths) - len(todo), len(paths))
    sink = open(out_file, "a", encoding="utf-8") if out_file else None

    def write(t: Transcript) -> None:
        if args.output_dir:
            if t.error is None:
                dst = output_path(t.path, Path(args.output_dir), fmt, root)
                dst.parent.mkdir(parents=True, exist_ok=True)
                tmp = dst.with_suffix(dst.suffix + ".part")
                tmp.write_text(render(t, fmt, lang), encoding="utf-8")
                tmp.replace(dst)  # complete files only, so a rerun never skips a half-written one
            return
        if fmt == "jsonl":
            line = render(t, fmt, lang)
        elif t.error is not None:
            return
        elif fmt == "txt":
            line = f"{t.path}\t{t.text}\n"
        else:
            line = render(t, fmt, lang)
        if sink:
            sink.write(line)
            sink.flush()
        else:
            sys.stdout.write(line)

    chunk = chunk_from_args(args)
    try:
        results = transcribe_files(am, todo, args.device, max_batch=args.batch_size, progress=not args.no_progress,
                                   decoder=decoder, chunk=chunk, on_result=write)
    finally:
        if sink:
            sink.close()
    failed = sum(r.error is not None for r in results)
    if failed:
        log.error("%d of %d files could not be read", failed, len(results))
    return 1 if results and failed == len(results) else 0
