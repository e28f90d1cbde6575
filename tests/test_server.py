"""The streaming server, for real: a `deepspeech serve` process on a loopback port, WebSocket and HTTP clients.

The model is the shipped streaming model: trained outputs are peaked, so equality of transcripts with offline
transcription cannot hinge on a near-tie that float rounding (batched vs whole-file, ~1e-7) could flip, as it can
with the flat outputs of random weights.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from pathlib import Path

import httpx
import pytest
import websockets

from deepspeech.checkpoint import load_model_dir
from deepspeech.inference.transcribe import transcribe_files
from serving.client import StreamResult, stream_file, stream_pcm
from tests.serving_util import REPO, pcm16_wav, running_server

FSDD = REPO / "data" / "fsdd" / "audio"
FILES = ["0_theo_0.flac", "3_theo_1.flac", "5_yweweler_2.flac", "7_yweweler_3.flac", "9_theo_4.flac"]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return REPO / "models" / "streaming-en"


@pytest.fixture(scope="module")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("wavs")
    return [pcm16_wav(FSDD / f, d / f.replace(".flac", ".wav"), pad_s=0.3) for f in FILES]


@pytest.fixture(scope="module")
def offline(model_dir: Path, wavs: list[Path]) -> dict[str, dict]:
    """`deepspeech transcribe` of the same files with the same model (greedy), by file name."""
    am = load_model_dir(model_dir)
    return {Path(t.path).name: t.to_json() for t in transcribe_files(am, wavs, progress=False)}


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    log = tmp_path_factory.mktemp("log") / "server.log"
    with running_server(model_dir, "--max-streams", "6", "--idle-timeout-s", "2", "--max-request-mb", "1",
                        "--max-pending-requests", "2", log_path=log) as (proc, host):
        yield host
        assert proc.poll() is None, "the server died"


def metric(host: str, name: str) -> float:
    text = httpx.get(f"http://{host}/metrics").text
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def words_equal(a: list[dict], b: list[dict]) -> bool:
    return [(w["word"], w["start"], w["end"]) for w in a] == [(w["word"], w["start"], w["end"]) for w in b]


def test_stream_final_equals_offline_transcription(server: str, wavs: list[Path], offline: dict) -> None:
    async def run() -> list[StreamResult]:
        return await asyncio.gather(*(stream_file(w, f"ws://{server}/v1/stream", chunk_ms=60, realtime=4.0)
                                      for w in wavs))

    for w, r in zip(wavs, asyncio.run(run()), strict=True):
        ref = offline[w.name]
        assert r.error is None and r.close_code == 1000
        assert r.final is not None and r.final["text"] == ref["text"]
        assert words_equal(r.final["words"], ref["words"])
        assert len(r.partials) >= 3 and len(r.latencies_s) == len(r.partials)  # every partial maps to its audio
        assert r.partials[-1]["audio_ms"] == pytest.approx(r.final["audio_ms"])
    assert metric(server, "deepspeech_batch_size_sum") > metric(server, "deepspeech_batch_size_count")  # batched
    assert metric(server, "deepspeech_active_streams") == 0


def test_rest_upload_raw_and_multipart(server: str, wavs: list[Path], offline: dict) -> None:
    w = wavs[1]
    raw = httpx.post(f"http://{server}/v1/transcribe", content=w.read_bytes(), timeout=60)
    multi = httpx.post(f"http://{server}/v1/transcribe", files={"file": (w.name, w.read_bytes())}, timeout=60)
    for r in (raw, multi):
        assert r.status_code == 200, r.text
        assert r.json()["text"] == offline[w.name]["text"]
        assert words_equal(r.json()["words"], offline[w.name]["words"])
    flac = httpx.post(f"http://{server}/v1/transcribe", content=(FSDD / FILES[1]).read_bytes(), timeout=60)
    assert flac.status_code == 200 and flac.json()["duration_s"] == pytest.approx(0.3, abs=0.3)  # 8 kHz flac


def test_8khz_stream_is_resampled(server: str) -> None:
    import numpy as np
    import soundfile as sf

    pcm, sr = sf.read(str(FSDD / FILES[0]), dtype="int16")
    assert sr == 8000
    r = asyncio.run(stream_pcm(np.asarray(pcm).astype("<i2").tobytes(), f"ws://{server}/v1/stream?sample_rate=8000",
                               realtime=0))
    assert r.final is not None and r.close_code == 1000
    assert r.final["audio_ms"] == pytest.approx(1000 * len(pcm) / 8000, abs=2)


@pytest.mark.parametrize("rate", [22_050, 44_100, 48_000])
def test_stream_at_its_own_rate_equals_offline_transcription(server: str, rate: int, tmp_path: Path) -> None:
    """The server hands a stream's PCM to the engine's front end at the client's rate; the file of the same PCM,
    transcribed offline, goes through the same resampler: the same text and words (tests/test_one_path.py checks
    the engine alone at 8-48 kHz, log-probabilities included)."""
    import numpy as np
    import soundfile as sf
    import soxr

    wav, sr = sf.read(str(FSDD / FILES[2]), dtype="float32")
    pad = np.zeros(int(0.3 * rate), np.float32)
    pcm = np.clip(np.round(np.concatenate([pad, soxr.resample(wav, sr, rate, quality="HQ"), pad]) * 32768),
                  -32768, 32767).astype("<i2")
    path = tmp_path / f"{rate}.wav"
    sf.write(str(path), pcm, rate, subtype="PCM_16")
    (ref,) = transcribe_files(load_model_dir(REPO / "models" / "streaming-en"), [path], progress=False)
    r = asyncio.run(stream_pcm(pcm.tobytes(), f"ws://{server}/v1/stream?sample_rate={rate}", realtime=0))
    assert r.final is not None and r.close_code == 1000
    assert ref.text and r.final["text"] == ref.text
    assert words_equal(r.final["words"], ref.to_json()["words"])
    assert r.final["audio_ms"] == pytest.approx(1000 * pcm.size / rate, abs=0.01)


def test_abuse_leaves_server_and_other_streams_intact(server: str, wavs: list[Path], offline: dict) -> None:
    url = f"ws://{server}/v1/stream"

    async def raw(frames: list[bytes | str], pause_s: float = 0.0, abort: bool = False) -> tuple[int | None, list]:
        msgs: list = []
        try:
            async with websockets.connect(url, ping_interval=None) as ws:
                for f in frames:
                    await ws.send(f)
                await asyncio.sleep(pause_s)
                if abort:
                    ws.transport.abort()  # vanish without a close handshake
                    return None, msgs
                async for m in ws:
                    msgs.append(json.loads(m))
            return ws.close_code, msgs
        except websockets.ConnectionClosed as e:
            return e.rcvd.code if e.rcvd else None, msgs

    async def flood() -> list[int | None]:
        """Twice the stream limit at once: each holds its stream open for a second, then ends it."""
        async def one() -> int | None:
            try:
                async with websockets.connect(url, ping_interval=None) as ws:
                    await ws.send(b"\x00\x00" * 1600)
                    await asyncio.sleep(1.0)
                    await ws.send(json.dumps({"type": "end"}))
                    async for _ in ws:
                        pass
                return ws.close_code
            except websockets.ConnectionClosed as e:
                return e.rcvd.code if e.rcvd else None
        return await asyncio.gather(*(one() for _ in range(12)))

    async def run():  # type: ignore[no-untyped-def]
        good = asyncio.create_task(stream_file(wavs[2], url, chunk_ms=100, realtime=1.0))
        await asyncio.sleep(0.2)
        results = await asyncio.gather(
            raw([b"\x00\x01" * 800, "hello"]),  # a text frame that is not JSON
            raw([b"\x00\x01" * 800, json.dumps({"type": "nonsense"})]),  # JSON of the wrong kind
            raw([b"\x01\x02\x03"]),  # not whole 16-bit samples
            raw([b"\x00\x01" * 800], pause_s=0.3, abort=True),  # abrupt disconnect
            raw([b"\x00\x01" * 800], pause_s=0.0),  # slow sender: never sends again -> idle timeout (2 s)
        )
        floods = await flood()
        return await good, results, floods

    good, results, floods = asyncio.run(run())
    (c1, m1), (c2, _), (c3, m3), (_, _), (c5, m5) = results
    assert c1 == 1003 and m1[-1]["type"] == "error"
    assert c2 == 1003
    assert c3 == 1007 and "16-bit" in m3[-1]["message"]
    assert c5 == 1008 and "no data" in m5[-1]["message"]
    assert floods.count(1013) >= 6 and floods.count(1000) >= 1  # the limit (6, minus open ones) held
    assert good.final is not None and good.final["text"] == offline[wavs[2].name]["text"]
    for _ in range(50):  # the abandoned streams are gone
        if metric(server, "deepspeech_active_streams") == 0:
            break
        time.sleep(0.1)
    assert metric(server, "deepspeech_active_streams") == 0
    big = httpx.post(f"http://{server}/v1/transcribe", content=b"\x00" * (2 * 1024 * 1024), timeout=30)
    assert big.status_code == 413 and "larger" in big.json()["error"]
    junk = httpx.post(f"http://{server}/v1/transcribe", content=b"not audio at all", timeout=30)
    assert junk.status_code == 400 and "cannot read audio" in junk.json()["error"]
    empty = httpx.post(f"http://{server}/v1/transcribe", files={"other": ("x", b"1")}, timeout=30)
    assert empty.status_code == 400
    assert httpx.get(f"http://{server}/healthz").json()["status"] == "ok"
    assert metric(server, 'deepspeech_rejections_total{reason="too_many_streams"}') >= 6


def test_upload_queue_is_bounded(server: str, tmp_path: Path, wavs: list[Path]) -> None:
    import numpy as np

    from deepspeech.frontend.audio import load_audio, save_audio

    long = tmp_path / "long.wav"
    save_audio(long, np.tile(load_audio(wavs[0]), 25))  # ~25 s, 0.8 MB: each upload takes a while

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as c:
            return await asyncio.gather(*(c.post(f"http://{server}/v1/transcribe", content=long.read_bytes())
                                          for _ in range(5)))

    codes = [r.status_code for r in asyncio.run(run())]
    assert codes.count(200) >= 2 and 503 in codes, codes  # max 2 pending: the rest are refused, not queued
    assert all(c in (200, 503) for c in codes)


def test_api_key_and_graceful_shutdown(model_dir: Path, wavs: list[Path], offline: dict, tmp_path: Path) -> None:
    with running_server(model_dir, "--api-key", "s3cret", log_path=tmp_path / "log") as (proc, host):
        assert httpx.post(f"http://{host}/v1/transcribe", content=wavs[0].read_bytes()).status_code == 401
        ok = httpx.post(f"http://{host}/v1/transcribe", content=wavs[0].read_bytes(),
                        headers={"Authorization": "Bearer s3cret"}, timeout=60)
        assert ok.status_code == 200 and ok.json()["text"] == offline[wavs[0].name]["text"]
        denied = asyncio.run(stream_file(wavs[0], f"ws://{host}/v1/stream", realtime=0))
        assert denied.close_code == 1008 and denied.final is None

        async def run() -> tuple[StreamResult, StreamResult]:
            # A stream in flight when SIGTERM arrives still gets its final result; a new one is refused.
            first = asyncio.create_task(stream_file(wavs[3], f"ws://{host}/v1/stream?api_key=s3cret",
                                                    chunk_ms=100, realtime=1.0))
            await asyncio.sleep(0.4)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            second = await stream_file(wavs[0], f"ws://{host}/v1/stream", api_key="s3cret", realtime=0)
            return await first, second

        first, second = asyncio.run(run())
        assert first.final is not None and first.final["text"] == offline[wavs[3].name]["text"]
        assert second.close_code == 1013 and second.final is None
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean exit
        assert "draining" in (tmp_path / "log").read_text()


def test_long_stream_equals_offline_whole_file(server: str, model_dir: Path, wavs: list[Path], tmp_path: Path
                                               ) -> None:
    """Past ChunkConfig.min_segment_s, offline transcription of a streaming model runs the streaming engine over
    the whole file (no silence segmentation), so long streams match offline too."""
    import numpy as np
    import soundfile as sf

    pcm = np.concatenate([sf.read(str(w), dtype="int16")[0] for w in wavs * 3])
    long = tmp_path / "long.wav"
    sf.write(str(long), pcm, 16000, subtype="PCM_16")
    assert pcm.size / 16000 > 12
    ref = transcribe_files(load_model_dir(model_dir), [long], progress=False)[0].to_json()
    r = asyncio.run(stream_file(long, f"ws://{server}/v1/stream", chunk_ms=250, realtime=0))
    assert r.final is not None and r.final["text"] == ref["text"] and words_equal(r.final["words"], ref["words"])
