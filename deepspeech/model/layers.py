"""The layers of the Deep Speech 2 model (Amodei et al., arXiv 1512.02595), each with ``forward`` over padded
batches and, for unidirectional models, ``step`` over the next frames of B streams (DS2 section 7): sequence-wise
batch norm over valid frames (section 3.2, :class:`MaskedBatchNorm`), the 2D convolutions with clipped ReLU (section
3.5, :class:`ConvBlock`), the recurrent layers with their directions summed (:class:`RecurrentLayer`) and the
lookahead row convolution (section 3.5, eq. 5, :class:`Lookahead`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from deepspeech.model.config import ConvSpec, ModelConfig
from deepspeech.model.state import FrameBuffer, RecurrentState, advance, busy_rows, scatter_rows
from deepspeech.native.gru import FusedGRU
from deepspeech.parallel.mappings import all_reduce_sum_with_grad

CLIP = 20.0  # clipped ReLU ceiling, sigma(x) = min(max(x, 0), 20) (DS2 section 3.1)


def time_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool, True on valid frames."""
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


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
        window, lens, counts, state = advance(state, x, lengths, final, kt, st, kt // 2)
        b, f_out = len(counts), (x.shape[2] + 2 * (kf // 2) - kf) // sf + 1
        if max(counts) == 0:
            return x.new_zeros(b, self.spec.channels, f_out, 0), counts, state
        rows, window = busy_rows(window, lens, counts)
        if window.shape[0] == 1:  # oneDNN picks a far slower algorithm for some batch-of-one shapes: add a row
            window = torch.cat([window, torch.zeros_like(window)])
        if window.shape[1] == 1:  # time taps as channels (see _step_weight): (B, 1, F, n) -> (B, kt, F, n')
            window = window[:, 0].unfold(2, kt, st).permute(0, 3, 1, 2)
            st = 1
        y = F.conv2d(window.contiguous(memory_format=torch.channels_last), self._step_weight(), None, (sf, st),
                     (kf // 2, 0))
        y = F.hardtanh(self.bn.step(y), 0.0, CLIP)
        return scatter_rows(y[: len(rows)], rows, b), counts, state

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
        return scatter_rows(y, rows, b), RecurrentState(h, c)


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
        window, lens, counts, state = advance(state, h.transpose(1, 2), lengths, final, self.context + 1, 1,
                                               self.context)
        if max(counts) == 0:
            return h.new_zeros(len(counts), 0, h.shape[2]), counts, state
        rows, window = busy_rows(window, lens, counts)
        y = F.hardtanh(self.conv(window), 0.0, CLIP).transpose(1, 2)  # (B', T', H)
        return scatter_rows(y, rows, len(counts)), counts, state
