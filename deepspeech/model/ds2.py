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

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from deepspeech.model.config import ModelConfig
from deepspeech.model.layers import ConvBlock, Lookahead, MaskedBatchNorm, RecurrentLayer, cache_key, time_mask
from deepspeech.model.state import StepState


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
        self._fc_fold: tuple[tuple[tuple[int, int], ...], tuple[Tensor, Tensor]] | None = None  # see _step_output

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
        for conv, dtype in zip(self.convs, self.step_buffer_dtypes(), strict=True):
            convs.append(conv.initial_state(batch, f, dtype))
            kf, sf = conv.spec.kernel[0], conv.spec.stride[0]
            f = (f + 2 * (kf // 2) - kf) // sf + 1
        rnns = tuple(rnn.initial_state(batch) for rnn in self.rnns)
        la = self.lookahead.initial_state(batch) if self.lookahead is not None else None
        return StepState(tuple(convs), rnns, la)

    def step_buffer_dtypes(self) -> list[torch.dtype]:
        """The dtype of each convolution's step buffer: the one it computes in (``ConvBlock.step_dtype``; the
        frames are rounded to it as they arrive, so nothing waits in a wider type than it is read in), else that of
        the previous layer's output, else the weight's."""
        out, prev = [], None
        for conv in self.convs:
            out.append(conv.step_dtype or prev or conv.conv.weight.dtype)
            prev = conv.step_dtype
        return out

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
        # (B, T', C*F'), contiguous: one copy from the convolutions' time-major output (stored (B, T', F', C)) into
        # the layout the recurrent layers' products read (a strided input costs them a copy each, or a batched product)
        x = x.permute(0, 3, 1, 2).reshape(b, t, c * f).contiguous()
        rnns = []
        for rnn, rs in zip(self.rnns, state.rnns, strict=True):
            x, rs = rnn.step(x, lengths, rs)
            rnns.append(rs)
        la = state.lookahead
        if self.lookahead is not None:
            assert la is not None
            x, lengths, la = self.lookahead.step(x, lengths, la, final)
        return self._step_output(x), list(lengths), StepState(tuple(convs), tuple(rnns), la)

    def _step_output(self, x: Tensor) -> Tensor:
        """The output layer of the step: x (B, T, H) -> logits (B, T, V). A float ``nn.Linear`` runs with the
        eval-mode batch norm folded in (W * scale, W shift + b: :meth:`MaskedBatchNorm.affine`; the same sums to
        float rounding), made once and kept while the parameters keep their storage and version; other output
        layers (the quantized ones) take the normalised x."""
        if type(self.fc) is not nn.Linear:
            return self.fc(self.out_bn.step(x))
        bn, fc = self.out_bn, self.fc
        key = cache_key(fc.weight, fc.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        cached = self._fc_fold
        if key is None or cached is None or cached[0] != key:
            scale, shift = bn.affine()
            w = fc.weight.detach()
            cached = (key, ((w * scale.to(w.dtype)).contiguous(), torch.addmv(fc.bias.detach(), w, shift.to(w.dtype))))
            self._fc_fold = None if key is None else cached
        return F.linear(x, *cached[1])

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
