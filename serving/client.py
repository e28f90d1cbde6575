"""A streaming client: send an audio file over ``/v1/stream`` at real-time pace (or faster), collect the results.

Example::

    import asyncio
    from serving.client import stream_file
    result = asyncio.run(stream_file("speech.wav", "ws://127.0.0.1:8000/v1/stream"))
    print(result.final["text"])
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soxr
import websockets

from deepspeech.frontend.audio import SAMPLE_RATE, load_audio


@dataclass
class StreamResult:
    final: dict[str, Any] | None = None  # the last final (with endpointing: the last segment's)
    finals: list[dict[str, Any]] = field(default_factory=list)  # every final, in order (one per segment)
    error: str | None = None
    close_code: int | None = None
    partials: list[dict[str, Any]] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)  # per partial: send of the audio it covers -> receipt


def to_pcm16(audio: np.ndarray) -> bytes:
    """float32 in [-1, 1] -> 16-bit little-endian PCM, scaled by 32768 as libsndfile reads 16-bit files (so a
    16-bit file's samples round-trip exactly)."""
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype("<i2").tobytes()


async def stream_pcm(pcm: bytes, url: str, chunk_ms: float = 100.0, realtime: float = 1.0,
                     api_key: str | None = None, on_message: Callable[[dict[str, Any]], None] | None = None,
                     open_timeout: float = 10.0, start: dict[str, Any] | None = None,
                     sample_rate: int = SAMPLE_RATE) -> StreamResult:
    """Send 16-bit mono ``pcm`` of ``sample_rate`` Hz in ``chunk_ms`` frames, ``realtime`` times real time (0 = as
    fast as possible), then ``{"type": "end"}``; return the final result(s), partials and per-partial latencies.
    ``start``: the fields of a first ``{"type": "start"}`` message (endpointing, alternatives, hotwords, ...); a
    ``sample_rate`` other than 16 kHz needs it (it declares the rate), and without it nothing is sent before the
    audio (the protocol as it was before the start message)."""
    if sample_rate != SAMPLE_RATE and (start is None or start.get("sample_rate") != sample_rate):
        raise ValueError(f"PCM at {sample_rate} Hz needs a start message declaring sample_rate={sample_rate}")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    step = max(2, int(sample_rate * chunk_ms / 1000) * 2)
    sent_at: dict[float, float] = {}  # audio_ms at the end of a frame (0.1 ms) -> send time
    result = StreamResult()
    async with websockets.connect(url, additional_headers=headers, max_size=2**24, open_timeout=open_timeout,
                                  ping_interval=None) as ws:

        async def receive() -> None:
            try:
                async for raw in ws:
                    handle(json.loads(raw))
            except websockets.ConnectionClosed:  # closed with an error code: the error frame came first
                pass

        def handle(msg: dict[str, Any]) -> None:
            if on_message:
                on_message(msg)
            if msg["type"] == "partial":
                result.partials.append(msg)
                sent = sent_at.get(round(msg["audio_ms"], 1))  # the frame that completed this partial's audio
                if sent is not None:
                    result.latencies_s.append(time.perf_counter() - sent)
            elif msg["type"] == "final":
                result.final = msg
                result.finals.append(msg)
            elif msg["type"] == "error":
                result.error = msg["message"]

        if start is not None:
            await ws.send(json.dumps({**start, "type": "start"}))
        receiver = asyncio.create_task(receive())
        began = time.perf_counter()
        try:
            for k, off in enumerate(range(0, len(pcm), step)):
                if realtime > 0:
                    due = began + k * chunk_ms / 1000 / realtime
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                frame = pcm[off: off + step]
                sent_at[round((off + len(frame)) / 2 * 1000 / sample_rate, 1)] = time.perf_counter()
                await ws.send(frame)
            await ws.send(json.dumps({"type": "end"}))
        except websockets.ConnectionClosed:
            pass
        await receiver
        result.close_code = ws.close_code
    return result


async def stream_file(path: str | Path, url: str, sample_rate: int = SAMPLE_RATE, **kwargs: Any) -> StreamResult:
    """:func:`stream_pcm` of any audio file, decoded and resampled to ``sample_rate`` Hz first (16 kHz: the
    server's own rate; another rate must be declared in ``start``, and the server resamples it back)."""
    audio = load_audio(path)
    if sample_rate != SAMPLE_RATE:
        audio = soxr.resample(audio, SAMPLE_RATE, sample_rate).astype(np.float32)
    return await stream_pcm(to_pcm16(audio), url, sample_rate=sample_rate, **kwargs)
