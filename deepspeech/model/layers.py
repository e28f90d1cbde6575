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
from deepspeech.native.gru import FusedGRU, gru_layer
from deepspeech.parallel.mappings import all_reduce_sum_with_grad

CLIP = 20.0  # clipped ReLU ceiling, sigma(x) = min(max(x, 0), 20) (DS2 section 3.1)


def cache_key(*tensors: Tensor) -> tuple[tuple[int, int], ...] | None:
    """What identifies the values of ``tensors`` for a cache of something computed from them (storage and version
    counter: an optimizer step, ``load_state_dict`` or ``.to`` makes a new key); None when that cannot be tracked
    (inference-mode tensors) or when a result must keep its autograd graph."""
    if any(t.is_inference() for t in tensors) or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
        return None
    return tuple((t.data_ptr(), t._version) for t in tensors)


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
        self._affine: tuple[tuple[tuple[int, int], ...], tuple[Tensor, Tensor]] | None = None  # see affine

    def _shape(self, x: torch.Tensor) -> list[int]:
        shape = [1] * x.dim()
        shape[self.channel_dim] = -1
        return shape

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(x.dtype)
        if not self.training:
            return self._normalise(x) * m
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

    def _normalise(self, x: Tensor) -> Tensor:
        """Eval mode on the running statistics, as the offline forward computes it (x's dtype)."""
        shape = self._shape(x)
        mean, var = self.running_mean.to(x.dtype), self.running_var.to(x.dtype)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape)

    def affine(self) -> tuple[Tensor, Tensor]:
        """Eval-mode batch norm as one affine map y = x * scale + shift, scale = weight / sqrt(running_var + eps)
        and shift = bias - running_mean * scale, both (C,) float32: what the streaming step applies or folds into
        the adjacent convolution or linear layer. Made once and kept while the four tensors keep their storage
        and version (see :func:`cache_key`)."""
        ts = (self.weight, self.bias, self.running_mean, self.running_var)
        key = cache_key(*ts)
        if key is not None and self._affine is not None and self._affine[0] == key:
            return self._affine[1]
        w, b, mean, var = (t.float() for t in ts)
        scale = w * torch.rsqrt(var + self.eps)
        out = (scale, b - mean * scale)
        self._affine = None if key is None else (key, out)
        return out

    def step(self, x: Tensor) -> Tensor:
        """Streaming: every position of x valid, normalised on the running statistics (eval mode). float32 or
        float64: one fused multiply-add (:meth:`affine`), the numbers of ``forward`` in eval mode to float rounding
        (~1 ulp of the statistics); a lower precision (a bfloat16 model's convolution outputs): ``forward``'s own
        arithmetic in that dtype, the same roundings."""
        if x.dtype not in (torch.float32, torch.float64):
            return self._normalise(x)
        shape = self._shape(x)
        scale, shift = (t.to(x.dtype).view(shape) for t in self.affine())
        return torch.addcmul(shift, x, scale)


