"""``WS /v1/stream``: one WebSocket connection as one stream of the :class:`serving.dispatch.BatchDispatcher`.

Protocol (see :mod:`serving.app`): optionally a first text frame ``{"type": "start", ...}`` (:mod:`serving.options`:
sample rate, endpointing, alternatives, partial interval, hotwords), binary frames of 16-bit little-endian mono PCM
at ``?sample_rate=`` (default 16000; the start message's wins), then the text frame ``{"type": "end"}``; partial
results as audio is processed, one final result (with endpointing: one per segment, the last one marked
``"last": true``), close 1000.
The PCM goes to the dispatcher at the client's rate: the engine's front end resamples it
(:mod:`deepspeech.frontend.front_end`).

A stream holds one of ``max_streams`` slots, so it must keep moving: a message at least every ``idle_timeout_s``;
from ``stream_grace_s`` after it opened, audio at ``min_audio_rate`` x real time or better (empty or tiny frames do
not count as audio); and no more than ``max_stream_s`` of wall clock in all. A stream that falls short is closed
with 1008 and a message saying which limit it broke. A client that goes away is logged as one info line; a failure
of the server's own is one error line and close code 1011.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any

import numpy as np
from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from deepspeech.decoding.beam import DecoderError
from serving.config import ServerConfig
from serving.dispatch import BatchDispatcher, Overloaded, Stream
from serving.metrics import Metrics
from serving.options import MAX_RATE, MIN_RATE, from_query, from_start

__all__ = ["MAX_RATE", "MIN_RATE", "serve_stream"]

log = logging.getLogger(__name__)


class _Closing(Exception):
    def __init__(self, code: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.code, self.message, self.reason = code, message, reason


def _gone(ws: WebSocket, e: BaseException) -> bool:
    """Whether ``e`` means the client went away (rather than a failure of the server's own)."""
    if isinstance(e, WebSocketDisconnect | OSError):  # uvicorn's ClientDisconnected is an OSError
        return True
    return WebSocketState.DISCONNECTED in (ws.client_state, ws.application_state)


async def serve_stream(ws: WebSocket, dispatcher: BatchDispatcher, cfg: ServerConfig, metrics: Metrics,
                       key_ok: bool) -> None:
    await ws.accept()

    async def close_with(code: int, message: str, reason: str) -> None:
        metrics.rejections.labels(reason).inc()
        metrics.requests.labels("stream", str(code)).inc()
        try:
            await ws.send_text(json.dumps({"type": "error", "message": message}))
            await ws.close(code)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass

    if not key_ok:
        return await close_with(1008, "missing or wrong API key", "auth")
    try:
        options = from_query(ws.query_params)
    except ValueError as e:
        return await close_with(1008, str(e), "bad_request")
    # The first frame: a start message configures the stream; anything else is the stream's first frame.
    try:
        first = await asyncio.wait_for(ws.receive(), cfg.idle_timeout_s)
    except TimeoutError:
        return await close_with(1008, f"no data for {cfg.idle_timeout_s:g} s", "idle")
    except Exception as e:
        if _gone(ws, e):
            metrics.rejections.labels("disconnect").inc()
            return
        raise
    if first["type"] == "websocket.disconnect":
        metrics.rejections.labels("disconnect").inc()
        return
    start = _start_message(first.get("text"))
    if start is not None:
        first = None
        try:
            options = from_start(start, options)
        except ValueError as e:
            return await close_with(1008, f"bad start message: {' '.join(str(e).split())}", "bad_request")
    try:
        decoder = await asyncio.to_thread(dispatcher.decoder_for, options)
    except (ValueError, DecoderError) as e:  # settings this model's decoder cannot honour: the client is told why
        return await close_with(1008, f"alternatives/hotwords unavailable: {' '.join(str(e).split())[:300]}",
                                "bad_request")
    except Exception as e:  # a decoder that fails to build is the server's failure, not the client's
        log.error("decoder for %d hotwords failed: %s: %s", len(options.hotwords), type(e).__name__, e)
        return await close_with(1011, f"internal error: {type(e).__name__}", "internal")

    loop = asyncio.get_running_loop()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    try:
        s = dispatcher.open(lambda m: loop.call_soon_threadsafe(outbox.put_nowait, m), limit=cfg.max_streams,
                            options=options, decoder=decoder)
    except Overloaded as e:
        return await close_with(1013, str(e), "too_many_streams")
    sender = asyncio.create_task(_send_results(ws, outbox))
    try:
        await _receive_audio(ws, dispatcher, s, cfg, options.sample_rate, first)
        final = await sender  # the worker emits the final result; the sender stops after it
        metrics.requests.labels("stream", "1000" if final else "1011").inc()
        if ws.application_state == WebSocketState.CONNECTED:
            await ws.close(1000 if final else 1011)
    except _Closing as e:
        dispatcher.abandon(s)
        sender.cancel()
        log.info("stream %d closed (%d): %s", s.id, e.code, e.message)
        await close_with(e.code, e.message, e.reason)
    except Exception as e:
        dispatcher.abandon(s)
        sender.cancel()
        if _gone(ws, e):
            metrics.rejections.labels("disconnect").inc()
            log.info("stream %d: the client went away (%s)", s.id, type(e).__name__)
        else:
            log.error("stream %d failed: %s: %s", s.id, type(e).__name__, e)
            log.debug("stream %d failure", s.id, exc_info=True)
            await close_with(1011, f"internal error: {type(e).__name__}", "internal")
    finally:
        dispatcher.abandon(s)
        if not sender.done():
            sender.cancel()


def _start_message(text: str | None) -> Any:
    """The parsed text frame when it is a start message (a JSON object with "type": "start"), else None."""
    if text is None:
        return None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError; an integer of > 4300 digits
        return None
    return obj if isinstance(obj, dict) and obj.get("type") == "start" else None


async def _receive_audio(ws: WebSocket, dispatcher: BatchDispatcher, s: Stream, cfg: ServerConfig,
                         rate: int, first: dict[str, Any] | None = None) -> None:
    """Read frames (``first``, already received, before the others) until ``{"type": "end"}``; raise
    :class:`_Closing` on protocol or limit violations."""
    max_samples = int(cfg.max_audio_s * rate)
    opened = time.monotonic()
    received_s = 0.0  # audio received, in seconds at the client's rate
    while True:
        now = time.monotonic()
        # The stream falls behind min_audio_rate at opened + grace + received_s / rate (never, for rate 0).
        slow_at = opened + cfg.stream_grace_s + received_s / cfg.min_audio_rate if cfg.min_audio_rate else math.inf
        limits = [(cfg.idle_timeout_s, 1008, f"no data for {cfg.idle_timeout_s:g} s", "idle"),
                  (slow_at - now, 1008, f"audio arrives slower than {cfg.min_audio_rate:g}x real time", "slow"),
                  (opened + cfg.max_stream_s - now, 1008, f"stream open longer than {cfg.max_stream_s:g} s",
                   "max_duration")]
        wait, *broken = min(limits, key=lambda x: x[0])
        if wait <= 0:
            raise _Closing(*broken)
        if first is not None:
            msg, first = first, None
        else:
            try:
                msg = await asyncio.wait_for(ws.receive(), wait)
            except TimeoutError:
                raise _Closing(*broken) from None
        if msg["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(msg.get("code", 1006))
        data, text = msg.get("bytes"), msg.get("text")
        if data is not None:
            if len(data) > cfg.max_frame_bytes:
                raise _Closing(1009, f"frame larger than {cfg.max_frame_bytes} bytes", "too_large")
            if len(data) % 2:
                raise _Closing(1007, "binary frames must hold whole 16-bit little-endian samples", "bad_frame")
            pcm = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
            received_s += pcm.size / rate
            if s.received_samples + pcm.size > max_samples:
                raise _Closing(1008, f"stream longer than {cfg.max_audio_s:g} s", "too_long")
            dispatcher.feed(s, pcm)
        elif text is not None:
            try:
                obj = json.loads(text)
                kind = obj.get("type") if isinstance(obj, dict) else None
            except (ValueError, RecursionError):  # JSONDecodeError; an integer of > 4300 digits
                kind = None
            if kind == "start":
                raise _Closing(1003, 'a {"type": "start"} message must be the first frame', "bad_frame")
            if kind != "end":
                raise _Closing(1003, 'text frames must be {"type": "end"} (or a first {"type": "start"})',
                               "bad_frame")
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
        if msg["type"] == "error":
            return False
        if msg["type"] == "final" and msg.get("last", True):  # a segment's final (last: false) is not the end
            return True
