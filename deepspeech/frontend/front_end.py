"""The one front end: audio (a file, an array at any rate, or a stream chunk with its state) -> the acoustic
model's normalised input features.

    audio --resample to 16 kHz--> (n,) float32 --log power spectrogram (DS2 section 3)--> (T, F)
          --endpointing (``trim_db``)--> --utterance normalisation--> --global statistics--> (T, F) model input

Every route takes it: the training dataset (with an :class:`Augmentation` hook: waveform transforms before the
spectrogram, VTLP before the global statistics, SpecAugment after, in that order), ``eval``, ``transcribe`` (short
files whole, long files block by block), ``lm tune``, the streaming engine and the server's streams and uploads.

Resampling is one filter, soxr at HQ quality (as every trained model's data was), defined beside the decoders in
:mod:`deepspeech.frontend.audio` (whose file readers use it) and exported here: the one-shot :func:`resample` of a whole
signal and a :class:`Resampler` fed the same signal in chunks of any size give identical samples (tested), so a
file, an upload and a stream of the same audio reach the spectrogram bit-identical. Nothing else resamples to the
model rate (the server's streams hand their PCM to :meth:`FrontEnd.open_stream` at the client's rate). The models
run at :data:`MODEL_RATE`; ``FeatureConfig.sample_rate`` is that rate (any other value is refused).

Shapes: waveforms (n,) float32; features (T, F) with F = ``FeatureConfig.n_bins`` (161); windows (t, win).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from deepspeech.frontend.audio import SAMPLE_RATE, Resampler, load_audio, resample
from deepspeech.frontend.features import (
    FeatureConfig,
    FeatureStats,
    StreamState,
    frames_to_log_spectrogram,
    log_spectrogram,
    prepare_utterance,
    stream_frames,
)
from deepspeech.frontend.silence import SilenceGate, SpeechDetector

MODEL_RATE = SAMPLE_RATE  # Hz: the rate every model's features are computed at

__all__ = ["MODEL_RATE", "Augmentation", "FrontEnd", "FrontEndStream", "Resampler", "resample"]


class Augmentation(Protocol):
    """Training-time transforms at the front end's three points (one instance per utterance and epoch)."""

    def waveform(self, wav: np.ndarray) -> np.ndarray:
        """(n,) 16 kHz samples -> augmented samples (speed, reverberation, noise, gain), before the spectrogram."""
        ...

    def log_power(self, feats: torch.Tensor) -> torch.Tensor:
        """(T, F) endpointed, utterance-normalised log power -> the same shape (VTLP), before the statistics."""
        ...

    def normalised(self, feats: torch.Tensor) -> torch.Tensor:
        """(T, F) model input -> the same shape (SpecAugment masks)."""
        ...


@dataclass
class FrontEndStream:
    """What one stream carries between chunks: its resampler, the samples not yet in a full window, how much audio
    it has consumed (at its own rate) and, optionally, a silence detector over its 16 kHz audio (the gate offline
    routes apply to the whole file, :mod:`deepspeech.frontend.silence`)."""

    resampler: Resampler
    frames: StreamState = field(default_factory=StreamState)
    samples: int = 0  # input samples consumed, at ``resampler.rate``
    detector: SpeechDetector | None = None

    @property
    def speech(self) -> bool:
        """Whether the audio so far held speech (always True without a detector)."""
        return self.detector is None or self.detector.speech

    @property
    def seconds(self) -> float:
        return self.samples / self.resampler.rate


@dataclass(frozen=True)
class FrontEnd:
    """A model's feature settings and training statistics: everything between audio and the network."""

    cfg: FeatureConfig = FeatureConfig()
    stats: FeatureStats | None = None  # None: features before the global statistics (computing them)

    def __post_init__(self) -> None:
        if self.cfg.sample_rate != MODEL_RATE:
            raise ValueError(f"features.sample_rate must be {MODEL_RATE} (audio is resampled to it), "
                             f"got {self.cfg.sample_rate}")

    # ---------------------------------------------------------------------------------------- whole utterances

    def load(self, source: str | os.PathLike[str] | bytes | np.ndarray, rate: int | None = None) -> np.ndarray:
        """A file (path or encoded bytes: any format and rate libsndfile reads) or a float array at ``rate`` ->
        (n,) float32 mono at 16 kHz."""
        if isinstance(source, np.ndarray):
            return resample(source, MODEL_RATE if rate is None else rate)
        return load_audio(source)

    def log_power(self, wav: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(n,) 16 kHz samples -> (T, F) log power spectrogram (no endpointing, no normalisation)."""
        return log_spectrogram(wav, self.cfg)

    def normalise(self, raw: torch.Tensor, augment: Augmentation | None = None) -> tuple[torch.Tensor, int]:
        """(T, F) log power of one utterance -> (endpointed, normalised (T', F) model input, the number of frames
        endpointing cut from the start: what word times add back)."""
        feats, cut = prepare_utterance(raw, self.cfg)
        if augment is not None:
            feats = augment.log_power(feats)
        if self.stats is not None:
            feats = self.stats.normalize(feats)
        if augment is not None:
            feats = augment.normalised(feats)
        return feats, cut

    def features(self, wav: np.ndarray, augment: Augmentation | None = None) -> tuple[torch.Tensor, int]:
        """(n,) 16 kHz samples -> ((T, F) model input, frames cut from the start); ``augment`` is training's."""
        if augment is not None:
            wav = augment.waveform(wav)
        return self.normalise(self.log_power(wav), augment)

    # ---------------------------------------------------------------------------------------- streams

    def open_stream(self, rate: int = MODEL_RATE, gate: SilenceGate | None = None) -> FrontEndStream:
        """The state of a new stream whose audio arrives at ``rate`` Hz (with a detector for ``gate``, if given)."""
        return FrontEndStream(Resampler(rate), detector=SpeechDetector(gate) if gate is not None else None)

    def stream_windows(self, chunk: np.ndarray, state: FrontEndStream, final: bool = False
                       ) -> tuple[torch.Tensor, FrontEndStream]:
        """A stream's next chunk (at its own rate; ``final`` with the last) -> (the (t, win) 16 kHz analysis
        windows it completes, the new state). Concatenated over a stream, the windows' features equal
        :meth:`features` of the whole signal (for models without endpointing or utterance normalisation)."""
        audio = state.resampler(chunk, last=final)
        if state.detector is not None:
            state.detector.update(audio)
        frames, fs = stream_frames(audio, state.frames, self.cfg, final=final)
        return frames, FrontEndStream(state.resampler, fs, state.samples + int(np.asarray(chunk).size), state.detector)

    def window_features(self, windows: torch.Tensor) -> torch.Tensor:
        """(t, win) windows (of one or many streams) -> (t, F) model input: one FFT and the global statistics;
        a window's features do not depend on its neighbours."""
        spec = frames_to_log_spectrogram(windows, self.cfg)
        return self.stats.normalize(spec) if self.stats is not None else spec
