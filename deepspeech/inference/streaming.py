"""Exact streaming inference for unidirectional DS2 models, batched across streams (DS2 section 7, Batch Dispatch).

A stream's audio arrives in pieces of any size. Each call to :meth:`StreamingModel.step` takes the new audio of
several streams, advances every stream by as many output frames as its audio allows, and returns their
log-probabilities. The engine here only batches:

- audio to features, through the one front end (:mod:`deepspeech.frontend.front_end`): each stream's resampler (its
  audio arrives at its own rate) and its samples not yet in a full 20 ms window are its feature state
  (:meth:`~deepspeech.frontend.front_end.FrontEnd.stream_windows`); all streams' new windows then go through one FFT and
  one normalisation (:meth:`~deepspeech.frontend.front_end.FrontEnd.window_features`), as one (B, T, F) batch (rows
  zero-padded when streams sent different amounts);
- the model's state: each :class:`StreamSession` carries its own row of the model's
  :class:`deepspeech.model.state.StepState` (convolution and lookahead buffers, recurrent hidden states); a step
  gathers the sessions' rows into one batch, runs :meth:`deepspeech.model.ds2.DeepSpeech2.step` once, and scatters the
  new state back;
- the output: log-softmax of each stream's new logits, and the incrementally collapsed greedy path; partial and
  final texts go through the model's post-processing (:mod:`deepspeech.inference.recognizer`: a pinyin model writes
  characters), as every other route's do.

The model's step runs batch norm on its saved statistics, so a stream's concatenated outputs equal the
whole-utterance forward pass to float rounding, whatever the pieces and batch companions (tested).

Shapes: features (t, F) per stream; log-probs (t', V) per stream.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from deepspeech.checkpoint import AcousticModel
from deepspeech.decoding.greedy import ids_to_text
from deepspeech.decoding.hypothesis import Decoder, Hypothesis
from deepspeech.frontend.front_end import MODEL_RATE, FrontEnd, FrontEndStream
from deepspeech.frontend.silence import SilenceGate
from deepspeech.inference.recognizer import Recognizer
from deepspeech.model.state import StepState


class StreamingError(ValueError):
    """A model that cannot stream (bidirectional, or per-utterance feature normalisation)."""


def check_streamable(am: AcousticModel) -> None:
    cfg = am.config
    if cfg.model.bidirectional:
        raise StreamingError(f"{cfg.name}: a bidirectional model needs the whole utterance; stream a unidirectional "
                             "model (the ds2-streaming / tiny-streaming presets)")
    if cfg.features.utterance_norm != "none":
        raise StreamingError(f"{cfg.name}: per-utterance feature normalisation ({cfg.features.utterance_norm}) "
                             "needs the whole utterance; streaming models use utterance_norm='none'")
    if cfg.features.warp_search:
        raise StreamingError(f"{cfg.name}: the warp search (features.warp_search) needs the whole utterance; "
                             "streaming models leave it empty")
    if cfg.features.trim_db > 0:
        raise StreamingError(f"{cfg.name}: endpointing (features.trim_db={cfg.features.trim_db}) needs the whole "
                             "utterance; streaming models use trim_db=0")


@dataclass
class StreamSession:
    """The state one stream carries between steps, and what it has produced so far."""

    features: FrontEndStream  # the front end's state: resampler, samples not yet in a window
    state: StepState  # the model's state for this stream (a batch of one)
    log_probs: list[np.ndarray] = field(default_factory=list)  # (t', V) blocks, in order
    finished: bool = False
    _ids: list[int] = field(default_factory=list)  # greedy path, collapsed
    _last: int = -1

    @property
    def samples(self) -> int:
        """Audio consumed, in samples at the stream's own rate."""
        return self.features.samples

    @property
    def seconds(self) -> float:
        """Audio consumed, in seconds."""
        return self.features.seconds

    @property
    def speech(self) -> bool:
        """Whether the audio so far held speech (its session's silence gate; True without one)."""
        return self.features.speech

    @property
    def num_frames(self) -> int:
        return sum(b.shape[0] for b in self.log_probs)

    def all_log_probs(self, vocab: int) -> np.ndarray:
        return np.concatenate(self.log_probs) if self.log_probs else np.zeros((0, vocab), np.float32)


