"""The HTTP and WebSocket API (FastAPI), around one :class:`serving.dispatch.BatchDispatcher`.

- ``POST /v1/transcribe``: an audio file (any format the loader reads) as the request body or as a multipart field
  ``file``; answers ``{"text", "words": [{"word", "start", "end", "confidence"}], "duration_s"}``. Uploads go
  through the same dispatcher as streams (at most ``max_step_s`` of audio per step, so a long upload cannot stall
  live streams). More than ``max_pending_requests`` at once: 503 with Retry-After.
- ``WS /v1/stream?sample_rate=16000``: binary frames of 16-bit little-endian mono PCM, then the text frame
  ``{"type": "end"}``; the server sends ``{"type": "partial", "text", "audio_ms"}`` as audio is processed and one
  ``{"type": "final", "text", "words", "audio_ms"}``, then closes (1000). Errors: ``{"type": "error", "message"}``
  and a close code (1003 unsupported data, 1007 invalid payload, 1008 policy: key or limits, 1009 too big,
  1013 try again later: too many streams or shutting down).
- ``GET /healthz``, ``GET /metrics`` (Prometheus text), ``GET /`` (a browser page that streams the microphone).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import numpy as np
import soxr
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.websockets import WebSocketDisconnect, WebSocketState

from deepspeech.audio import SAMPLE_RATE, AudioError, load_audio
from serving.config import ServerConfig
from serving.dispatch import BatchDispatcher, Overloaded, Stream
from serving.metrics import Metrics

log = logging.getLogger(__name__)

MIN_RATE, MAX_RATE = 8_000, 96_000


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
        dispatcher.start()
        yield
        dispatcher.draining = True
        await asyncio.to_thread(dispatcher.wait_idle, cfg.drain_timeout_s)
        dispatcher.stop()

    app = FastAPI(title="deepspeech", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.dispatcher, app.state.metrics = dispatcher, metrics
    pending_requests = 0

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
            body = bytearray()
            async for part in request.stream():
                body += part
                if len(body) > cfg.max_request_bytes:
                    return fail(413, "too_large", f"request larger than {cfg.max_request_bytes} bytes")
            data = bytes(body)
            if request.headers.get("content-type", "").startswith("multipart/form-data"):
                data = await _multipart_file(request, data)
                if data is None:
                    return fail(400, "bad_request", "multipart request without a 'file' field")
            try:
                wav = await asyncio.to_thread(load_audio, data, cfg.max_audio_s)
            except AudioError as e:
                return fail(400, "bad_audio", str(e))
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
        await _serve_stream(ws, dispatcher, cfg, metrics)

    return app


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


class _Closing(Exception):
    def __init__(self, code: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.code, self.message, self.reason = code, message, reason


async def _serve_stream(ws: WebSocket, dispatcher: BatchDispatcher, cfg: ServerConfig, metrics: Metrics) -> None:
    await ws.accept()

    async def close_with(code: int, message: str, reason: str) -> None:
        metrics.rejections.labels(reason).inc()
        metrics.requests.labels("stream", str(code)).inc()
        try:
            await ws.send_text(json.dumps({"type": "error", "message": message}))
            await ws.close(code)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass

    if not _key_ok(cfg, ws.headers, ws.query_params):
        return await close_with(1008, "missing or wrong API key", "auth")
    try:
        rate = int(ws.query_params.get("sample_rate", SAMPLE_RATE))
        if not MIN_RATE <= rate <= MAX_RATE:
            raise ValueError
    except ValueError:
        return await close_with(1008, f"sample_rate must be an integer in [{MIN_RATE}, {MAX_RATE}]", "bad_request")

    loop = asyncio.get_running_loop()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    try:
        s = dispatcher.open(lambda m: loop.call_soon_threadsafe(outbox.put_nowait, m), limit=cfg.max_streams)
    except Overloaded as e:
        return await close_with(1013, str(e), "too_many_streams")
    sender = asyncio.create_task(_send_results(ws, outbox))
    resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32") if rate != SAMPLE_RATE else None
    max_samples = int(cfg.max_audio_s * SAMPLE_RATE)
    try:
        await _receive_audio(ws, dispatcher, s, cfg, resampler, max_samples)
        final = await sender  # the worker emits the final result; the sender stops after it
        metrics.requests.labels("stream", "1000" if final else "1011").inc()
        if ws.application_state == WebSocketState.CONNECTED:
            await ws.close(1000 if final else 1011)
    except _Closing as e:
        dispatcher.abandon(s)
        sender.cancel()
        await close_with(e.code, e.message, e.reason)
    except (WebSocketDisconnect, RuntimeError, OSError):  # the client went away
        metrics.rejections.labels("disconnect").inc()
    finally:
        dispatcher.abandon(s)
        if not sender.done():
            sender.cancel()


async def _receive_audio(ws: WebSocket, dispatcher: BatchDispatcher, s: Stream, cfg: ServerConfig,
                         resampler: soxr.ResampleStream | None, max_samples: int) -> None:
    """Read frames until ``{"type": "end"}``; raise :class:`_Closing` on protocol or limit violations."""
    while True:
        try:
            msg = await asyncio.wait_for(ws.receive(), cfg.idle_timeout_s)
        except TimeoutError:
            raise _Closing(1008, f"no data for {cfg.idle_timeout_s:g} s", "idle") from None
        if msg["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(msg.get("code", 1006))
        data, text = msg.get("bytes"), msg.get("text")
        if data is not None:
            if len(data) > cfg.max_frame_bytes:
                raise _Closing(1009, f"frame larger than {cfg.max_frame_bytes} bytes", "too_large")
            if len(data) % 2:
                raise _Closing(1007, "binary frames must hold whole 16-bit little-endian samples", "bad_frame")
            pcm = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
            audio = resampler.resample_chunk(pcm) if resampler is not None else pcm
            if s.received_samples + audio.size > max_samples:
                raise _Closing(1008, f"stream longer than {cfg.max_audio_s:g} s", "too_long")
            dispatcher.feed(s, audio)
        elif text is not None:
            try:
                obj = json.loads(text)
                kind = obj.get("type") if isinstance(obj, dict) else None
            except json.JSONDecodeError:
                kind = None
            if kind != "end":
                raise _Closing(1003, 'text frames must be {"type": "end"}', "bad_frame")
            if resampler is not None:
                tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
                if tail.size:
                    dispatcher.feed(s, tail)
            dispatcher.end(s)
            return


async def _send_results(ws: WebSocket, outbox: asyncio.Queue[dict[str, Any]]) -> bool:
    """Forward the worker's messages; returns True after the final result, False after an error."""
    while True:
        msg = await outbox.get()
        try:
            await ws.send_text(json.dumps(msg, ensure_ascii=False))
        except (WebSocketDisconnect, RuntimeError, OSError):
            return False
        if msg["type"] in ("final", "error"):
            return msg["type"] == "final"
