"""deepspeech.frontend.features: DS2 log spectrogram shapes, a numpy reference, streaming == whole utterance,
statistics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepspeech.frontend.features import (
    FeatureConfig,
    FeatureStats,
    StreamState,
    log_spectrogram,
    stream_log_spectrogram,
)

CFG = FeatureConfig()


pytestmark = pytest.mark.usefixtures("one_thread")


def noise(n: int, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def test_ds2_shapes() -> None:
    assert (CFG.win_length, CFG.hop_length, CFG.n_bins) == (320, 160, 161)
    for n in [320, 321, 479, 480, 481, 16000, 16_123]:
        t = 1 + (n - 320) // 160
        assert CFG.num_frames(n) == t
        out = log_spectrogram(noise(n))
        assert out.shape == (t, 161) and out.dtype == torch.float32
    assert log_spectrogram(noise(16000)).shape[0] == 99  # 1 s -> 99 frames of 10 ms
    for n in [0, 1, 100, 319]:  # shorter than one window: zero-padded to one frame
        assert CFG.num_frames(n) == 1
        assert log_spectrogram(noise(n)).shape == (1, 161)


def test_short_input_is_zero_padded() -> None:
    x = noise(200)
    padded = np.concatenate([x, np.zeros(120, np.float32)])
    torch.testing.assert_close(log_spectrogram(x), log_spectrogram(padded), rtol=0, atol=0)
    silence = log_spectrogram(np.zeros(0, np.float32))
    torch.testing.assert_close(silence, torch.full((1, 161), float(np.log(np.float32(1e-10)))))


def test_other_configs() -> None:
    cfg = FeatureConfig(sample_rate=8000, window_ms=25.0, hop_ms=10.0, window="hann")
    assert (cfg.win_length, cfg.hop_length, cfg.n_bins) == (200, 80, 101)
    assert log_spectrogram(noise(1000), cfg).shape == (1 + (1000 - 200) // 80, 101)
    with pytest.raises(ValueError):
        FeatureConfig(window="kaiser")
    with pytest.raises(ValueError):
        FeatureConfig(hop_ms=30.0)  # hop longer than the window


@pytest.mark.parametrize("window", ["hamming", "hann"])
def test_matches_numpy_reference(window: str) -> None:
    cfg = FeatureConfig(window=window)
    x = noise(16000, seed=3).astype(np.float64)
    out = log_spectrogram(x.astype(np.float32), cfg).numpy()
    n = np.arange(320)
    a = 0.54 if window == "hamming" else 0.5  # symmetric window: w[n] = a - (1 - a) cos(2 pi n / (N - 1))
    w = a - (1 - a) * np.cos(2 * np.pi * n / 319)
    x32 = x.astype(np.float32).astype(np.float64)
    for t in [0, 1, 50, out.shape[0] - 1]:
        frame = x32[t * 160: t * 160 + 320]
        ref = np.log(np.abs(np.fft.rfft(frame * w)) ** 2 + 1e-10)
        # float32 FFT vs float64 reference: compare on log scale, where bins with tiny power are sensitive.
        np.testing.assert_allclose(out[t], ref, rtol=0, atol=2e-3)


def test_sine_peaks_at_its_bin() -> None:
    t = np.arange(16000) / 16000
    x = np.sin(2 * np.pi * 1000 * t).astype(np.float32)  # 1000 Hz = bin 20 at 50 Hz per bin
    out = log_spectrogram(x)
    assert (out.argmax(dim=1) == 20).all()


# --- streaming ---------------------------------------------------------------------------------------------------


def stream(x: np.ndarray, chunks: list[int]) -> torch.Tensor:
    """Feed ``chunks`` (sizes) then whatever is left in pieces of at most 4000, ``final`` on the last call."""
    sizes = list(chunks)
    rest = len(x) - min(sum(sizes), len(x))
    sizes += [4000] * (rest // 4000) + ([rest % 4000] if rest % 4000 else [])
    outs, state, pos = [], None, 0
    for i, c in enumerate(sizes):
        final = i == len(sizes) - 1
        out, state = stream_log_spectrogram(x[pos: pos + c], state, final=final)
        assert out.shape[1] == 161 and out.dtype == torch.float32
        outs.append(out)
        pos += c
        if pos >= len(x) and not final:  # input consumed: a final call with nothing in it
            out, state = stream_log_spectrogram(np.zeros(0, np.float32), state, final=True)
            outs.append(out)
            break
    if not sizes:
        out, state = stream_log_spectrogram(np.zeros(0, np.float32), state, final=True)
        outs.append(out)
    assert isinstance(state, StreamState)
    return torch.cat(outs)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(n=st.integers(0, 20_000), chunks=st.lists(st.integers(0, 4000), max_size=12),
       seed=st.integers(0, 2**32 - 1))
def test_streaming_equals_whole(n: int, chunks: list[int], seed: int) -> None:
    x = noise(n, seed)
    whole = log_spectrogram(x)
    streamed = stream(x, chunks)
    # Exact: every frame is computed from the same 320 samples by the same elementwise ops and one rfft per row,
    # so streaming must not change a single bit (observed: bit-identical).
    assert streamed.shape == whole.shape
    torch.testing.assert_close(streamed, whole, rtol=0, atol=0)


@pytest.mark.parametrize("n", [0, 1, 319, 320, 321, 480, 1000])
def test_streaming_one_sample_at_a_time(n: int) -> None:
    x = noise(n, seed=n)
    torch.testing.assert_close(stream(x, [1] * n), log_spectrogram(x), rtol=0, atol=0)


def test_stream_state_counts_frames() -> None:
    x = noise(1000)
    out, state = stream_log_spectrogram(x[:300], None)
    assert out.shape == (0, 161) and state.frames_emitted == 0 and state.pending.numel() == 300
    out, state = stream_log_spectrogram(x[300:700], state)
    assert out.shape[0] == 3 and state.frames_emitted == 3  # frames at 0, 160, 320 (ends at 640)
    assert state.pending.numel() == 700 - 3 * 160
    out, state = stream_log_spectrogram(x[700:], state, final=True)
    assert state.frames_emitted == CFG.num_frames(1000)


# --- statistics --------------------------------------------------------------------------------------------------


def feature_set() -> list[torch.Tensor]:
    return [log_spectrogram(noise(n, seed=n) * (1 + n % 3)) for n in (320, 1600, 5000, 12_345)]


def test_stats_compute_matches_numpy() -> None:
    feats = feature_set()
    stats = FeatureStats.compute(iter(feats))
    allf = torch.cat(feats).double().numpy()
    assert len(stats.mean) == len(stats.std) == 161
    np.testing.assert_allclose(stats.mean, allf.mean(0), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(stats.std, allf.std(0), rtol=1e-7, atol=1e-9)


def test_stats_min_std_and_empty() -> None:
    constant = [torch.ones(5, 4), torch.ones(3, 4)]
    stats = FeatureStats.compute(constant, min_std=1e-3)
    assert stats.mean == (1.0,) * 4 and stats.std == (1e-3,) * 4
    with pytest.raises(ValueError):
        FeatureStats.compute([])
    with pytest.raises(ValueError):
        FeatureStats.compute([torch.zeros(0, 4)])


def test_normalize_zero_mean_unit_std() -> None:
    feats = feature_set()
    stats = FeatureStats.compute(feats)
    normed = torch.cat([stats.normalize(f) for f in feats]).double()
    assert normed.shape == (sum(f.shape[0] for f in feats), 161)
    torch.testing.assert_close(normed.mean(0), torch.zeros(161, dtype=torch.float64), rtol=0, atol=1e-4)
    torch.testing.assert_close(normed.std(0, unbiased=False), torch.ones(161, dtype=torch.float64), rtol=0,
                               atol=1e-4)
    batch = torch.stack([feats[1], feats[1]])  # (B, T, F) broadcasts
    torch.testing.assert_close(stats.normalize(batch)[1], stats.normalize(feats[1]))


def test_stats_save_load(tmp_path: Path) -> None:
    stats = FeatureStats.compute(feature_set())
    stats.save(tmp_path / "s.json")
    assert FeatureStats.load(tmp_path / "s.json") == stats


@pytest.mark.parametrize("content", [
    json.dumps({"mean": [0.0, 1.0], "std": [1.0]}),  # length mismatch
    json.dumps({"mean": [0.0], "std": [0.0]}),  # zero std
    json.dumps({"mean": [0.0], "std": [-1.0]}),
    '{"mean": [0.0], "std": [NaN]}',
    '{"mean": [NaN], "std": [1.0]}',
    json.dumps({"mean": [0.0]}),  # missing std
    json.dumps({"std": [1.0]}),
    json.dumps([1, 2]),  # not an object
    json.dumps({"mean": ["a"], "std": [1.0]}),
    json.dumps({"mean": 3, "std": 1}),
    json.dumps({"mean": [], "std": []}),
    "not json",
])
def test_malformed_stats_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="malformed feature statistics"):
        FeatureStats.load(path)


def test_utterance_norm_is_none_mean_or_smooth_mean() -> None:
    for norm in ("none", "mean", "smooth_mean"):
        assert FeatureConfig(utterance_norm=norm).utterance_norm == norm
    for gone in ("meanvar", "speech_mean", "level"):  # removed in issue 31
        with pytest.raises(ValueError, match="utterance_norm"):
            FeatureConfig(utterance_norm=gone)


def test_smooth_mean_removes_a_channel_tilt_and_keeps_a_words_formants() -> None:
    """``utterance_norm="smooth_mean"`` subtracts the per-bin utterance mean smoothed across frequency (a Gaussian
    of ``norm_smooth_hz``). A channel's broad colouring (a tilt of 20 dB across the band, here on synthetic log
    power) goes where the smoother reproduces it, away from the band's edges, as does any gain; a formant-scale
    bump of the word's average spectrum (100 Hz wide, 3 nats high) mostly stays, where a per-bin mean removes it."""
    from deepspeech.frontend.features import smoothing_matrix, utterance_normalize

    cfg = FeatureConfig(utterance_norm="smooth_mean", norm_smooth_hz=300.0)
    gen = torch.Generator().manual_seed(0)
    word = torch.randn(40, 161, generator=gen)
    tilt = torch.linspace(0.0, 20 / 10 * math.log(10), 161)  # +20 dB across the band, in nats
    # 4 sigmas (6 bins of 50 Hz) from the edges, the Gaussian smooths a line to itself but for the ~3e-5 of its
    # mass cut off beyond the band's edge (below 1e-4 nats of the 4.6-nat tilt); nearer the edges the one-sided
    # window bends it, by up to 0.13 nats at the outermost bins.
    interior = slice(24, 137)
    torch.testing.assert_close(utterance_normalize(word + tilt + 2.0, cfg)[:, interior],
                               utterance_normalize(word, cfg)[:, interior], atol=1e-4, rtol=0)
    bump = 3.0 * torch.exp(-0.5 * ((torch.arange(161) - 60.0) / 1.0) ** 2)  # a formant at 3 kHz, sigma 50 Hz
    kept = utterance_normalize(word + bump, cfg).mean(0)[60] - utterance_normalize(word, cfg).mean(0)[60]
    assert kept > 2.5  # the smoothed mean takes ~1/sqrt(1 + 36) of its height: ~0.5 nats of 3
    per_bin = utterance_normalize(word + bump, FeatureConfig(utterance_norm="mean")).mean(0)[60]
    assert abs(per_bin) < 1e-5
    assert torch.allclose(smoothing_matrix(161, 6.0).sum(1), torch.ones(161, dtype=torch.float64))
    with pytest.raises(ValueError, match="norm_smooth_hz"):
        FeatureConfig(utterance_norm="smooth_mean", norm_smooth_hz=0.0)


