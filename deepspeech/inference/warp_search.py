"""Test-time frequency-warp search: speaker normalisation by confidence, with no retraining.

Vocal tract length normalisation (Lee and Rose, ICASSP 1996) warps each speaker's frequency axis towards the
training speakers', picking the warp under which the models fit best. Here each utterance is run through the
network once per warp factor of ``features.warp_search`` (the piecewise-linear warp of
:func:`deepspeech.augment.perturb.vtlp`, applied to the utterance-normalised log power before the training statistics)
and the output of the most confident warp is kept: the one whose frames' largest log-probability is highest on
average. Decoding (greedy or beam) then reads that output as usual. It costs one forward pass per warp and needs
the whole utterance, so streaming models refuse it.

It wraps a model's forward and keeps its contract, (B, T, F) features and (B,) lengths -> (B, T', V) logits and
(B,) lengths: :class:`WarpSearch` around a loaded model, and :func:`acoustic_forward`, the one place that decides
how a loaded model reads features (``eval``, ``transcribe``, long recordings and ``lm tune`` all go through it).

On ``digits-en``'s speaker cross-validation (held-out jackson / lucas / nicolas, two seeds, the same trained models
with and without it), warps 0.9-1.1 in steps of 0.05 lowered the held-out-speaker WER on all six folds (mean 20.5%
-> 18.9%); wider ranges (0.85-1.15) helped less.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from deepspeech.augment.perturb import vtlp
from deepspeech.frontend.features import FeatureStats

if TYPE_CHECKING:
    from deepspeech.checkpoint import AcousticModel

# (B, T, F) normalised features, (B,) lengths -> (B, T', V) logits, (B,) output lengths: a model's forward
Forward = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def warp_search(model: Forward, feats: torch.Tensor, lengths: torch.Tensor, stats: FeatureStats,
                warps: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """``model(feats, lengths)`` with each utterance's most confident frequency warp.

    feats: (B, T, F) features normalised by ``stats`` (zero past each length), lengths: (B,). Returns (B, T', V)
    logits and (B,) output lengths, as the model does. No warps: the model's own output. Each utterance's choice
    depends on that utterance alone, so batching does not change it.
    """
    if not warps:
        return model(feats, lengths)
    n_warps, (b, t, _) = len(warps), feats.shape
    raw = stats.denormalize(feats)  # back to utterance-normalised log power: the warp acts on the frequency axis
    valid = (torch.arange(t, device=feats.device)[None, :] < lengths[:, None]).unsqueeze(-1)  # (B, T, 1)
    warped = torch.cat([torch.where(valid, stats.normalize(vtlp(raw, float(a))), 0.0) for a in warps])
    logits, out_lengths = model(warped, lengths.repeat(n_warps))
    best = torch.log_softmax(logits.float(), dim=-1).amax(-1)  # (W * B, T') each frame's largest log-probability
    out_valid = torch.arange(logits.shape[1], device=logits.device)[None, :] < out_lengths[:, None]
    confidence = (best * out_valid).sum(1) / out_lengths.clamp(min=1)
    choice = confidence.view(n_warps, b).argmax(0)  # (B,) the first of equally confident warps
    rows = choice * b + torch.arange(b, device=logits.device)
    return logits[rows], out_lengths[rows]


class WarpSearch:
    """A loaded model's forward with the warp search of its ``features.warp_search`` (or of ``warps``): called as
    the model is, ``(feats (B, T, F), lengths (B,)) -> (logits (B, T', V), lengths (B,))``."""

    def __init__(self, am: AcousticModel, warps: Sequence[float] | None = None) -> None:
        self.am = am
        self.warps = tuple(am.config.features.warp_search if warps is None else warps)

    def __call__(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return warp_search(self.am.forward, feats, lengths, self.am.stats, self.warps)


def acoustic_forward(am: AcousticModel) -> Forward:
    """How a loaded model reads features at inference: :class:`WarpSearch` where its config lists warps, else
    its plain :meth:`~deepspeech.checkpoint.AcousticModel.forward`."""
    return WarpSearch(am) if am.config.features.warp_search else am.forward
