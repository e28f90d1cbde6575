"""Voice conversion (data_synthesis.voice): F0 and formants move by the asked factors, independently; the source's
band is kept; corpora are deterministic and skip bad audio."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import soundfile as sf

from data_synthesis.voice import VoiceConfig, VoiceError, convert_corpus, convert_voice
from deepspeech.data.manifest import read_manifest

pyworld = pytest.importorskip("pyworld", reason="voice conversion needs pyworld (the 'voice' extra)")

SR = 16_000


def _vowel(f0: float = 120.0, formants: tuple[float, ...] = (700.0, 1200.0, 2600.0), seconds: float = 0.6,
           sr: int = SR) -> np.ndarray:
    """A glottal pulse train at f0 through second-order resonators at the formant frequencies."""
    n = int(seconds * sr)
    x = np.zeros(n)
    x[:: int(round(sr / f0))] = 1.0
    for fc in formants:  # two-pole resonator, 80 Hz bandwidth
        r = np.exp(-np.pi * 80.0 / sr)
        a1, a2 = -2 * r * np.cos(2 * np.pi * fc / sr), r * r
        y = np.zeros(n)
        for i in range(n):
            y[i] = x[i] - a1 * (y[i - 1] if i > 0 else 0.0) - a2 * (y[i - 2] if i > 1 else 0.0)
        x = y
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def _f0(wav: np.ndarray, sr: int = SR) -> float:
    x = wav.astype(np.float64)
    f0, t = pyworld.dio(x, sr, frame_period=5.0)
    f0 = pyworld.stonemask(x, f0, t, sr)
    return float(np.median(f0[f0 > 0]))


def _first_formant(wav: np.ndarray, sr: int = SR) -> float:
    """Frequency of the envelope's highest peak (the first formant here), averaged over voiced frames."""
    x = wav.astype(np.float64)
    f0, t = pyworld.dio(x, sr, frame_period=5.0)
    f0 = pyworld.stonemask(x, f0, t, sr)
    sp = pyworld.cheaptrick(x, f0, t, sr)[f0 > 0].mean(axis=0)
    return float(np.argmax(sp) * sr / (2 * (sp.size - 1)))


def test_f0_moves_and_formants_stay():
    x = _vowel()
    y = convert_voice(x, SR, f0_scale=1.5)
    # 2% covers DIO's frame-level F0 quantisation; the resonators are unchanged, so F1 stays within one
    # envelope bin pair (2 x 15.6 Hz at 16 kHz with a 1024-point FFT).
    assert _f0(y) == pytest.approx(1.5 * _f0(x), rel=0.02)
    assert abs(_first_formant(y) - _first_formant(x)) <= 32.0


def test_formants_move_and_f0_stays():
    x = _vowel()
    y = convert_voice(x, SR, vtl_scale=1.15)
    assert _f0(y) == pytest.approx(_f0(x), rel=0.02)
    # F1 (700 Hz) should land near 805 Hz: within 3% (about two envelope bins).
    assert _first_formant(y) == pytest.approx(1.15 * _first_formant(x), rel=0.03)


def test_band_of_a_telephone_recording_stays_empty():
    import soxr

    x8 = _vowel(formants=(700.0, 1800.0, 3500.0), sr=8000)
    x = soxr.resample(x8, 8000, SR).astype(np.float32)  # nothing above 4 kHz
    y = convert_voice(x, SR, f0_scale=1.2, vtl_scale=1.15)  # would push F3 to 4 kHz and its skirt beyond

    def high_share(w: np.ndarray) -> float:  # share of the energy above 4.1 kHz
        spec = np.abs(np.fft.rfft(w)) ** 2
        return float(spec[np.fft.rfftfreq(w.size, 1 / SR) > 4100].sum() / spec.sum())

    assert high_share(x) < 1e-3  # the resampler's transition band
    # Without the band limit the vocoder puts about 5% of the energy there; with it, only rounding error is left.
    assert high_share(y) < 1e-9
    assert np.sqrt(np.mean(y ** 2)) == pytest.approx(np.sqrt(np.mean(x ** 2)), rel=1e-3)  # level kept


def test_bad_arguments_and_missing_vocoder(monkeypatch):
    with pytest.raises(ValueError, match="f0_scale"):
        convert_voice(_vowel(), SR, f0_scale=10.0)
    with pytest.raises(VoiceError, match="20 ms"):
        convert_voice(np.zeros(10, np.float32), SR)
    with pytest.raises(VoiceError, match="20 ms"):
        convert_voice(np.full(SR, np.nan, np.float32), SR)
    with pytest.raises(ValueError, match="increasing"):
        VoiceConfig(f0_scale=(1.5, 0.7))
    monkeypatch.setitem(sys.modules, "pyworld", None)  # as if not installed
    with pytest.raises(VoiceError, match=r"deepspeech\[voice\]"):
        convert_voice(_vowel(), SR, f0_scale=1.2)


def test_conversion_is_reproducible_within_a_process():
    # WORLD reads uninitialised memory below 16 kHz unless convert_voice resamples (see _WORLD_MIN_RATE).
    x = _vowel(sr=8000)
    outs = [convert_voice(x, 8000, 1.2, 1.1) for _ in range(3)]
    assert all((o == outs[0]).all() for o in outs[1:])


def test_corpus_is_deterministic_names_speakers_and_skips_bad_audio(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    sf.write(src / "a.wav", _vowel(110.0, sr=8000), 8000)
    sf.write(src / "b.wav", _vowel(140.0, (500.0, 1500.0, 2500.0), sr=8000), 8000)
    (src / "bad.wav").write_bytes(b"RIFF not really")
    rows = [{"audio": "a.wav", "text": "one", "duration_s": 0.6, "speaker": "ann"},
            {"audio": "bad.wav", "text": "two", "duration_s": 0.6, "speaker": "ann"},
            {"audio": "b.wav", "text": "three", "duration_s": 0.6, "speaker": "bob"}]
    (src / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    utts = read_manifest(src / "m.jsonl")
    cfg = VoiceConfig(sample_rate=8000)
    first = convert_corpus(utts, tmp_path / "one", cfg, copies=2, seed=3, progress=False)
    again = convert_corpus(utts, tmp_path / "two", cfg, copies=2, seed=3, progress=False)
    assert [u.text for u in first] == ["one", "three", "one", "three"]  # the corrupt file is skipped
    assert [u.speaker.split("/")[0] for u in first] == ["ann", "bob", "ann", "bob"]
    assert first[0].speaker != first[2].speaker  # each copy draws its own voice
    for a, b in zip(first, again, strict=True):
        assert a.speaker == b.speaker
        assert (sf.read(a.audio)[0] == sf.read(b.audio)[0]).all()
        assert sf.info(a.audio).samplerate == 8000
    assert [u.text for u in read_manifest(tmp_path / "one" / "manifest.jsonl")] == [u.text for u in first]


def test_cli_writes_a_converted_corpus(tmp_path, capsys):
    from deepspeech.cli import main

    sf.write(tmp_path / "a.wav", _vowel(sr=8000), 8000)
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "a.wav", "text": "one", "duration_s": 0.6,
                                                  "speaker": "ann"}) + "\n")
    assert main(["synth", "voices", "--manifest", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "out"),
                 "--copies", "3", "--f0-scale", "1.2,1.3", "--sample-rate", "8000", "--no-progress"]) == 0
    assert "3 utterances" in capsys.readouterr().out
    utts = read_manifest(tmp_path / "out" / "manifest.jsonl")
    assert len(utts) == 3 and all(1.2 <= float(u.speaker.split("/")[1][3:]) <= 1.3 for u in utts)
