"""The streaming state of the Deep Speech 2 model (DS2 section 7): what a unidirectional model's ``step`` carries
between calls (:class:`StepState`: per convolution and the lookahead the input frames not yet consumed,
:class:`FrameBuffer`; per recurrent layer the hidden state, :class:`RecurrentState`), and the buffer arithmetic the
layers' ``step`` methods share (:func:`advance`, :func:`busy_rows`, :func:`scatter_rows`).

Batched over B streams; row i of a batch is stream i. A stream's own state is a batch of one: the streaming engine
gathers its sessions' states with ``cat`` and gives each session its ``row`` of the new state (cut out only when
needed: a batch stepped again as a whole is reused as it is).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class FrameBuffer:
    """Input frames a layer has received but not yet consumed (convolutions, the lookahead).

    ``frames`` (B, ..., n), time last; row i holds its frames on its first ``lengths[i]`` positions, anything after
    is ignored. The buffers a step returns for one stream, and those ``split`` returns, are exactly ``lengths[0]``
    wide, so streams at the same position gather with one ``torch.cat``.
    """

    frames: Tensor
    lengths: tuple[int, ...]

    @staticmethod
    def cat(buffers: Sequence[FrameBuffer]) -> FrameBuffer:
        """The rows of ``buffers`` in order, as one batch (one ``torch.cat`` when all are equally wide)."""
        if len(buffers) == 1:
            return buffers[0]
        lengths = tuple(n for b in buffers for n in b.lengths)
        width = max(lengths, default=0)
        frames = [b.frames for b in buffers]
        if all(f.shape[-1] == width for f in frames):
            return FrameBuffer(_cat_time(frames, 0), lengths)
        out = _zeros_time_major(frames[0], len(lengths), *frames[0].shape[1:-1], width)
        row = 0
        for f in frames:
            w = min(f.shape[-1], width)
            out[row: row + f.shape[0], ..., :w] = f[..., :w]
            row += f.shape[0]
        return FrameBuffer(out, lengths)

    def row(self, i: int) -> FrameBuffer:
        """Row i's buffer, trimmed to its length (a view): ``split()[i]``."""
        n = self.lengths[i]
        frames = self.frames[i: i + 1]
        return FrameBuffer(frames if frames.shape[-1] == n else frames[..., :n], (n,))

    def split(self) -> list[FrameBuffer]:
        """One buffer per row, each trimmed to its length (views, no copies)."""
        if len(self.lengths) == 1 and self.frames.shape[-1] == self.lengths[0]:
            return [self]
        if all(n == self.frames.shape[-1] for n in self.lengths):
            return [FrameBuffer(f, (n,)) for f, n in zip(self.frames.split(1), self.lengths, strict=True)]
        return [FrameBuffer(self.frames[i: i + 1, ..., :n], (n,)) for i, n in enumerate(self.lengths)]


@dataclass(frozen=True)
class RecurrentState:
    """A unidirectional recurrent layer's state after the frames seen so far: h (B, H), and c (B, H) for LSTMs."""

    h: Tensor
    c: Tensor | None = None

    @staticmethod
    def cat(states: Sequence[RecurrentState]) -> RecurrentState:
        if len(states) == 1:
            return states[0]
        c = None if states[0].c is None else torch.cat([s.c for s in states])  # type: ignore[misc]
        return RecurrentState(torch.cat([s.h for s in states]), c)

    def row(self, i: int) -> RecurrentState:
        return RecurrentState(self.h[i: i + 1], None if self.c is None else self.c[i: i + 1])

    def split(self) -> list[RecurrentState]:
        if self.h.shape[0] == 1:
            return [self]
        if self.c is None:
            return [RecurrentState(h) for h in self.h.split(1)]
        return [RecurrentState(h, c) for h, c in zip(self.h.split(1), self.c.split(1), strict=True)]


@dataclass(frozen=True)
class StepState:
    """What :meth:`DeepSpeech2.step` carries between calls for B streams: per convolution layer and for the
    lookahead the input frames not yet consumed, per recurrent layer the hidden state."""

    convs: tuple[FrameBuffer, ...]
    rnns: tuple[RecurrentState, ...]
    lookahead: FrameBuffer | None

    @property
    def batch_size(self) -> int:
        return self.rnns[0].h.shape[0]

    @staticmethod
    def cat(states: Sequence[StepState]) -> StepState:
        """The streams of ``states`` in order, as one batch."""
        if len(states) == 1:
            return states[0]
        convs = tuple(FrameBuffer.cat(layer) for layer in zip(*(s.convs for s in states), strict=True))
        rnns = tuple(RecurrentState.cat(layer) for layer in zip(*(s.rnns for s in states), strict=True))
        la = None if states[0].lookahead is None else FrameBuffer.cat([s.lookahead for s in states])  # type: ignore[misc]
        return StepState(convs, rnns, la)

    def row(self, i: int) -> StepState:
        """Stream i's own state (views of this one's tensors): ``split()[i]`` without cutting the other rows."""
        la = None if self.lookahead is None else self.lookahead.row(i)
        return StepState(tuple(c.row(i) for c in self.convs), tuple(r.row(i) for r in self.rnns), la)

    def split(self) -> list[StepState]:
        """One state per stream (views of this one's tensors)."""
        if self.batch_size == 1:
            return [self]
        convs = list(zip(*(c.split() for c in self.convs), strict=True))
        rnns = list(zip(*(r.split() for r in self.rnns), strict=True))
        las = self.lookahead.split() if self.lookahead is not None else [None] * self.batch_size
        return [StepState(c, r, la) for c, r, la in zip(convs, rnns, las, strict=True)]


