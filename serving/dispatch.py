"""Batch Dispatch (Amodei et al., arXiv 1512.02595, section 7): one inference worker, many streams.

Connections (on the asyncio event loop) append audio to their stream and return at once. One worker thread loops:
take the streams that have unprocessed audio (or have ended), oldest audio first, up to ``max_batch``; run ONE
batched streaming step for all of them (:class:`deepspeech.inference.streaming.StreamingModel`); hand each stream its
partial result; repeat as soon as the step is done ("eager": a request never waits for a batch to fill, it only
waits for the step in flight). ``max_wait_ms`` > 0 trades latency for larger batches. Streams join and leave
between any two steps.

Results go back through each stream's ``emit`` callback, called on the worker thread; the server passes one that
schedules delivery on the event loop (``loop.call_soon_threadsafe``).

A stream's audio arrives at its own rate; the engine's front end resamples it (:mod:`deepspeech.frontend.front_end`, the
resampler of files and uploads too). Each stream's session keeps a :class:`deepspeech.frontend.silence.SpeechDetector`
over the audio stepped so far: until it has heard speech, partial results are empty, and a stream that never held speech
ends with empty text and no words (what offline transcription gives for the same audio), not the network's guess at
silence. Partial and final texts are post-processed as every route's are (a pinyin model writes characters).

A stream with endpointing (:class:`serving.options.StreamOptions`) gets a final per segment as soon as an endpoint
rule closes it (:class:`deepspeech.inference.streaming.EndpointConfig`), with the segment's index and the extent of
its speech in seconds of the stream; a segment with no text sends nothing. Its partials are the open segment's
text. The last segment's final comes after "end" and carries ``"last": true`` (its text may be empty).

Finals with ``alternatives`` > 1 or hotwords are decoded by a beam decoder built for that hotword set (``nbest`` =
the most alternatives a stream may ask for), kept in a small LRU cache: streams with the same hotwords share one.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from deepspeech.decoding.hypothesis import Decoder, Hypothesis
from deepspeech.frontend.audio import SAMPLE_RATE
from deepspeech.frontend.silence import DEFAULT_GATE
from deepspeech.inference.streaming import Segment, StreamingModel, StreamSession
from deepspeech.inference.transcribe import frame_seconds, timed_words
from serving.config import ServerConfig
from serving.metrics import Metrics
from serving.options import MAX_ALTERNATIVES, StreamOptions

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]
# (hotwords, hotword_weight, nbest) -> a beam decoder; None: the server has no way to build one
DecoderFactory = Callable[[tuple[str, ...], float | None, int], Decoder]
MAX_DECODERS = 8  # distinct hotword sets kept built at once (least recently used dropped first)


class Overloaded(RuntimeError):
    """No room for another stream (or the server is draining)."""


@dataclass(eq=False)
class Stream:
    id: int
    session: StreamSession
    emit: Emit
    rate: int = SAMPLE_RATE  # Hz of the audio fed to it
    pending: list[np.ndarray] = field(default_factory=list)
    pending_samples: int = 0
    pending_since: float | None = None  # arrival time of the oldest unprocessed audio
    received_samples: int = 0
    ended_at: float | None = None  # when the client said "end"
    abandoned: bool = False
    done: bool = False
    options: StreamOptions = StreamOptions()
    decoder: Decoder | None = None  # of the finals (None: greedy)
    segments: int = 0  # segment finals sent
    partial_ms: float = -1e9  # audio_ms of the last partial sent

    def ready(self) -> bool:
        return not self.done and not self.abandoned and (self.pending_samples > 0 or self.ended_at is not None)


class DecoderCache:
    """The decoders of streams' finals: the server's own, unless a stream asks for alternatives or hotwords; then a
    beam decoder for its hotword set, built once per distinct set and weight (nbest = :data:`MAX_ALTERNATIVES`, so
    every stream of a set shares it), the ``size`` most recently used kept."""

    def __init__(self, default: Decoder | None, factory: DecoderFactory | None, size: int = MAX_DECODERS) -> None:
        self.default, self.factory, self.size = default, factory, size
        self._built: OrderedDict[tuple[tuple[str, ...], float | None], Decoder] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._built)

    def get(self, options: StreamOptions) -> Decoder | None:
        """The decoder for a stream's options; raises ValueError (or the decoder's own error) when none can be
        built, with the reason."""
        if options.alternatives == 1 and not options.hotwords:
            return self.default
        if self.factory is None:
            raise ValueError("this server cannot build a beam decoder")
        key = (options.hotwords, options.hotword_weight)
        with self._lock:
            dec = self._built.get(key)
            if dec is not None:
                self._built.move_to_end(key)
                return dec
        dec = self.factory(options.hotwords, options.hotword_weight, MAX_ALTERNATIVES)  # outside the lock: slow
        with self._lock:
            self._built[key] = dec
            while len(self._built) > self.size:
                self._built.popitem(last=False)
        return dec


class BatchDispatcher:
    def __init__(self, engine: StreamingModel, cfg: ServerConfig, metrics: Metrics,
                 decoder: Decoder | None = None, decoder_factory: DecoderFactory | None = None) -> None:
        self.engine, self.cfg, self.metrics, self.decoder = engine, cfg, metrics, decoder
        self.decoders = DecoderCache(decoder, decoder_factory)
        self.frame_s = frame_seconds(engine.am)
        self._cond = threading.Condition()
        self._streams: dict[int, Stream] = {}
        self._ids = itertools.count(1)
        self._stop = False
        self.draining = False
        self._thread = threading.Thread(target=self._run, name="batch-dispatch", daemon=True)

    # ---------------------------------------------------------------------------------- called by connections

    def start(self) -> None:
        self._thread.start()

    def warm_up(self) -> float:
        """One small batched step and final decode of two streams, before the server accepts connections: native
        kernels load, allocators and (beam) decoder warm up here, not in the first client's request. Returns the
        seconds it took."""
        t0 = time.perf_counter()
        if self.cfg.threads > 0:
            torch.set_num_threads(self.cfg.threads)
        noise = np.random.default_rng(0).normal(0, 0.05, SAMPLE_RATE // 2).astype(np.float32)
        sessions = [self.engine.new_session(), self.engine.new_session()]
        self.engine.step(sessions, [noise, noise[: SAMPLE_RATE // 4]], [True, True])
        for sess in sessions:
            self.engine.partial_text(sess)
            self.engine.final_hypothesis(sess, self.decoder)
        return time.perf_counter() - t0

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=10)

    @property
    def active(self) -> int:
        with self._cond:
            return len(self._streams)

    def decoder_for(self, options: StreamOptions) -> Decoder | None:
        """The decoder of a stream's finals (:class:`DecoderCache`; builds one: call it off the event loop)."""
        return self.decoders.get(options)

    def open(self, emit: Emit, limit: int | None = None, sample_rate: int = SAMPLE_RATE,
             options: StreamOptions | None = None, decoder: Decoder | None = None) -> Stream:
        """A new stream of audio at ``sample_rate`` Hz (``options.sample_rate`` when options are given), its finals
        decoded by ``decoder`` (the server's when None: see :meth:`decoder_for`); raises :class:`Overloaded` when
        ``limit`` streams are open or the server is draining."""
        options = options if options is not None else StreamOptions(sample_rate=sample_rate)
        sample_rate = options.sample_rate
        with self._cond:
            if self.draining:
                raise Overloaded("server is shutting down")
            if limit is not None and len(self._streams) >= limit:
                raise Overloaded(f"too many concurrent streams (limit {limit})")
            session = self.engine.new_session(sample_rate, DEFAULT_GATE, options.endpoint)
            s = Stream(next(self._ids), session, emit, sample_rate, options=options,
                       decoder=decoder if decoder is not None else self.decoder)
            self._streams[s.id] = s
            self.metrics.active_streams.set(len(self._streams))
            return s

    def feed(self, s: Stream, audio: np.ndarray) -> None:
        """Queue float32 audio at the stream's rate for ``s``."""
        if audio.size == 0:
            return
        with self._cond:
            if s.ended_at is not None or s.abandoned:
                raise RuntimeError("stream already ended")
            s.pending.append(audio)
            s.pending_samples += audio.size
            s.received_samples += audio.size
            if s.pending_since is None:
                s.pending_since = time.perf_counter()
            self._cond.notify()

    def end(self, s: Stream) -> None:
        """The client has sent everything: process what is left, then emit the final result."""
        with self._cond:
            if s.ended_at is None:
                s.ended_at = time.perf_counter()
                self._cond.notify()

    def abandon(self, s: Stream) -> None:
        """The connection went away (or broke the protocol): forget the stream."""
        with self._cond:
            s.abandoned = True
            self._remove(s)

    def _remove(self, s: Stream) -> None:
        if self._streams.pop(s.id, None) is not None:
            self.metrics.active_streams.set(len(self._streams))
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block until no stream is open (True) or ``timeout`` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._streams:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    # ---------------------------------------------------------------------------------- the worker

    def _take_batch(self) -> list[tuple[Stream, np.ndarray, bool]] | None:
        """Wait for ready streams; take up to max_batch of them, oldest audio first (called with the lock)."""
        while not self._stop:
            ready = [s for s in self._streams.values() if s.ready()]
            if ready:
                break
            self._cond.wait()
        else:
            return None
        if self.cfg.max_wait_ms > 0 and len(ready) < self.cfg.max_batch:
            deadline = time.perf_counter() + self.cfg.max_wait_ms / 1000
            while len(ready) < self.cfg.max_batch and (left := deadline - time.perf_counter()) > 0:
                self._cond.wait(left)
                ready = [s for s in self._streams.values() if s.ready()]
        ready.sort(key=lambda s: s.pending_since if s.pending_since is not None else s.ended_at or 0.0)
        batch = []
        for s in ready[: self.cfg.max_batch]:
            cap = int(self.cfg.max_step_s * s.rate)
            audio = np.concatenate(s.pending) if s.pending else np.zeros(0, np.float32)
            take, rest = audio[:cap], audio[cap:]
            s.pending = [rest] if rest.size else []
            s.pending_samples = rest.size
            final = s.ended_at is not None and rest.size == 0
            batch.append((s, take, final))
        return batch

    def _run(self) -> None:
        if self.cfg.threads > 0:
            torch.set_num_threads(self.cfg.threads)
        while True:
            with self._cond:
                batch = self._take_batch()
                if batch is None:
                    return
                since = {s.id: s.pending_since for s, _, _ in batch}
                for s, _, _ in batch:
                    s.pending_since = time.perf_counter() if s.pending_samples else None
            try:
                self._step(batch, since)
            except Exception as e:  # a bug must not kill the worker: fail these streams, keep serving
                log.error("batched step of %d streams failed: %s: %s", len(batch), type(e).__name__, e)
                log.debug("batched step failure", exc_info=True)
                for s, _, _ in batch:
                    self._fail(s, f"internal error: {type(e).__name__}")

    def _step(self, batch: list[tuple[Stream, np.ndarray, bool]], since: dict[int, float | None]) -> None:
        t0 = time.perf_counter()
        self.engine.step([s.session for s, _, _ in batch], [a for _, a, _ in batch], [f for _, _, f in batch])
        t1 = time.perf_counter()
        self.metrics.step_seconds.observe(t1 - t0)
        self.metrics.batch_size.observe(len(batch))
        self.metrics.audio_seconds.inc(sum(a.size / s.rate for s, a, _ in batch))
        for s, audio, final in batch:
            audio_ms = round(s.session.seconds * 1000, 3)
            segmented = s.options.endpoint is not None
            closed, s.session.segments = s.session.segments, []
            last_seg = closed.pop() if final and closed and closed[-1].rule == 0 else None
            if segmented:
                for seg in closed:
                    msg = self._segment_final(s, seg, audio_ms, last=False)
                    if msg["text"]:
                        s.emit(msg)
            if audio.size and audio_ms - s.partial_ms >= s.options.partial_interval_ms:
                s.partial_ms = audio_ms
                text = self.engine.partial_text(s.session) if s.session.speech else ""
                msg = {"type": "partial", "text": text, "audio_ms": audio_ms}
                s.emit({**msg, "segment": s.segments} if segmented else msg)
                if since[s.id] is not None:
                    self.metrics.partial_latency.observe(time.perf_counter() - since[s.id])
            if final and segmented:
                end_s = s.session.seconds
                empty = Segment(end_s, end_s, end_s, end_s, np.zeros((0, self.engine.vocab), np.float32), False, 0)
                s.emit(self._segment_final(s, last_seg if last_seg is not None else empty, audio_ms, last=True))
            elif final:
                text, words = "", []
                extra: dict[str, Any] = {}
                if s.session.speech:
                    logp = s.session.all_log_probs(self.engine.vocab)
                    hyps = self._decode(s, logp)
                    text = hyps[0].text
                    words = [w.to_json() for w in timed_words(hyps[0].words, logp, self.frame_s)]
                    extra = self._alternatives(s, hyps)
                s.emit({"type": "final", "text": text, "audio_ms": audio_ms, "words": words, **extra})
            if final:
                if s.ended_at is not None:
                    self.metrics.final_latency.observe(time.perf_counter() - s.ended_at)
                with self._cond:
                    s.done = True
                    self._remove(s)

    def _decode(self, s: Stream, logp: np.ndarray) -> list[Hypothesis]:
        """(T, V) log-probabilities of a segment -> its post-processed N-best list, best first."""
        return self.engine.recognizer.with_decoder(s.decoder).decode(logp)

    def _alternatives(self, s: Stream, hyps: list[Hypothesis]) -> dict[str, Any]:
        """``{"alternatives": [{"text", "confidence"}, ...]}`` for a stream that asked for more than one: the N best
        with a softmax over their total scores (the decoder's, LM included); nothing otherwise."""
        if s.options.alternatives <= 1:
            return {}
        top = hyps[: s.options.alternatives]
        scores = np.array([h.score for h in top], np.float64)
        p = np.exp(scores - scores.max())
        p /= p.sum()
        return {"alternatives": [{"text": h.text, "confidence": round(float(c), 4)} for h, c in zip(top, p,
                                                                                                       strict=True)]}

    def _segment_final(self, s: Stream, seg: Segment, audio_ms: float, last: bool) -> dict[str, Any]:
        """The final of one segment: its text, words and alternatives (its output decoded as that of its audio
        alone), and its ``start`` and ``end``: the extent of its audio above the silence level, in seconds of the
        stream."""
        text, words, extra = "", [], {}
        if seg.speech and seg.log_probs.shape[0]:
            hyps = self._decode(s, seg.log_probs)
            text = hyps[0].text
            words = [{**w.to_json(), "start": round(seg.start_s + w.start, 3), "end": round(seg.start_s + w.end, 3)}
                     for w in timed_words(hyps[0].words, seg.log_probs, self.frame_s)]
            extra = self._alternatives(s, hyps)
        msg = {"type": "final", "segment": s.segments, "start": round(seg.speech_start_s, 3),
               "end": round(seg.speech_end_s, 3), "text": text,
               "words": words, "audio_ms": audio_ms, "last": last, **extra}
        if text or last:
            s.segments += 1
        return msg

    def _fail(self, s: Stream, message: str) -> None:
        s.emit({"type": "error", "message": message})
        with self._cond:
            s.done = True
            self._remove(s)
