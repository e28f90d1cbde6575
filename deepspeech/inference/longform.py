"""Recordings of any length in bounded memory: streamed audio, silence-based segmentation, segment-wise decoding.

1. Audio is read block by block (libsndfile) and resampled with a streaming resampler (soxr), mixed to mono.
2. Features come from the front end's stream (:meth:`deepspeech.frontend.front_end.FrontEnd.stream_windows`: the same
   frames as the whole-file spectrogram); endpointing and the per-utterance normalisation are applied to each
   segment (:meth:`~deepspeech.frontend.front_end.FrontEnd.normalise`), as to each training utterance.
3. Segmentation: once ``min_segment_s`` of features are pending, the recording is cut in the middle of the
   quietest ``pause_s`` stretch between ``min_segment_s`` and ``max_segment_s`` (frame energy from the log power
   spectrum): a pause between phrases where there is one. Each segment goes through the network on its own, like
   a training utterance, so memory holds at most ``max_segment_s`` of features, activations and log-probabilities.
   A file no longer than ``min_segment_s`` is one segment: the same computation as whole-file decoding.
4. Each segment is decoded and post-processed (:class:`deepspeech.inference.recognizer.Recognizer`: greedy or beam
   search, the LM context restarting at a cut; a pinyin model's characters) and word frames are offset to
   the recording's time line. A segment without speech-level energy (:mod:`deepspeech.frontend.silence`) skips the
   network and reads as certain blanks: empty text, however long the silence.

Why segments and not overlapping windows: a bidirectional recurrent model's outputs depend on context many seconds
away (measured on ``sentences-en``: 0.1-0.3 nats 8 s from a cut), so windows with overlap change the text anywhere
in the window; cutting in pauses keeps every segment a natural utterance.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deepspeech.checkpoint import AcousticModel
from deepspeech.decoding.hypothesis import Decoder, Hypothesis, Word
from deepspeech.frontend.audio import stream_audio
from deepspeech.frontend.front_end import FrontEnd, FrontEndStream
from deepspeech.frontend.silence import DEFAULT_GATE as GATE
from deepspeech.frontend.silence import SilenceGate, speech_present
from deepspeech.inference.recognizer import Recognizer

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class ChunkConfig:
    min_segment_s: float = 8.0  # look for a cut once this much is pending (files this short are one segment)
    max_segment_s: float = 20.0  # ... and cut no later than this
    pause_s: float = 0.2  # the cut is in the middle of the quietest stretch this long
    block_s: float = 10.0  # audio read per block

    def __post_init__(self) -> None:
        if min(self.block_s, self.pause_s) <= 0:
            raise ValueError("block_s and pause_s must be > 0")
        if not 0 < self.min_segment_s <= self.max_segment_s:
            raise ValueError("need 0 < min_segment_s <= max_segment_s")
        if self.pause_s >= self.min_segment_s:
            raise ValueError("pause_s must be shorter than min_segment_s")


def stream_features(path: str | Path, am: AcousticModel, block_s: float,
                    on_audio: Callable[[np.ndarray], None] | None = None) -> Iterator[torch.Tensor]:
    """Raw log-spectrogram frames of a file, block by block (no normalisation). ``on_audio`` sees each 16 kHz
    block before the frames it completes are yielded."""
    fe = FrontEnd(am.config.features)  # no statistics: raw log power
    state: FrontEndStream = fe.open_stream()  # the blocks are 16 kHz already
    pending: np.ndarray | None = None
    for block in stream_audio(path, block_s):  # one block of look-behind so the last one is sent with final=True
        if on_audio is not None:
            on_audio(block)
        if pending is not None:
            windows, state = fe.stream_windows(pending, state)
            if windows.shape[0]:
                yield fe.window_features(windows)
        pending = block
    if pending is not None:
        windows, state = fe.stream_windows(pending, state, final=True)
        if windows.shape[0]:
            yield fe.window_features(windows)


def quietest_cut(raw: torch.Tensor, lo: int, hi: int, width: int, multiple: int = 1) -> int:
    """The middle frame of the ``width``-frame stretch of lowest mean energy starting in [lo, hi - width]
    (``raw``: (T, bins) log power; frame energy = log of the mean power over bins), rounded down to a multiple of
    ``multiple`` (the model's time stride, so each segment's output frames tile the recording's exactly)."""
    energy = torch.logsumexp(raw[lo:hi].double(), dim=1).numpy()
    width = max(1, min(width, energy.size))
    window = np.convolve(energy, np.ones(width) / width, mode="valid")
    cut = lo + int(np.argmin(window)) + width // 2
    return max(multiple, cut - cut % multiple)


def segments(path: str | Path, am: AcousticModel, cc: ChunkConfig) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Each segment of a recording, cut in pauses: (raw unnormalised features (t, bins), the 16 kHz samples from
    its first frame's start to the next segment's, (n,) float32). Memory: one segment plus a block."""
    frames_per_s = 1000.0 / am.config.features.hop_ms
    lo, hi = int(cc.min_segment_s * frames_per_s), int(cc.max_segment_s * frames_per_s)
    width = max(1, int(round(cc.pause_s * frames_per_s)))
    stride, hop = am.config.model.time_stride, am.config.features.hop_length
    buf = torch.zeros(0, am.config.features.n_bins)
    audio: list[np.ndarray] = []  # samples from the start of ``buf``'s first frame on

    def take(frames: int | None) -> np.ndarray:  # the samples of the first ``frames`` frames (None: all)
        wav = np.concatenate(audio) if audio else np.zeros(0, np.float32)
        cut = wav.size if frames is None else frames * hop
        audio[:] = [wav[cut:]]
        return wav[:cut]

    for raw in stream_features(path, am, cc.block_s, audio.append):
        buf = torch.cat([buf, raw])
        while buf.shape[0] >= hi:
            cut = quietest_cut(buf, lo, hi, width, stride)
            yield buf[:cut], take(cut)
            buf = buf[cut:]
    if buf.shape[0] > lo:  # what is left is decided with the same rule as inside the file
        cut = quietest_cut(buf, lo, buf.shape[0], width, stride)
        if buf.shape[0] - cut >= width:
            yield buf[:cut], take(cut)
            buf = buf[cut:]
    if buf.shape[0]:
        yield buf, take(None)


def segment_features(path: str | Path, am: AcousticModel, cc: ChunkConfig) -> Iterator[torch.Tensor]:
    """Raw (unnormalised) feature segments of a recording, cut in pauses; memory: one segment plus a block."""
    for feats, _ in segments(path, am, cc):
        yield feats


@torch.no_grad()
def segment_log_probs(path: str | Path, am: AcousticModel, cc: ChunkConfig, device: torch.device | str = "cpu",
                      gate: SilenceGate | None = GATE) -> Iterator[np.ndarray]:
    """(t, V) float32 log-probabilities of each segment of a recording, in order. A segment that ``gate`` finds
    without speech gets certain blanks instead of the network's output."""
    rec = Recognizer(am)
    for raw, samples in segments(path, am, cc):
        if gate is not None and not speech_present(samples, gate):
            yield _pad_blank(np.zeros((0, len(am.tokenizer)), np.float32), am, raw.shape[0], 0)
            continue
        x, start = rec.frontend.normalise(raw)  # endpointed and normalised on its own, like a training utterance
        (logp,) = rec.log_probs([x], device)
        yield np.ascontiguousarray(_pad_blank(logp, am, raw.shape[0], start))


def _pad_blank(logp: np.ndarray, am: AcousticModel, frames: int, start: int) -> np.ndarray:
    """(t, V) log-probabilities of an endpointed segment -> as many output frames as the whole segment, the
    frames cut off before and after filled with certain blanks, so word frames stay on the recording's time line."""
    total = int(am.config.model.output_lengths(torch.tensor([frames]))[0])
    if total <= logp.shape[0]:
        return logp
    lead = min(start // am.config.model.time_stride, total - logp.shape[0])
    blank = np.full((1, logp.shape[1]), -1e4, dtype=np.float32)  # (1, V)
    blank[:, am.tokenizer.blank_id] = 0.0
    return np.concatenate([np.repeat(blank, lead, 0), logp, np.repeat(blank, total - logp.shape[0] - lead, 0)])


def decode_segments(segments: Iterator[np.ndarray], rec: Recognizer,
                    on_segment: Callable[[int, Hypothesis, np.ndarray], None] | None = None) -> Hypothesis:
    """Decode each segment's (t, V) log-probabilities (decoder and post-processing of ``rec``) -> one hypothesis
    with word frames on the recording's time line. ``on_segment(offset, hypothesis, log_probs)`` sees each segment
    (segment-local frames) as it is decoded."""
    offset = 0
    texts: list[str] = []
    words: list[Word] = []
    am_score = lm_score = score = 0.0
    for logp in segments:
        hyp = rec.best(logp)
        if hyp.text:
            texts.append(hyp.text)
        words.extend(Word(w.text, w.start + offset, w.end + offset) for w in hyp.words)
        am_score, lm_score, score = am_score + hyp.am_score, lm_score + hyp.lm_score, score + hyp.score
        if on_segment:
            on_segment(offset, hyp, logp)
        offset += logp.shape[0]
    sep = " " if rec.am.text_lang == "en" else ""
    return Hypothesis(sep.join(texts), tuple(words), score, am_score, lm_score)


def transcribe_long(path: str | Path, am: AcousticModel, cc: ChunkConfig = ChunkConfig(),
                    decoder: Decoder | None = None, device: torch.device | str = "cpu") -> Hypothesis:
    """One recording of any length -> its hypothesis (word frames are global output frames)."""
    return decode_segments(segment_log_probs(path, am, cc, device), Recognizer(am, decoder))
