"""Training-time augmentation in the feature pipeline: speed perturbation (Ko et al., Interspeech 2015), random
gain, and SpecAugment frequency/time masks (Park et al., arXiv 1904.08779, section 2).

All transforms are pure functions of their input and a numpy Generator; the dataset seeds the generator from
(seed, epoch, utterance index), so augmentation is identical across data-parallel layouts and resumed runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr
import torch

from deepspeech.audio import SAMPLE_RATE


@dataclass(frozen=True)
class AugmentConfig:
    prob: float = 0.0  # share of training utterances augmented each epoch (0 = off)
    speed: tuple[float, float] = (0.9, 1.1)  # speed factor drawn uniformly from this range (1, 1 = off)
    gain_db: tuple[float, float] = (-6.0, 6.0)  # gain drawn uniformly, in dB
    freq_masks: int = 2  # SpecAugment frequency masks per utterance
    freq_mask_bins: int = 20  # widest frequency mask, in spectrogram bins
    time_masks: int = 2  # SpecAugment time masks per utterance
    time_mask_frames: int = 20  # widest time mask, in frames
    time_mask_ratio: float = 0.15  # no time mask covers more than this share of the utterance
    noise_prob: float = 0.0  # share of augmented utterances that get coloured noise added
    noise_snr_db: tuple[float, float] = (5.0, 30.0)  # signal-to-noise ratio drawn uniformly, in dB

    def __post_init__(self) -> None:
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError("augment.prob must be in [0, 1]")
        if not 0.5 <= self.speed[0] <= self.speed[1] <= 2.0:
            raise ValueError("augment.speed must be an increasing range within [0.5, 2]")
        if not 0.0 <= self.noise_prob <= 1.0 or self.noise_snr_db[0] > self.noise_snr_db[1]:
            raise ValueError("invalid augment noise settings")
        if self.gain_db[0] > self.gain_db[1] or min(self.freq_masks, self.time_masks) < 0:
            raise ValueError("invalid augment settings")

    @property
    def enabled(self) -> bool:
        return self.prob > 0


def speed_perturb(wav: np.ndarray, factor: float) -> np.ndarray:
    """Play ``factor`` times faster (pitch and tempo together): resample as if recorded at factor x 16 kHz."""
    if factor == 1.0:
        return wav
    return soxr.resample(wav, SAMPLE_RATE * factor, SAMPLE_RATE).astype(np.float32, copy=False)


def coloured_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """(n,) noise with power spectral density ~ 1/f**exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spec = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    f = np.arange(n // 2 + 1, dtype=np.float64)
    f[0] = 1.0
    noise = np.fft.irfft(spec / f ** (exponent / 2.0), n=n)
    return (noise / max(float(np.sqrt(np.mean(noise**2))), 1e-12)).astype(np.float32)


def mix_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """signal + g * noise with g = sqrt(E_signal / (E_noise * 10^(snr/10))); silence stays silence (no NaN)."""
    es, en = float(np.mean(signal.astype(np.float64) ** 2)), float(np.mean(noise.astype(np.float64) ** 2))
    if es <= 0.0 or en <= 0.0:
        return signal
    return (signal + np.sqrt(es / (en * 10.0 ** (snr_db / 10.0))) * noise).astype(np.float32)


def spec_augment(feats: torch.Tensor, cfg: AugmentConfig, rng: np.random.Generator) -> torch.Tensor:
    """(T, F) normalised features -> copy with masked bands set to 0 (the training mean)."""
    out = feats.clone()
    t, f = out.shape
    for _ in range(cfg.freq_masks):
        w = int(rng.integers(0, cfg.freq_mask_bins + 1))
        if 0 < w < f:
            s = int(rng.integers(0, f - w + 1))
            out[:, s : s + w] = 0.0
    max_w = min(cfg.time_mask_frames, int(cfg.time_mask_ratio * t))
    for _ in range(cfg.time_masks):
        w = int(rng.integers(0, max_w + 1)) if max_w > 0 else 0
        if 0 < w < t:
            s = int(rng.integers(0, t - w + 1))
            out[s : s + w] = 0.0
    return out


def augment_waveform(wav: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Speed, coloured noise and gain; clipping is avoided by rescaling only if the peak would exceed 1."""
    wav = speed_perturb(wav, float(rng.uniform(*cfg.speed)))
    if rng.random() < cfg.noise_prob:
        noise = coloured_noise(wav.size, float(rng.choice([0.0, 1.0, 2.0])), rng)
        wav = mix_at_snr(wav, noise, float(rng.uniform(*cfg.noise_snr_db)))
    gain = 10.0 ** (float(rng.uniform(*cfg.gain_db)) / 20.0)
    wav = wav * gain
    peak = float(np.abs(wav).max(initial=0.0))
    return wav / peak if peak > 1.0 else wav
