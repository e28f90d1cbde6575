"""Noise superposition: clean speech + 1..K noise tracks at a target signal-to-noise ratio.

Deep Speech 1 (arXiv 1412.5567, section 4.1) synthesised noisy training data by superimposing many noise tracks
on clean speech; Deep Speech 2 (arXiv 1512.02595, section 5.1) added noise to 40% of randomly chosen utterances.
Here each track is cut at a random offset and looped where shorter than the utterance, the tracks are summed with
random weights, and one gain sets the sum's energy so that

    SNR = 10 log10(E_speech / E_noise)   (mean power over the whole utterance)

equals the target. If the mixture would clip, speech and noise are scaled down together, which keeps the SNR.
Silent speech or silent noise leaves the input unchanged (an SNR is undefined there), so nothing becomes NaN.

Noise kinds: ``real`` (recorded clips from a manifest), ``coloured`` (white, pink, brown: 1/f^0, 1/f^1, 1/f^2)
and ``babble`` (several other utterances of the same corpus superimposed: cocktail-party speech).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepspeech.frontend.audio import AudioError, load_audio

log = logging.getLogger(__name__)

NOISE_KINDS = ("real", "coloured", "babble")


def energy(x: np.ndarray) -> float:
    """Mean power (float64)."""
    return float(np.mean(np.square(x, dtype=np.float64))) if x.size else 0.0


def snr_db(speech: np.ndarray, noise: np.ndarray) -> float:
    """10 log10(E_speech / E_noise); inf for silent noise, -inf for silent speech."""
    es, en = energy(speech), energy(noise)
    if en == 0.0:
        return float("inf")
    return 10.0 * np.log10(es / en) if es > 0.0 else float("-inf")


def loop_crop(track: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) excerpt of ``track`` starting at a random offset, wrapping around (looping) where it is too short."""
    if track.size == 0:
        raise ValueError("empty noise track")
    start = int(rng.integers(0, track.size))
    return np.take(track, np.arange(start, start + n) % track.size).astype(np.float32, copy=False)


def coloured_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """(n,) noise with power spectral density ~ 1/f**exponent (0 white, 1 pink, 2 brown), unit RMS."""
    if n <= 0:
        return np.zeros(0, np.float32)
    spec = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    f = np.arange(n // 2 + 1, dtype=np.float64)
    f[0] = 1.0
    noise = np.fft.irfft(spec / f ** (exponent / 2.0), n=n)
    rms = float(np.sqrt(np.mean(noise**2)))
    return (noise / rms if rms > 0 else noise).astype(np.float32)


def superimpose_parts(speech: np.ndarray, tracks: Sequence[np.ndarray], target_snr_db: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(speech part, noise part), each (n,) float32, whose sum is the mixture.

    Every track is cut/looped to n samples, normalised to unit power and weighted by a random factor in [0.5, 1];
    the weighted sum gets one gain g = sqrt(E_speech / (E_sum 10^(snr/10))). If the mixture's peak exceeds 1,
    both parts are scaled by 1/peak. Silent speech, no tracks or silent tracks: (speech, zeros).
    """
    speech = np.asarray(speech, dtype=np.float32)
    n = speech.size
    es = energy(speech)
    total = np.zeros(n, np.float64)
    if n and es > 0.0:
        for tr in tracks:
            cut = loop_crop(np.asarray(tr, dtype=np.float32), n, rng).astype(np.float64)
            e = energy(cut)
            if e > 0.0:
                total += float(rng.uniform(0.5, 1.0)) * cut / np.sqrt(e)
    en = energy(total)
    if en == 0.0:
        return speech, np.zeros(n, np.float32)
    noise = total * np.sqrt(es / (en * 10.0 ** (target_snr_db / 10.0)))
    peak = float(np.abs(speech + noise).max())
    scale = 1.0 / peak if peak > 1.0 else 1.0
    return (speech * scale).astype(np.float32), (noise * scale).astype(np.float32)


def superimpose(speech: np.ndarray, tracks: Sequence[np.ndarray], target_snr_db: float,
                rng: np.random.Generator) -> np.ndarray:
    """The noisy mixture (n,) float32 of :func:`superimpose_parts`."""
    s, v = superimpose_parts(speech, tracks, target_snr_db, rng)
    return (s + v).astype(np.float32)


def load_noise_clips(manifest: str | Path) -> list[np.ndarray]:
    """Decode every clip of a noise manifest (JSON Lines with an ``audio`` path, relative to the manifest's
    folder) to 16 kHz mono. Unreadable clips are reported and skipped; an empty result is an error."""
    from deepspeech.data.manifest import read_manifest

    clips = []
    for utt in read_manifest(manifest):
        try:
            clips.append(load_audio(utt.audio))
        except AudioError as e:
            log.warning("skipping noise clip: %s", e)
    if not clips:
        raise ValueError(f"{manifest}: no readable noise clips")
    return clips


@dataclass
class NoiseSources:
    """Where noise tracks come from: recorded clips, coloured noise, and a corpus to make babble from.

    ``corpus`` maps an utterance index in ``range(corpus_size)`` to its 16 kHz waveform (e.g. the training set's
    cached loader); babble superimposes ``babble_speakers`` such utterances.
    """

    clips: list[np.ndarray] = field(default_factory=list)
    corpus: Callable[[int], np.ndarray] | None = None
    corpus_size: int = 0
    babble_speakers: tuple[int, int] = (3, 7)

    def available(self, kinds: Sequence[str]) -> list[str]:
        ok = {"coloured": True, "real": bool(self.clips), "babble": self.corpus is not None and self.corpus_size > 1}
        return [k for k in kinds if ok[k]]

    def track(self, kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
        """One (n,) noise track of the given kind."""
        if kind == "coloured":
            return coloured_noise(n, float(rng.choice([0.0, 1.0, 2.0])), rng)
        if kind == "real":
            return loop_crop(self.clips[int(rng.integers(len(self.clips)))], n, rng)
        if kind == "babble":
            assert self.corpus is not None
            out = np.zeros(n, np.float64)
            for _ in range(int(rng.integers(self.babble_speakers[0], self.babble_speakers[1] + 1))):
                try:
                    wav = self.corpus(int(rng.integers(self.corpus_size)))
                except AudioError:
                    continue
                e = energy(wav)
                if e > 0.0:
                    out += loop_crop(wav, n, rng) / np.sqrt(e)
            return out.astype(np.float32)
        raise ValueError(f"unknown noise kind {kind!r}; choose from {NOISE_KINDS}")
