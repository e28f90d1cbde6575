"""Augmentation pipeline: transforms are deterministic given the generator; SpecAugment; config validation.
(SNR mixing and reverberation are tested in test_synthesis.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepspeech.augment.perturb import AugmentConfig, augment_waveform, spec_augment, speed_perturb


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
    with pytest.raises(ValueError):
        AugmentConfig(noise_kinds=("real", "rain"))
    with pytest.raises(ValueError):
        AugmentConfig(noise_tracks=(0, 2))
    with pytest.raises(ValueError):
        AugmentConfig(reverb_rt60_s=(0.8, 0.2))


def test_vtlp_moves_a_formant_by_the_warp_factor_and_keeps_the_ends() -> None:
    from deepspeech.augment.perturb import vtlp
    from deepspeech.frontend.features import FeatureConfig, log_spectrogram

    t = np.arange(16000) / 16000
    feats = log_spectrogram(np.sin(2 * np.pi * 2000 * t).astype(np.float32), FeatureConfig())  # bin 40 of 161
    assert int(feats.mean(0).argmax()) == 40
    for alpha, peak in ((0.9, 36), (1.1, 44)):
        warped = vtlp(feats, alpha)
        assert warped.shape == feats.shape
        assert int(warped.mean(0).argmax()) == peak  # 2 kHz is below the boundary: it moves to alpha x 2 kHz
        torch.testing.assert_close(warped[:, [0, -1]], feats[:, [0, -1]])  # DC and Nyquist stay put
    assert vtlp(feats, 1.0) is feats
    with pytest.raises(ValueError):
        AugmentConfig(vtlp=(1.1, 0.9))
