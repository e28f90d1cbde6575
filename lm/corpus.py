"""The neural LM's training and held-out text, per language, from the data kit's text corpora and the acoustic
training transcripts.

The kit's text protocol (../shared/data/README.md, "Fixed evaluation protocol"): the last 1,000 lines of each
sentence file are test text (LM perplexity, here bits per character), everything before them may be trained on.

* English: ``text_en_gutenberg/sentences_norm.txt`` less its last 1,000 lines and less the lines of
  ``en_minilibrispeech/lm_exclude.txt`` (sentences overlapping Mini LibriSpeech dev/test), plus the transcripts of
  the acoustic TRAIN manifests given; test: the last 1,000 lines.
* Mandarin: ``text_zh/luxun_sentences.txt`` and ``text_zh/law_sentences.txt``, each less its last 1,000 lines, plus
  the train transcripts; test: the two last-1,000 blocks.

Every line is normalised as the acoustic model's references are (deepspeech.text: English lower case letters,
apostrophes and single spaces, digits spelt out; Mandarin NFKC, punctuation and spaces removed), so that the LM
scores exactly the character strings a character-CTC model (DS2 section 3) hypothesises. Lines left empty are
dropped, and so is every training line equal to a test line (the corpora repeat a few short lines, e.g. chapter
headings), so no test line is ever trained on. Manifests that are, by name or by their records' ``split`` key,
a dev or test split are refused.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deepspeech.text import normalize_en, normalize_zh

log = logging.getLogger(__name__)

TEST_LINES = 1000  # the last lines of each sentence file are the kit's text test split
LANGS = ("en", "zh")
REPO = Path(__file__).resolve().parents[1]
TRAIN_TXT, TEST_TXT, META_JSON = "train.txt", "test.txt", "corpus.json"
# kit-relative files: (sentence files, each with its last TEST_LINES held out; lines to leave out of training)
KIT_FILES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "en": (("text_en_gutenberg/sentences_norm.txt",), ("en_minilibrispeech/lm_exclude.txt",)),
    "zh": (("text_zh/luxun_sentences.txt", "text_zh/law_sentences.txt"), ()),
}
_HELD_OUT = frozenset({"dev", "test", "valid", "validation", "eval", "heldout"})


class CorpusError(ValueError):
    """The LM text cannot be built as asked (a missing kit file, a dev/test manifest)."""


def default_kit() -> Path:
    """The data kit: $DATA_KIT (as the recipes read it), else ../shared/data beside the repository."""
    env = os.environ.get("DATA_KIT")
    return Path(env) if env else REPO.parent / "shared" / "data"


def normalizer(lang: str) -> Callable[[str], str]:
    """The acoustic side's reference normaliser for ``lang`` (deepspeech.text.CharTokenizer.normalize)."""
    if lang not in LANGS:
        raise ValueError(f"lang must be one of {LANGS}, got {lang!r}")
    return normalize_en if lang == "en" else normalize_zh


@dataclass(frozen=True)
class LMText:
    """The LM text of one language: normalised lines, and where they came from."""

    lang: str
    train: list[str]
    test: list[str]
    sources: dict[str, int] = field(default_factory=dict)  # source -> lines it gave to train or test
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> training lines left out

    @property
    def train_chars(self) -> int:
        """Characters of train.txt, each line's closing newline included."""
        return sum(len(line) + 1 for line in self.train)

    @property
    def test_chars(self) -> int:
        return sum(len(line) + 1 for line in self.test)


def held_out_name(path: str | Path) -> bool:
    """Whether a manifest's file name says it is a dev or test split ("dev.jsonl", "en_dev.jsonl", "test-clean")."""
    tokens = re.split(r"[^a-z0-9]+", Path(path).stem.lower())
    return any(t in _HELD_OUT for t in tokens)


def train_transcripts(manifest: str | Path) -> list[str]:
    """The transcripts of an acoustic TRAIN manifest (raw ``text`` fields); raises CorpusError for a dev/test one,
    by file name or by any record whose ``split`` key is not "train"."""
    from deepspeech.data.manifest import read_manifest_report

    path = Path(manifest)
    if held_out_name(path):
        raise CorpusError(f"{path}: its name says it is a dev/test split; LM text takes TRAIN transcripts only")
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                split = json.loads(line).get("split") if line.strip() else None
            except (ValueError, AttributeError):
                continue  # read_manifest reports bad lines
            if split is not None and split != "train":
                raise CorpusError(f"{path}:{number}: a record of split {split!r}; LM text takes TRAIN transcripts "
                                  "only (import the train split: deepspeech data import kit ... --split train)")
    # transcripts only: the audio files need not be here
    return [u.text for u in read_manifest_report(path, check_files=False).utts]


