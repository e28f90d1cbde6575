"""What the subcommand modules share: mounting a subcommand, the common, segmenting and decoding options, and
running a handler so that the project's errors end it with one line and exit status 2."""

from __future__ import annotations

import argparse
import logging
import os
import select
import sys
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("deepspeech")  # the commands' own messages, under the name they have always had

Subparsers = argparse._SubParsersAction  # what ``add_subparsers`` returns: each module's ``add_parser`` adds to it
Handler = Callable[[argparse.Namespace], int]


def add_command(subparsers: Subparsers, name: str, help: str, argv: Sequence[str] | None,
                run: Handler | None = None) -> argparse.ArgumentParser | None:
    """Add subcommand ``name`` and return its parser to fill in (with ``run`` as its handler), or None when
    ``argv`` (the command line; None: build every parser) does not name it. Then the bare entry still lists it in
    the parent's --help and choices, but its options, whose defaults come from config dataclasses that partly
    sit beside torch code, are not built: ``deepspeech --help`` imports no torch."""
    p = subparsers.add_parser(name, help=help)
    if argv is not None and name not in argv:
        return None
    if run is not None:
        p.set_defaults(func=run)
    return p


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_segment_args(p: argparse.ArgumentParser) -> None:
    """Long-file segmenting (defaults: :class:`ChunkConfig`)."""
    from deepspeech.inference.longform import ChunkConfig

    d = ChunkConfig()
    p.add_argument("--segment-min-s", type=float, default=d.min_segment_s,
                   help="files longer than this are segmented in pauses (bounded memory)")
    p.add_argument("--segment-max-s", type=float, default=d.max_segment_s, help="longest segment")


def chunk_from_args(args: argparse.Namespace) -> Any:
    """The :class:`ChunkConfig` of :func:`add_segment_args`' options."""
    from deepspeech.inference.longform import ChunkConfig

    return ChunkConfig(min_segment_s=args.segment_min_s, max_segment_s=args.segment_max_s)


def add_decoder_args(p: argparse.ArgumentParser) -> None:
    """--decoder greedy|beam and the beam-search settings. The beam settings default to None: the model's
    decoder.json, then :class:`BeamConfig`, decide (in :func:`deepspeech.decoding.beam.build_decoder`)."""
    g = p.add_argument_group("decoding")
    g.add_argument("--decoder", choices=["greedy", "beam"], default="greedy", help="default: %(default)s")
    g.add_argument("--lm", help="KenLM directory (`deepspeech lm ngram`); default: the model directory's lm/")
    g.add_argument("--no-lm", action="store_true", help="beam search without a language model")
    g.add_argument("--backend", choices=["pyctcdecode", "flashlight"], help="beam-search implementation")
    g.add_argument("--beam-width", type=int)
    g.add_argument("--alpha", type=float, help="LM weight")
    g.add_argument("--beta", type=float, help="word insertion bonus")
    g.add_argument("--cutoff-prob", type=float, help="per-frame cumulative probability pruning (DS2: 0.99)")
    g.add_argument("--cutoff-top-n", type=int, help="at most this many symbols per frame")
    g.add_argument("--hotword", action="append", dest="hotwords", metavar="WORD",
                   help="boost this word or phrase, also one outside the LM (repeatable; flashlight: "
                   "English and pinyin models)")
    g.add_argument("--hotword-weight", type=float, help="flashlight: natural-log bonus per hotword word (default "
                   "12; pinyin models: 8 per syllable); pyctcdecode: its hotword weight (default 10)")
    g.add_argument("--rescore", metavar="LM_DIR", help="re-rank the beam's N best with this neural LM (`deepspeech "
                   "lm export`; implies --decoder beam; weights from the model's rescore.json)")
    g.add_argument("--nbest", type=int, help="hypotheses to rescore (default: rescore.json's, else "
                   "RescoreConfig's)")


def decoder_from_args(args: argparse.Namespace, model_dir: str, tokenizer: Any, am: Any = None) -> Any:
    """None for greedy decoding, else a BeamSearchDecoder for the model directory; with --rescore LM_DIR (which
    implies beam search and needs the loaded model ``am``) a RescoringDecoder around it."""
    rescore = getattr(args, "rescore", None)
    if args.decoder == "greedy" and not rescore:
        return None
    beam = dict(lm_dir=args.lm, use_lm=not args.no_lm, backend=args.backend, beam_width=args.beam_width,
                alpha=args.alpha, beta=args.beta, cutoff_prob=args.cutoff_prob, cutoff_top_n=args.cutoff_top_n,
                hotwords=tuple(args.hotwords) if args.hotwords else None, hotword_weight=args.hotword_weight)
    if rescore:
        from lm.scorer import rescoring_decoder

        return rescoring_decoder(model_dir, am, rescore, getattr(args, "device", "cpu"), args.nbest, **beam)
    from deepspeech.decoding.beam import build_decoder

    return build_decoder(model_dir, tokenizer, **beam)


def _stdout_closed() -> bool:
    """True when standard output is a pipe whose reader has gone (``deepspeech ... | head``): the write end then
    polls as an error (or hang-up). Where poll is unavailable, a broken pipe is taken to be standard output."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return True


def run_command(args: argparse.Namespace) -> int:
    """Set up logging and run the parsed subcommand's handler. The project's errors (and OS errors such as a
    missing or unwritable file) end it with one line on stderr and exit status 2 (the traceback at -v); a closed
    output pipe ends it quietly with 141, the status of a process killed by SIGPIPE. SIGPIPE itself stays ignored,
    as Python sets it, so that a server's or trainer's broken socket stays an exception and never kills it."""
    from deepspeech.logs import setup_logging

    setup_logging(args.verbose)
    from data_synthesis.tts import SynthesisError
    from data_synthesis.voice import VoiceError
    from deepspeech.checkpoint import CheckpointError
    from deepspeech.data.manifest import ManifestError
    from deepspeech.decoding.beam import DecoderError
    from deepspeech.decoding.hanzi import HanziError
    from deepspeech.decoding.kenlm import KenLMError
    from deepspeech.frontend.audio import AudioError

    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # here, not at exit, so that a reader gone by now is handled below
        return status
    except BrokenPipeError as e:
        if not _stdout_closed():
            log.error("%s", e)
            return 2
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's own flush stays quiet
        return 141
    except (AudioError, CheckpointError, ManifestError, DecoderError, KenLMError, HanziError, SynthesisError,
            VoiceError, ValueError, OSError) as e:  # AudioError, CheckpointError, ManifestError are ValueErrors
        log.debug("traceback", exc_info=True)
        log.error("%s", e)
        return 2
