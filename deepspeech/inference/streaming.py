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
  gathers the sessions' rows into one batch, runs :meth:`deepspeech.model.ds2.DeepSpeech2.step` once, and hands each
  session its row of the new state (cut out only when needed: the same sessions stepped again together, in the same
  order, reuse that batch as it is, without a gather or a scatter);
- the output: log-softmax of each stream's new logits, and the incrementally collapsed greedy path; partial and
  final texts go through the model's post-processing (:mod:`deepspeech.inference.recognizer`: a pinyin model writes
  characters), as every other route's do.

The model's step runs batch norm on its saved statistics, so a stream's concatenated outputs equal the
whole-utterance forward pass to float rounding, whatever the pieces and batch companions (tested).

Endpointing (:class:`EndpointConfig`, per session, off by default) cuts a stream into segments by sherpa-onnx's
rules 2 (trailing silence after speech) and 3 (a segment's maximum length). Silence is judged by the energy gate's
level (:mod:`deepspeech.frontend.silence`) over 20 ms spans of the stream's audio, before the network, not by the
network's blank outputs as sherpa-onnx does: the shipped streaming model (``models/streaming-en``, trained on short
clips) emits its symbols only in the last frames of an utterance, when the stream's end pads its lookahead, and blank
everywhere else, so its output cannot say where speech ended. A segment is its speech with ``preroll_s`` of silence
before and ``tail_s`` after (:class:`Endpointer`: the silence beyond is held back, then dropped); at a cut the
segment is finished as a stream of its own (its lookahead flushed) and the next one starts from the initial state,
not the carried one: that model's state drifts over long input (a minute of digits with pauses, streamed whole,
decodes to five junk letters; segmented, 14 of 22 digits right). Each segment's output is exactly that of its audio
as one file (tested), whatever model is loaded.

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
from deepspeech.frontend.silence import DEFAULT_GATE, FRAME_S, SilenceGate
from deepspeech.inference.recognizer import Recognizer
from deepspeech.model.state import StepState


@dataclass(frozen=True)
class EndpointConfig:
    """sherpa-onnx's endpoint rules 2 and 3 (defaults as sherpa-onnx's), in seconds, with the silence around speech
    that a segment keeps. Rule 1 (a long silence with nothing decoded) has nothing to close here: a segment opens
    only when speech starts (silence before it is not fed to the network)."""

    silence_after_speech_s: float = 1.2  # rule 2: close a segment after this much silence following speech
    max_segment_s: float = 20.0  # rule 3: a segment never grows longer than this (cut wherever it is)
    quiet_dbfs: float = DEFAULT_GATE.threshold_dbfs  # a 20 ms span at most this loud (RMS re full scale) is silent
    # Silence kept before a segment's first loud span and after its last: the shipped streaming model, trained on
    # short clips, reads ~0.3 s margins best (13 of 21 FSDD digits right, vs 6 of 21 with the whole 1.2 s of rule 2).
    preroll_s: float = 0.3
    tail_s: float = 0.3

    def __post_init__(self) -> None:
        if not 0.1 <= self.silence_after_speech_s <= 30.0:
            raise ValueError("silence_after_speech_s must be in [0.1, 30] seconds")
        if not 1.0 <= self.max_segment_s <= 300.0:
            raise ValueError("max_segment_s must be in [1, 300] seconds")
        if not -120.0 <= self.quiet_dbfs <= 0.0:
            raise ValueError("quiet_dbfs must be in [-120, 0]")
        if not 0.0 <= self.preroll_s <= 2.0 or not 0.0 <= self.tail_s <= min(2.0, self.silence_after_speech_s):
            raise ValueError("preroll_s must be in [0, 2] and tail_s in [0, min(2, silence_after_speech_s)] seconds")


@dataclass(frozen=True)
class Cut:
    """Where a segment ended, in samples of the stream: the audio fed to the network [start, end), its loud extent
    [speech_start, speech_end), the rule that closed it (2, 3; 0: the end of the stream)."""

    start: int
    end: int
    speech_start: int
    speech_end: int
    rule: int


