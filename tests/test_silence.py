"""The silence gate on every shipped model: digital silence and a faint hiss give empty text through ``transcribe``
(short files, and each segment of a long one) and ``eval``, where the networks alone wrote "five", "fove",
"sige sige ..." or a line of characters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from deepspeech.checkpoint import load_model_dir
from deepspeech.data.manifest import Utterance
from deepspeech.frontend.audio import load_audio
from deepspeech.inference.evaluate import evaluate_manifest
from deepspeech.inference.longform import GATE, ChunkConfig
from deepspeech.inference.transcribe import transcribe_files
from tests.conftest import FSDD, REPO

# Every shipped model, found rather than listed, so a newly shipped one is gated too.
MODELS = tuple(sorted(d.name for d in (REPO / "models").iterdir() if (d / "config.json").is_file()))
SR = 16_000


@pytest.fixture(scope="module")
def no_speech(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """1 s and 60 s of digital silence and of white noise at -70 dBFS RMS (10 dB under the gate), 16-bit WAV."""
    d = tmp_path_factory.mktemp("no_speech")
    rng = np.random.default_rng(0)
    paths = []
    for seconds in (1, 60):
        hiss = rng.standard_normal(SR * seconds) * 10 ** (-70 / 20)
        for kind, x in (("zeros", np.zeros(SR * seconds)), ("hiss", hiss)):
            paths.append(d / f"{kind}_{seconds}s.wav")
            sf.write(paths[-1], x.astype(np.float32), SR, subtype="PCM_16")
    return paths


def test_every_shipped_model_is_gated() -> None:
    assert {"digits-en", "streaming-en"} <= set(MODELS), MODELS  # the glob found the models directory


@pytest.mark.parametrize("name", MODELS)
def test_no_speech_reads_as_empty_text(name: str, no_speech: list[Path]) -> None:
    """Without the gate the 1 s files read "five" / "fove" (digits-en), "ya ho e s" (sentences-en, hiss),
    "四慈爱饿" (sentences-zh), "fine" (streaming-en), and the 60 s ones up to 119 words (the 60 s files take the
    long-recording path: segmented, or one streaming pass)."""
    am = load_model_dir(REPO / "models" / name)
    got = transcribe_files(am, no_speech, progress=False)
    assert [(t.text, t.error) for t in got] == [("", None)] * len(no_speech), [t.text for t in got]
    utts = [Utterance(str(p), "zero", sf.info(str(p)).duration) for p in no_speech]
    counts, records = evaluate_manifest(am, utts, progress=False)
    assert [r["hyp"] for r in records] == [""] * len(no_speech)
    assert counts.n == len(no_speech)  # scored (as deletions), not failed


def test_silent_segments_of_a_long_recording_read_as_nothing(tmp_path: Path) -> None:
    """"seven", 40 s of digital silence, "three": segmented at 2-4 s, every silent segment reads as nothing, in
    transcribe and in eval alike (ungated, the digits model fills the silence with "sige" and the like)."""
    am = load_model_dir(REPO / "models" / "digits-en")
    seven, three = (load_audio(FSDD / "audio" / f"{n}.flac") for n in ("7_theo_3", "3_theo_0"))
    path = tmp_path / "long.wav"
    sf.write(path, np.concatenate([seven, np.zeros(40 * SR, np.float32), three]), SR, subtype="PCM_16")
    cc = ChunkConfig(min_segment_s=2.0, max_segment_s=4.0)
    (gated,) = transcribe_files(am, [path], chunk=cc, progress=False)
    assert gated.text == "seven three"
    assert [w.word for w in gated.words] == ["seven", "three"] and gated.words[1].start > 40.0
    (ungated,) = transcribe_files(am, [path], chunk=cc, progress=False, gate=None)
    assert len(ungated.text.split()) > 2  # what the gate removes
    _, records = evaluate_manifest(am, [Utterance(str(path), "seven three", 41.0)], progress=False, chunk=cc)
    assert records[0]["hyp"] == "seven three"


def test_speech_passes_the_gate_unchanged(tmp_path: Path) -> None:
    """A quiet real utterance (peak at -40 dBFS) is still read, and identically with and without the gate."""
    am = load_model_dir(REPO / "models" / "digits-en")
    wav = load_audio(FSDD / "audio" / "4_theo_0.flac")
    path = tmp_path / "quiet.wav"
    sf.write(path, (wav / np.abs(wav).max() * 10 ** (-40 / 20)).astype(np.float32), SR, subtype="PCM_16")
    (with_gate,), (without,) = (transcribe_files(am, [path], progress=False, gate=g) for g in (GATE, None))
    assert with_gate.text == without.text == "four"
