"""The silence gate: audio without speech-level energy gives empty text, whatever the network would say.

A CTC network trained only on speech has never seen an input without it, and maps digital silence or a faint hiss to
its most common words ("five" for a second of zeros, one syllable per few seconds over an hour of silence). Every
route from audio to text (``eval``, ``transcribe`` short and long, the server's finals) asks :func:`speech_present`
first, or keeps a :class:`SpeechDetector` over a stream, and returns empty text when it says no.

The gate is an energy gate, deliberately simple: audio holds speech when at least ``min_speech_s`` of it lies in
20 ms frames whose RMS level is above ``threshold_dbfs``. Measured on every utterance of AN4, FSDD and Speech
Commands in ../shared/data (the sets with the quietest recordings): each has at least 3 frames above -60 dBFS (at
-50 dBFS, 18 of 7,298 have fewer than 5), so -60 dBFS and 40 ms pass all of them; digital silence, dither and a
faint hiss below -60 dBFS are gated. A recording that is all noise above it goes to the network as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepspeech.frontend.audio import SAMPLE_RATE

FRAME_S = 0.02


@dataclass(frozen=True)
class SilenceGate:
    threshold_dbfs: float = -60.0  # a 20 ms frame at or below this RMS level (re full scale) is silent
    min_speech_s: float = 0.04  # audio needs this much non-silent frames to be treated as speech

    def __post_init__(self) -> None:
        if not -120.0 <= self.threshold_dbfs <= 0.0 or self.min_speech_s < 0:
            raise ValueError("threshold_dbfs must be in [-120, 0] and min_speech_s >= 0")

    @property
    def min_frames(self) -> int:
        return max(1, round(self.min_speech_s / FRAME_S))


DEFAULT_GATE = SilenceGate()  # the gate of every route from audio to text


def loud_frames(samples: np.ndarray, gate: SilenceGate = SilenceGate(), sample_rate: int = SAMPLE_RATE) -> int:
    """Number of whole 20 ms frames of ``samples`` ((n,) float in [-1, 1]) whose RMS is above the threshold."""
    n = round(FRAME_S * sample_rate)
    whole = samples.size // n
    if whole == 0:
        return 0
    frames = np.asarray(samples[: whole * n], dtype=np.float64).reshape(whole, n)
    power = np.mean(frames * frames, axis=1)
    return int(np.count_nonzero(power > 10.0 ** (gate.threshold_dbfs / 10.0)))


def speech_present(samples: np.ndarray, gate: SilenceGate = SilenceGate(), sample_rate: int = SAMPLE_RATE) -> bool:
    """True when ``samples`` ((n,) float mono) hold at least ``gate.min_speech_s`` of non-silent frames."""
    return loud_frames(samples, gate, sample_rate) >= gate.min_frames


class SpeechDetector:
    """:func:`speech_present` over a stream fed chunk by chunk (any chunk sizes give the same answer as the whole)."""

    def __init__(self, gate: SilenceGate = SilenceGate(), sample_rate: int = SAMPLE_RATE) -> None:
        self.gate, self.sample_rate = gate, sample_rate
        self._rest = np.zeros(0, np.float32)
        self._loud = 0

    def update(self, chunk: np.ndarray) -> None:
        if self.speech:  # decided: nothing more to count
            return
        data = np.concatenate([self._rest, np.asarray(chunk, np.float32).reshape(-1)])
        n = round(FRAME_S * self.sample_rate)
        whole = data.size // n * n
        self._loud += loud_frames(data[:whole], self.gate, self.sample_rate)
        self._rest = data[whole:]

    @property
    def speech(self) -> bool:
        return self._loud >= self.gate.min_frames
