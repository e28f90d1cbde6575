"""Augmentation: SNR mixing is exact, silence is safe, transforms are deterministic given the generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepspeech.augment import AugmentConfig, augment_waveform, coloured_noise, mix_at_snr, spec_augment, speed_perturb


@settings(max_examples=60, deadline=None, derandomize=True)
@given(n=st.integers(160, 20_000), snr=st.floats(-5, 40), seed=st.integers(0, 2**31), colour=st.sampled_from([0, 1, 2]))
def test_mix_hits_the_target_snr(n: int, snr: float, seed: int, colour: int) -> None:
    rng = np.random.default_rng(seed)
    sig = (rng.standard_normal(n) * rng.uniform(0.01, 0.5)).astype(np.float32)
    noise = coloured_noise(n, float(colour), rng)
    mixed = mix_at_snr(sig, noise, snr)
    added = mixed.astype(np.float64) - sig
    achieved = 10 * np.log10(np.mean(sig.astype(np.float64) ** 2) / np.mean(added**2))
    assert abs(achieved - snr) < 0.05  # float32 rounding of the mix only


def test_silence_and_empty_noise_give_no_nan() -> None:
    out = mix_at_snr(np.zeros(400, np.float32), coloured_noise(400, 1.0, np.random.default_rng(0)), 10.0)
    assert np.all(out == 0)
    assert np.all(np.isfinite(coloured_noise(1, 2.0, np.random.default_rng(0))))


def test_speed_perturbation_changes_length_by_the_factor() -> None:
    wav = np.random.default_rng(0).standard_normal(16_000).astype(np.float32)
    assert abs(speed_perturb(wav, 1.25).size - 12_800) <= 2
    assert abs(speed_perturb(wav, 0.8).size - 20_000) <= 2


def test_augmentation_is_deterministic_given_the_generator() -> None:
    cfg = AugmentConfig(prob=1.0, noise_prob=1.0)
    wav = np.random.default_rng(1).standard_normal(8000).astype(np.float32) * 0.1
    a = augment_waveform(wav, cfg, np.random.default_rng([3, 4, 5]))
    b = augment_waveform(wav, cfg, np.random.default_rng([3, 4, 5]))
    c = augment_waveform(wav, cfg, np.random.default_rng([3, 4, 6]))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.abs(a).max() <= 1.0


def test_spec_augment_masks_bands_to_zero() -> None:
    feats = torch.randn(200, 161) + 5.0  # no zeros before masking
    out = spec_augment(feats, AugmentConfig(prob=1.0, freq_masks=2, time_masks=2), np.random.default_rng(0))
    zero_cols = (out == 0).all(0).sum().item()
    zero_rows = (out == 0).all(1).sum().item()
    assert 0 < zero_cols <= 2 * 20 and 0 < zero_rows <= 2 * 20
    assert torch.equal(out[out != 0], feats[out != 0])


def test_invalid_augment_configs() -> None:
    with pytest.raises(ValueError):
        AugmentConfig(prob=1.5)
    with pytest.raises(ValueError):
        AugmentConfig(speed=(1.2, 0.9))
    with pytest.raises(ValueError):
        AugmentConfig(noise_snr_db=(30.0, 5.0))