class StreamingModel:
    """Steps many :class:`StreamSession` s of one unidirectional model in one batched forward pass."""

    def __init__(self, am: AcousticModel, device: torch.device | str = "cpu") -> None:
        check_streamable(am)
        self.am, self.device = am, torch.device(device)
        self.model = am.model.to(self.device).eval()
        self.cfg = am.config.model
        self.frontend = FrontEnd(am.config.features, am.stats)
        self.recognizer = Recognizer(am)
        self.vocab = self.cfg.vocab_size
        self.blank = am.tokenizer.blank_id

    # ------------------------------------------------------------------------------------------------ sessions

    def new_session(self, sample_rate: int = MODEL_RATE, gate: SilenceGate | None = None) -> StreamSession:
        """A stream whose audio arrives at ``sample_rate`` Hz (resampled by the front end); with ``gate``, the
        session tracks whether its audio held speech (:attr:`StreamSession.speech`)."""
        return StreamSession(self.frontend.open_stream(sample_rate, gate), self.model.initial_state(1))

    def partial_text(self, session: StreamSession) -> str:
        """The greedy transcript of everything decoded so far (collapsed incrementally), post-processed."""
        return self.recognizer.postprocess_text(ids_to_text(session._ids, self.am.tokenizer))

    def final_hypothesis(self, session: StreamSession, decoder: Decoder | None) -> Hypothesis:
        """The stream's best hypothesis: ``decoder`` (greedy when None) and the post-processing of every route."""
        return self.recognizer.with_decoder(decoder).best(session.all_log_probs(self.vocab))

    # ------------------------------------------------------------------------------------------------ the step

    @torch.no_grad()
    def step(self, sessions: Sequence[StreamSession], audio: Sequence[np.ndarray], final: Sequence[bool]
             ) -> list[np.ndarray]:
        """Advance each session by its new float32 ``audio`` at the session's rate (any length, possibly empty);
        ``final`` marks a stream's last call. Returns each session's new log-probability frames (t'_i, V)."""
        if not (len(sessions) == len(audio) == len(final)):
            raise ValueError("sessions, audio and final must have the same length")
        if not sessions:
            return []
        for s in sessions:
            if s.finished:
                raise StreamingError("stream already finished")
        frames = []
        for s, a, fin in zip(sessions, audio, final, strict=True):
            f, s.features = self.frontend.stream_windows(a, s.features, final=fin)
            frames.append(f)
        # Every stream's new windows through one FFT and one normalisation, then one (B, T, F) batch.
        counts = [f.shape[0] for f in frames]
        feats = self.frontend.window_features(torch.cat(frames))
        if len(set(counts)) == 1:
            batch = feats.view(len(counts), counts[0], feats.shape[-1])
        else:
            batch = pad_sequence(list(feats.split(counts)), batch_first=True)
        state = StepState.cat([s.state for s in sessions])
        logits, out_n, state = self.model.step(batch.to(self.device), counts, state, final)
        logp = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()  # (B, T', V)
        out = []
        for s, lp, n, row, fin in zip(sessions, logp, out_n, state.split(), final, strict=True):
            lp = lp[:n].copy()  # a copy, not a view: a long-lived session must not keep other streams' frames alive
            s.state = row
            s.log_probs.append(lp)
            for i in lp.argmax(axis=1).tolist() if lp.size else []:
                if i != s._last and i != self.blank:
                    s._ids.append(i)
                s._last = i
            s.finished = fin
            out.append(lp)
        return out

    # ------------------------------------------------------------------------------------------------ helpers

    def run(self, blocks: Iterable[np.ndarray], sample_rate: int = MODEL_RATE) -> StreamSession:
        """A fresh session fed ``blocks`` of audio at ``sample_rate`` in order, the last one marked final (one block
        of look-behind, so an iterator of any length works in bounded memory)."""
        s = self.new_session(sample_rate)
        pending: np.ndarray | None = None
        for block in blocks:
            if pending is not None:
                self.step([s], [pending], [False])
            pending = block
        self.step([s], [pending if pending is not None else np.zeros(0, np.float32)], [True])
        return s

    def transcribe(self, audio: np.ndarray, decoder: Decoder | None = None,
                   chunk_samples: int | None = None, sample_rate: int = MODEL_RATE) -> tuple[Hypothesis, np.ndarray]:
        """One whole waveform at ``sample_rate`` through a fresh session (in pieces of ``chunk_samples`` when
        given) -> (its post-processed best hypothesis, its (T', V) log-probabilities)."""
        step = chunk_samples or max(audio.size, 1)
        s = self.run((audio[a: a + step] for a in range(0, audio.size, step)), sample_rate)
        return self.final_hypothesis(s, decoder), s.all_log_probs(self.vocab)
