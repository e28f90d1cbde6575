"""The shipped streaming model behind the server with beam search + its LM: a stream's final result equals
offline `deepspeech transcribe --decoder beam` of the same audio (connected test-speaker digits)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from deepspeech.checkpoint import load_model_dir
from deepspeech.decoding.beam import build_decoder
from deepspeech.frontend.audio import load_audio
from deepspeech.inference.transcribe import transcribe_files
from serving.client import stream_file
from tests.serving_util import REPO, running_server

MODEL = REPO / "models" / "streaming-en"
FSDD = REPO / "data" / "fsdd" / "audio"


def digit_string(files: list[str], path: Path, seed: int) -> Path:
    """Test-speaker digits joined by pauses of room noise, as 16 kHz 16-bit PCM (what the stream sends)."""
    rng = np.random.default_rng(seed)
    parts = []
    for f in files:
        parts += [(rng.standard_normal(int(rng.uniform(0.1, 0.5) * 16000)) * 1e-3).astype(np.float32),
                  load_audio(FSDD / f)]
    wav = np.concatenate(parts + [np.zeros(1600, np.float32) + 1e-3])
    sf.write(str(path), np.clip(np.round(wav * 32768), -32768, 32767).astype(np.int16), 16000, subtype="PCM_16")
    return path


@pytest.mark.skipif(not (MODEL / "lm").is_dir(), reason="models/streaming-en with its LM is not present")
def test_beam_stream_equals_offline_beam(tmp_path: Path) -> None:
    wavs = [digit_string(["4_theo_5.flac", "2_yweweler_7.flac"], tmp_path / "a.wav", 0),
            digit_string(["9_yweweler_8.flac", "0_theo_9.flac", "6_theo_3.flac"], tmp_path / "b.wav", 1)]
    am = load_model_dir(MODEL)
    offline = transcribe_files(am, wavs, progress=False, decoder=build_decoder(MODEL, am.tokenizer))
    with running_server(MODEL, "--decoder", "beam", log_path=tmp_path / "log") as (_, host):
        async def run():  # type: ignore[no-untyped-def]
            return await asyncio.gather(*(stream_file(w, f"ws://{host}/v1/stream", realtime=3.0) for w in wavs))
        results = asyncio.run(run())
    for ref, r in zip(offline, results, strict=True):
        assert r.final is not None and r.final["text"] == ref.text
        assert [w["word"] for w in r.final["words"]] == [w.word for w in ref.words]
