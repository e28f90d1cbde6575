"""Greedy (best-path) CTC decoding: the most likely symbol per frame, repeats collapsed, blanks removed (DS2
section 3.8 without a language model); :class:`GreedyDecoder` gives it as a decoder
(:class:`deepspeech.decoding.hypothesis.Decoder`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from deepspeech.decoding.hypothesis import Hypothesis, path_words
from deepspeech.text import CharTokenizer


@dataclass(frozen=True)
class GreedyResult:
    text: str
    ids: list[int]
    frames: list[int]  # output frame index at which each id was emitted (first frame of its run)


def _collapse(best: list[int], blank: int) -> tuple[list[int], list[int]]:
    ids, frames, prev = [], [], blank
    for t, s in enumerate(best):
        if s != blank and s != prev:
            ids.append(s)
            frames.append(t)
        prev = s
    return ids, frames


def ids_to_text(ids: list[int], tokenizer: CharTokenizer) -> str:
    """Collapsed label ids -> text (English: single spaces, no leading or trailing space)."""
    return " ".join(tokenizer.decode(ids).split()) if tokenizer.metric_lang == "en" else tokenizer.decode(ids)


def greedy_decode_logp(logp: np.ndarray, tokenizer: CharTokenizer, blank: int = 0) -> GreedyResult:
    """(T, V) log-probabilities (or logits) of one utterance -> its best path."""
    ids, frames = _collapse(np.asarray(logp).argmax(-1).tolist(), blank)
    return GreedyResult(ids_to_text(ids, tokenizer), ids, frames)


def greedy_decode(logits: torch.Tensor, lengths: torch.Tensor, tokenizer: CharTokenizer,
                  blank: int = 0) -> list[GreedyResult]:
    """logits (B, T, V), lengths (B,) -> one result per utterance."""
    best = logits.argmax(-1).cpu()
    out = []
    for b in range(best.shape[0]):
        ids, frames = _collapse(best[b, : int(lengths[b])].tolist(), blank)
        out.append(GreedyResult(ids_to_text(ids, tokenizer), ids, frames))
    return out


class GreedyDecoder:
    """The best path as a one-element N-best list; its acoustic score is that path's log-probability."""

    def __init__(self, tokenizer: CharTokenizer) -> None:
        self.tokenizer = tokenizer

    def decode(self, logp: np.ndarray) -> list[Hypothesis]:
        """(T, V) log-probabilities -> [the best path's hypothesis]."""
        g = greedy_decode_logp(logp, self.tokenizer)
        return [Hypothesis(g.text, path_words(g.ids, g.frames, self.tokenizer),
                           am_score=float(logp.max(axis=1).sum()) if logp.size else 0.0)]
