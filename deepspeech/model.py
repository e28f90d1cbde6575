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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

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
        shape = self._shape(x)
        m = mask.to(x.dtype)
        if self.training:
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
        else:
            mean, var = self.running_mean.to(x.dtype), self.running_var.to(x.dtype)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return (y * self.weight.view(shape) + self.bias.view(shape)) * m


class ConvBlock(nn.Module):
    """Conv2d over (frequency, time) -> masked batch norm -> clipped ReLU -> zero padded frames."""

    def __init__(self, in_ch: int, spec: ConvSpec, group: dist.ProcessGroup | None) -> None:
        super().__init__()
        self.spec = spec
        pad = (spec.kernel[0] // 2, spec.kernel[1] // 2)
        self.conv = nn.Conv2d(in_ch, spec.channels, spec.kernel, spec.stride, pad, bias=False)
        self.bn = MaskedBatchNorm(spec.channels, channel_dim=1, group=group)

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
