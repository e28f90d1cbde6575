"""``deepspeech serve`` (the streaming server: REST + WebSocket, Batch Dispatch) and ``deepspeech stream`` (its
command-line client). The server's defaults are :class:`serving.config.ServerConfig`'s."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
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
        add_common(p)


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

    from deepspeech.frontend.audio import AudioError
    from serving.client import stream_file

    def show(msg: dict[str, Any]) -> None:
        if msg["type"] == "partial" and not args.quiet and sys.stderr.isatty():
            print(f"\r{msg['text'][-100:]}", end="", file=sys.stderr, flush=True)

    try:
        result = asyncio.run(stream_file(args.file, args.url, chunk_ms=args.chunk_ms, realtime=args.realtime,
                                         api_key=args.api_key or os.environ.get("DEEPSPEECH_API_KEY"),
                                         on_message=show))
    except AudioError as e:
        log.error("%s", e)
        return 1
    except (OSError, TimeoutError, websockets.WebSocketException) as e:
        why = " ".join(str(e).split()) or type(e).__name__
        log.error("cannot stream to %s: %s", args.url, why)
        return 1
    if sys.stderr.isatty() and not args.quiet:
        print(file=sys.stderr)
    if result.error or result.final is None:
        log.error("stream failed: %s (close code %s)", result.error or "no final result", result.close_code)
        return 1
    if args.format == "json":
        print(json.dumps(result.final, ensure_ascii=False))
    else:
        print(result.final["text"])
    return 0
