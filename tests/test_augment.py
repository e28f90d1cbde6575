"""Augmentation pipeline: transforms are deterministic given the generator; SpecAugment; config validation.
(SNR mixing and reverberation are tested in test_synthesis.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deepspeech.augment import AugmentConfig, augment_waveform, spec_augment, speed_perturb


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
    from deepspeech.augment import vtlp
    from deepspeech.features import FeatureConfig, log_spectrogram

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


def test_padding_surrounds_the_speech_with_a_floor_at_the_drawn_level() -> None:
    from data_synthesis.noise import energy, pad_with_floor

    rng = np.random.default_rng(0)
    wav = (np.sin(2 * np.pi * 440 * np.arange(8000) / 16000) * 0.3).astype(np.float32)
    out = pad_with_floor(wav, 1600, 3200, -40.0, rng)
    assert out.size == 1600 + 8000 + 3200 and np.array_equal(out[1600:9600], wav)  # the speech is untouched
    floor = np.concatenate([out[:1600], out[9600:]])
    level = 10 * np.log10(energy(floor) / energy(wav))
    assert abs(level - -40.0) < 0.5  # 4,800 Gaussian samples: the power estimate's spread is ~0.1 dB
    assert np.array_equal(pad_with_floor(np.zeros(100, np.float32), 5, 5, -40.0, rng), np.zeros(110, np.float32))
    with pytest.raises(ValueError):
        pad_with_floor(wav, -1, 0, -40.0, rng)


def test_augmentation_pads_within_the_drawn_range_and_is_off_by_default() -> None:
    wav = np.random.default_rng(1).standard_normal(8000).astype(np.float32) * 0.1
    quiet = dict(prob=1.0, speed=(1.0, 1.0), gain_db=(0.0, 0.0))
    sizes = {augment_waveform(wav, AugmentConfig(**quiet, pad_s=(0.1, 0.3)), np.random.default_rng(s)).size
             for s in range(20)}
    assert len(sizes) > 10 and all(8000 + 3200 <= n <= 8000 + 9600 for n in sizes)  # 0.1-0.3 s each side
    assert augment_waveform(wav, AugmentConfig(**quiet), np.random.default_rng(0)).size == 8000
    for s in range(20):  # negative draws cut up to 0.05 s (800 samples) off an edge; the rest is the input
        out = augment_waveform(wav, AugmentConfig(**quiet, pad_s=(-0.05, 0.0)), np.random.default_rng(s))
        assert 8000 - 1600 <= out.size <= 8000
        start = int(np.flatnonzero(wav == out[0])[0])
        assert start <= 800 and np.array_equal(out, wav[start:start + out.size])
    with pytest.raises(ValueError):
        AugmentConfig(pad_s=(0.3, 0.1))
    with pytest.raises(ValueError):
        AugmentConfig(pad_floor_db=(-30.0, -60.0))


def test_random_eq_is_a_bounded_smooth_colouring() -> None:
    """``random_eq``: within +-2.08 x eq_db (the sum of a_k's bounds, 1 + 1/2 + 1/3 + 1/4), smooth (no two
    neighbouring bins differ by more than the largest slope of its 4 cosines allows), reproducible from the
    generator, and different from draw to draw."""
    from deepspeech.augment import random_eq

    nats = np.log(10.0) / 10.0
    curves = [random_eq(161, 12.0, np.random.default_rng(s)) for s in range(20)]
    assert all(c.shape == (161,) and c.abs().max() <= 2.09 * 12.0 * nats for c in curves)
    # |d/df| of sum_k a_k cos(pi k f) <= sum_k |a_k| pi k <= 4 pi max_db, over 160 steps of 1/160.
    assert all(c.diff().abs().max() <= 4 * np.pi * 12.0 * nats / 160 + 1e-6 for c in curves)
    assert random_eq(161, 12.0, np.random.default_rng(3)).equal(curves[3])
    assert not curves[0].equal(curves[1]) and max(float(c.abs().max()) for c in curves) > 12.0 * nats
    with pytest.raises(ValueError):
        AugmentConfig(eq_db=-1.0)


def test_channel_colouring_is_removed_by_per_bin_means_and_kept_by_level(tmp_path: Path) -> None:
    """In the training loader the colouring acts on the raw log power, as a channel would: a per-bin utterance mean
    removes it exactly (features equal those without it), while ``utterance_norm="level"`` keeps it as a fixed
    per-bin offset (the same in every frame). Everything else that draws from the generator is off."""
    import soundfile as sf

    from deepspeech.data.dataset import SpeechDataset
    from deepspeech.data.manifest import Utterance
    from deepspeech.features import FeatureConfig
    from deepspeech.text import english_tokenizer

    rng = np.random.default_rng(0)
    wav = (rng.standard_normal(8000) * 0.1).astype(np.float32)
    sf.write(tmp_path / "a.wav", wav, 16000)
    utts = [Utterance(str(tmp_path / "a.wav"), "one", 0.5)]
    quiet = dict(prob=1.0, speed=(1.0, 1.0), gain_db=(0.0, 0.0), freq_masks=0, time_masks=0)

    def feats(norm: str, eq_db: float) -> torch.Tensor:
        ds = SpeechDataset(utts, english_tokenizer(), FeatureConfig(utterance_norm=norm), None,
                           augment=AugmentConfig(**quiet, eq_db=eq_db), seed=1)
        return ds.get(0)[0]

    # Tolerance: float32 log power of about +-10 nats, offset by the curve and averaged over 49 frames: the
    # per-bin mean cancels the offset up to rounding, about 1e-6.
    torch.testing.assert_close(feats("mean", 10.0), feats("mean", 0.0), atol=1e-5, rtol=0)
    diff = feats("level", 10.0) - feats("level", 0.0)
    assert diff.abs().max() > 0.5  # the colouring is there
    torch.testing.assert_close(diff, diff[:1].expand_as(diff), atol=1e-4, rtol=0)  # and the same in every frame
