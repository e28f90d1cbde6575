"""What every decoder returns, and the protocol they share.

Every decoder (:class:`deepspeech.decoding.greedy.GreedyDecoder`; :class:`deepspeech.decoding.beam.BeamSearchDecoder`
with its pyctcdecode and flashlight backends) takes one utterance's (T, V) log-probabilities and returns an N-best
list of :class:`Hypothesis` (best first; words with output-frame spans, :func:`path_words` for a best path). Batches
are the caller's loop: log-probabilities are always (T, V), never chosen by tensor rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

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
