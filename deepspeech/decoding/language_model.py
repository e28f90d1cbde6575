"""What decoding needs from a language model: the log P_lm(y) of DS2's beam-search objective (arXiv 1512.02595,
section 3.8),

    Q(y) = log P_ctc(y | x) + alpha * log P_lm(y) + beta * |words(y)|.

The core decodes against this protocol and never imports an LM package: the KenLM n-gram reader
(:class:`deepspeech.decoding.kenlm.NgramLM`) implements it for beam search, and the neural LMs of ``lm/`` implement it
for N-best rescoring. Nothing runs at import time.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class LanguageModel(Protocol):
    """A scorer of decoded sentences."""

    @property
    def unit(self) -> str:
        """``"word"``: the LM's units are the sentence's space-separated words (English, numbered pinyin);
        ``"char"``: every non-space character is a unit (Mandarin characters)."""
        ...

    def log_prob(self, text: str) -> float:
        """Natural-log probability of one decoded sentence (as the decoder writes it), with sentence boundaries."""
        ...