def time_major(frames: Tensor) -> bool:
    """Whether ``frames`` (B, ..., n) is stored time-major: a view of a contiguous tensor of its dimensions after
    the batch in reverse order ((B, H, n) of (B, n, H); (B, C, F, n) of (B, n, F, C)), so each frame's values lie
    side by side, as the features (B, T, F), the recurrent outputs (B, T, H) and the convolutions' step outputs
    arrive. The step keeps every buffer in that layout (:meth:`FrameBuffer.cat`, :func:`advance`, the layers'
    ``initial_state``): appending frames is then one contiguous copy per row instead of a transposing gather."""
    return frames.dim() >= 2 and frames.permute(_reversed(frames.dim())).is_contiguous()


def _reversed(dim: int) -> tuple[int, ...]:
    """The batch dimension, then the others in reverse order: the time-major storage order (its own inverse)."""
    return (0, *range(dim - 1, 0, -1))


def _cat_time(parts: Sequence[Tensor], dim: int) -> Tensor:
    """torch.cat along ``dim`` (0: rows, -1: time), time-major out (one contiguous copy per row for time-major
    parts)."""
    order = _reversed(parts[0].dim())
    return torch.cat([p.permute(order) for p in parts], dim=0 if dim == 0 else 1).permute(order)


def _copy_time_major(t: Tensor) -> Tensor:
    """A compact time-major copy of t."""
    order = _reversed(t.dim())
    return t.permute(order).contiguous().permute(order)


def _zeros_time_major(like: Tensor, *shape: int) -> Tensor:
    """Zeros of ``shape`` (B, ..., n), like's dtype and device, time-major."""
    order = _reversed(len(shape))
    return like.new_zeros([shape[d] for d in order]).permute(order)


def advance(buf: FrameBuffer, x: Tensor, lengths: Sequence[int], final: Sequence[bool], kernel: int, stride: int,
             right_pad: int) -> tuple[Tensor, list[int], list[int], FrameBuffer]:
    """Append each row's new frames to its buffer for a kernel-wide window moved by ``stride``.

    buf: the rows' pending frames; x (B, ..., T): new frames, row i valid on its first lengths[i]; a row whose
    ``final`` is set also gets ``right_pad`` zero frames (the whole-utterance layer's right padding).
    -> (window (B, ..., n): row i's frames on its first lens[i] positions, zeros after; lens; counts: the outputs
    each row's window now completes; the new buffer: row i's frames from counts[i] * stride on).
    When every row is in the same position (the usual case: streams sending equal frame sizes) that is one
    ``torch.cat``; else one copy per piece. The window and the buffer come out time-major (:func:`time_major`).
    """
    old_n = buf.lengths
    lens = [a + b + (right_pad if fin else 0) for a, b, fin in zip(old_n, lengths, final, strict=True)]
    counts = [0 if n < kernel else (n - kernel) // stride + 1 for n in lens]
    if (len(set(old_n)) == 1 and buf.frames.shape[-1] == old_n[0] and len(set(lengths)) == 1
            and x.shape[-1] == lengths[0] and len(set(lens)) == 1):
        window = _cat_time([buf.frames, x], -1)
        if lens[0] > window.shape[-1]:
            window = F.pad(window, (0, lens[0] - window.shape[-1]))
        start = counts[0] * stride
        # A copy: the kept frames must not hold on to the whole window.
        return window, lens, counts, FrameBuffer(_copy_time_major(window[..., start:]), (lens[0] - start,) * len(lens))
    window = _zeros_time_major(x, *x.shape[:-1], max(lens))
    for i, (a, b) in enumerate(zip(old_n, lengths, strict=True)):
        window[i, ..., :a] = buf.frames[i, ..., :a]
        window[i, ..., a: a + b] = x[i, ..., :b]
    starts = [m * stride for m in counts]
    kept = [n - s for n, s in zip(lens, starts, strict=True)]
    if len(set(starts)) == 1:
        frames = _copy_time_major(window[..., starts[0]: max(lens)])
    else:
        frames = _zeros_time_major(window, *window.shape[:-1], max(kept))
        for i, (s, n) in enumerate(zip(starts, lens, strict=True)):
            frames[i, ..., : n - s] = window[i, ..., s:n]
    return window, lens, counts, FrameBuffer(frames, tuple(kept))


def busy_rows(window: Tensor, lens: Sequence[int], counts: Sequence[int]) -> tuple[list[int], Tensor]:
    """The rows with at least one output to compute, and their windows cut to the longest of them."""
    rows = [i for i, m in enumerate(counts) if m > 0]
    if len(rows) < len(counts):
        window = window[rows]
    return rows, window[..., : max(lens[i] for i in rows)]


def scatter_rows(y: Tensor, rows: list[int], batch: int) -> Tensor:
    """y (len(rows), ...) -> (batch, ...) with row j of y at rows[j], zeros elsewhere."""
    if len(rows) == batch:
        return y
    out = y.new_zeros(batch, *y.shape[1:])
    out[rows] = y
    return out
