"""Synthetic sentence corpora with a fixed protocol: unseen voices and unseen sentences in the test set.

Text protocol (../shared/data/README.md): the last 1,000 lines of each sentence file are test text, everything
before is training text. Voice protocol (:func:`data_synthesis.tts.voice_split`): train and test use disjoint
voice/variant sets. So the corpus has

- ``train``: training text, training voices (what the model learns from);
- ``dev``: other training-text sentences, training voices (model selection; never the test text);
- ``test``: test text, test voices (unseen voices and unseen sentences).

Mandarin transcripts stay in characters; espeak-ng is given numbered pinyin (``cmn-latn-pinyin``, see
ENVIRONMENT.md: the plain ``cmn`` voice reads tone numbers as English digits).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_synthesis.tts import SynthesisError, synthesize_corpus, voice_split
from deepspeech.data.manifest import Utterance
from deepspeech.text import normalize_en, normalize_zh
from deepspeech.text import to_pinyin as text_to_pinyin

log = logging.getLogger(__name__)

TEST_LINES = 1000  # the last lines of each sentence file are test text
_CJK_ONLY = re.compile(r"^[\u4e00-\u9fff]+$")
# espeak-ng expands these ("mr" -> "mister"), so audio and transcript would disagree: such sentences are skipped.
_ABBREVIATIONS = frozenset({"mr", "mrs", "dr", "st", "jr", "sr", "messrs", "mme", "mlle", "esq", "co", "vs", "etc"})


@dataclass(frozen=True)
class CorpusConfig:
    lang: str = "en"
    train_sentences: int = 5000
    dev_sentences: int = 200
    test_sentences: int = 500
    min_len: int = 4  # words (en) or characters (zh)
    max_len: int = 20
    sample_rate: int = 16_000

    def __post_init__(self) -> None:
        if self.lang not in ("en", "zh"):
            raise ValueError("lang must be en or zh")
        if not 1 <= self.min_len <= self.max_len or min(self.train_sentences, self.test_sentences) < 1:
            raise ValueError("invalid corpus sizes")


def text_protocol(files: Sequence[str | Path]) -> tuple[list[str], list[str]]:
    """(training lines, test lines) over several sentence files: each file's last TEST_LINES lines are test."""
    train, test = [], []
    for f in files:
        lines = [ln.strip() for ln in Path(f).read_text(encoding="utf-8").splitlines()]
        if len(lines) <= TEST_LINES:
            raise ValueError(f"{f}: needs more than {TEST_LINES} lines for the text protocol")
        train += [ln for ln in lines[:-TEST_LINES] if ln]
        test += [ln for ln in lines[-TEST_LINES:] if ln]
    return train, test


def usable(line: str, cfg: CorpusConfig) -> str | None:
    """The normalised transcript if the sentence fits the length limits (zh: Chinese characters only), else None."""
    if cfg.lang == "en":
        text = normalize_en(line)
        words = text.split()
        if _ABBREVIATIONS.intersection(words):
            return None
        n = len(words)
    else:
        text = normalize_zh(line)
        if not _CJK_ONLY.match(text):
            return None
        n = len(text)
    return text if cfg.min_len <= n <= cfg.max_len else None


def pick(lines: Sequence[str], n: int, cfg: CorpusConfig, rng: np.random.Generator,
         exclude: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """n distinct usable sentences in a seeded random order (fewer if the pool runs out)."""
    out, seen = [], set(exclude)
    for i in rng.permutation(len(lines)):
        text = usable(lines[int(i)], cfg)
        if text is not None and text not in seen:
            seen.add(text)
            out.append(text)
            if len(out) == n:
                break
    if len(out) < n:
        log.warning("only %d usable sentences of the %d asked for", len(out), n)
    return out


def to_pinyin(text: str) -> str:
    """Chinese characters -> numbered pinyin with the neutral tone as 5 ("ni3 hao3 ma5"), for cmn-latn-pinyin."""
    try:
        return text_to_pinyin(text)
    except ImportError as e:
        raise SynthesisError(str(e)) from e


def build_corpus(text_files: Sequence[str | Path], out_dir: str | Path, cfg: CorpusConfig, seed: int = 0,
                 workers: int = 1, progress: bool = True) -> dict[str, list[Utterance]]:
    """Write ``out_dir/{train,dev,test}/`` (audio + manifest.jsonl) following the text and voice protocols."""
    train_lines, test_lines = text_protocol(text_files)
    rng = np.random.default_rng(seed)
    train_text = pick(train_lines, cfg.train_sentences + cfg.dev_sentences, cfg, rng)
    test_text = pick(test_lines, cfg.test_sentences, cfg, rng, exclude=set(train_text))
    parts = {"train": (train_text[: cfg.train_sentences], "train"),
             "dev": (train_text[cfg.train_sentences:], "train"),
             "test": (test_text, "test")}
    spoken = to_pinyin if cfg.lang == "zh" else None
    out: dict[str, list[Utterance]] = {}
    for k, (name, (texts, voices)) in enumerate(parts.items()):
        if not texts:
            continue
        tcfg = voice_split(cfg.lang, voices)
        tcfg = dataclasses.replace(tcfg, sample_rate=cfg.sample_rate)
        out[name] = synthesize_corpus(texts, Path(out_dir) / name, tcfg, seed=seed * 10 + k, lang=cfg.lang,
                                      progress=progress, workers=workers, spoken=spoken)
        log.info("%s: %d utterances, %.2f h", name, len(out[name]), sum(u.duration_s for u in out[name]) / 3600)
    return out
