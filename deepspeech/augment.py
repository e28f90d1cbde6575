"""Training-time augmentation: the waveform pipeline (time shift by padding with a quiet floor; speed
perturbation, Ko et al. Interspeech 2015; reverberation; noise superposition of 1..K tracks at a drawn SNR,
Deep Speech 1 arXiv 1412.5567 section 4.1; gain), and in the feature pipeline vocal tract length perturbation
(Jaitly and Hinton, ICML 2013 workshop), channel colouring (a random smooth frequency response, :func:`random_eq`)
and SpecAugment masks (Park et al., arXiv 1904.08779, section 2).

The signal processing lives in :mod:`data_synthesis`; this module holds the configuration and the order of
operations. Every transform is a pure function of its input and a numpy Generator; the dataset seeds the
generator from (seed, epoch, utterance index), so augmentation is identical across data-parallel layouts, loader
workers and resumed runs, and the offline ``deepspeech synth noise`` seeds it from (seed, copy, index).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import soxr
import torch

from data_synthesis.noise import NOISE_KINDS, NoiseSources, coloured_noise, pad_with_floor, superimpose
from data_synthesis.reverb import ReverbConfig, reverberate
from deepspeech.audio import SAMPLE_RATE

__all__ = ["AugmentConfig", "augment_waveform", "coloured_noise", "random_eq", "spec_augment", "speed_perturb", "vtlp"]


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
    # Time shift: seconds of quiet floor added before and after the speech, each drawn uniformly (0, 0 = off; a
    # negative draw cuts that much off the edge instead, as a tightly trimmed recording clips an onset; cuts that
    # would leave less than half the utterance are skipped), at a level drawn uniformly in dB relative to the
    # utterance's RMS (data_synthesis.noise.pad_with_floor).
    pad_s: tuple[float, float] = (0.0, 0.0)
    pad_floor_db: tuple[float, float] = (-60.0, -30.0)
    # Channel colouring (0 = off): a random smooth frequency response, as of a microphone or a telephone line, on
    # the raw log power before endpointing and normalisation; its broadest component spans +-eq_db across the band
    # (:func:`random_eq`). A per-bin utterance mean (utterance_norm mean, meanvar, speech_mean) removes any fixed
    # colouring exactly, so this only acts with utterance_norm none or level (smooth_mean removes its broad part).
    eq_db: float = 0.0

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
        if not -0.5 <= self.pad_s[0] <= self.pad_s[1] <= 10.0 or self.pad_floor_db[0] > self.pad_floor_db[1]:
            raise ValueError("augment.pad_s must be an increasing range within [-0.5, 10] s; pad_floor_db increasing")
        if not 0.0 <= self.eq_db <= 40.0:  # NaN too
            raise ValueError(f"augment.eq_db must be in [0, 40] dB, got {self.eq_db}")
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


def random_eq(n_bins: int, max_db: float, rng: np.random.Generator) -> torch.Tensor:
    """(n_bins,) a random smooth frequency response, in nats of log power (add it to ``log_spectrogram`` output):
    sum over k = 1..4 of a_k cos(pi k f / F), a_k drawn uniformly from +-max_db / k dB. k = 1 is a spectral tilt
    spanning +-max_db between 0 Hz and Nyquist, higher k are ever smaller bumps; the whole curve stays within
    +-2.08 max_db (the sum of 1/k)."""
    f = torch.arange(n_bins, dtype=torch.float64) / max(n_bins - 1, 1)
    curve_db = sum(float(rng.uniform(-max_db, max_db)) / k * torch.cos(torch.pi * k * f) for k in range(1, 5))
    return (curve_db * (math.log(10.0) / 10.0)).to(torch.float32)


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
    """padding -> speed -> reverberation -> noise superposition -> gain, on a 16 kHz waveform. Without
    ``sources`` only coloured noise is available. The output never clips: it is rescaled only if its peak would
    exceed 1. Padding draws nothing from ``rng`` when it is off, so configurations without it augment as before."""
    if cfg.pad_s != (0.0, 0.0):
        lead, trail = (int(round(float(rng.uniform(*cfg.pad_s)) * SAMPLE_RATE)) for _ in range(2))
        keep = wav[max(0, -lead): wav.size - max(0, -trail)]
        wav = pad_with_floor(keep if keep.size >= wav.size // 2 else wav, max(0, lead), max(0, trail),
                             float(rng.uniform(*cfg.pad_floor_db)), rng)
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
