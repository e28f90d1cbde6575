"""The HTTP and WebSocket API (FastAPI), around one :class:`serving.dispatch.BatchDispatcher`.

- ``POST /v1/transcribe``: an audio file (any format the loader reads) as the request body or as a multipart field
  ``file``; answers ``{"text", "words": [{"word", "start", "end", "confidence"}], "duration_s"}``. Uploads go
  through the same dispatcher as streams (at most ``max_step_s`` of audio per step, so a long upload cannot stall
  live streams). More than ``max_pending_requests`` at once: 503 with Retry-After.
- ``WS /v1/stream?sample_rate=16000``: optionally a first text frame ``{"type": "start", ...}`` (sample rate,
  endpointing, alternatives, partial interval, hotwords: :mod:`serving.options`, docs/streaming-api.md), binary
  frames of 16-bit little-endian mono PCM, then the text frame ``{"type": "end"}``; the server sends
  ``{"type": "partial", "text", "audio_ms"}`` as audio is processed and one ``{"type": "final", "text", "words",
  "audio_ms"}`` (with endpointing, one per segment, with ``segment``, ``start``, ``end`` and ``last``), then closes
  (1000). Errors: ``{"type": "error", "message"}``
  and a close code (1003 unsupported data, 1007 invalid payload, 1008 policy: key or limits (idle, slower than
  ``min_audio_rate`` x real time, longer than ``max_stream_s`` or ``max_audio_s``), 1009 too big, 1011 a failure of
  the server's own, 1013 try again later: too many streams or shutting down). See :mod:`serving.stream`.
- ``GET /healthz``, ``GET /metrics`` (Prometheus text), ``GET /`` (a browser page that streams the microphone).

An upload's body must arrive within ``body_timeout_s`` (plus one second per ``min_body_rate`` bytes), else 408;
audio the loader refuses is a 400 with a one-line message; a client that disconnects mid-upload is one info line.
The lifespan warms the engine up before uvicorn opens its socket, so ``/healthz`` answering means ready.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import numpy as np
import soundfile as sf
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from deepspeech.frontend.audio import SAMPLE_RATE, AudioError, load_audio
from serving.config import ServerConfig
from serving.dispatch import BatchDispatcher, Overloaded
from serving.metrics import Metrics
from serving.stream import MAX_RATE, serve_stream

log = logging.getLogger(__name__)

class _BodyTimeout(Exception):
    pass


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _key_ok(cfg: ServerConfig, headers: Any, query: Any) -> bool:
    if cfg.api_key is None:
        return True
    auth = headers.get("authorization", "")
    given = auth[7:] if auth.lower().startswith("bearer ") else headers.get("x-api-key") or query.get("api_key", "")
    return hmac.compare_digest(given.encode(), cfg.api_key.encode())


def create_app(dispatcher: BatchDispatcher, cfg: ServerConfig, metrics: Metrics) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        took = await asyncio.to_thread(dispatcher.warm_up)
        metrics.warm_up_seconds.set(took)
        log.info("engine warmed up in %.2f s", took)
        dispatcher.start()
        yield
        dispatcher.draining = True
        await asyncio.to_thread(dispatcher.wait_idle, cfg.drain_timeout_s)
        dispatcher.stop()

    app = FastAPI(title="deepspeech", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.dispatcher, app.state.metrics = dispatcher, metrics
    pending_requests = 0
    # Uploads decode one at a time: decoding is CPU-bound anyway, and a file within every limit can still take a
    # few hundred MB to decode (the loader holds the mono signal at the file's rate: 10 min at 96 kHz is 230 MB).
    decoding = asyncio.Semaphore(1)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "draining" if dispatcher.draining else "ok", "model": dispatcher.engine.am.config.name,
                "active_streams": dispatcher.active}

    @app.get("/metrics")
    async def metrics_text() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/")
    async def index() -> HTMLResponse:
        return HTMLResponse(resources.files("serving").joinpath("static/index.html").read_text())

    @app.post("/v1/transcribe")
    async def transcribe(request: Request) -> Response:
        nonlocal pending_requests

        def fail(status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
            metrics.rejections.labels(reason).inc()
            metrics.requests.labels("transcribe", str(status)).inc()
            return _error(status, message, headers)

        if not _key_ok(cfg, request.headers, request.query_params):
            return fail(401, "auth", "missing or wrong API key")
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > cfg.max_request_bytes):
            return fail(413, "too_large", f"request larger than {cfg.max_request_bytes} bytes")
        if pending_requests >= cfg.max_pending_requests:
            return fail(503, "queue_full", "too many transcription requests; retry shortly", {"Retry-After": "1"})
        pending_requests += 1
        try:
            try:
                data = await _read_body(request, cfg)
            except _BodyTimeout as e:
                return fail(408, "body_timeout", str(e), {"Connection": "close"})
            except ClientDisconnect:
                metrics.rejections.labels("disconnect").inc()
                log.info("upload: the client went away before its body was complete")
                return Response(status_code=400)  # nobody is listening
            if data is None:
                return fail(413, "too_large", f"request larger than {cfg.max_request_bytes} bytes",
                            {"Connection": "close"})
            if request.headers.get("content-type", "").startswith("multipart/form-data"):
                try:
                    data = await _multipart_file(request, data)
                except (MultiPartException, HTTPException, ValueError) as e:
                    return fail(400, "bad_request", f"malformed multipart body: {getattr(e, 'detail', e)}")
                if data is None:
                    return fail(400, "bad_request", "multipart request without a 'file' field")
            try:
                async with decoding:
                    wav = await asyncio.to_thread(_decode, data, cfg.max_audio_s)
            except AudioError as e:
                return fail(400, "bad_audio", " ".join(str(e).split()))
            try:
                result = await _run_stream(dispatcher, wav)
            except Overloaded as e:
                return fail(503, "overloaded", str(e), {"Retry-After": "1"})
            if result.get("type") != "final":
                return fail(500, "internal", result.get("message", "transcription failed"))
            metrics.requests.labels("transcribe", "200").inc()
            return JSONResponse({"text": result["text"], "words": result["words"],
                                 "duration_s": round(wav.size / SAMPLE_RATE, 3)})
        finally:
            pending_requests -= 1

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket) -> None:
        await serve_stream(ws, dispatcher, cfg, metrics, _key_ok(cfg, ws.headers, ws.query_params))

    return app


async def _read_body(request: Request, cfg: ServerConfig) -> bytes | None:
    """The request body; None when it is larger than ``max_request_bytes``. Raises :class:`_BodyTimeout` when it
    does not arrive within ``body_timeout_s`` plus one second per ``min_body_rate`` bytes received (a trickle
    cannot hold an upload slot), :class:`ClientDisconnect` when the client goes away."""
    start = time.monotonic()
    body = bytearray()
    chunks = request.stream().__aiter__()
    while True:
        left = start + cfg.body_timeout_s + len(body) / cfg.min_body_rate - time.monotonic()
        try:
            part = await asyncio.wait_for(chunks.__anext__(), max(left, 0.0))
        except StopAsyncIteration:
            return bytes(body)
        except TimeoutError:
            raise _BodyTimeout(f"request body not received in time ({len(body)} bytes after "
                               f"{time.monotonic() - start:.0f} s)") from None
        body += part
        if len(body) > cfg.max_request_bytes:
            return None


def _decode(data: bytes, max_audio_s: float) -> np.ndarray:
    """:func:`load_audio` of an upload, after a look at its header: a sample rate above what streams may use is
    refused before anything is decoded (the loader's own bounds are wider; what it decodes is held at the file's
    rate, and a few kB of FLAC can declare minutes of it)."""
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        info = None  # not a format libsndfile knows: load_audio says why
    if info is not None and info.samplerate > MAX_RATE:
        raise AudioError(f"<bytes>: sample rate {info.samplerate} Hz is above this server's limit of {MAX_RATE} Hz")
    return load_audio(data, max_audio_s)


async def _multipart_file(request: Request, body: bytes) -> bytes | None:
    """The ``file`` field of a multipart body that has already been read (size-checked) into ``body``."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, receive).form(max_part_size=len(body) + 1)
    field = form.get("file")
    if field is None or isinstance(field, str):
        return None
    return await field.read()


async def _run_stream(dispatcher: BatchDispatcher, wav: np.ndarray) -> dict[str, Any]:
    """A whole waveform as one stream that ends at once; returns the final (or error) message."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[dict[str, Any]] = loop.create_future()

    def emit(msg: dict[str, Any]) -> None:
        if msg["type"] in ("final", "error"):
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(msg))

    s = dispatcher.open(emit)
    try:
        dispatcher.feed(s, wav)
        dispatcher.end(s)
        return await done
    finally:
        if not done.done():
            dispatcher.abandon(s)