@dataclass
class Endpointer:
    """The endpoint rules over one stream's audio, 20 ms span by span, in samples at the stream's rate. It decides
    what reaches the network: a segment's audio from ``preroll_s`` before its first loud span to ``tail_s`` after
    its last; silence beyond that is held back while it may still turn out to be a pause inside the segment, and
    dropped once a rule closes the segment (or while no segment is open)."""

    cfg: EndpointConfig
    rate: int
    pos: int = 0  # samples received
    seg_start: int = 0  # first sample of the open segment
    speech_start: int = -1  # first sample of its first loud span (-1: no segment is open)
    speech_end: int = 0  # one past its last loud span
    _rest: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # not yet a whole span
    _buf: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # judged, neither fed nor dropped
    _buf_start: int = 0  # stream position of _buf[0]

    def push(self, audio: np.ndarray) -> list[tuple[np.ndarray, Cut | None]]:
        """New audio -> the pieces to feed the network, in order: each (audio, cut) ends its segment at ``cut``;
        the last piece's cut is None (the open segment goes on)."""
        n = max(1, round(FRAME_S * self.rate))
        data = np.concatenate([self._rest, np.asarray(audio, np.float32).reshape(-1)])
        at = self.pos - self._rest.size  # stream position of data[0]
        self.pos += int(np.asarray(audio).size)
        whole = data.size // n
        spans = data[: whole * n].reshape(whole, n)
        loud = (np.mean(np.square(spans, dtype=np.float64), axis=1) > 10.0 ** (self.cfg.quiet_dbfs / 10.0)).tolist()
        self._rest = data[whole * n:]
        pieces: list[tuple[np.ndarray, Cut | None]] = []
        cur: list[np.ndarray] = []
        keep, tail = round(self.cfg.preroll_s * self.rate), round(self.cfg.tail_s * self.rate)
        for k, is_loud in enumerate(loud):
            a, b = at + k * n, at + (k + 1) * n
            self._buf = np.concatenate([self._buf, spans[k]])
            if is_loud:
                if self.speech_start < 0:  # a segment opens, with its pre-roll
                    self._drop_to(max(self._buf_start, a - keep))
                    self.seg_start, self.speech_start = self._buf_start, a
                self.speech_end = b
                cur.append(self._feed_to(b))
            elif self.speech_start < 0:
                self._drop_to(max(self._buf_start, b - keep))
                continue
            else:
                cur.append(self._feed_to(max(self._buf_start, min(b, self.speech_end + tail))))
            rule = 2 if b - self.speech_end >= self.cfg.silence_after_speech_s * self.rate else 0
            if not rule and b - self.seg_start >= self.cfg.max_segment_s * self.rate:
                cur.append(self._feed_to(b))
                rule = 3
            if rule:
                pieces.append((_join(cur), Cut(self.seg_start, self._buf_start, self.speech_start, self.speech_end,
                                               rule)))
                cur, self.speech_start = [], -1
        pieces.append((_join(cur), None))
        return pieces

    def finish(self) -> tuple[np.ndarray, Cut | None]:
        """The end of the stream: the open segment's last audio (up to its tail) and its cut (rule 0); None when
        no segment is open."""
        self._buf = np.concatenate([self._buf, self._rest])
        self._rest = np.zeros(0, np.float32)
        if self.speech_start < 0:
            return np.zeros(0, np.float32), None
        end = max(self._buf_start, min(self._buf_start + self._buf.size, self.speech_end + round(self.cfg.tail_s
                                                                                                  * self.rate)))
        last = self._feed_to(end)
        cut = Cut(self.seg_start, end, self.speech_start, self.speech_end, 0)
        self.speech_start = -1
        return last, cut

    def _feed_to(self, x: int) -> np.ndarray:
        out, self._buf = self._buf[: x - self._buf_start], self._buf[x - self._buf_start:]
        self._buf_start = x
        return out

    def _drop_to(self, x: int) -> None:
        self._feed_to(x)


