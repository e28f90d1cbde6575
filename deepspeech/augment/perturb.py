"""Training-time augmentation: the waveform pipeline (speed perturbation, Ko et al. Interspeech 2015;
reverberation; noise superposition of 1..K tracks at a drawn SNR, Deep Speech 1 arXiv 1412.5567 section 4.1; gain),
and in the feature pipeline vocal tract length perturbation (Jaitly and Hinton, ICML 2013 workshop) and SpecAugment
masks (Park et al., arXiv 1904.08779, section 2).

The signal processing lives in :mod:`deepspeech.augment.noise` and :mod:`deepspeech.augment.reverb`; this module holds
the configuration and the order of operations. Every transform is a pure function of its input and a numpy Generator;
the dataset seeds the generator from (seed, epoch, utterance index), so augmentation is identical across
data-parallel layouts, loader workers and resumed runs, and the offline ``deepspeech synth noise`` (data_synthesis)
seeds it from (seed, copy, index).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr
import torch

from deepspeech.augment.noise import NOISE_KINDS, NoiseSources, coloured_noise, superimpose
from deepspeech.augment.reverb import ReverbConfig, reverberate
from deepspeech.frontend.audio import SAMPLE_RATE

__all__ = ["AugmentConfig", "augment_waveform", "coloured_noise", "spec_augment", "speed_perturb", "vtlp"]


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
    noise_prob: float = 0.0  # share of augmented utterances that get noise superimposed
    noise_snr_db: tuple[float, float] = (5.0, 30.0)  # signal-to-noise ratio drawn uniformly, in dB
    noise_tracks: tuple[int, int] = (1, 3)  # number of superimposed noise tracks, drawn uniformly
    noise_kinds: tuple[str, ...] = ("real", "coloured", "babble")  # each track's kind is drawn from these
    noise_manifest: str = ""  # manifest of recorded noise clips for the "real" kind (training clips only)
    babble_speakers: tuple[int, int] = (3, 7)  # utterances superimposed into one babble track
    reverb_prob: float = 0.0  # share of augmented utterances convolved with a synthetic room impulse response
    reverb_rt60_s: tuple[float, float] = (0.2, 0.8)
    reverb_drr_db: tuple[float, float] = (0.0, 12.0)
    vtlp: tuple[float, float] = (1.0, 1.0)  # frequency warp factor drawn uniformly (1, 1 = off), see :func:`vtlp`

    def __post_init__(self) -> None:
        for name in ("prob", "noise_prob", "reverb_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augment.{name} must be in [0, 1]")
        if not 0.5 <= self.speed[0] <= self.speed[1] <= 2.0:
            raise ValueError("augment.speed must be an increasing range within [0.5, 2]")
        if self.noise_snr_db[0] > self.noise_snr_db[1] or not 1 <= self.noise_tracks[0] <= self.noise_tracks[1]:
            raise ValueError("invalid augment noise settings")
        if not self.noise_kinds or any(k not in NOISE_KINDS for k in self.noise_kinds):
            raise ValueError(f"augment.noise_kinds must be a non-empty subset of {NOISE_KINDS}")
        if not 1 <= self.babble_speakers[0] <= self.babble_speakers[1]:
            raise ValueError("invalid augment.babble_speakers")
        if not 0.5 <= self.vtlp[0] <= self.vtlp[1] <= 2.0:
            raise ValueError("augment.vtlp must be an increasing range within [0.5, 2]")
        if self.gain_db[0] > self.gain_db[1] or min(self.freq_masks, self.time_masks) < 0:
            raise ValueError("invalid augment settings")
        self.reverb  # noqa: B018 - validates the reverb ranges

    @property
    def enabled(self) -> bool:
        return self.prob > 0

    @property
    def reverb(self) -> ReverbConfig:
        return ReverbConfig(rt60_s=self.reverb_rt60_s, drr_db=self.reverb_drr_db)


def speed_perturb(wav: np.ndarray, factor: float) -> np.ndarray:
    """Play ``factor`` times faster (pitch and tempo together): resample as if recorded at factor x 16 kHz."""
    if factor == 1.0 or wav.size < 2:
        return wav
    return soxr.resample(wav, SAMPLE_RATE * factor, SAMPLE_RATE).astype(np.float32, copy=False)


def vtlp(feats: torch.Tensor, alpha: float, boundary: float = 0.75) -> torch.Tensor:
    """Vocal tract length perturbation of (..., T, F) log power spectra (F bins from 0 to the Nyquist frequency).

    The frequency axis is warped piecewise linearly, as by Jaitly and Hinton: source frequency f moves to alpha f
    below a boundary (``boundary`` x Nyquist x min(alpha, 1)) and linearly from there to a fixed Nyquist. Each
    output bin reads the input at the inverse-warped position, by linear interpolation between bins. alpha > 1
    stretches formants upwards (a shorter vocal tract), alpha < 1 compresses them; alpha = 1 is the identity.
    """
    if alpha == 1.0:
        return feats
    n = feats.shape[-1] - 1  # the Nyquist bin
    b_out = boundary * n * min(alpha, 1.0)  # where the warped axis leaves the alpha * f line
    b_in = b_out / alpha
    g = torch.arange(n + 1, dtype=torch.float64)
    src = torch.where(g <= b_out, g / alpha, n - (n - g) * (n - b_in) / (n - b_out)).clamp(0, n)
    lo = src.floor().long().clamp(max=n - 1)
    w = (src - lo).to(device=feats.device, dtype=feats.dtype)
    lo = lo.to(feats.device)
    return feats[..., lo] * (1 - w) + feats[..., lo + 1] * w


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


def augment_waveform(wav: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator,
                     sources: NoiseSources | None = None) -> np.ndarray:
    """speed -> reverberation -> noise superposition -> gain, on a 16 kHz waveform. Without ``sources`` only
    coloured noise is available. The output never clips: it is rescaled only if its peak would exceed 1."""
    wav = speed_perturb(wav, float(rng.uniform(*cfg.speed)))
    if rng.random() < cfg.reverb_prob:
        wav = reverberate(wav, cfg.reverb, rng)
    if rng.random() < cfg.noise_prob:
        src = sources if sources is not None else NoiseSources()
        kinds = src.available(cfg.noise_kinds) or ["coloured"]
        k = int(rng.integers(cfg.noise_tracks[0], cfg.noise_tracks[1] + 1))
        tracks = [src.track(str(rng.choice(kinds)), wav.size, rng) for _ in range(k)]
        wav = superimpose(wav, tracks, float(rng.uniform(*cfg.noise_snr_db)), rng)
    wav = wav * np.float32(10.0 ** (float(rng.uniform(*cfg.gain_db)) / 20.0))
    peak = float(np.abs(wav).max(initial=0.0))
    return (wav / peak if peak > 1.0 else wav).astype(np.float32, copy=False)
