"""The Deep Speech 2 model's configuration (Amodei et al., arXiv 1512.02595): the convolution front ends of Table 4
(:func:`ds2_convs`) and :class:`ModelConfig`, which fixes the layer sizes of :class:`deepspeech.model.ds2.DeepSpeech2`
and the frame arithmetic of its convolutions."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


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
