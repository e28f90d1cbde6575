"""The Deep Speech 2 acoustic model family (Amodei et al., arXiv 1512.02595).

spectrogram (B, T, F) -> 1-3 2D convolutions over (frequency, time) with clipped ReLU (section 3.5, Table 4)
-> 1-7 recurrent layers (GRU, LSTM or plain RNN; bi- or unidirectional, directions summed), each with
sequence-wise batch normalisation of its input (section 3.2) -> lookahead (row) convolution for unidirectional
models (section 3.5) -> batch norm + linear to characters -> per-frame logits for CTC (section 3.1).

Variable lengths are exact: every layer masks padded frames, batch statistics are computed over valid frames
only and can be summed across data-parallel ranks, so a padded batch gives the same numbers per utterance as the
utterances one by one, and a batch split across ranks the same numbers as the whole batch in one process.

Sequence-wise batch norm here normalises the layer input x rather than the projection W x of DS2 eq. (4): nn.GRU
owns W, and normalising x keeps the fused cuDNN/native kernels usable; it is the form deepspeech.pytorch uses.

Streaming (DS2 section 7): beside ``forward`` each layer of a unidirectional model has ``step``, which takes the
next frames of B streams and their carried state (:class:`StepState`: per convolution and the lookahead the input
frames not yet consumed, :class:`FrameBuffer`; per recurrent layer the hidden state, :class:`RecurrentState`) and
returns the outputs those frames complete and the new state. Batch norm runs on its running statistics (eval mode),
so every layer is per frame or causal within its buffer, and the step outputs of a stream, concatenated over its
calls, equal ``forward`` on the whole utterance up to float rounding (``tests/test_model_step.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from deepspeech.native.gru import FusedGRU
from deepspeech.parallel.mappings import all_reduce_sum_with_grad

CLIP = 20.0  # clipped ReLU ceiling, sigma(x) = min(max(x, 0), 20) (DS2 section 3.1)


@dataclass(frozen=True)
class ConvSpec:
    """One 2D convolution: kernel and stride as (frequency, time)."""

    channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]

    def __post_init__(self) -> None:
        if self.channels < 1 or min(self.kernel) < 1 or min(self.stride) < 1:
            raise ValueError(f"invalid convolution {self}")
        if self.kernel[0] % 2 == 0 or self.kernel[1] % 2 == 0:
            raise ValueError("convolution kernels must be odd (symmetric padding)")


def ds2_convs(n: int, channels: tuple[int, ...] = (32, 32, 96)) -> tuple[ConvSpec, ...]:
    """DS2 Table 4 front ends: 41x11 stride 2x2, then 21x11 stride 2x1, then 21x11 stride 2x1."""
    if not 1 <= n <= 3:
        raise ValueError("DS2 uses 1 to 3 convolution layers")
    specs = [ConvSpec(channels[0], (41, 11), (2, 2)), ConvSpec(channels[1], (21, 11), (2, 1)),
             ConvSpec(channels[2], (21, 11), (2, 1))]
    return tuple(specs[:n])


@dataclass(frozen=True)
class ModelConfig:
    n_features: int = 161  # spectrogram bins
    vocab_size: int = 29  # output symbols including the CTC blank at 0 (set from the tokenizer)
    convs: tuple[ConvSpec, ...] = field(default_factory=lambda: ds2_convs(2))
    rnn_type: str = "gru"  # gru | lstm | rnn
    rnn_layers: int = 3
    rnn_hidden: int = 256
    bidirectional: bool = True
    lookahead: int = 0  # future frames seen by the row convolution (unidirectional models only; 0 = none)
    dropout: float = 0.0  # dropout on each recurrent layer's output, training only

    def __post_init__(self) -> None:
        if not 1 <= len(self.convs) <= 3:
            raise ValueError("1 to 3 convolution layers")
        if not 1 <= self.rnn_layers <= 7:
            raise ValueError("1 to 7 recurrent layers")
        if self.rnn_type not in {"gru", "lstm", "rnn"}:
            raise ValueError(f"rnn_type must be gru, lstm or rnn, got {self.rnn_type!r}")
        if self.lookahead < 0 or (self.lookahead > 0 and self.bidirectional):
            raise ValueError("lookahead needs a unidirectional model and must be >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if self.vocab_size < 2 or self.rnn_hidden < 1:
            raise ValueError("vocab_size >= 2 and rnn_hidden >= 1")

    @property
    def time_stride(self) -> int:
        s = 1
        for c in self.convs:
            s *= c.stride[1]
        return s

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Input frame counts -> output frame counts after the convolutions."""
        for c in self.convs:
            k, s = c.kernel[1], c.stride[1]
            lengths = torch.div(lengths + 2 * (k // 2) - k, s, rounding_mode="floor") + 1
        return lengths

    def conv_out_features(self) -> int:
        f = self.n_features
        for c in self.convs:
            k, s = c.kernel[0], c.stride[0]
            f = (f + 2 * (k // 2) - k) // s + 1
        return f * self.convs[-1].channels


def time_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool, True on valid frames."""
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


# ------------------------------------------------------------------------------------------- streaming state
# Batched over B streams; row i of a batch is stream i. A stream's own state is a batch of one: the streaming
# engine gathers its sessions' states with ``cat`` and scatters the new state with ``split``.


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
            return FrameBuffer(torch.cat(frames), lengths)
        out = frames[0].new_zeros(len(lengths), *frames[0].shape[1:-1], width)
        row = 0
        for f in frames:
            w = min(f.shape[-1], width)
            out[row: row + f.shape[0], ..., :w] = f[..., :w]
            row += f.shape[0]
        return FrameBuffer(out, lengths)

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

    def split(self) -> list[StepState]:
        """One state per stream (views of this one's tensors)."""
        if self.batch_size == 1:
            return [self]
        convs = list(zip(*(c.split() for c in self.convs), strict=True))
        rnns = list(zip(*(r.split() for r in self.rnns), strict=True))
        las = self.lookahead.split() if self.lookahead is not None else [None] * self.batch_size
        return [StepState(c, r, la) for c, r, la in zip(convs, rnns, las, strict=True)]


def _advance(buf: FrameBuffer, x: Tensor, lengths: Sequence[int], final: Sequence[bool], kernel: int, stride: int,
             right_pad: int) -> tuple[Tensor, list[int], list[int], FrameBuffer]:
    """Append each row's new frames to its buffer for a kernel-wide window moved by ``stride``.

    buf: the rows' pending frames; x (B, ..., T): new frames, row i valid on its first lengths[i]; a row whose
    ``final`` is set also gets ``right_pad`` zero frames (the whole-utterance layer's right padding).
    -> (window (B, ..., n): row i's frames on its first lens[i] positions, zeros after; lens; counts: the outputs
    each row's window now completes; the new buffer: row i's frames from counts[i] * stride on).
    When every row is in the same position (the usual case: streams sending equal frame sizes) that is one
    ``torch.cat``; else one copy per piece.
    """
    old_n = buf.lengths
    lens = [a + b + (right_pad if fin else 0) for a, b, fin in zip(old_n, lengths, final, strict=True)]
    counts = [0 if n < kernel else (n - kernel) // stride + 1 for n in lens]
    if (len(set(old_n)) == 1 and buf.frames.shape[-1] == old_n[0] and len(set(lengths)) == 1
            and x.shape[-1] == lengths[0] and len(set(lens)) == 1):
        window = torch.cat([buf.frames, x], dim=-1)
        if lens[0] > window.shape[-1]:
            window = F.pad(window, (0, lens[0] - window.shape[-1]))
        start = counts[0] * stride
        # A copy: the kept frames must not hold on to the whole window.
        return window, lens, counts, FrameBuffer(window[..., start:].clone(), (lens[0] - start,) * len(lens))
    window = x.new_zeros(*x.shape[:-1], max(lens))
    for i, (a, b) in enumerate(zip(old_n, lengths, strict=True)):
        window[i, ..., :a] = buf.frames[i, ..., :a]
        window[i, ..., a: a + b] = x[i, ..., :b]
    starts = [m * stride for m in counts]
    kept = [n - s for n, s in zip(lens, starts, strict=True)]
    if len(set(starts)) == 1:
        frames = window[..., starts[0]: max(lens)].clone()
    else:
        frames = window.new_zeros(*window.shape[:-1], max(kept))
        for i, (s, n) in enumerate(zip(starts, lens, strict=True)):
            frames[i, ..., : n - s] = window[i, ..., s:n]
    return window, lens, counts, FrameBuffer(frames, tuple(kept))


def _busy_rows(window: Tensor, lens: Sequence[int], counts: Sequence[int]) -> tuple[list[int], Tensor]:
    """The rows with at least one output to compute, and their windows cut to the longest of them."""
    rows = [i for i, m in enumerate(counts) if m > 0]
    if len(rows) < len(counts):
        window = window[rows]
    return rows, window[..., : max(lens[i] for i in rows)]


def _scatter_rows(y: Tensor, rows: list[int], batch: int) -> Tensor:
    """y (len(rows), ...) -> (batch, ...) with row j of y at rows[j], zeros elsewhere."""
    if len(rows) == batch:
        return y
    out = y.new_zeros(batch, *y.shape[1:])
    out[rows] = y
    return out


class MaskedBatchNorm(nn.Module):
    """Batch norm whose statistics cover valid (unpadded) positions only, optionally summed over a process group.

    DS2 section 3.2 ("sequence-wise" normalisation: statistics over all time steps of the minibatch).
    ``channel_dim`` selects the normalised dimension; ``mask`` is broadcastable to ``x`` with size 1 there.
    """

    def __init__(self, num_features: int, channel_dim: int, eps: float = 1e-5, momentum: float = 0.1,
                 group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        self.channel_dim, self.eps, self.momentum, self.group = channel_dim, eps, momentum, group
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _shape(self, x: torch.Tensor) -> list[int]:
        shape = [1] * x.dim()
        shape[self.channel_dim] = -1
        return shape

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(x.dtype)
        if not self.training:
            return self.step(x) * m
        shape = self._shape(x)
        cd = self.channel_dim % x.dim()
        dims = [d for d in range(x.dim()) if d != cd]
        positions = m.expand([1 if d == cd else x.shape[d] for d in range(x.dim())]).sum()
        count = positions.expand(x.shape[cd])
        s = all_reduce_sum_with_grad(torch.stack([(x * m).sum(dims), count]), self.group)
        n = s[1].clamp_min(1.0)
        mean = s[0] / n
        centred = (x - mean.view(shape)) * m
        var = all_reduce_sum_with_grad(centred.square().sum(dims), self.group) / n
        with torch.no_grad():
            unbiased = var * n / (n - 1).clamp_min(1.0)
            self.running_mean.lerp_(mean.detach().float(), self.momentum)
            self.running_var.lerp_(unbiased.detach().float(), self.momentum)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return (y * self.weight.view(shape) + self.bias.view(shape)) * m

    def step(self, x: Tensor) -> Tensor:
        """Streaming: every position of x valid, normalised on the running statistics (eval mode); the same numbers
        as ``forward`` in eval mode on its valid positions."""
        shape = self._shape(x)
        mean, var = self.running_mean.to(x.dtype), self.running_var.to(x.dtype)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape)


class ConvBlock(nn.Module):
    """Conv2d over (frequency, time) -> masked batch norm -> clipped ReLU -> zero padded frames."""

    def __init__(self, in_ch: int, spec: ConvSpec, group: dist.ProcessGroup | None) -> None:
        super().__init__()
        self.spec = spec
        pad = (spec.kernel[0] // 2, spec.kernel[1] // 2)
        self.conv = nn.Conv2d(in_ch, spec.channels, spec.kernel, spec.stride, pad, bias=False)
        self.bn = MaskedBatchNorm(spec.channels, channel_dim=1, group=group)
        self._step_cache: tuple[tuple[int, int, torch.device], Tensor] | None = None  # see _step_weight

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, F, T) -> (B, C', F', T'), lengths (B,) -> (B,).

        The convolution runs in channels-last layout (input and a channels-last copy of the weight; the parameter
        and its gradient stay in the default layout, so state dicts do not change): oneDNN's NHWC kernels ran the
        small preset's two convolutions, forward and backward on 16 x 7 s, in 1.1 s instead of 2.2 s on 2 cores
        (the 1-channel first layer 3.8x, the second 1.6x). Another algorithm, so other float rounding (~1e-6)."""
        cl = torch.channels_last
        x = F.conv2d(x.contiguous(memory_format=cl), self.conv.weight.contiguous(memory_format=cl), None,
                     self.conv.stride, self.conv.padding)
        k, s = self.spec.kernel[1], self.spec.stride[1]
        lengths = torch.div(lengths + 2 * (k // 2) - k, s, rounding_mode="floor") + 1
        mask = time_mask(lengths, x.shape[-1])[:, None, None, :]
        return F.hardtanh(self.bn(x, mask), 0.0, CLIP) * mask, lengths

    def initial_state(self, batch: int, in_freq: int) -> FrameBuffer:
        """p = k_t // 2 zero frames (B, C, F, p): the whole-utterance convolution's left padding."""
        w = self.conv.weight
        p = self.spec.kernel[1] // 2
        return FrameBuffer(w.new_zeros(batch, self.conv.in_channels, in_freq, p), (p,) * batch)

    def step(self, x: Tensor, lengths: Sequence[int], state: FrameBuffer, final: Sequence[bool]
             ) -> tuple[Tensor, list[int], FrameBuffer]:
        """Streaming (eval mode): x (B, C, F, T), row i's next lengths[i] frames -> (y (B, C', F', T'), row i valid
        on its first out_lengths[i] frames; out_lengths; new state).

        Output frame j of a time kernel k = 2p + 1 with stride s reads input frames j*s - p .. j*s + p, so it is
        computed once frame j*s + p has arrived; the buffer starts with p zero frames and a row's final call adds p
        (the whole-utterance convolution's zero padding). Rows may be at different positions: each keeps its own
        valid outputs of one batched convolution over right-padded windows."""
        (kf, kt), (sf, st) = self.spec.kernel, self.spec.stride
        window, lens, counts, state = _advance(state, x, lengths, final, kt, st, kt // 2)
        b, f_out = len(counts), (x.shape[2] + 2 * (kf // 2) - kf) // sf + 1
        if max(counts) == 0:
            return x.new_zeros(b, self.spec.channels, f_out, 0), counts, state
        rows, window = _busy_rows(window, lens, counts)
        if window.shape[0] == 1:  # oneDNN picks a far slower algorithm for some batch-of-one shapes: add a row
            window = torch.cat([window, torch.zeros_like(window)])
        if window.shape[1] == 1:  # time taps as channels (see _step_weight): (B, 1, F, n) -> (B, kt, F, n')
            window = window[:, 0].unfold(2, kt, st).permute(0, 3, 1, 2)
            st = 1
        y = F.conv2d(window.contiguous(memory_format=torch.channels_last), self._step_weight(), None, (sf, st),
                     (kf // 2, 0))
        y = F.hardtanh(self.bn.step(y), 0.0, CLIP)
        return _scatter_rows(y[: len(rows)], rows, b), counts, state

    def _step_weight(self) -> Tensor:
        """The weight (O, C, kf, kt) as the step runs it, channels-last (oneDNN's fast path for the short time
        windows of a step: about 6x faster for the 2nd DS2 layer at batch 32 on one core). A one-channel layer (the
        first) becomes (O, kt, kf, 1): its kt time taps turn into input channels over a time-unfolded input, so the
        convolution is kt-channel, 1 frame wide. Same sums in another order; oneDNN runs it about 3x faster than the
        one-channel form (48 streams of 100 ms, one core: 6.0 against 19.9 ms). Made once and kept while the
        parameter keeps its storage and version (an optimizer step or ``load_state_dict`` makes it anew)."""
        w = self.conv.weight
        key = None if w.is_inference() else (w.data_ptr(), w._version, w.device)
        if key is not None and self._step_cache is not None and self._step_cache[0] == key:
            return self._step_cache[1]
        v = w.detach()
        if v.shape[1] == 1:
            v = v[:, 0].permute(0, 2, 1).unsqueeze(-1)
        v = v.contiguous(memory_format=torch.channels_last)
        self._step_cache = None if key is None else (key, v)
        return v


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of x (B, T, ...) within its own length; padded frames stay where they are."""
    t = x.shape[1]
    steps = torch.arange(t, device=x.device)[None, :]
    idx = torch.where(steps < lengths[:, None], lengths[:, None] - 1 - steps, steps)  # (B, T)
    return x.gather(1, idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand_as(x))


class RecurrentLayer(nn.Module):
    """Sequence-wise batch norm of the input (skipped on the first layer) -> GRU/LSTM/RNN, directions summed.

    Each direction is a unidirectional recurrence over the whole padded batch (one fused kernel call, no packed
    sequences, whose backward costs O(T^2) on CPU): the forward direction is causal, so padding after the end
    cannot reach valid frames; the backward direction runs on each sequence reversed within its length.
    """

    def __init__(self, cfg: ModelConfig, in_size: int, norm: bool, group: dist.ProcessGroup | None) -> None:
        super().__init__()
        self.bn = MaskedBatchNorm(in_size, channel_dim=-1, group=group) if norm else None
        # GRUs run the native fused kernel (deepspeech/native, same parameter names and numbers as nn.GRU; the
        # PyTorch path when it cannot build or DEEPSPEECH_NATIVE=0).
        kind = {"gru": FusedGRU, "lstm": nn.LSTM, "rnn": nn.RNN}[cfg.rnn_type]
        extra = {"nonlinearity": "relu"} if cfg.rnn_type == "rnn" else {}
        self.rnn = kind(in_size, cfg.rnn_hidden, batch_first=True, **extra)
        self.rnn_reverse = kind(in_size, cfg.rnn_hidden, batch_first=True, **extra) if cfg.bidirectional else None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, I) -> (B, T, H), zero on padded frames."""
        if self.bn is not None:
            x = self.bn(x, mask[..., None])
        out, _ = self.rnn(x)
        if self.rnn_reverse is not None:
            back, _ = self.rnn_reverse(reverse_padded(x, lengths))
            out = out + reverse_padded(back, lengths)
        return out * mask[..., None]

    def initial_state(self, batch: int) -> RecurrentState:
        w = self.rnn.weight_hh_l0
        h = w.new_zeros(batch, self.rnn.hidden_size)
        return RecurrentState(h, h.clone() if isinstance(self.rnn, nn.LSTM) else None)

    def step(self, x: Tensor, lengths: Sequence[int], state: RecurrentState) -> tuple[Tensor, RecurrentState]:
        """Streaming (eval mode, unidirectional): x (B, T, I), row i's next lengths[i] frames -> (y (B, T, H), row i
        valid on its first lengths[i] frames; the state after them). Rows of equal length (the usual case) run the
        fused kernel (:class:`deepspeech.native.gru.FusedGRU` for GRUs) in one call; ragged rows run a packed
        sequence; rows without frames keep their state."""
        if self.rnn_reverse is not None:
            raise ValueError("a bidirectional layer needs the whole utterance; only unidirectional layers step")
        if self.bn is not None:
            x = self.bn.step(x)
        b = len(lengths)
        rows = [i for i, n in enumerate(lengths) if n > 0]
        if not rows:
            return x.new_zeros(b, x.shape[1], self.rnn.hidden_size), state
        h0, c0 = state.h, state.c
        if len(rows) < b:
            x, h0 = x[rows], h0[rows]
            c0 = None if c0 is None else c0[rows]
        hx = h0[None] if c0 is None else (h0[None], c0[None])
        lens = [lengths[i] for i in rows]
        if len(set(lens)) == 1 and x.shape[1] == lens[0]:
            y, new = self.rnn(x, hx)
        else:
            packed = pack_padded_sequence(x, torch.tensor(lens), batch_first=True, enforce_sorted=False)
            y, new = self.rnn(packed, hx)
            y, _ = pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
        h, c = (new[0][0], new[1][0]) if isinstance(new, tuple) else (new[0], None)
        if len(rows) < b:
            idx = torch.tensor(rows, device=h.device)
            h = state.h.index_copy(0, idx, h)
            c = None if c is None else state.c.index_copy(0, idx, c)  # type: ignore[union-attr]
        return _scatter_rows(y, rows, b), RecurrentState(h, c)


class Lookahead(nn.Module):
    """Row convolution (DS2 section 3.5, eq. 5): r_t,i = sum_{j=0..tau} W_i,j h_t+j,i, then clipped ReLU."""

    def __init__(self, hidden: int, context: int) -> None:
        super().__init__()
        self.context = context
        self.conv = nn.Conv1d(hidden, hidden, context + 1, groups=hidden, bias=False)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """h (B, T, H) zero-padded -> (B, T, H)."""
        x = F.pad(h.transpose(1, 2), (0, self.context))
        return F.hardtanh(self.conv(x).transpose(1, 2), 0.0, CLIP) * mask[..., None]

    def initial_state(self, batch: int) -> FrameBuffer:
        """No frames (B, H, 0): the row convolution has no left padding."""
        w = self.conv.weight
        return FrameBuffer(w.new_zeros(batch, w.shape[0], 0), (0,) * batch)

    def step(self, h: Tensor, lengths: Sequence[int], state: FrameBuffer, final: Sequence[bool]
             ) -> tuple[Tensor, list[int], FrameBuffer]:
        """Streaming: h (B, T, H), row i's next lengths[i] frames -> (y (B, T', H), row i valid on its first
        out_lengths[i] frames; out_lengths; new state). Output t needs h_t .. h_t+tau (eq. 5): the buffer (B, H, n)
        keeps the last tau frames, and a row's final call adds tau zero frames (forward's right padding)."""
        window, lens, counts, state = _advance(state, h.transpose(1, 2), lengths, final, self.context + 1, 1,
                                               self.context)
        if max(counts) == 0:
            return h.new_zeros(len(counts), 0, h.shape[2]), counts, state
        rows, window = _busy_rows(window, lens, counts)
        y = F.hardtanh(self.conv(window), 0.0, CLIP).transpose(1, 2)  # (B', T', H)
        return _scatter_rows(y, rows, len(counts)), counts, state


class DeepSpeech2(nn.Module):
    """DS2 acoustic model. ``stats_group``: the data-parallel group over which batch statistics are summed."""

    def __init__(self, cfg: ModelConfig, stats_group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        convs, ch = [], 1
        for spec in cfg.convs:
            convs.append(ConvBlock(ch, spec, stats_group))
            ch = spec.channels
        self.convs = nn.ModuleList(convs)
        in_size = cfg.conv_out_features()
        self.rnns = nn.ModuleList(
            RecurrentLayer(cfg, in_size if i == 0 else cfg.rnn_hidden, norm=i > 0, group=stats_group)
            for i in range(cfg.rnn_layers)
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.lookahead = Lookahead(cfg.rnn_hidden, cfg.lookahead) if cfg.lookahead > 0 else None
        self.out_bn = MaskedBatchNorm(cfg.rnn_hidden, channel_dim=-1, group=stats_group)
        self.fc = nn.Linear(cfg.rnn_hidden, cfg.vocab_size)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, T, F) normalised and zero-padded, lengths (B,) -> logits (B, T', V), lengths (B,)."""
        x = feats.transpose(1, 2).unsqueeze(1)  # (B, 1, F, T)
        x = x * time_mask(lengths, x.shape[-1])[:, None, None, :]
        for conv in self.convs:
            x, lengths = conv(x, lengths)
        b, c, f, t = x.shape
        x = x.reshape(b, c * f, t).transpose(1, 2)  # (B, T', C*F')
        mask = time_mask(lengths, t)
        for rnn in self.rnns:
            x = self.dropout(rnn(x, lengths, mask))
        if self.lookahead is not None:
            x = self.lookahead(x, mask)
        x = self.out_bn(x, mask[..., None])
        return self.fc(x), lengths

    def initial_state(self, batch: int = 1) -> StepState:
        """The state of ``batch`` streams before their first frame."""
        convs, f = [], self.cfg.n_features
        for conv in self.convs:
            convs.append(conv.initial_state(batch, f))
            kf, sf = conv.spec.kernel[0], conv.spec.stride[0]
            f = (f + 2 * (kf // 2) - kf) // sf + 1
        rnns = tuple(rnn.initial_state(batch) for rnn in self.rnns)
        la = self.lookahead.initial_state(batch) if self.lookahead is not None else None
        return StepState(tuple(convs), rnns, la)

    def step(self, feats: Tensor, lengths: Sequence[int], state: StepState, final: Sequence[bool]
             ) -> tuple[Tensor, list[int], StepState]:
        """Advance B streams of a unidirectional model by their next frames (DS2 section 7; eval mode, to be called
        under ``torch.no_grad()``).

        feats (B, T, F) normalised, row i's next lengths[i] frames first (0 allowed; the rest ignored); ``final[i]``
        marks stream i's last call (the convolutions and the lookahead then add their right padding).
        -> (logits (B, T', V), row i valid on its first out_lengths[i] frames; out_lengths; new state). A stream's
        logits over all its calls, concatenated, equal ``forward`` on its whole utterance.
        """
        if self.training:
            raise RuntimeError("step needs eval mode: batch norm on its running statistics, no dropout")
        x = feats.transpose(1, 2).unsqueeze(1)  # (B, 1, F, T)
        convs = []
        for conv, buf in zip(self.convs, state.convs, strict=True):
            x, lengths, buf = conv.step(x, lengths, buf, final)
            convs.append(buf)
        b, c, f, t = x.shape
        x = x.reshape(b, c * f, t).transpose(1, 2)  # (B, T', C*F')
        rnns = []
        for rnn, rs in zip(self.rnns, state.rnns, strict=True):
            x, rs = rnn.step(x, lengths, rs)
            rnns.append(rs)
        la = state.lookahead
        if self.lookahead is not None:
            assert la is not None
            x, lengths, la = self.lookahead.step(x, lengths, la, final)
        return self.fc(self.out_bn.step(x)), list(lengths), StepState(tuple(convs), tuple(rnns), la)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def ctc_loss(logits: torch.Tensor, lengths: torch.Tensor, targets: list[torch.Tensor], blank: int = 0) -> torch.Tensor:
    """Per-utterance CTC negative log-likelihood (B,) in float32 from logits (B, T, V); infeasible alignments give
    0 (zero_infinity). The fused native kernel (``deepspeech.native``) when it is available, else log-softmax +
    ``F.ctc_loss``: the same numbers (``tests/test_native_ctc.py``)."""
    from deepspeech.native import ctc_loss as fused_ctc_loss

    target_lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
    flat = torch.cat(targets) if targets else torch.zeros(0, dtype=torch.long)
    return fused_ctc_loss(logits.float().transpose(0, 1), flat, lengths.cpu(), target_lengths, blank=blank,
                          reduction="none", zero_infinity=True)
