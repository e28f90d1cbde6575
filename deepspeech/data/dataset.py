"""Utterances -> normalised features (through :class:`deepspeech.frontend.front_end.FrontEnd`) and label ids, and padded
batches."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from deepspeech.augment.noise import NoiseSources, load_noise_clips
from deepspeech.augment.perturb import AugmentConfig, augment_waveform, spec_augment, vtlp
from deepspeech.data.manifest import Utterance
from deepspeech.frontend.audio import AudioError
from deepspeech.frontend.features import FeatureConfig, FeatureStats
from deepspeech.frontend.front_end import FrontEnd
from deepspeech.text import CharTokenizer

log = logging.getLogger(__name__)


class _Augment:
    """The training augmentation of one item at the front end's hooks
    (:class:`deepspeech.frontend.front_end.Augmentation`), drawing from one generator in a fixed order: waveform
    transforms, VTLP's factor, SpecAugment's masks."""

    def __init__(self, cfg: AugmentConfig, rng: np.random.Generator, noise: NoiseSources | None) -> None:
        self.cfg, self.rng, self.noise = cfg, rng, noise

    def waveform(self, wav: np.ndarray) -> np.ndarray:
        return augment_waveform(wav, self.cfg, self.rng, self.noise)

    def log_power(self, feats: torch.Tensor) -> torch.Tensor:
        return vtlp(feats, float(self.rng.uniform(*self.cfg.vtlp))) if self.cfg.vtlp != (1.0, 1.0) else feats

    def normalised(self, feats: torch.Tensor) -> torch.Tensor:
        return spec_augment(feats, self.cfg, self.rng)


@dataclass
class Batch:
    feats: torch.Tensor  # (B, T, F) normalised, zero-padded
    lengths: torch.Tensor  # (B,) int64 frame counts
    targets: list[torch.Tensor]  # B label-id tensors
    texts: list[str]  # normalised reference texts
    audio_seconds: float
    indices: list[int]  # dataset indices of the items (those whose audio loaded)


def collate(items: Sequence[tuple[torch.Tensor, torch.Tensor, str]], sample_seconds: float,
            indices: Sequence[int] = ()) -> Batch:
    feats = [f for f, _, _ in items]
    lengths = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)
    padded = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
    return Batch(padded, lengths, [t for _, t, _ in items], [s for _, _, s in items], sample_seconds, list(indices))


def select_utterances(utts: Sequence[Utterance], tokenizer: CharTokenizer, min_s: float, max_s: float,
                      output_frames: Callable[[int], int], fcfg: FeatureConfig) -> list[Utterance]:
    """Drop utterances outside the duration limits, with empty targets, or with more labels than CTC can align
    (a label sequence needs at least len + repeats output frames)."""
    kept, reasons = [], {"duration": 0, "empty text": 0, "too many labels": 0}
    for u in utts:
        if not min_s <= u.duration_s <= max_s:
            reasons["duration"] += 1
            continue
        ids = tokenizer.encode(u.text)
        if not ids:
            reasons["empty text"] += 1
            continue
        repeats = sum(1 for a, b in zip(ids, ids[1:], strict=False) if a == b)
        frames = fcfg.num_frames(int(u.duration_s * fcfg.sample_rate))
        if len(ids) + repeats > output_frames(frames):
            reasons["too many labels"] += 1
            continue
        kept.append(u)
    dropped = {k: v for k, v in reasons.items() if v}
    if dropped:
        log.warning("skipped %d of %d utterances: %s", len(utts) - len(kept), len(utts), dropped)
    return kept


class SpeechDataset:
    """Random access to (normalised features (T, F), label ids, normalised text) for a list of utterances.

    Audio that fails to load is reported and replaced by nothing: :meth:`get` returns None for it, and the
    trainer drops it from its batch. With ``augment`` enabled, waveforms are cached instead of features and each
    item is augmented with a generator seeded by (seed, epoch, index): see :meth:`set_epoch`. Babble noise is made
    from other utterances of this dataset.
    """

    def __init__(self, utts: Sequence[Utterance], tokenizer: CharTokenizer, fcfg: FeatureConfig,
                 stats: FeatureStats | None, cache: bool = True, augment: AugmentConfig | None = None,
                 seed: int = 0) -> None:
        self.utts = list(utts)
        self.tokenizer, self.fcfg, self.stats, self.cache = tokenizer, fcfg, stats, cache
        self.frontend = FrontEnd(fcfg, stats)
        self.augment = augment if augment is not None and augment.enabled else None
        self.seed, self.epoch = seed, 0
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor, str]] = {}
        self._wav_cache: dict[int, np.ndarray] = {}
        self._bad: set[int] = set()
        self.noise: NoiseSources | None = None
        if self.augment is not None and self.augment.noise_prob > 0:
            a = self.augment
            clips = load_noise_clips(a.noise_manifest) if a.noise_manifest and "real" in a.noise_kinds else []
            self.noise = NoiseSources(clips=clips, corpus=self._waveform, corpus_size=len(self.utts),
                                      babble_speakers=a.babble_speakers)
            missing = set(a.noise_kinds) - set(self.noise.available(a.noise_kinds))
            if missing:
                log.warning("noise kinds %s unavailable (no noise_manifest or corpus too small)", sorted(missing))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.utts)

    @property
    def durations(self) -> list[float]:
        return [u.duration_s for u in self.utts]

    def raw_features(self, i: int) -> torch.Tensor:
        """(T, F) endpointed, utterance-normalised log power before the global statistics (to compute them)."""
        return FrontEnd(self.fcfg).features(self.frontend.load(self.utts[i].audio))[0]

    def _waveform(self, i: int) -> np.ndarray:
        wav = self._wav_cache.get(i)
        if wav is None:
            wav = self.frontend.load(self.utts[i].audio)
            if self.cache:
                self._wav_cache[i] = wav
        return wav

    def get(self, i: int) -> tuple[torch.Tensor, torch.Tensor, str] | None:
        if i in self._cache:
            return self._cache[i]
        if i in self._bad:
            return None
        try:
            wav = self._waveform(i)
        except AudioError as e:
            log.warning("skipping utterance: %s", e)
            self._bad.add(i)
            return None
        augment = None
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            if rng.random() < self.augment.prob:
                augment = _Augment(self.augment, rng, self.noise)
        feats, _ = self.frontend.features(wav, augment)
        text = self.tokenizer.normalize(self.utts[i].text)
        item = (feats, torch.tensor(self.tokenizer.encode(text), dtype=torch.long), text)
        if self.cache and self.augment is None:
            self._cache[i] = item
            self._wav_cache.pop(i, None)
        return item

    def batch(self, indices: Sequence[int]) -> Batch | None:
        loaded = [(i, it) for i, it in ((i, self.get(i)) for i in indices) if it is not None]
        if not loaded:
            return None
        seconds = sum(self.utts[i].duration_s for i, _ in loaded)
        return collate([it for _, it in loaded], seconds, [i for i, _ in loaded])

    def compute_stats(self, max_utterances: int, seed: int = 0) -> FeatureStats:
        """Normalisation statistics from a seeded sample of at most ``max_utterances`` training utterances."""
        n = len(self.utts)
        idx = np.random.default_rng(seed).permutation(n)[: max_utterances] if n > max_utterances else range(n)
        def feats():
            for i in idx:
                try:
                    yield self.raw_features(int(i))
                except AudioError as e:
                    log.warning("skipping utterance in statistics: %s", e)
        return FeatureStats.compute(feats())
