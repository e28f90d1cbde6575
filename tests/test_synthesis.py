"""Noise superposition and reverberation: the achieved SNR matches the target, silence and tiny inputs are safe,
synthetic room impulse responses have the drawn RT60 and DRR, and noise sources behave."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepspeech.augment.noise import (
    NoiseSources,
    coloured_noise,
    load_noise_clips,
    loop_crop,
    snr_db,
    superimpose,
    superimpose_parts,
)
from deepspeech.augment.perturb import AugmentConfig, augment_waveform
from deepspeech.augment.reverb import ReverbConfig, reverberate, synthetic_rir
from tests.conftest import REPO


@settings(max_examples=150, deadline=None, derandomize=True)
@given(n=st.integers(1, 30_000), snr=st.floats(-10, 40), seed=st.integers(0, 2**31), k=st.integers(1, 6),
       level=st.floats(1e-4, 3.0), track_len=st.integers(1, 40_000))
def test_superimposed_noise_hits_the_target_snr(n: int, snr: float, seed: int, k: int, level: float,
                                                track_len: int) -> None:
    rng = np.random.default_rng(seed)
    speech = (rng.standard_normal(n) * level).astype(np.float32)
    tracks = [coloured_noise(track_len, float(rng.choice([0, 1, 2])), rng) * rng.uniform(0.01, 5) for _ in range(k)]
    s, v = superimpose_parts(speech, tracks, snr, rng)
    # The mixture never clips: speech and noise are rescaled together, which leaves the SNR unchanged.
    assert np.abs(s + v).max() <= 1.0 + 1e-6
    # Gain is computed in float64; float32 storage of the parts moves the ratio by ~1e-6 dB. 0.5 dB is the spec.
    assert abs(snr_db(s, v) - snr) < 0.5
    assert abs(snr_db(s, v) - snr) < 0.01


def test_silence_and_degenerate_inputs_stay_finite() -> None:
    rng = np.random.default_rng(0)
    noise = [coloured_noise(500, 1.0, rng)]
    silent = np.zeros(400, np.float32)
    out = superimpose(silent, noise, 10.0, rng)
    assert np.array_equal(out, silent)  # SNR is undefined for silence: nothing is added, nothing is NaN
    speech = rng.standard_normal(300).astype(np.float32) * 0.1
    assert np.array_equal(superimpose(speech, [np.zeros(100, np.float32)], 5.0, rng), speech)  # silent noise
    assert np.array_equal(superimpose(speech, [], 5.0, rng), speech)  # no tracks
    assert superimpose(np.zeros(0, np.float32), noise, 5.0, rng).size == 0  # empty input
    one = superimpose(np.array([0.5], np.float32), noise, 0.0, rng)
    assert one.shape == (1,) and np.isfinite(one).all()
    assert np.isfinite(coloured_noise(1, 2.0, rng)).all() and coloured_noise(0, 0.0, rng).size == 0


def test_loop_crop_wraps_short_tracks() -> None:
    track = np.arange(5, dtype=np.float32)
    out = loop_crop(track, 12, np.random.default_rng(3))
    assert out.shape == (12,)
    assert all((out[i + 1] - out[i]) % 5 == 1 for i in range(11))  # consecutive samples of the looped track
    with pytest.raises(ValueError):
        loop_crop(np.zeros(0, np.float32), 3, np.random.default_rng(0))


def test_coloured_noise_slopes() -> None:
    """Pink and brown noise put more power in low frequencies than white noise does."""
    rng = np.random.default_rng(0)
    def low_share(x: np.ndarray) -> float:
        p = np.abs(np.fft.rfft(x)) ** 2
        return float(p[: p.size // 8].sum() / p.sum())
    white, pink, brown = (low_share(coloured_noise(16_000, e, rng)) for e in (0.0, 1.0, 2.0))
    assert abs(white - 1 / 8) < 0.03 and pink > 0.5 and brown > 0.95


@pytest.mark.parametrize("rt60", [0.2, 0.5, 1.0])
def test_synthetic_rir_has_the_drawn_rt60_and_drr(rt60: float) -> None:
    h = synthetic_rir(rt60, drr_db=6.0, predelay_s=0.005, rng=np.random.default_rng(1)).astype(np.float64)
    assert h[0] == 1.0 and np.all(h[1:81] == 0.0)  # direct path, then the pre-delay gap (80 samples = 5 ms)
    assert 10 * np.log10(1.0 / np.sum(h[1:] ** 2)) == pytest.approx(6.0, abs=1e-4)
    # Schroeder backward integration: the energy decay curve falls 20 dB (T20) in about RT60 / 3.
    edc = np.cumsum((h[81:] ** 2)[::-1])[::-1]
    edc_db = 10 * np.log10(edc / edc[0])
    t5, t25 = np.argmax(edc_db <= -5) / 16_000, np.argmax(edc_db <= -25) / 16_000
    assert 3 * (t25 - t5) == pytest.approx(rt60, rel=0.15)


def test_reverberation_keeps_level_and_length() -> None:
    rng = np.random.default_rng(0)
    wav = (rng.standard_normal(8000) * 0.1).astype(np.float32)
    out = reverberate(wav, ReverbConfig(), rng)
    assert out.shape == wav.shape and np.isfinite(out).all()
    rms = lambda x: float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))  # noqa: E731
    assert rms(out) == pytest.approx(rms(wav), rel=1e-5)  # float32 storage of the output
    assert reverberate(np.zeros(10, np.float32), ReverbConfig(), rng).tolist() == [0.0] * 10
    with pytest.raises(ValueError):
        ReverbConfig(rt60_s=(0.0, 0.5))


def test_noise_sources_real_and_babble() -> None:
    clips = load_noise_clips(REPO / "data" / "noise" / "train.jsonl")
    assert len(clips) == 10 and all(c.dtype == np.float32 and c.size > 0 for c in clips)
    corpus = [np.sin(np.arange(800 + 100 * i) * (0.05 + 0.01 * i)).astype(np.float32) for i in range(5)]
    src = NoiseSources(clips=clips, corpus=lambda i: corpus[i], corpus_size=len(corpus), babble_speakers=(2, 3))
    assert src.available(("real", "coloured", "babble")) == ["real", "coloured", "babble"]
    assert NoiseSources().available(("real", "coloured", "babble")) == ["coloured"]
    rng = np.random.default_rng(0)
    for kind in ("real", "coloured", "babble"):
        tr = src.track(kind, 3000, rng)
        assert tr.shape == (3000,) and np.isfinite(tr).all() and np.abs(tr).max() > 0
    with pytest.raises(ValueError, match="unknown noise kind"):
        src.track("rain", 10, rng)


def test_full_pipeline_is_deterministic_and_never_clips() -> None:
    cfg = AugmentConfig(prob=1.0, noise_prob=1.0, reverb_prob=1.0, noise_tracks=(2, 4), noise_snr_db=(0.0, 5.0),
                        gain_db=(10.0, 20.0))
    corpus = [np.random.default_rng(i).standard_normal(4000).astype(np.float32) * 0.2 for i in range(4)]
    src = NoiseSources(clips=[coloured_noise(1000, 0.0, np.random.default_rng(9))], corpus=lambda i: corpus[i],
                       corpus_size=4)
    wav = corpus[0]
    a = augment_waveform(wav, cfg, np.random.default_rng([1, 2, 3]), src)
    b = augment_waveform(wav, cfg, np.random.default_rng([1, 2, 3]), src)
    c = augment_waveform(wav, cfg, np.random.default_rng([1, 2, 4]), src)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.abs(a).max() <= 1.0 and np.isfinite(a).all()
