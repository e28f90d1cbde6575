"""``deepspeech data import`` (a manifest from a corpus layout) and ``deepspeech data prepare`` (the manifests
of a fixed evaluation protocol)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from deepspeech.cli.common import Subparsers, add_command, add_common


def add_parser(subparsers: Subparsers, argv: Sequence[str] | None = None) -> None:
    p = add_command(subparsers, "data", "data preparation", argv)
    if p is None:
        return
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = add_command(dsub, "import", "write a manifest from a corpus layout", argv, run_import)
    if q is not None:
        from deepspeech.data.importers import importer_kinds  # numpy and soundfile, no torch: ~0.1 s

        q.add_argument("kind", choices=sorted(importer_kinds()),
                       help="corpus layout; kit = a data kit set with a split key (../shared/data/en_an4, ...)")
        q.add_argument("root", help="corpus folder (kit: the set's folder or its manifest.jsonl)")
        q.add_argument("--out", required=True, help="manifest to write")
        q.add_argument("--split", help="train|dev|test for aishell, an4 (default train; dev = 6 held-out train "
                       "speakers), kit and speechcommands (default: all); librispeech: the data kit's Mini "
                       "LibriSpeech speaker protocol (default: all); commonvoice: tsv or csv name (train, dev, "
                       "test, ...)")
        q.add_argument("--lang", help="en or zh (librispeech, commonvoice, folder)")
        q.add_argument("--an4-full-train", action="store_true",
                       help="an4: no dev speakers, --split train is AN4's whole 948-utterance training set")
        q.add_argument("--raw-dir", metavar="DIR", help="an4: write the FLAC converted from .raw files under DIR "
                       "(default: beside each .raw)")
        q.add_argument("--raw-text", action="store_true", help="keep the transcripts as the corpus gives them (kit: "
                       "its 'text'), not normalised to lower-case words")
        q.add_argument("--no-check-audio", action="store_true",
                       help="kit: check only that each audio file exists and keep the manifest's durations (fast)")
        add_common(q)
    q = add_command(dsub, "prepare", "write train/dev/test manifests of a fixed evaluation protocol", argv,
                    run_prepare)
    if q is not None:
        q.add_argument("protocol", choices=["fsdd", "aishell-sample", "noise"])
        q.add_argument("source",
                       help="FSDD audio folder, or the AISHELL sample or noise kit folder (with manifest.jsonl)")
        q.add_argument("--out", required=True, help="folder for train.jsonl, dev.jsonl, test.jsonl")
        add_common(q)


def run_import(args: argparse.Namespace) -> int:
    from deepspeech.data.importers import run_import as import_corpus

    kind = args.kind
    for flag, kinds in (("an4_full_train", ("an4",)), ("raw_dir", ("an4",)), ("no_check_audio", ("kit",))):
        if getattr(args, flag) and kind not in kinds:
            raise ValueError(f"--{flag.replace('_', '-')} applies to kind {' or '.join(kinds)}, not {kind!r}")
    if args.split and kind in ("fsdd", "folder"):
        raise ValueError(f"kind {kind!r} has no --split (`data prepare fsdd` writes the FSDD protocol's splits)")
    kwargs: dict[str, object] = {"progress": not args.no_progress}
    if args.split:
        kwargs["split"] = args.split
    if args.lang and kind in ("librispeech", "commonvoice", "folder"):
        kwargs["lang"] = args.lang
    if args.an4_full_train:
        kwargs["dev_speakers"] = ()
    if args.raw_dir:
        kwargs["raw_dir"] = args.raw_dir
    if args.no_check_audio:
        kwargs["check_audio"] = False
    n = import_corpus(kind, args.root, args.out, normalize=not args.raw_text, **kwargs)
    print(f"{args.out}: {n} utterances")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from deepspeech.data.protocols import prepare

    counts = prepare(args.protocol, args.source, args.out, progress=not args.no_progress)
    print(json.dumps(counts))
    return 0
