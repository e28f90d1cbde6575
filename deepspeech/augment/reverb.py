"""Reverberation with synthetic room impulse responses (RIRs).

The RIR follows the statistical (Polack) model of a diffuse late reverberation: Gaussian noise under an
exponential envelope whose energy decays by 60 dB in RT60 seconds,

    h(t) = d(t) + a * n(t) * exp(-3 ln(10) t / RT60),   n ~ N(0, 1),   t >= t_0,

with a unit direct path d at t = 0, the diffuse tail starting after a short pre-delay t_0 (a few ms, the first
reflections), and a scaled by a direct-to-reverberant energy ratio (DRR) drawn per utterance. This is the model used
for simulated RIRs in reverberant-speech augmentation (Ko et al., ICASSP 2017, "A study on data augmentation of
reverberant speech for robust speech recognition"), without a room geometry: it needs no extra dependency and
covers the two quantities that matter most to a recogniser, RT60 and DRR.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepspeech.augment.noise import energy
from deepspeech.frontend.audio import SAMPLE_RATE


@dataclass(frozen=True)
class ReverbConfig:
    rt60_s: tuple[float, float] = (0.2, 0.8)  # reverberation time, drawn uniformly
    drr_db: tuple[float, float] = (0.0, 12.0)  # direct-to-reverberant energy ratio, drawn uniformly
    predelay_s: tuple[float, float] = (0.002, 0.010)  # gap between the direct path and the diffuse tail

    def __post_init__(self) -> None:
        if not 0.0 < self.rt60_s[0] <= self.rt60_s[1] <= 3.0:
            raise ValueError("reverb rt60_s must be an increasing range within (0, 3] seconds")
        if self.drr_db[0] > self.drr_db[1] or self.predelay_s[0] > self.predelay_s[1] or self.predelay_s[0] < 0:
            raise ValueError("invalid reverb ranges")


def synthetic_rir(rt60_s: float, drr_db: float, predelay_s: float, rng: np.random.Generator,
                  sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(L,) float32 impulse response, h[0] = 1, tail energy = 10^(-drr/10), L covers the 60 dB decay."""
    tail_n = max(1, int(round(rt60_s * sample_rate)))
    t = np.arange(tail_n) / sample_rate
    tail = rng.standard_normal(tail_n) * np.exp(-3.0 * np.log(10.0) * t / rt60_s)
    tail *= np.sqrt(10.0 ** (-drr_db / 10.0) / np.sum(tail**2))
    start = 1 + int(round(predelay_s * sample_rate))
    h = np.zeros(start + tail_n, np.float64)
    h[0] = 1.0
    h[start:] = tail
    return h.astype(np.float32)


def convolve(wav: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Linear convolution by FFT, truncated to len(wav) (the reverberant tail after the end is dropped)."""
    n = wav.size
    if n == 0:
        return wav.astype(np.float32, copy=False)
    size = 1 << int(np.ceil(np.log2(n + h.size - 1)))
    y = np.fft.irfft(np.fft.rfft(wav, size) * np.fft.rfft(h, size), size)[:n]
    return y.astype(np.float32)


def reverberate(wav: np.ndarray, cfg: ReverbConfig, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a fresh synthetic RIR; the output keeps the input's RMS, and is scaled down if it would clip."""
    h = synthetic_rir(float(rng.uniform(*cfg.rt60_s)), float(rng.uniform(*cfg.drr_db)),
                      float(rng.uniform(*cfg.predelay_s)), rng)
    y = convolve(wav.astype(np.float64), h.astype(np.float64)).astype(np.float64)
    ein, eout = energy(wav), energy(y)
    if eout > 0.0:
        y *= np.sqrt(ein / eout)
    peak = float(np.abs(y).max(initial=0.0))
    return (y / peak if peak > 1.0 else y).astype(np.float32)
