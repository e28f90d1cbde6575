"""Word and character error rates from Levenshtein edit distances.

WER counts words split on whitespace; for Mandarin (text without spaces) the "words" are characters, so there
WER equals CER. Rates are corpus-level: total edits / total reference units.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def edit_distance(ref: Sequence[object], hyp: Sequence[object]) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    if len(ref) < len(hyp):
        ref, hyp = hyp, ref
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def words(text: str, lang: str) -> list[str]:
    return list(text.replace(" ", "")) if lang == "zh" else text.split()


def chars(text: str, lang: str) -> list[str]:
    return list(text.replace(" ", "")) if lang == "zh" else list(" ".join(text.split()))


@dataclass
class ErrorCounts:
    word_edits: int = 0
    words: int = 0
    char_edits: int = 0
    chars: int = 0
    n: int = 0

    def add(self, ref: str, hyp: str, lang: str) -> None:
        rw, hw = words(ref, lang), words(hyp, lang)
        rc, hc = chars(ref, lang), chars(hyp, lang)
        self.word_edits += edit_distance(rw, hw)
        self.words += len(rw)
        self.char_edits += edit_distance(rc, hc)
        self.chars += len(rc)
        self.n += 1

    @property
    def wer(self) -> float:
        return self.word_edits / max(self.words, 1)

    @property
    def cer(self) -> float:
        return self.char_edits / max(self.chars, 1)

    def as_list(self) -> list[int]:
        return [self.word_edits, self.words, self.char_edits, self.chars, self.n]

    @classmethod
    def from_list(cls, v: Iterable[int]) -> ErrorCounts:
        return cls(*[int(x) for x in v])

    def summary(self) -> dict[str, float | int]:
        return {"wer": self.wer, "cer": self.cer, "n": self.n, "words": self.words, "chars": self.chars}


def error_rates(refs: Sequence[str], hyps: Sequence[str], lang: str = "en") -> ErrorCounts:
    c = ErrorCounts()
    for r, h in zip(refs, hyps, strict=True):
        c.add(r, h, lang)
    return c
