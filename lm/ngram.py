"""Building KenLM n-gram language models for CTC beam search (DS1 section 3, DS2 section 3.8).

``build_ngram`` normalises a text corpus the way the acoustic model's transcripts are normalised, runs KenLM's
``lmplz`` (modified Kneser-Ney) and ``build_binary``, and writes one LM directory (its files:
:mod:`deepspeech.decoding.kenlm`, which also reads it back for the decoders)::

    DIR/lm.arpa       the ARPA model (kept unless keep_arpa=False)
    DIR/lm.binary     KenLM's binary format (probing or quantised trie): what the decoders load
    DIR/unigrams.txt  the vocabulary, one unit a line (pyctcdecode needs it to score unknown words)
    DIR/lm.json       unit (word | char), order, pruning, sizes, source files and line counts

Units: English is word level (normalised words); Mandarin is character level, each character a "word"
(DS2 section 3.8 used character n-grams for Mandarin); ``zh-pinyin`` models Mandarin text spelt as numbered pinyin,
each syllable a word, for models with pinyin output units. The binaries come from ``scripts/build_kenlm.sh``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from deepspeech.decoding.kenlm import LM_ARPA, LM_BINARY, LM_META, UNIGRAMS, KenLMError
from deepspeech.text import normalize_en, normalize_pinyin, normalize_zh

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NgramConfig:
    lang: str = "en"  # en: word units; zh: character units; zh-pinyin: numbered-pinyin syllables as words
    order: int = 3
    prune: tuple[int, ...] = ()  # lmplz --prune: count thresholds per order (e.g. (0, 1, 1)); () = none
    memory: str = "10%"  # lmplz -S: sort memory (it reserves 80% of RAM by default)
    binary_type: str = "trie"  # probing (fast, large) | trie (compact)
    quantize_bits: int = 8  # trie only: probability/backoff quantisation bits (0 = none)
    keep_arpa: bool = True

    def __post_init__(self) -> None:
        if self.lang not in ("en", "zh", "zh-pinyin"):
            raise ValueError(f"lang must be en, zh or zh-pinyin, got {self.lang!r}")
        if not 1 <= self.order <= 6:
            raise ValueError(f"order must be 1..6 (KenLM's default build), got {self.order}")
        if self.prune and (len(self.prune) > self.order or any(p < 0 for p in self.prune)
                           or list(self.prune) != sorted(self.prune)):
            raise ValueError("prune: at most `order` non-negative, non-decreasing thresholds (e.g. 0 1 1)")
        if self.binary_type not in ("probing", "trie"):
            raise ValueError("binary_type must be probing or trie")
        if not 0 <= self.quantize_bits <= 25:
            raise ValueError("quantize_bits must be 0..25")

    @property
    def unit(self) -> str:
        return "char" if self.lang == "zh" else "word"


def kenlm_binary(name: str) -> str:
    """Path of a KenLM tool: $KENLM_BIN, then the running venv's bin/, then PATH."""
    candidates = []
    if os.environ.get("KENLM_BIN"):
        candidates.append(Path(os.environ["KENLM_BIN"]) / name)
    import sys

    candidates.append(Path(sys.executable).parent / name)
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which(name)
    if found:
        return found
    raise KenLMError(f"KenLM's {name} not found: run scripts/build_kenlm.sh (or set KENLM_BIN to its folder)")


def lm_units(line: str, lang: str) -> str:
    """One corpus line -> the space-separated units the LM models ('' when nothing is left)."""
    if lang == "en":
        return normalize_en(line)
    if lang == "zh-pinyin":  # Mandarin text spelt as numbered pinyin: syllables are the LM's words
        return normalize_pinyin(line)
    return " ".join(normalize_zh(line))


def iter_text(files: Sequence[str | Path], lang: str, exclude: set[str] = frozenset(),  # type: ignore[assignment]
              drop_last: int = 0) -> Iterable[str]:
    """Normalised lines of the text files, skipping empty lines, those in ``exclude`` (normalised units) and the
    last ``drop_last`` lines of each file (the data kit's text protocol holds out the last 1,000 as test text)."""
    for f in files:
        lines = Path(f).read_text(encoding="utf-8").splitlines()
        if drop_last and len(lines) <= drop_last:
            raise ValueError(f"{f}: has {len(lines)} lines, cannot hold out the last {drop_last}")
        for line in lines[: len(lines) - drop_last]:
            units = lm_units(line, lang)
            if units and units not in exclude:
                yield units


def _run(cmd: list[str], stdin_path: str | None = None) -> None:
    log.debug("running %s", " ".join(cmd))
    with open(stdin_path, "rb") if stdin_path else open(os.devnull, "rb") as stdin:
        proc = subprocess.run(cmd, stdin=stdin, capture_output=True)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace")[-2000:]
        raise KenLMError(f"{os.path.basename(cmd[0])} failed (exit {proc.returncode}):\n{tail}")


def build_ngram(lines: Iterable[str], out_dir: str | Path, cfg: NgramConfig,
                sources: Sequence[str] = ()) -> Path:
    """Estimate an n-gram LM from normalised, space-separated ``lines`` (see :func:`iter_text`) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lmplz, build_binary = kenlm_binary("lmplz"), kenlm_binary("build_binary")
    vocab: set[str] = set()
    n_lines = n_tokens = 0
    with tempfile.TemporaryDirectory() as tmp:
        text_path = os.path.join(tmp, "text.txt")
        with open(text_path, "w", encoding="utf-8") as f:
            for line in lines:
                units = line.split()
                if not units:
                    continue
                vocab.update(units)
                n_lines += 1
                n_tokens += len(units)
                f.write(" ".join(units) + "\n")
        if n_lines == 0:
            raise KenLMError("no text to build a language model from")
        arpa = out / LM_ARPA
        cmd = [lmplz, "-o", str(cfg.order), "-S", cfg.memory, "-T", tmp, "--discount_fallback", "--arpa", str(arpa)]
        if cfg.prune:
            cmd += ["--prune", *map(str, cfg.prune)]
        _run(cmd, stdin_path=text_path)
    binary = out / LM_BINARY
    cmd = [build_binary, "-S", cfg.memory]
    if cfg.binary_type == "trie" and cfg.quantize_bits:
        cmd += ["-q", str(cfg.quantize_bits), "-b", str(cfg.quantize_bits)]
    _run([*cmd, cfg.binary_type, str(arpa), str(binary)])
    (out / UNIGRAMS).write_text("\n".join(sorted(vocab)) + "\n", encoding="utf-8")
    meta = {**asdict(cfg), "unit": cfg.unit, "lines": n_lines, "tokens": n_tokens, "vocabulary": len(vocab),
            "ngrams": arpa_counts(arpa), "binary_bytes": binary.stat().st_size, "sources": list(sources)}
    if not cfg.keep_arpa:
        arpa.unlink()
    (out / LM_META).write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    log.info("%s: %d-gram %s LM from %d lines (%d tokens, vocabulary %d), binary %.1f MB", out, cfg.order,
             cfg.unit, n_lines, n_tokens, len(vocab), meta["binary_bytes"] / 1e6)
    return out


def arpa_counts(arpa: str | Path) -> dict[str, int]:
    """The ``ngram N=count`` header of an ARPA file."""
    counts: dict[str, int] = {}
    with open(arpa, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("ngram ") and "=" in line:
                k, v = line[6:].split("=")
                counts[k] = int(v)
            elif line.startswith("\\1-grams"):
                break
    return counts