def split_text(lines: Sequence[str], test_lines: int = TEST_LINES) -> tuple[list[str], list[str]]:
    """(all but the last ``test_lines`` lines, the last ``test_lines``) of one sentence file."""
    if len(lines) <= test_lines:
        raise CorpusError(f"a sentence file has {len(lines)} lines; the text protocol holds out the last {test_lines}")
    return list(lines[: len(lines) - test_lines]), list(lines[len(lines) - test_lines:])


def build_lm_text(lang: str, text_files: Sequence[str | Path], exclude_files: Sequence[str | Path] = (),
                  transcripts: Iterable[tuple[str, Sequence[str]]] = (), test_lines: int = TEST_LINES) -> LMText:
    """Train and test lines from sentence files (each's last ``test_lines`` are test), less the (normalised) lines
    of ``exclude_files`` and every line equal to a test line, plus ``transcripts`` ((source name, texts) pairs,
    training only). All lines normalised by :func:`normalizer`; empty ones dropped."""
    norm = normalizer(lang)
    train: list[str] = []
    test: list[str] = []
    sources: dict[str, int] = {}
    for f in text_files:
        head, tail = split_text(Path(f).read_text(encoding="utf-8").splitlines(), test_lines)
        kept = [t for t in map(norm, tail) if t]
        test += kept
        part = [t for t in map(norm, head) if t]
        train += part
        sources[f"{Path(f).name} (train)"] = len(part)
        sources[f"{Path(f).name} (test, last {test_lines} lines)"] = len(kept)
    for name, texts in transcripts:
        part = [t for t in map(norm, texts) if t]
        train += part
        sources[f"transcripts of {name}"] = len(part)
    exclude = {t for f in exclude_files for t in map(norm, Path(f).read_text(encoding="utf-8").splitlines()) if t}
    test_set = set(test)
    dropped = {"in an exclude file": sum(t in exclude for t in train),
               "equal to a test line": sum(t in test_set and t not in exclude for t in train)}
    train = [t for t in train if t not in exclude and t not in test_set]
    return LMText(lang, train, test, sources, dropped)


def kit_lm_text(lang: str, kit: str | Path | None = None, manifests: Sequence[str | Path] = ()) -> LMText:
    """:func:`build_lm_text` over the data kit's files for ``lang`` (:data:`KIT_FILES`) and the train manifests."""
    if lang not in KIT_FILES:
        raise ValueError(f"lang must be one of {LANGS}, got {lang!r}")
    root = Path(kit) if kit is not None else default_kit()
    texts, excludes = (tuple(root / f for f in group) for group in KIT_FILES[lang])
    missing = [str(f) for f in (*texts, *excludes) if not f.is_file()]
    if missing:
        raise CorpusError(f"data kit not found: {', '.join(missing)} missing (give --kit or set DATA_KIT)")
    pairs = [(str(m), train_transcripts(m)) for m in manifests]
    return build_lm_text(lang, texts, excludes, pairs)


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)


def write_lm_text(text: LMText, out_dir: str | Path) -> dict[str, object]:
    """DIR/train.txt and DIR/test.txt (one normalised line each, "\\n"-terminated) and DIR/corpus.json (counts and
    sources), each written whole or not at all. Returns the corpus.json record."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_lines(out / TRAIN_TXT, text.train)
    _write_lines(out / TEST_TXT, text.test)
    meta: dict[str, object] = {
        "lang": text.lang, "train_lines": len(text.train), "train_chars": text.train_chars,
        "test_lines": len(text.test), "test_chars": text.test_chars,
        "train_vocabulary": len({c for line in text.train for c in line}) + 1,  # + the newline
        "test_chars_unseen_in_train": _unseen(text), "sources": text.sources, "dropped": text.dropped}
    tmp = out / (META_JSON + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / META_JSON)
    log.info("%s LM text: train %d lines, %d characters; test %d lines, %d characters; %s", text.lang,
             len(text.train), text.train_chars, len(text.test), text.test_chars,
             ", ".join(f"{n} dropped ({why})" for why, n in text.dropped.items()))
    return meta


def _unseen(text: LMText) -> int:
    """Test characters (newlines included) that never occur in the training text."""
    seen = {c for line in text.train for c in line}
    return sum(c not in seen for line in text.test for c in line)


__all__ = ["KIT_FILES", "LANGS", "TEST_LINES", "CorpusError", "LMText", "build_lm_text", "default_kit",
           "held_out_name", "kit_lm_text", "normalizer", "split_text", "train_transcripts", "write_lm_text"]
