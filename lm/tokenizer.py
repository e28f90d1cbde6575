"""A character tokenizer for the neural LM: one id per character seen in the training text, saved as JSON.

Id 0 is reserved for characters the training text never contained. Lines of text are joined with "\\n", which is an
ordinary character of the vocabulary (the LM learns where sentences end).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

UNK = "\ufffd"  # stands for every unseen character
REPO = Path(__file__).resolve().parents[1]
SHARED_TEXT = REPO.parent / "shared" / "data" / "text_en_gutenberg" / "sentences_norm.txt"
REPO_TEXT = REPO / "data" / "sentences_en" / "train" / "manifest.jsonl"


class CharTokenizer:
    """Characters <-> ids. ``chars[0]`` is the unknown symbol."""

    def __init__(self, chars: Sequence[str]) -> None:
        if not chars or chars[0] != UNK:
            raise ValueError("the first symbol must be the unknown symbol")
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("symbols must be distinct single characters")
        self.chars: tuple[str, ...] = tuple(chars)
        self._ids = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def train(cls, text: str | Iterable[str], min_count: int = 1) -> CharTokenizer:
        """Every character occurring at least ``min_count`` times, most frequent first (ties by code point)."""
        counts: Counter[str] = Counter()
        for chunk in [text] if isinstance(text, str) else text:
            counts.update(chunk)
        counts.pop(UNK, None)
        kept = sorted((c for c, n in counts.items() if n >= min_count), key=lambda c: (-counts[c], c))
        return cls([UNK, *kept])

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def padded_vocab_size(self, multiple: int = 8) -> int:
        """The vocabulary rounded up so that tensor-parallel sizes dividing ``multiple`` split it evenly."""
        return -(-self.vocab_size // multiple) * multiple

    def encode(self, text: str) -> list[int]:
        ids = self._ids
        return [ids.get(c, 0) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        n = len(self.chars)
        return "".join(self.chars[i] if 0 <= i < n else UNK for i in ids)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"type": "char", "chars": list(self.chars)}, ensure_ascii=False) + "\n",
                              encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        if d.get("type") != "char":
            raise ValueError(f"{path}: not a character tokenizer")
        return cls(d["chars"])


def default_text_path() -> Path:
    """The data kit's Gutenberg sentences when present, else the transcripts of the repository's English set."""
    return SHARED_TEXT if SHARED_TEXT.is_file() else REPO_TEXT


def read_text(path: str | Path) -> str:
    """A text file as is, or the ``text`` fields of a JSON-lines manifest, one per line."""
    path = Path(path)
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return "\n".join(json.loads(line)["text"] for line in raw.splitlines() if line.strip()) + "\n"
    return raw