class ConvBlock(nn.Module):
    """Conv2d over (frequency, time) -> masked batch norm -> clipped ReLU -> zero padded frames."""

    def __init__(self, in_ch: int, spec: ConvSpec, group: dist.ProcessGroup | None) -> None:
        super().__init__()
        self.spec = spec
        pad = (spec.kernel[0] // 2, spec.kernel[1] // 2)
        self.conv = nn.Conv2d(in_ch, spec.channels, spec.kernel, spec.stride, pad, bias=False)
        self.bn = MaskedBatchNorm(spec.channels, channel_dim=1, group=group)
        self._step_cache: tuple[tuple[tuple[int, int], ...], tuple[Tensor, Tensor | None]] | None = None
        # What the step computes in (None: the weight's dtype); a quantized model sets bfloat16 (quantize.py)
        self.step_dtype: torch.dtype | None = None
        # True: the step keeps forward's arithmetic (batch norm after the convolution, not folded into it), for a
        # bfloat16 model whose stream must round as its offline forward does (quantize.py)
        self.step_as_forward = False

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

    def initial_state(self, batch: int, in_freq: int, dtype: torch.dtype | None = None) -> FrameBuffer:
        """p = k_t // 2 zero frames (B, C, F, p): the whole-utterance convolution's left padding; in ``dtype``
        (``DeepSpeech2.step_buffer_dtypes``; None: the weight's), time-major (stored as (B, p, F, C),
        :func:`~deepspeech.model.state.time_major`) as the features and the step's outputs arrive, so appending
        frames is one contiguous copy per row and the step's convolution reads the window as it lies."""
        w = self.conv.weight
        p = self.spec.kernel[1] // 2
        frames = w.new_zeros(batch, p, in_freq, self.conv.in_channels, dtype=dtype or w.dtype).permute(0, 3, 2, 1)
        return FrameBuffer(frames, (p,) * batch)

    def step(self, x: Tensor, lengths: Sequence[int], state: FrameBuffer, final: Sequence[bool]
             ) -> tuple[Tensor, list[int], FrameBuffer]:
        """Streaming (eval mode): x (B, C, F, T), row i's next lengths[i] frames -> (y (B, C', F', T'), row i valid
        on its first out_lengths[i] frames; out_lengths; new state). y is time-major (a view of (B, T', F', C')).

        Output frame j of a time kernel k = 2p + 1 with stride s reads input frames j*s - p .. j*s + p, so it is
        computed once frame j*s + p has arrived; the buffer starts with p zero frames and a row's final call adds p
        (the whole-utterance convolution's zero padding). Rows may be at different positions: each keeps its own
        valid outputs of one batched convolution over right-padded windows.

        The convolution runs over (time, frequency), the transpose of ``forward``'s (frequency, time), channels-last:
        a time-major window (B, C, F, n) is then its input as it lies, (B, C, n, F) channels-last, and its output
        the next layer's time-major input. oneDNN also runs this orientation faster at a step's few frames (32
        streams of 100 ms, one core: the 2nd DS2 layer 2.6 against 3.8 ms in float32, 0.38 against 1.1 ms in
        bfloat16; the first 0.9 against 2.3 ms in float32). Same sums in another order."""
        (kf, kt), (sf, st) = self.spec.kernel, self.spec.stride
        # new frames in the buffer's dtype (a bfloat16 layer's features arrive in float32): what the convolution
        # reads them in, so its window needs no conversion
        window, lens, counts, state = advance(state, x.to(state.frames.dtype), lengths, final, kt, st, kt // 2)
        b, f_out = len(counts), (x.shape[2] + 2 * (kf // 2) - kf) // sf + 1
        if max(counts) == 0:
            return x.new_zeros(b, self.spec.channels, f_out, 0), counts, state
        rows, window = busy_rows(window, lens, counts)
        if window.shape[0] == 1:  # oneDNN picks a far slower algorithm for some batch-of-one shapes: add a row
            window = torch.cat([window, torch.zeros_like(window)])
        w, bias = self._step_weight()
        cl = torch.channels_last
        if self.step_as_forward:  # forward's orientation and roundings (float32 out, rounded back exactly)
            if window.shape[1] == 1:  # time taps as channels: (B, 1, F, n) -> (B, kt, F, n')
                window, st = window[:, 0].unfold(2, kt, st).permute(0, 3, 1, 2), 1
            y = F.conv2d(window.to(w.dtype, memory_format=cl), w, None, (sf, st), (kf // 2, 0))
            y = self.bn.step(y).to(y.dtype).permute(0, 3, 2, 1).contiguous().permute(0, 3, 2, 1)  # time-major
        else:
            xt = window.transpose(2, 3)  # (B, C, n, F)
            if xt.shape[1] == 1:  # time taps as channels (see _step_weight): (B, 1, n, F) -> (B, kt, n', F)
                xt, st = xt[:, 0].unfold(1, kt, st).permute(0, 3, 1, 2), 1
            # a copy only where the window is not already the convolution's input (the first layer's unfolded
            # taps, a ragged batch's window, another dtype)
            y = F.conv2d(xt.to(w.dtype, memory_format=cl), w, bias, (st, sf), (0, kf // 2)).transpose(2, 3)
        y = F.hardtanh(y, 0.0, CLIP, inplace=True)  # (B, C', F', T'); batch norm folded into w and bias, or applied
        return scatter_rows(y[: len(rows)], rows, b), counts, state

    def _step_weight(self) -> tuple[Tensor, Tensor | None]:
        """The weight and bias (O,) the step runs, in ``step_dtype``, channels-last, over (time, frequency): the
        weight (O, C, kt, kf) with eval-mode batch norm folded in (W * scale per output channel, bias = shift,
        :meth:`MaskedBatchNorm.affine`; the same sums to float rounding, and no normalisation pass over the output);
        with ``step_as_forward`` the weight as it is, over (frequency, time), and no bias. A one-channel layer (the
        first) becomes (O, kt, 1, kf) (or (O, kt, kf, 1)): its kt time taps turn into input channels over a
        time-unfolded input, so the convolution is kt-channel, 1 frame long; oneDNN runs that about 3x faster than
        the one-channel form. Made once and kept while the parameters keep their storage and version (an optimizer
        step or ``load_state_dict`` makes it anew)."""
        w, bn = self.conv.weight, self.bn
        dt = self.step_dtype or w.dtype
        key = cache_key(w, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        if key is not None:
            key += ((id(dt), int(self.step_as_forward)),)
        if key is not None and self._step_cache is not None and self._step_cache[0] == key:
            return self._step_cache[1]
        v, bias = w.detach(), None
        if self.step_as_forward:  # over (frequency, time) as forward: (O, C, kf, kt), or (O, kt, kf, 1)
            v = v[:, 0].transpose(1, 2).unsqueeze(-1) if v.shape[1] == 1 else v
        else:
            scale, shift = bn.affine()
            v, bias = v * scale.to(w.dtype)[:, None, None, None], shift.to(dt)
            v = v[:, 0].transpose(1, 2).unsqueeze(2) if v.shape[1] == 1 else v.transpose(2, 3)
        out = (v.to(dt).contiguous(memory_format=torch.channels_last), bias)
        self._step_cache = None if key is None else (key, out)
        return out


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
        self._fold: tuple[tuple[tuple[int, int], ...], tuple[Tensor, Tensor]] | None = None  # _step_input_weights

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
        fused kernel (:class:`deepspeech.native.gru.FusedGRU` for GRUs) in one call, on the CPU with the input's
        batch norm folded into W_ih and b_ih (:meth:`_step_input_weights`); ragged rows run a packed sequence; rows
        without frames keep their state."""
        if self.rnn_reverse is not None:
            raise ValueError("a bidirectional layer needs the whole utterance; only unidirectional layers step")
        b = len(lengths)
        rows = [i for i, n in enumerate(lengths) if n > 0]
        if not rows:
            return x.new_zeros(b, x.shape[1], self.rnn.hidden_size), state
        h0, c0 = state.h, state.c
        if len(rows) < b:
            x, h0 = x[rows], h0[rows]
            c0 = None if c0 is None else c0[rows]
        lens = [lengths[i] for i in rows]
        lockstep = len(set(lens)) == 1 and x.shape[1] == lens[0]
        if lockstep and type(self.rnn) is FusedGRU and x.device.type == "cpu":
            g = self.rnn
            w_ih, b_ih = self._step_input_weights()
            y, h = gru_layer(x, h0, w_ih, g.weight_hh_l0, b_ih, g.bias_hh_l0, native=g.native)
            new: Tensor | tuple[Tensor, Tensor] = h[None]
        else:
            if self.bn is not None:
                x = self.bn.step(x)
            hx = h0[None] if c0 is None else (h0[None], c0[None])
            if lockstep:
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

    def _step_input_weights(self) -> tuple[Tensor, Tensor]:
        """The GRU's W_ih (3H, I) and b_ih (3H,) with the input's eval-mode batch norm folded in: W_ih (x * scale +
        shift) + b_ih = (W_ih * scale) x + (W_ih shift + b_ih) (:meth:`MaskedBatchNorm.affine`); the same sums to
        float rounding, without a normalisation pass over the input. Kept while the parameters keep their storage
        and version."""
        g = self.rnn
        if self.bn is None:
            return g.weight_ih_l0, g.bias_ih_l0
        bn = self.bn
        key = cache_key(g.weight_ih_l0, g.bias_ih_l0, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        if key is not None and self._fold is not None and self._fold[0] == key:
            return self._fold[1]
        scale, shift = bn.affine()
        w = g.weight_ih_l0.detach()
        out = ((w * scale.to(w.dtype)).contiguous(), torch.addmv(g.bias_ih_l0.detach(), w, shift.to(w.dtype)))
        self._fold = None if key is None else (key, out)
        return out


class Lookahead(nn.Module):
    """Row convolution (DS2 section 3.5, eq. 5): r_t,i = sum_{j=0..tau} W_i,j h_t+j,i, then clipped ReLU."""

    def __init__(self, hidden: int, context: int) -> None:
        super().__init__()
        self.context = context
        self.conv = nn.Conv1d(hidden, hidden, context + 1, groups=hidden, bias=False)
        # True: the step runs forward's grouped convolution (a bfloat16 model's, under autocast; quantize.py)
        self.step_as_forward = False

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """h (B, T, H) zero-padded -> (B, T, H)."""
        x = F.pad(h.transpose(1, 2), (0, self.context))
        return F.hardtanh(self.conv(x).transpose(1, 2), 0.0, CLIP) * mask[..., None]

    def initial_state(self, batch: int) -> FrameBuffer:
        """No frames (B, H, 0), time-major as the recurrent outputs arrive (state.time_major): the row convolution
        has no left padding."""
        w = self.conv.weight
        return FrameBuffer(w.new_zeros(batch, 0, w.shape[0]).transpose(1, 2), (0,) * batch)

    def step(self, h: Tensor, lengths: Sequence[int], state: FrameBuffer, final: Sequence[bool]
             ) -> tuple[Tensor, list[int], FrameBuffer]:
        """Streaming: h (B, T, H), row i's next lengths[i] frames -> (y (B, T', H), row i valid on its first
        out_lengths[i] frames; out_lengths; new state). Output t needs h_t .. h_t+tau (eq. 5): the buffer (B, H, n)
        keeps the last tau frames, and a row's final call adds tau zero frames (forward's right padding).

        Computed time-major as eq. 5 reads, y_t = sum_j W_:,j * h_t+j: tau + 1 multiply-adds over (B, T', H) in h's
        dtype (float32), no layout copies; the grouped convolution of ``forward`` sums the same products in
        another order (and under a quantized model's autocast in bfloat16). ``step_as_forward`` runs that
        convolution instead."""
        # contiguous: the int8 GRU's output is a transposed view; time-major frames append as whole rows
        window, lens, counts, state = advance(state, h.contiguous().transpose(1, 2), lengths, final,
                                               self.context + 1, 1, self.context)
        if max(counts) == 0:
            return h.new_zeros(len(counts), 0, h.shape[2]), counts, state
        rows, window = busy_rows(window, lens, counts)
        if self.step_as_forward:
            y = F.hardtanh(self.conv(window), 0.0, CLIP).transpose(1, 2)  # (B', T', H)
            return scatter_rows(y, rows, len(counts)), counts, state
        frames = window.transpose(1, 2)  # (B', n, H)
        taps = self.conv.weight.detach()[:, 0].t().to(frames.dtype).contiguous()  # (tau + 1, H)
        t_out = frames.shape[1] - self.context
        y = frames[:, :t_out] * taps[0]
        for j in range(1, self.context + 1):
            y.addcmul_(frames[:, j: j + t_out], taps[j])
        y = F.hardtanh(y, 0.0, CLIP, inplace=True)  # (B', T', H)
        return scatter_rows(y, rows, len(counts)), counts, state
