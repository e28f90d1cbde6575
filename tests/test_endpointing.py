"""Endpointing and the start message, for real: a minute of FSDD digits with known pauses through `deepspeech serve`.

The recording: 22 FSDD utterances (six speakers), separated by 1.5, 2, 2.5 or 3 s of faint noise (-70 dBFS), written as
16-bit PCM so that the streamed samples and the file's are the same. Each segment's final must equal `deepspeech
transcribe` of that segment's audio as a file of its own (the engine finishes a segment as a stream and starts the
next from the initial state: see deepspeech.inference.streaming), and the midpoint between one final's end and the
next one's start must lie within 300 ms of the pause's centre (the issue's tolerance).
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import websockets

from deepspeech.checkpoint import load_model_dir
from deepspeech.frontend.audio import load_audio
from deepspeech.frontend.silence import DEFAULT_GATE
from deepspeech.inference.streaming import EndpointConfig, StreamingModel
from deepspeech.inference.transcribe import transcribe_files
from serving.client import stream_file
from serving.dispatch import MAX_DECODERS, DecoderCache
from serving.options import StreamOptions, from_start
from tests.serving_util import REPO, running_server

log = logging.getLogger(__name__)

MODEL = REPO / "models" / "streaming-en"
FSDD = REPO / "data" / "fsdd" / "audio"
SPEAKERS = ("theo", "george", "jackson", "nicolas", "lucas", "yweweler")
PAUSES_S = (1.5, 2.0, 2.5, 3.0)
RATE = 16_000
BOUNDARY_TOLERANCE_S = 0.3  # the tolerance for a segment boundary vs the pause's centre


def _recording(n: int = 22) -> tuple[np.ndarray, list[float], list[str]]:
    """(16 kHz audio quantised to 16 bits, the pauses' centres in seconds, the utterances' digits)."""
    rng = np.random.default_rng(0)
    parts, centres, truth, at = [], [], [], 0
    for k in range(n):
        digit = int(rng.integers(0, 10))
        if k:
            pause = np.zeros(int(PAUSES_S[k % len(PAUSES_S)] * RATE), np.float32)
            centres.append((at + pause.size / 2) / RATE)
            parts.append(pause)
            at += pause.size
        wav = load_audio(FSDD / f"{digit}_{SPEAKERS[k % len(SPEAKERS)]}_{k % 50}.flac")
        parts.append(wav)
        at += wav.size
        truth.append(str(digit))
    audio = np.concatenate(parts) + rng.normal(0, 10 ** (-70 / 20), at).astype(np.float32)
    return np.clip(np.round(audio * 32768), -32768, 32767) / 32768.0, centres, truth


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, list[float]]:
    audio, centres, _ = _recording()
    path = tmp_path_factory.mktemp("ep") / "digits.wav"
    sf.write(str(path), np.round(audio * 32768).astype(np.int16), RATE, subtype="PCM_16")
    return path, sf.read(str(path), dtype="float32")[0], centres


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    log_path = tmp_path_factory.mktemp("log") / "server.log"
    with running_server(MODEL, "--idle-timeout-s", "5", log_path=log_path) as (proc, host):
        yield host
        assert proc.poll() is None, "the server died"


def test_segments_are_chunking_independent_and_equal_their_audio_alone() -> None:
    """The engine: cuts do not depend on how the audio is chunked, and each segment's output is that of the audio
    it was fed ([start_s, end_s): pre-roll, speech, tail) streamed alone (its state starts fresh)."""
    audio, _, _ = _recording(4)
    engine = StreamingModel(load_model_dir(MODEL))
    runs = []
    for chunk in (RATE // 10, 593, RATE * 2):
        s = engine.new_session(RATE, DEFAULT_GATE, EndpointConfig())
        pieces = [audio[a: a + chunk] for a in range(0, audio.size, chunk)]
        for i, p in enumerate(pieces):
            engine.step([s], [p], [i == len(pieces) - 1])
        runs.append([(g.start_s, g.end_s, g.speech_start_s, g.speech_end_s) for g in s.segments])
        for g in s.segments:
            alone = engine.transcribe(audio[round(g.start_s * RATE): round(g.end_s * RATE)])[1]
            assert g.log_probs.shape == alone.shape
            # float rounding only: the batched step and one whole block differ in summation order
            assert np.allclose(g.log_probs, alone, atol=1e-4)
    assert len(runs[0]) == 4 and runs[0] == runs[1] == runs[2]  # the last segment closed by the end of the stream


def test_one_final_per_sentence_over_the_real_server(server: str, recording: tuple[Path, np.ndarray, list[float]],
                                                     tmp_path: Path) -> None:
    path, audio, centres = recording
    url = f"ws://{server}/v1/stream"
    start = {"endpointing": True, "partial_interval_ms": 500}
    result = asyncio.run(stream_file(path, url, chunk_ms=100, realtime=4.0, start=start))
    assert result.error is None and result.close_code == 1000
    finals = result.finals
    assert [f["segment"] for f in finals] == list(range(len(centres) + 1))  # one final per sentence
    assert [f["last"] for f in finals] == [False] * len(centres) + [True]
    boundaries = [(a["end"] + b["start"]) / 2 for a, b in zip(finals, finals[1:], strict=False)]
    errors = [b - c for b, c in zip(boundaries, centres, strict=True)]
    log.info("boundary - pause centre (s): %s", [round(e, 3) for e in errors])
    assert max(abs(e) for e in errors) <= BOUNDARY_TOLERANCE_S
    assert all(p.get("segment") is not None for p in result.partials)
    gaps = np.diff([p["audio_ms"] for p in result.partials])
    assert len(gaps) > 10 and gaps.min() >= 500  # partial_interval_ms
    # Each final equals `transcribe` of its segment's audio as a file: the segment spans from the engine offline.
    engine = StreamingModel(load_model_dir(MODEL))
    s = engine.new_session(RATE, DEFAULT_GATE, EndpointConfig())
    engine.step([s], [audio], [True])
    spans = [(g.start_s, g.end_s) for g in s.segments]  # the last one closed by the end of the stream
    assert len(spans) == len(finals)
    files = []
    for k, (a, b) in enumerate(spans):
        files.append(tmp_path / f"seg{k:02d}.wav")
        sf.write(str(files[-1]), np.round(audio[round(a * RATE): round(b * RATE)] * 32768).astype(np.int16), RATE,
                 subtype="PCM_16")
    offline = [t.text for t in transcribe_files(load_model_dir(MODEL), files, progress=False)]
    assert [f["text"] for f in finals] == offline


def test_alternatives_in_finals(server: str, recording: tuple[Path, np.ndarray, list[float]], tmp_path: Path) -> None:
    _, audio, centres = recording
    short = tmp_path / "short.wav"
    sf.write(str(short), np.round(audio[: int((centres[2] + 0.5) * RATE)] * 32768).astype(np.int16), RATE,
             subtype="PCM_16")
    result = asyncio.run(stream_file(short, f"ws://{server}/v1/stream", chunk_ms=100, realtime=0,
                                     start={"endpointing": {"silence_after_speech_s": 1.0}, "alternatives": 3}))
    spoken = [f for f in result.finals if f["text"]]
    assert result.error is None and len(spoken) == 3 and result.finals[-1]["last"]  # the end closes the last one
    for f in spoken:
        alts = f["alternatives"]
        assert 1 <= len(alts) <= 3 and alts[0]["text"] == f["text"]
        assert sum(a["confidence"] for a in alts) == pytest.approx(1.0, abs=1e-3)
        assert [a["confidence"] for a in alts] == sorted((a["confidence"] for a in alts), reverse=True)


async def _exchange(url: str, frames: list[str | bytes]) -> tuple[list[dict], int | None]:
    async with websockets.connect(url, open_timeout=10) as ws:
        for f in frames:
            await ws.send(f)
        msgs = []
        try:
            async for raw in ws:
                msgs.append(json.loads(raw))
        except websockets.ConnectionClosed:
            pass
        return msgs, ws.close_code


@pytest.mark.parametrize(("start", "needle"), [
    ({"alternatives": 11}, "alternatives must be"),
    ({"alternatives": "3"}, "alternatives must be an integer"),
    ({"hotwords": ["x"] * 101}, "hotwords: at most"),
    ({"hotwords": ["a" * 65]}, "hotwords: at most"),
    ({"hotwords": "seven"}, "hotwords must be a list"),
    ({"hotword_weight": 1e9}, "hotword_weight must be"),
    ({"partial_interval_ms": -1}, "partial_interval_ms must be"),
    ({"sample_rate": 4000}, "sample_rate must be"),
    ({"endpointing": {"silence_after_speech_s": 0}}, "silence_after_speech_s must be"),
    ({"endpointing": {"max_segment_s": 1e6}}, "max_segment_s must be"),
    ({"endpointing": {"rule9": 1}}, "unknown endpointing field"),
    ({"endpointing": "yes"}, "endpointing must be"),
    ({"colour": "red"}, "unknown start field"),
    ({"alternatives": 10**400}, "alternatives is out of bounds"),
    ({"endpointing": {"max_segment_s": 10**400}}, "max_segment_s is out of bounds"),
    ({"sample_rate": float("nan")}, "sample_rate must be an integer"),
])
def test_bad_start_messages_get_one_clear_error(server: str, start: dict, needle: str) -> None:
    msgs, code = asyncio.run(_exchange(f"ws://{server}/v1/stream", [json.dumps({"type": "start", **start})]))
    assert code == 1008 and len(msgs) == 1 and msgs[0]["type"] == "error"
    assert needle in msgs[0]["message"] and "Traceback" not in msgs[0]["message"]
    assert httpx.get(f"http://{server}/healthz", timeout=5).json()["status"] == "ok"


def test_unparsable_first_text_frames_are_refused(server: str) -> None:
    """A first text frame that is no start message is read as the old protocol's text frame: 1003, one message."""
    for text in ['{"type": "start", "alternatives": ' + "9" * 5000 + "}", "[" * 100_000, "not json"]:
        msgs, code = asyncio.run(_exchange(f"ws://{server}/v1/stream", [text]))
        assert code == 1003 and len(msgs) == 1 and msgs[0]["type"] == "error"
    assert httpx.get(f"http://{server}/healthz", timeout=5).json()["status"] == "ok"


