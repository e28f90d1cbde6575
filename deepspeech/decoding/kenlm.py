"""The query side of KenLM n-gram language models (DS1 section 3, DS2 section 3.8): reading a built LM directory.

An LM directory (written by ``deepspeech lm ngram``, :mod:`lm.ngram`) holds::

    DIR/lm.arpa       the ARPA model (optional)
    DIR/lm.binary     KenLM's binary format (probing or quantised trie): what the decoders load
    DIR/unigrams.txt  the vocabulary, one unit a line (pyctcdecode needs it to score unknown words)
    DIR/lm.json       unit (word | char), order, pruning, sizes, source files and line counts

:class:`NgramLM` is such a directory; it implements :class:`deepspeech.decoding.language_model.LanguageModel`. The
``kenlm`` module (the ``[decode]`` extra) is imported only when a model is loaded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

LM_BINARY = "lm.binary"
LM_ARPA = "lm.arpa"
UNIGRAMS = "unigrams.txt"
LM_META = "lm.json"
# The first bytes of a KenLM binary (build_binary); an ARPA file starts with "\\data\\".
BINARY_MAGIC = b"mmap lm http://kheafield.com/code"
LN10 = math.log(10.0)  # KenLM scores in log10


class KenLMError(RuntimeError):
    """KenLM binaries missing, lmplz / build_binary failed, or an LM directory or model that cannot be read."""


def load_kenlm(path: str | Path) -> Any:
    """``kenlm.Model`` of a KenLM binary (or ARPA) file; a damaged or foreign file is one KenLMError line."""
    import kenlm  # the [decode] extra: callers report its absence in their own terms

    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(len(BINARY_MAGIC))
    except OSError as e:
        raise KenLMError(f"{p}: cannot read the KenLM model ({e.strerror or e})") from None
    if not (head.startswith(BINARY_MAGIC) or head.lstrip().startswith(b"\\data\\")):
        raise KenLMError(f"{p}: not a KenLM model (neither a KenLM binary nor ARPA text); rebuild it with "
                         "`deepspeech lm ngram`")
    try:
        return kenlm.Model(str(p))
    except (OSError, RuntimeError, ValueError) as e:  # KenLM reports format errors as OSError, text as ValueError
        detail = " ".join(str(e).split())
        raise KenLMError(f"{p}: damaged KenLM model ({detail[:300]}); rebuild it with `deepspeech lm ngram`") \
            from None


@dataclass(frozen=True)
class NgramLM:
    """A built LM directory: the binary path, its unigram list and metadata."""

    path: Path
    binary: Path
    unigrams: list[str]
    unit: str  # word | char
    order: int

    @classmethod
    def load(cls, path: str | Path) -> NgramLM:
        p = Path(path)
        binary = p / LM_BINARY
        if not binary.is_file():
            raise KenLMError(f"{p}: no {LM_BINARY} (build one with `deepspeech lm ngram`)")
        try:
            meta = json.loads((p / LM_META).read_text(encoding="utf-8")) if (p / LM_META).is_file() else {}
            unigrams = (p / UNIGRAMS).read_text(encoding="utf-8").split() if (p / UNIGRAMS).is_file() else []
            unit, order = meta.get("unit", "word"), int(meta.get("order", 0))
        except (ValueError, TypeError, AttributeError, OSError) as e:  # bad JSON or UTF-8, not an object
            raise KenLMError(f"{p}: malformed {LM_META} or {UNIGRAMS} ({e})") from None
        if unit not in ("word", "char"):
            raise KenLMError(f"{p / LM_META}: unit must be word or char, got {unit!r}")
        return cls(p, binary, unigrams, unit, order)

    @cached_property
    def model(self) -> Any:
        """The ``kenlm.Model`` of the binary, loaded on first use (needs the ``kenlm`` module)."""
        return load_kenlm(self.binary)

    def log_prob(self, text: str) -> float:
        """Natural-log probability of a decoded sentence with sentence boundaries (a character LM scores each
        non-space character)."""
        units = text if self.unit == "word" else " ".join(text.replace(" ", ""))
        return float(self.model.score(units, bos=True, eos=True)) * LN10
