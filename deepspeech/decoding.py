"""The decoder protocol and greedy (best-path) CTC decoding: the most likely symbol per frame, repeats collapsed,
blanks removed (DS2 section 3.8 without a language model).

Every decoder (:class:`GreedyDecoder` here; :class:`deepspeech.beam.BeamSearchDecoder` with its pyctcdecode and
flashlight backends) takes one utterance's (T, V) log-probabilities and returns an N-best list of
:class:`Hypothesis` (best first; words with output-frame spans). Batches are the caller's loop: log-probabilities
are always (T, V), never chosen by tensor rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from deepspeech.text import BLANK, UNK, CharTokenizer


@dataclass(frozen=True)
class Word:
    text: str
    start: int  # first output frame
    end: int  # one past the last output frame


@dataclass(frozen=True)
class Hypothesis:
    text: str
    words: tuple[Word, ...] = ()
    score: float = 0.0  # the backend's total score
    am_score: float = 0.0  # log P_ctc of the hypothesis' best path (natural log)
    lm_score: float = 0.0  # log P_lm(text) (natural log, with sentence boundaries); 0 without an LM
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


class Decoder(Protocol):
    """(T, V) log-probabilities of one utterance -> hypotheses, best first (at least one)."""

    def decode(self, logp: np.ndarray) -> list[Hypothesis]: ...




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


def path_words(ids: Sequence[int], frames: Sequence[int], tokenizer: CharTokenizer) -> tuple[Word, ...]:
    """Collapsed symbol ids and their emission frames -> words with frame spans (Mandarin: one per character)."""
    words: list[Word] = []
    cur, start, last = "", 0, 0
    for i, t in zip(ids, frames, strict=True):
        sym = tokenizer.symbols[i]
        if sym in (BLANK, UNK):
            continue
        if tokenizer.metric_lang == "zh":
            words.append(Word(sym, t, t + 1))
            continue
        if sym == " ":
            if cur:
                words.append(Word(cur, start, last + 1))
            cur = ""
            continue
        if not cur:
            start = t
        cur += sym
        last = t
    if cur:
        words.append(Word(cur, start, last + 1))
    return tuple(words)


class GreedyDecoder:
    """The best path as a one-element N-best list; its acoustic score is that path's log-probability."""

    def __init__(self, tokenizer: CharTokenizer) -> None:
        self.tokenizer = tokenizer

    def decode(self, logp: np.ndarray) -> list[Hypothesis]:
        """(T, V) log-probabilities -> [the best path's hypothesis]."""
        g = greedy_decode_logp(logp, self.tokenizer)
        return [Hypothesis(g.text, path_words(g.ids, g.frames, self.tokenizer),
                           am_score=float(logp.max(axis=1).sum()) if logp.size else 0.0)]
