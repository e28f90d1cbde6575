"""The espeak-ng corpus generator (skipped where espeak-ng is not installed; CI installs it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from data_synthesis.tts import TTSConfig, synthesize_corpus, trim
from deepspeech.audio import load_audio
from deepspeech.data.manifest import read_manifest

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


@needs_espeak
def test_corpus_is_deterministic_and_readable(tmp_path: Path) -> None:
    texts = ["one", "two", "three"]
    a = synthesize_corpus(texts, tmp_path / "a", TTSConfig(sample_rate=8000), seed=3, progress=False)
    b = synthesize_corpus(texts, tmp_path / "b", TTSConfig(sample_rate=8000), seed=3, progress=False)
    assert [u.text for u in a] == texts and [u.speaker for u in a] == [u.speaker for u in b]
    back = read_manifest(tmp_path / "a" / "manifest.jsonl")
    assert [u.text for u in back] == texts
    for ua, ub in zip(a, b, strict=True):
        wa, wb = load_audio(ua.audio), load_audio(ub.audio)
        assert np.array_equal(wa, wb)
        assert 0.1 < ua.duration_s < 2.0 and wa.size > 0.1 * 16000


def test_trim_cuts_silence_keeps_the_margin() -> None:
    sr = 16000
    x = np.zeros(sr, dtype=np.float32)
    x[6000:9000] = np.sin(np.arange(3000) * 0.3).astype(np.float32)
    y = trim(x, sr, -30.0, 0.02)
    assert 3000 <= y.size <= 3000 + 2 * 320 + 2 * 160
    assert np.allclose(trim(np.zeros(100, np.float32), sr, -30.0, 0.02), 0.0)