def _join(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


@dataclass(frozen=True)
class Segment:
    """A finished segment: the audio fed to the network and its loud extent, in seconds of the stream; its output."""

    start_s: float  # the segment's first sample fed to the network
    end_s: float  # one past its last
    speech_start_s: float  # its first loud 20 ms span
    speech_end_s: float  # the end of its last loud span
    log_probs: np.ndarray  # (T', V): the output of its audio [start_s, end_s) as a stream of its own
    speech: bool  # the silence gate's verdict on that audio (as offline routes judge a file)
    rule: int  # the rule that closed it (2, 3; 0: the end of the stream)


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
    _own: StepState | None  # the model's state for this stream (a batch of one; None: row _row of _batch, see state)
    log_probs: list[np.ndarray] = field(default_factory=list)  # (t', V) blocks, in order (of the open segment)
    finished: bool = False
    endpointer: Endpointer | None = None  # endpointing (None: the whole stream is one segment)
    segments: list[Segment] = field(default_factory=list)  # finished segments, not yet taken by the caller
    _ids: list[int] = field(default_factory=list)  # greedy path, collapsed
    _last: int = -1
    _batch: StepState | None = None  # the new state of the last batched step this stream was in
    _row: int = 0  # this stream's row of it

    @property
    def state(self) -> StepState:
        """The model's state for this stream (a batch of one). After a batched step the session holds its row of
        the batch's new state, cut out (views) only when asked for: the engine reuses a batch stepped again whole,
        in the same order (the server's usual case), without gathering and scattering its rows."""
        if self._own is None:
            assert self._batch is not None
            self._own = self._batch.row(self._row)
        return self._own

    @state.setter
    def state(self, value: StepState) -> None:
        self._own, self._batch = value, None

    def _hold_row(self, batch: StepState, row: int) -> None:
        self._own, self._batch, self._row = None, batch, row

    @property
    def samples(self) -> int:
        """Audio consumed, in samples at the stream's own rate."""
        return self.endpointer.pos if self.endpointer is not None else self.features.samples

    @property
    def seconds(self) -> float:
        """Audio consumed, in seconds."""
        return self.samples / self.features.resampler.rate

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

    def new_session(self, sample_rate: int = MODEL_RATE, gate: SilenceGate | None = None,
                    endpoint: EndpointConfig | None = None) -> StreamSession:
        """A stream whose audio arrives at ``sample_rate`` Hz (resampled by the front end); with ``gate``, the
        session tracks whether its audio held speech (:attr:`StreamSession.speech`); with ``endpoint``, the stream
        is cut into segments (:attr:`StreamSession.segments`), each one decoded as a stream of its own."""
        return StreamSession(self.frontend.open_stream(sample_rate, gate), self.model.initial_state(1),
                             endpointer=Endpointer(endpoint, sample_rate) if endpoint is not None else None)

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
        ``final`` marks a stream's last call. Returns each session's new log-probability frames (t'_i, V) (of its
        open segment: a session whose audio held an endpoint gets its closed segments in ``segments``)."""
        if not (len(sessions) == len(audio) == len(final)):
            raise ValueError("sessions, audio and final must have the same length")
        if not sessions:
            return []
        for s in sessions:
            if s.finished:
                raise StreamingError("stream already finished")
        # Endpoints split a session's audio into pieces; a piece with a cut finishes its segment. Round r steps every
        # session that has an r-th piece, in one batch (one round without endpoints, the usual case).
        pieces: list[list[tuple[np.ndarray, Cut | None]]] = []
        for s, a, fin in zip(sessions, audio, final, strict=True):
            if s.endpointer is None:
                pieces.append([(a, None)])
                continue
            p = s.endpointer.push(a)
            if fin:
                last, cut = s.endpointer.finish()
                p[-1] = (np.concatenate([p[-1][0], last]), cut)
            pieces.append(p)
        out: list[list[np.ndarray]] = [[] for _ in sessions]
        for r in range(max(len(p) for p in pieces)):
            rows = [i for i, p in enumerate(pieces) if r < len(p)]
            lps = self._step([sessions[i] for i in rows], [pieces[i][r][0] for i in rows],
                             [pieces[i][r][1] is not None or (final[i] and r == len(pieces[i]) - 1) for i in rows])
            for i, lp in zip(rows, lps, strict=True):
                out[i].append(lp)
                cut = pieces[i][r][1]
                if cut is not None:
                    self._close_segment(sessions[i], cut)
        for s, fin in zip(sessions, final, strict=True):
            s.finished = fin
        return [np.concatenate(o) if len(o) > 1 else o[0] for o in out]

    def _close_segment(self, s: StreamSession, cut: Cut) -> None:
        """Move the session's finished segment to ``segments``; the next one starts from the initial state."""
        rate = s.features.resampler.rate
        s.segments.append(Segment(cut.start / rate, cut.end / rate, cut.speech_start / rate, cut.speech_end / rate,
                                  s.all_log_probs(self.vocab), s.speech, cut.rule))
        gate = s.features.detector.gate if s.features.detector is not None else None
        s.features = self.frontend.open_stream(rate, gate)
        s.state = self.model.initial_state(1)
        s.log_probs, s._ids, s._last = [], [], -1

    def _step(self, sessions: Sequence[StreamSession], audio: Sequence[np.ndarray], final: Sequence[bool]
              ) -> list[np.ndarray]:
        """One batched step of the model (no endpoints within ``audio``)."""
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
        last = sessions[0]._batch
        if last is not None and last.batch_size == len(sessions) and \
                all(s._batch is last and s._row == i for i, s in enumerate(sessions)):
            state = last  # the same streams in the same order as their last step: their batch as it is
        else:
            state = StepState.cat([s.state for s in sessions])
        logits, out_n, state = self.model.step(batch.to(self.device), counts, state, final)
        logp = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()  # (B, T', V)
        out = []
        for row, (s, lp, n, fin) in enumerate(zip(sessions, logp, out_n, final, strict=True)):
            lp = lp[:n].copy()  # a copy, not a view: a long-lived session must not keep other streams' frames alive
            s._hold_row(state, row)
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
