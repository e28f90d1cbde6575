"""``deepspeech serve`` (the streaming server: REST + WebSocket, Batch Dispatch) and ``deepspeech stream`` (its
command-line client). The server's defaults are :class:`serving.config.ServerConfig`'s."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepspeech.cli.common import Subparsers, add_command, add_common, log

MIB = 1024 * 1024
KIB = 1024


def add_parser(subparsers: Subparsers, argv: Sequence[str] | None = None) -> None:
    from serving.config import ServerConfig  # a plain dataclass: cheap to import

    d = ServerConfig()
    p = add_command(subparsers, "serve", "the streaming server (REST + WebSocket, Batch Dispatch)", argv, run_serve)
    if p is not None:
        p.add_argument("--model", required=True, help="model directory (a streaming model: unidirectional)")
        p.add_argument("--host", default=d.host, help="bind address (default loopback only)")
        p.add_argument("--port", type=int, default=d.port)
        p.add_argument("--device", default=d.device)
        p.add_argument("--decoder", choices=["greedy", "beam"], default=d.decoder, help="decoder for final results")
        p.add_argument("--rescore", metavar="LM_DIR", default=d.rescore,
                       help="final results: re-rank the beam's N best with this neural LM (implies --decoder beam)")
        p.add_argument("--max-batch", type=int, default=d.max_batch, help="streams per forward pass (1 = no batching)")
        p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                       help="wait for more streams before a step (0 = eager)")
        p.add_argument("--threads", type=int, default=d.threads,
                       help="torch threads of the inference worker (0 = default)")
        p.add_argument("--max-streams", type=int, default=d.max_streams, help="concurrent WebSocket streams")
        p.add_argument("--max-pending-requests", type=int, default=d.max_pending_requests,
                       help="queued uploads before 503")
        p.add_argument("--max-request-mb", type=int, default=d.max_request_bytes // MIB, help="upload size limit")
        p.add_argument("--max-audio-s", type=float, default=d.max_audio_s, help="audio per upload or stream")
        p.add_argument("--idle-timeout-s", type=float, default=d.idle_timeout_s,
                       help="close streams silent this long")
        p.add_argument("--drain-timeout-s", type=float, default=d.drain_timeout_s,
                       help="graceful shutdown: time for open streams")
        p.add_argument("--api-key", help="require this key (or set DEEPSPEECH_API_KEY)")
        p.add_argument("--body-timeout-s", type=float, default=d.body_timeout_s,
                       help="an upload's body must arrive within this (plus 1 s per --min-body-rate-kb KiB), else 408")
        p.add_argument("--min-body-rate-kb", type=float, default=d.min_body_rate / KIB,
                       help="see --body-timeout-s (KiB per second)")
        p.add_argument("--min-audio-rate", type=float, default=d.min_audio_rate,
                       help="streams must send audio at this fraction of real time (after --stream-grace-s), "
                            "else 1008")
        p.add_argument("--stream-grace-s", type=float, default=d.stream_grace_s, help="see --min-audio-rate")
        p.add_argument("--max-stream-s", type=float, default=d.max_stream_s,
                       help="wall-clock limit of one stream (1008)")
        p.add_argument("--header-timeout-s", type=float, default=d.header_timeout_s,
                       help="close connections whose request head is not complete within this")
        p.add_argument("--max-connections", type=int, default=d.max_connections,
                       help="open connections before 503 (/healthz and /metrics always answer)")
        add_common(p)

    p = add_command(subparsers, "stream", "stream an audio file to a server at real-time pace and print the result",
                    argv, run_stream)
    if p is not None:
        p.add_argument("file", help="audio file (any format the loader reads)")
        p.add_argument("--url", default=f"ws://{d.host}:{d.port}/v1/stream")
        p.add_argument("--chunk-ms", type=float, default=100.0, help="audio per WebSocket frame")
        p.add_argument("--realtime", type=float, default=1.0, help="speed relative to real time (0 = no pacing)")
        p.add_argument("--api-key", help="API key (or set DEEPSPEECH_API_KEY)")
        p.add_argument("--format", choices=["text", "json"], default="text")
        p.add_argument("--quiet", action="store_true", help="no live partial results on stderr")
        _add_start_args(p)
        add_common(p)


def _add_start_args(p: argparse.ArgumentParser) -> None:
    """The start message's options (docs/streaming-api.md). Each defaults to None, "not sent": the server's
    defaults (:class:`serving.options.StreamOptions`, :class:`EndpointConfig`), shown in the help, then apply."""
    from serving.options import StreamOptions  # imports torch (EndpointConfig): built only for `stream`

    d = StreamOptions()
    from deepspeech.inference.streaming import EndpointConfig

    e = EndpointConfig()
    g = p.add_argument_group("stream options (any of them sends a start message first; none: the old protocol)")
    g.add_argument("--sample-rate", type=int, metavar="HZ",
                   help=f"send the PCM at this rate (the server resamples it; default {d.sample_rate})")
    g.add_argument("--hotword", action="append", dest="hotwords", metavar="WORD",
                   help="boost this word or phrase in the finals' beam search (repeatable)")
    g.add_argument("--hotwords-file", metavar="FILE", help="hotwords, one per line (UTF-8; blank lines and lines "
                   "starting with # are skipped)")
    g.add_argument("--hotword-weight", type=float, metavar="W", help="their boost (default: the server decoder's)")
    g.add_argument("--alternatives", type=int, metavar="N",
                   help=f"N-best entries listed with each final (default {d.alternatives})")
    g.add_argument("--partial-interval-ms", type=float, metavar="MS",
                   help=f"at least this much audio between two partials (default {d.partial_interval_ms:g})")
    g.add_argument("--endpoint", action="store_true",
                   help="cut the stream into segments at pauses, one final each (printed as they come)")
    for name, value, what in (
            ("silence_after_speech_s", e.silence_after_speech_s, "rule 2: close a segment after this much silence"),
            ("max_segment_s", e.max_segment_s, "rule 3: close a segment this long"),
            ("quiet_dbfs", e.quiet_dbfs, "a 20 ms span at most this loud is silence"),
            ("preroll_s", e.preroll_s, "silence kept before a segment's speech"),
            ("tail_s", e.tail_s, "silence kept after it")):
        g.add_argument("--" + name.replace("_", "-"), dest=name, type=float, metavar="DBFS" if "dbfs" in name else "S",
                       help=f"endpointing (implies --endpoint): {what} (default {value:g})")


ENDPOINT_ARGS = ("silence_after_speech_s", "max_segment_s", "quiet_dbfs", "preroll_s", "tail_s")


def start_message(args: argparse.Namespace) -> dict[str, Any] | None:
    """The start message's fields from the `stream` options (None when none was given: nothing is sent). Values
    are not checked here: the server's bounds are the ones that count, and its refusal is one error line."""
    start: dict[str, Any] = {}
    if args.sample_rate is not None:
        if args.sample_rate < 1:
            raise StartError(f"--sample-rate must be a positive number of Hz, got {args.sample_rate}")
        start["sample_rate"] = args.sample_rate
    words = list(args.hotwords or [])
    if args.hotwords_file:
        try:
            lines = Path(args.hotwords_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise StartError(f"cannot read --hotwords-file {args.hotwords_file}: {e}") from None
        words += [w.strip() for w in lines if w.strip() and not w.lstrip().startswith("#")]
    if words or args.hotwords_file:
        start["hotwords"] = words
    if args.hotword_weight is not None:
        start["hotword_weight"] = args.hotword_weight
    if args.alternatives is not None:
        start["alternatives"] = args.alternatives
    if args.partial_interval_ms is not None:
        start["partial_interval_ms"] = args.partial_interval_ms
    rules = {k: getattr(args, k) for k in ENDPOINT_ARGS if getattr(args, k) is not None}
    if rules:
        start["endpointing"] = rules
    elif args.endpoint:
        start["endpointing"] = True
    return start or None


class StartError(ValueError):
    """A `stream` option that cannot be turned into a start message (an unreadable hotwords file)."""


def format_final(msg: dict[str, Any]) -> list[str]:
    """Text lines of one final: its text (with endpointing ``[start - end] text``, seconds of the stream), then
    its alternatives when it lists them, one per line: ``  confidence  text``."""
    text = msg.get("text", "")
    lines = [f"[{msg['start']:8.2f} - {msg['end']:8.2f}] {text}" if "start" in msg and "end" in msg else text]
    lines += [f"  {a['confidence']:.4f}  {a['text']}" for a in msg.get("alternatives", [])]
    return lines


def run_serve(args: argparse.Namespace) -> int:
    from serving.config import ServerConfig
    from serving.server import run_server

    cfg = ServerConfig(host=args.host, port=args.port, device=args.device, decoder=args.decoder, rescore=args.rescore,
                       max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, threads=args.threads,
                       max_streams=args.max_streams, max_pending_requests=args.max_pending_requests,
                       max_request_bytes=args.max_request_mb * MIB, max_audio_s=args.max_audio_s,
                       idle_timeout_s=args.idle_timeout_s, drain_timeout_s=args.drain_timeout_s,
                       api_key=args.api_key or os.environ.get("DEEPSPEECH_API_KEY") or None,
                       body_timeout_s=args.body_timeout_s, min_body_rate=args.min_body_rate_kb * KIB,
                       min_audio_rate=args.min_audio_rate, stream_grace_s=args.stream_grace_s,
                       max_stream_s=args.max_stream_s, header_timeout_s=args.header_timeout_s,
                       max_connections=args.max_connections)
    run_server(args.model, cfg, log_level="debug" if args.verbose else "info")
    return 0


def run_stream(args: argparse.Namespace) -> int:
    import websockets

    from deepspeech.frontend.audio import SAMPLE_RATE, AudioError
    from serving.client import stream_file

    try:
        start = start_message(args)
    except StartError as e:
        log.error("%s", e)
        return 1
    segmented = bool(start and start.get("endpointing"))
    live = not args.quiet and sys.stderr.isatty()

    def show(msg: dict[str, Any]) -> None:
        if msg["type"] == "partial" and live:
            print(f"\r{msg['text'][-100:]}", end="", file=sys.stderr, flush=True)
        elif msg["type"] == "final" and segmented and msg.get("text"):
            if live:
                print("\r\033[K", end="", file=sys.stderr, flush=True)
            # segment finals as they come (one line each; the empty last one is not printed)
            print(json.dumps(msg, ensure_ascii=False) if args.format == "json" else "\n".join(format_final(msg)),
                  flush=True)

    try:
        result = asyncio.run(stream_file(args.file, args.url, chunk_ms=args.chunk_ms, realtime=args.realtime,
                                         api_key=args.api_key or os.environ.get("DEEPSPEECH_API_KEY"),
                                         on_message=show, start=start,
                                         sample_rate=(start or {}).get("sample_rate", SAMPLE_RATE)))
    except AudioError as e:
        log.error("%s", e)
        return 1
    except (OSError, TimeoutError, websockets.WebSocketException) as e:
        why = " ".join(str(e).split()) or type(e).__name__
        log.error("cannot stream to %s: %s", args.url, why)
        return 1
    if live:
        print(file=sys.stderr)
    if result.error or result.final is None:
        log.error("stream failed: %s (close code %s)", result.error or "no final result", result.close_code)
        return 1
    if segmented:
        return 0  # every final is printed already
    if args.format == "json":
        print(json.dumps(result.final, ensure_ascii=False))
    else:
        print("\n".join(format_final(result.final)))
    return 0