def test_endpointing_cuts_loose_recordings_to_the_same_frames_as_tight_ones() -> None:
    """``features.trim_db``: a word recorded with 0.3 s of room tone (50 dB down) before it and 0.4 s after gives
    exactly the frames of the same recording cut 20 ms around the word (the margin), so a speaker who leaves long
    pauses and one who leaves none look alike; off (0 dB), nothing is cut. Both cuts are whole hops, so the two
    spectrograms read the same samples and are compared exactly."""
    from deepspeech.frontend.features import extract, trim_bounds

    rng = np.random.default_rng(1)
    t = np.arange(8000) / 16000
    word = (np.sin(2 * np.pi * 300 * t) + 0.5 * np.sin(2 * np.pi * 1200 * t)) * np.hanning(8000) * 0.3
    floor = lambda n: rng.standard_normal(n) * 0.3 * 10 ** (-50 / 20)  # noqa: E731
    loose = np.concatenate([floor(4800), word, floor(6400)]).astype(np.float32)
    tight = loose[4800 - 320: 4800 + 8000 + 320]  # 20 ms (two hops) of the room tone kept on each side
    cfg = FeatureConfig(utterance_norm="mean", trim_db=30.0)
    a, b = log_spectrogram(loose), log_spectrogram(tight)
    (s1, e1), (s2, e2) = trim_bounds(a, cfg), trim_bounds(b, cfg)
    assert e1 - s1 == e2 - s2 and s1 - s2 == 28  # 0.28 s = 28 hops more cut from the loose recording
    assert e1 - s1 < 0.6 * a.shape[0]  # most of the loose recording is room tone
    torch.testing.assert_close(extract(loose, cfg), extract(tight, cfg), atol=1e-5, rtol=0)
    assert trim_bounds(a, FeatureConfig()) == (0, a.shape[0])
    assert extract(np.zeros(0, np.float32), cfg).shape == (1, CFG.n_bins)  # empty input: one padded frame
    with pytest.raises(ValueError):
        FeatureConfig(trim_db=-1.0)
