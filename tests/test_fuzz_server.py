"""Property tests of the server against garbage: whatever a client sends, the answer is a client error (4xx, or a
WebSocket close code for the client's fault), never a server error (5xx, 1011), and the server stays up.

One real `deepspeech serve` for the module (the shipped streaming model, loopback port); after every example
/healthz must answer 200. Three kinds of clients: WebSocket streams (random sequences of binary frames of random
lengths, odd and empty included, text frames of random JSON or garbage, early closes and aborts), uploads (random
bodies and content types, multipart bodies broken in random ways) and raw HTTP request heads.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import random
import socket

import httpx
import numpy as np
import pytest
import soundfile as sf
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepspeech.frontend.audio import load_audio
from tests.serving_util import REPO, running_server

MODEL = REPO / "models" / "streaming-en"
FUZZ = settings(max_examples=25, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CLIENT_FAULT_CODES = {1000, 1003, 1007, 1008, 1009}  # normal, unsupported data, bad payload, policy, too big


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    log = tmp_path_factory.mktemp("fuzz") / "server.log"
    with running_server(MODEL, "--max-streams", "8", "--idle-timeout-s", "1", "--max-request-mb", "1",
                        "--stream-grace-s", "1", "--header-timeout-s", "2", "--body-timeout-s", "2",
                        log_path=log) as (proc, host):
        yield host
        assert proc.poll() is None, "the server died"
    assert "Traceback" not in log.read_text()


@functools.cache
def speech() -> bytes:
    """A spoken digit as a 16 kHz 16-bit WAV file's bytes (not a fixture: hypothesis would print all of it)."""
    buf = io.BytesIO()
    sf.write(buf, np.round(load_audio(REPO / "data" / "fsdd" / "audio" / "5_yweweler_2.flac") * 32768)
             .astype(np.int16), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def healthy(host: str) -> None:
    r = httpx.get(f"http://{host}/healthz", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ok"


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda v: st.lists(v, max_size=3) | st.dictionaries(st.text(max_size=5), v, max_size=3),
                           max_leaves=6)
text_frames = st.one_of(
    st.text(max_size=40),
    json_values.map(json.dumps),
    st.dictionaries(st.just("type"), st.sampled_from(["end", "END", "start", "", None, 1])).map(json.dumps),
    st.sampled_from(['{"type": "end"', "{}", "[]", "null", '{"type": "end", "x": [1, 2]}']),
)
actions = st.lists(st.one_of(
    st.tuples(st.just("binary"), st.binary(max_size=3000)),
    st.tuples(st.just("noise"), st.integers(0, 40_000)),  # longer frames of random bytes (any length, odd too)
    st.tuples(st.just("text"), text_frames),
    st.tuples(st.just("pause"), st.floats(0, 0.3)),
    st.tuples(st.just("close"), st.sampled_from([1000, 1001, 3000, 4999])),
    st.tuples(st.just("abort"), st.none()),
), max_size=8)


@FUZZ
@given(steps=actions, end=st.booleans(), seed=st.integers(0, 2**16), rate=st.sampled_from(["", "8000", "44100",
                                                                                          "abc", "-5", "16000"]))
def test_websocket_garbage_never_breaks_the_server(server: str, steps: list, end: bool, seed: int, rate: str
                                                   ) -> None:
    rng = random.Random(seed)
    url = f"ws://{server}/v1/stream" + (f"?sample_rate={rate}" if rate else "")

    async def run() -> tuple[int | None, list[dict], bool]:
        msgs: list[dict] = []
        left = False  # the client closed or vanished itself
        async with websockets.connect(url, ping_interval=None, max_size=2**22) as ws:

            async def receive() -> None:
                try:
                    async for m in ws:
                        msgs.append(json.loads(m))
                except websockets.ConnectionClosed:
                    pass

            receiver = asyncio.create_task(receive())
            try:
                for kind, arg in steps:
                    if kind in ("binary", "text"):
                        await ws.send(arg)
                    elif kind == "noise":
                        await ws.send(rng.randbytes(arg))
                    elif kind == "pause":
                        await asyncio.sleep(arg)
                    elif kind == "close":
                        left = True
                        await ws.close(arg)
                        break
                    else:
                        left = True
                        ws.transport.abort()
                        break
                if end and not left:
                    await ws.send(json.dumps({"type": "end"}))
                if not left:
                    await asyncio.wait_for(asyncio.shield(receiver), 20)
            except websockets.ConnectionClosed:
                pass
            receiver.cancel()
        return ws.close_code, msgs, left

    code, msgs, left = asyncio.run(run())
    errors = [m["message"] for m in msgs if m.get("type") == "error"]
    assert not any("internal" in e for e in errors), errors
    if not left:
        assert code in CLIENT_FAULT_CODES, (code, errors)
        if code == 1000:
            assert msgs[-1]["type"] == "final"
    healthy(server)


def _multipart(rng: random.Random, audio: bytes, how: str) -> tuple[bytes, str]:
    boundary = "b" + rng.randbytes(6).hex()
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\n").encode() + audio + f"\r\n--{boundary}--\r\n".encode()
    if how == "truncated":
        part = part[: rng.randrange(len(part))]
    elif how == "wrong_boundary":
        boundary = boundary[::-1]
    elif how == "no_disposition":
        part = part.replace(b"Content-Disposition", b"Content-Dispositio")
    elif how == "flipped":
        b = bytearray(part)
        for _ in range(8):
            b[rng.randrange(len(b))] = rng.randrange(256)
        part = bytes(b)
    ctype = f"multipart/form-data; boundary={boundary}" if how != "no_boundary" else "multipart/form-data"
    return part, ctype


@FUZZ
@given(kind=st.sampled_from(["random", "speech_cut", "speech_flipped", "multipart"]),
       how=st.sampled_from(["ok", "truncated", "wrong_boundary", "no_disposition", "flipped", "no_boundary"]),
       ctype=st.sampled_from([None, "audio/wav", "application/octet-stream", "multipart/form-data",
                              "multipart/form-data; boundary=", "application/x-www-form-urlencoded", "text/plain; x",
                              "\u00e9/\u00e8"]),
       body=st.binary(max_size=2000), seed=st.integers(0, 2**16))
def test_upload_garbage_is_a_client_error(server: str, kind: str, how: str, ctype: str | None,
                                          body: bytes, seed: int) -> None:
    rng = random.Random(seed)
    headers: dict[str, bytes] = {}
    audio = speech()
    if kind == "speech_cut":
        body = audio[: rng.randrange(len(audio))] + body
    elif kind == "speech_flipped":
        b = bytearray(audio)
        for _ in range(rng.randrange(1, 30)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        body = bytes(b)
    elif kind == "multipart":
        body, ctype = _multipart(rng, audio if rng.random() < 0.5 else body, how)
    if ctype is not None:
        headers["Content-Type"] = ctype.encode()
    r = httpx.post(f"http://{server}/v1/transcribe", content=body, headers=headers, timeout=60)
    assert r.status_code < 500, (r.status_code, r.text[:300])
    assert r.status_code == 200 or "error" in r.json(), r.text[:300]
    healthy(server)


@FUZZ
@given(method=st.sampled_from([b"GET", b"POST", b"PUT", b"BREW", b"", b"G\x00T"]),
       path=st.sampled_from([b"/healthz", b"/v1/transcribe", b"/v1/stream", b"*", b"/%zz", b"/" + b"a" * 5000]),
       version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"", b"HTTP/1.1\x00"]),
       lines=st.lists(st.binary(max_size=60), max_size=6), finish=st.booleans())
def test_raw_request_heads_get_client_errors(server: str, method: bytes, path: bytes, version: bytes,
                                             lines: list[bytes], finish: bool) -> None:
    head = b" ".join(x for x in (method, path, version) if x) + b"\r\n" + b"".join(x + b"\r\n" for x in lines)
    ip, port = server.split(":")
    with socket.create_connection((ip, int(port)), timeout=10 if finish else 0.2) as s:
        s.sendall(head + (b"\r\n" if finish else b""))  # unfinished: no answer is due before the head timeout
        try:
            answer = s.recv(200)
        except (ConnectionResetError, TimeoutError):
            answer = b""
    if answer:
        status = answer.split(b" ", 2)[1] if answer.count(b" ") >= 2 else b""
        assert answer.startswith(b"HTTP/1.1 ") and not status.startswith(b"5"), answer
    healthy(server)


def test_fuzzed_server_still_transcribes(server: str) -> None:
    r = httpx.post(f"http://{server}/v1/transcribe", content=speech(), timeout=60)
    assert r.status_code == 200 and r.json()["text"]
