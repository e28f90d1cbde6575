"""Build the server from a model directory and run it under uvicorn, with a graceful shutdown.

On the first SIGINT/SIGTERM the server drains: new streams and uploads are refused (1013 / 503), open streams may
finish for up to ``drain_timeout_s``, then uvicorn stops. A second signal stops at once.

uvicorn runs with :mod:`serving.protocol`'s guarded HTTP protocol (request heads time out; /healthz and /metrics
answer past the connection limit), and every log line goes through :mod:`serving.redact` (no API key in the logs).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import FrameType

import uvicorn
from fastapi import FastAPI

from deepspeech.checkpoint import load_model_dir
from deepspeech.decoding.beam import build_decoder
from deepspeech.decoding.hypothesis import Decoder
from deepspeech.inference.streaming import StreamingModel
from lm.scorer import rescoring_decoder
from serving.app import create_app
from serving.config import ServerConfig
from serving.dispatch import BatchDispatcher
from serving.metrics import Metrics
from serving.protocol import protocol_class
from serving.redact import install as redact_logs

log = logging.getLogger(__name__)


def build_app(model_dir: str | Path, cfg: ServerConfig) -> FastAPI:
    """Load the model (it must be a streaming one: unidirectional, no per-utterance normalisation)."""
    am = load_model_dir(model_dir, device=cfg.device)
    engine = StreamingModel(am, cfg.device)
    decoder: Decoder | None = None
    if cfg.rescore:  # final results only: partials stay greedy
        decoder = rescoring_decoder(model_dir, am, cfg.rescore, cfg.device)
    elif cfg.decoder == "beam":
        decoder = build_decoder(model_dir, am.tokenizer)
    metrics = Metrics()

    def beam_for(hotwords: tuple[str, ...], weight: float | None, nbest: int) -> Decoder:
        """The beam decoder of the model directory (its LM, its decoder.json) for a stream's hotwords and
        alternatives: build_decoder raises ValueError for settings it cannot honour, and the client is told why."""
        return build_decoder(model_dir, am.tokenizer, hotwords=hotwords or None, hotword_weight=weight, nbest=nbest)

    return create_app(BatchDispatcher(engine, cfg, metrics, decoder, beam_for), cfg, metrics)


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_timeout_s: float) -> None:
        super().__init__(config)
        self._app, self._drain_timeout_s, self._draining = app, drain_timeout_s, False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        dispatcher = self._app.state.dispatcher
        if self._draining:
            return super().handle_exit(sig, frame)
        self._draining = True
        dispatcher.draining = True
        log.info("draining: %d open streams may finish (up to %.0f s)", dispatcher.active, self._drain_timeout_s)

        async def drain() -> None:
            await asyncio.to_thread(dispatcher.wait_idle, self._drain_timeout_s)
            super(_DrainingServer, self).handle_exit(sig, frame)

        asyncio.get_event_loop().create_task(drain())


def run_server(model_dir: str | Path, cfg: ServerConfig, log_level: str = "info") -> None:
    redact_logs((cfg.api_key,) if cfg.api_key else ())  # the model's loading logs too
    app = build_app(model_dir, cfg)
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: reachable beyond this machine%s", cfg.host,
                    "" if cfg.api_key else " and without an API key")
    # No per-message deflate: PCM does not compress, so it would only cost CPU and zlib state per connection.
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=log_level, ws_max_size=cfg.max_frame_bytes,
                            timeout_graceful_shutdown=5, limit_concurrency=cfg.max_connections,
                            http=protocol_class(cfg.header_timeout_s), ws_per_message_deflate=False)
    redact_logs((cfg.api_key,) if cfg.api_key else ())  # after uvicorn.Config has set up its log handlers
    _DrainingServer(config, app, cfg.drain_timeout_s).run()
