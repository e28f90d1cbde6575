"""The ``deepspeech`` command: one module per subcommand (train, eval, transcribe, export, synth, lm, plan, serve
and stream, data), each with ``add_parser`` and its handlers; :mod:`deepspeech.cli.common` holds what they share."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from deepspeech.cli import data, evaluate, export, lm, plan, serve, synth, train, transcribe
from deepspeech.cli.common import run_command

_MODULES = (train, evaluate, transcribe, export, synth, lm, plan, serve, data)  # the order of the --help listing


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand; given the command line ``argv``, only the subcommands it names are built
    in full (see :func:`deepspeech.cli.common.add_command`)."""
    parser = argparse.ArgumentParser(prog="deepspeech", description="Deep Speech 2 speech recognition")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in _MODULES:
        module.add_parser(sub, argv)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand (exit statuses: :func:`deepspeech.cli.common.run_command`)."""
    argv = sys.argv[1:] if argv is None else argv
    return run_command(build_parser(argv).parse_args(argv))
