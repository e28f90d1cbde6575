"""Model ensembles for CTC: independently trained members combined per utterance, by hypothesis, not by frame.

Members trained from different seeds read the same audio with the same output length but emit each symbol's
spike at different frames (a bidirectional CTC model may place "zero" at the first frames or several frames later),
so averaging their per-frame posteriors cancels the spikes against each other's blanks: on ``digits-en``'s
cross-validation models the frame average read 88-100% WER where each member read 11-24%. Combining at the
sequence level needs no alignment (in the spirit of ROVER, Fiscus 1997, with the members' likelihoods as the vote):
each member proposes its best hypothesis (greedy, or beam search with the LM), and every proposal is scored by
the members' mean CTC log-likelihood log P(y | x) (the forward algorithm sums over all alignments, so each
member scores a proposal under its own timing), plus ``alpha`` log P_lm(y) + ``beta`` |y| with a beam decoder.
The best-scoring proposal is kept, with the word frames of the member that proposed it.

An ensemble's log-probabilities are (T, M, V) per utterance (M members share the output length T): everything
that slices an utterance's frames slices both shapes alike, and :func:`deepspeech.beam.best_hypothesis` combines
the members when it meets the member axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from deepspeech.beam import BeamSearchDecoder, Hypothesis
    from deepspeech.text import CharTokenizer

IMPOSSIBLE = -1e9  # the log-likelihood of a proposal that cannot fit a member's frames (longer than T allows)


def ctc_log_likelihoods(logp: np.ndarray, candidates: Sequence[Sequence[int]], blank: int = 0) -> np.ndarray:
    """(T, M, V) log-probabilities and C label sequences -> (M, C) log P_ctc(candidate | member), every alignment
    summed (the CTC forward algorithm, Graves et al. 2006, as ``torch.nn.functional.ctc_loss`` computes it)."""
    t, m, _ = logp.shape
    out = np.full((m, len(candidates)), IMPOSSIBLE, dtype=np.float64)
    x = torch.from_numpy(np.ascontiguousarray(logp, dtype=np.float32))
    for c, ids in enumerate(candidates):
        if not ids:  # the empty hypothesis: every frame blank
            out[:, c] = x[:, :, blank].double().sum(0).numpy()
    full = [c for c, ids in enumerate(candidates) if ids]
    if full and t:
        n = len(full)
        inputs = x.repeat(1, n, 1)  # (T, n * M, V): candidate-major, member-minor
        targets = torch.tensor([i for c in full for _ in range(m) for i in candidates[c]], dtype=torch.long)
        target_lengths = torch.tensor([len(candidates[c]) for c in full for _ in range(m)], dtype=torch.long)
        loss = F.ctc_loss(inputs, targets, torch.full((n * m,), t, dtype=torch.long), target_lengths,
                          blank=blank, reduction="none", zero_infinity=False).double().view(n, m)
        ll = torch.where(torch.isfinite(loss), -loss, torch.full_like(loss, IMPOSSIBLE))
        out[:, full] = ll.T.numpy()
    return out


def combine(logp: np.ndarray, tokenizer: CharTokenizer, decoder: BeamSearchDecoder | None) -> Hypothesis:
    """(T, M, V) members' log-probabilities of one utterance -> the best of their proposals (module docstring).
    The result's ``am_score`` is the members' mean CTC log-likelihood, ``extra["member"]`` the proposing member
    (whose frames its words carry)."""
    from deepspeech.beam import Hypothesis, best_hypothesis

    if logp.ndim != 3:
        raise ValueError(f"expected (T, members, V) log-probabilities, got {logp.shape}")
    proposals = [best_hypothesis(np.ascontiguousarray(logp[:, k]), tokenizer, decoder) for k in range(logp.shape[1])]
    texts: dict[str, int] = {}  # text -> first member that proposed it
    for k, h in enumerate(proposals):
        texts.setdefault(h.text, k)
    cands = list(texts)
    ll = ctc_log_likelihoods(logp, [tokenizer.encode(s) for s in cands]).mean(0)
    total = ll.copy()
    if decoder is not None and len(cands) > 1:
        cfg = decoder.cfg
        total += np.array([cfg.alpha * decoder.lm_logprob(s) + cfg.beta * _units(s, tokenizer) for s in cands])
    best = int(np.argmax(total))
    chosen, am_score = texts[cands[best]], float(ll[best])
    h = proposals[chosen]
    lm_score = decoder.lm_logprob(h.text) if decoder is not None else 0.0
    score = am_score + (decoder.cfg.alpha * lm_score + decoder.cfg.beta * _units(h.text, tokenizer)
                        if decoder is not None else 0.0)
    return Hypothesis(h.text, h.words, score, am_score, lm_score, {**h.extra, "member": chosen})


def member_log_probs(logp: np.ndarray, hyp: Hypothesis) -> np.ndarray:
    """The (T, V) log-probabilities behind ``hyp``: the proposing member's for an ensemble, else ``logp``."""
    return logp[:, int(hyp.extra.get("member", 0))] if logp.ndim == 3 else logp


def _units(text: str, tokenizer: CharTokenizer) -> int:
    """What ``beta`` rewards: words, or characters for Mandarin characters."""
    return len(text.split()) if tokenizer.metric_lang == "en" else len(text.replace(" ", ""))
