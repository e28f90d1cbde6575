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
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from deepspeech.decoding.hypothesis import Decoder
from deepspeech.frontend.audio import SAMPLE_RATE
from deepspeech.frontend.silence import DEFAULT_GATE
from deepspeech.inference.streaming import StreamingModel, StreamSession
from deepspeech.inference.transcribe import frame_seconds, timed_words
from serving.config import ServerConfig
from serving.metrics import Metrics

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]


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

    def ready(self) -> bool:
        return not self.done and not self.abandoned and (self.pending_samples > 0 or self.ended_at is not None)


class BatchDispatcher:
    def __init__(self, engine: StreamingModel, cfg: ServerConfig, metrics: Metrics,
                 decoder: Decoder | None = None) -> None:
        self.engine, self.cfg, self.metrics, self.decoder = engine, cfg, metrics, decoder
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

    def open(self, emit: Emit, limit: int | None = None, sample_rate: int = SAMPLE_RATE) -> Stream:
        """A new stream of audio at ``sample_rate`` Hz; raises :class:`Overloaded` when ``limit`` streams are open
        or the server is draining."""
        with self._cond:
            if self.draining:
                raise Overloaded("server is shutting down")
            if limit is not None and len(self._streams) >= limit:
                raise Overloaded(f"too many concurrent streams (limit {limit})")
            s = Stream(next(self._ids), self.engine.new_session(sample_rate, DEFAULT_GATE), emit, sample_rate)
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
            if audio.size:
                text = self.engine.partial_text(s.session) if s.session.speech else ""
                s.emit({"type": "partial", "text": text, "audio_ms": audio_ms})
                if since[s.id] is not None:
                    self.metrics.partial_latency.observe(time.perf_counter() - since[s.id])
            if final:
                text, words = "", []
                if s.session.speech:
                    logp = s.session.all_log_probs(self.engine.vocab)
                    hyp = self.engine.final_hypothesis(s.session, self.decoder)
                    text = hyp.text
                    words = [w.to_json() for w in timed_words(hyp.words, logp, self.frame_s)]
                s.emit({"type": "final", "text": text, "audio_ms": audio_ms, "words": words})
                if s.ended_at is not None:
                    self.metrics.final_latency.observe(time.perf_counter() - s.ended_at)
                with self._cond:
                    s.done = True
                    self._remove(s)

    def _fail(self, s: Stream, message: str) -> None:
        s.emit({"type": "error", "message": message})
        with self._cond:
            s.done = True
            self._remove(s)