def test_start_after_audio_is_refused(server: str) -> None:
    msgs, code = asyncio.run(_exchange(f"ws://{server}/v1/stream", [b"\x00\x00" * 160, json.dumps({"type": "start"})]))
    assert code == 1003 and msgs[-1]["type"] == "error" and "first frame" in msgs[-1]["message"]


def test_hotwords_reach_the_decoder_or_are_refused_clearly(server: str,
                                                           recording: tuple[Path, np.ndarray, list[float]]) -> None:
    """Hotwords build a beam decoder for their set; a model whose decoder cannot boost them (the flashlight backend
    without an LM weight) refuses with the decoder's reason, and the server keeps serving."""
    _, audio, _ = recording
    pcm = (np.round(audio[: RATE * 2] * 32768).astype("<i2")).tobytes()
    start = json.dumps({"type": "start", "hotwords": ["seven", "nine"], "hotword_weight": 5.0})
    msgs, code = asyncio.run(_exchange(f"ws://{server}/v1/stream", [start, pcm, json.dumps({"type": "end"})]))
    if code == 1000:
        assert msgs[-1]["type"] == "final"
    else:
        assert code == 1008 and msgs[-1]["message"].startswith("alternatives/hotwords unavailable:")
    assert httpx.get(f"http://{server}/healthz", timeout=5).json()["status"] == "ok"


def test_one_decoder_per_hotword_set_within_a_bound() -> None:
    built: list[tuple[str, ...]] = []

    def factory(hotwords: tuple[str, ...], weight: float | None, nbest: int) -> object:
        built.append(hotwords)
        return object()

    d = DecoderCache(None, factory)  # type: ignore[arg-type]
    base = StreamOptions()
    a = from_start({"type": "start", "hotwords": ["nine", "seven"]}, base)
    b = from_start({"type": "start", "hotwords": ["seven", " nine "]}, base)
    assert a.hotwords == b.hotwords and d.get(a) is d.get(b) and len(built) == 1
    assert d.get(base) is None  # no hotwords, one alternative: the server's decoder
    for k in range(MAX_DECODERS + 3):
        d.get(StreamOptions(hotwords=(f"w{k}",)))
    assert len(d) == MAX_DECODERS
