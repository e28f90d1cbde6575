"""data_synthesis.concat: connected utterances from isolated ones (one speaker each, pauses, deterministic)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_synthesis.concat import ConcatConfig, concat_corpus
from deepspeech.data.manifest import read_manifest
from deepspeech.frontend.audio import load_audio
from tests.conftest import FSDD, cut_manifest


def test_joined_audio_text_and_speakers(tmp_path: Path) -> None:
    src = read_manifest(cut_manifest(FSDD / "dev.jsonl", tmp_path / "src.jsonl", 6))
    by_audio = {u.audio: u for u in src}
    cfg = ConcatConfig(words=(2, 3), pause_s=(0.1, 0.2), edge_s=(0.0, 0.0))
    out = concat_corpus(src, tmp_path / "a", 8, cfg, seed=5, progress=False)
    assert len(out) == 8 and len(read_manifest(tmp_path / "a" / "manifest.jsonl")) == 8
    words = {u.text for u in src}
    for u in out:
        parts = u.text.split()
        assert 2 <= len(parts) <= 3 and set(parts) <= words and u.speaker == "george"
        wav = load_audio(u.audio)
        assert wav.size / 16000 == pytest.approx(u.duration_s, abs=1e-3)
        # lower bound: the shortest clips plus the shortest pauses
        shortest = min(load_audio(a).size for a in by_audio) / 16000
        assert u.duration_s >= len(parts) * shortest + (len(parts) - 1) * 0.1 - 1e-3
        assert np.all(wav != 0.0) or np.count_nonzero(wav == 0.0) < 0.01 * wav.size  # no digital silence
    again = concat_corpus(src, tmp_path / "b", 8, cfg, seed=5, progress=False)
    assert [u.text for u in again] == [u.text for u in out]
    assert np.array_equal(load_audio(again[3].audio), load_audio(out[3].audio))
    rows = [json.loads(x) for x in (tmp_path / "a" / "manifest.jsonl").read_text().splitlines()]
    assert rows[0]["audio"] == "audio/00000.flac"  # relative to the manifest


def test_bad_config_and_empty_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ConcatConfig(words=(3, 2))
    with pytest.raises(ValueError):
        ConcatConfig(pause_s=(-1.0, 0.0))
    with pytest.raises(ValueError, match="no utterances"):
        concat_corpus([], tmp_path, 3)
