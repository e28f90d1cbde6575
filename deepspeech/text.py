"""Text: normalisers and character tokenizers for English and Mandarin (DS2 section 3: characters as outputs;
English uses letters, space and apostrophe; Mandarin uses the few thousand characters seen in training, or, with
``units="pinyin"``, the letters and tone digits of numbered pinyin, mapped back to characters by
:mod:`deepspeech.decoding.hanzi`).

Index 0 is always the CTC blank. A tokenizer is saved as JSON beside the model weights.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

BLANK = "<blank>"
UNK = "<unk>"

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = [(10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand")]


def number_to_words(n: int) -> str:
    """Non-negative integer -> English words ("1905" -> "one thousand nine hundred five")."""
    if n < 0:
        return "minus " + number_to_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_to_words(rest))
    for scale, name in _SCALES:
        if n >= scale:
            if n // scale >= 1000:
                break  # beyond the largest scale: fall through to digit by digit
            rest = n % scale
            return number_to_words(n // scale) + " " + name + ("" if rest == 0 else " " + number_to_words(rest))
    return " ".join(_ONES[int(d)] for d in str(n))


def _spell_number(m: re.Match[str]) -> str:
    whole, frac = m.group(1).replace(",", ""), m.group(2)
    words = number_to_words(int(whole)) if len(whole) <= 15 else " ".join(_ONES[int(d)] for d in whole)
    if frac:
        words += " point " + " ".join(_ONES[int(d)] for d in frac)
    return f" {words} "


_NUMBER = re.compile(r"(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?")


def normalize_en(text: str) -> str:
    """English normaliser: accents stripped, lower case, digits spoken as words, '&' and '%' spelt out,
    punctuation removed (apostrophes inside words kept), whitespace collapsed."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = text.replace("\u2019", "'").replace("\u2018", "'").lower()
    text = text.replace("&", " and ").replace("%", " percent ")
    text = _NUMBER.sub(_spell_number, text)
    text = re.sub(r"[^a-z' ]+", " ", text)
    text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text)  # quotes, not apostrophes
    return " ".join(text.split())


_ZH_KEEP = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaffA-Z0-9']")


def normalize_zh(text: str) -> str:
    """Mandarin normaliser: NFKC (full-width to half-width), Latin upper case, punctuation and spaces removed.
    CJK characters, Latin letters and digits are kept one symbol each."""
    text = unicodedata.normalize("NFKC", text).upper()
    return "".join(_ZH_KEEP.findall(text))


_PINYIN_SYLLABLE = re.compile(r"^[a-z]+[1-5]$")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def to_pinyin(text: str) -> str:
    """Chinese characters -> numbered pinyin, neutral tone as 5, u-umlaut as v ("ni3 hao3 ma5", "lv4"), one
    syllable per character (pypinyin's phrase dictionary picks the readings of polyphones). Other symbols kept."""
    try:
        from pypinyin import Style, lazy_pinyin
    except ImportError as e:
        raise ImportError("Mandarin pinyin needs pypinyin: pip install 'deepspeech[synth]'") from e
    return " ".join(lazy_pinyin(text, style=Style.TONE3, neutral_tone_with_five=True))


def normalize_pinyin(text: str) -> str:
    """Pinyin normaliser: characters are spelt as numbered pinyin (:func:`to_pinyin`); text that already is
    pinyin is kept. Only well-formed syllables (letters then a tone digit) survive: digits and Latin words in
    Mandarin text, whose reading is unknown, are dropped. Idempotent."""
    spelt = to_pinyin(normalize_zh(text)) if _CJK.search(text) else text.lower()
    return " ".join(t for t in spelt.split() if _PINYIN_SYLLABLE.match(t))


class CharTokenizer:
    """A character vocabulary with the CTC blank at index 0.

    ``lang`` selects the normaliser; ``unk`` (Mandarin) maps out-of-vocabulary characters, English has none and
    drops them after normalisation (normalisation leaves only letters, apostrophe and space). ``units="pinyin"``
    (Mandarin only) makes the outputs numbered-pinyin letters: references are spelt in pinyin, and error rates
    count syllables as words and letters as characters (``metric_lang`` is ``"en"``).
    """

    def __init__(self, symbols: Sequence[str], lang: str, units: str = "char") -> None:
        if lang not in {"en", "zh"}:
            raise ValueError(f"unknown language {lang!r}")
        if units not in {"char", "pinyin"} or (units == "pinyin" and lang != "zh"):
            raise ValueError(f"unknown output units {units!r} for {lang!r}")
        if not symbols or symbols[0] != BLANK:
            raise ValueError("the first symbol must be the CTC blank")
        if len(set(symbols)) != len(symbols):
            raise ValueError("duplicate symbols in vocabulary")
        self.symbols = list(symbols)
        self.lang = lang
        self.units = units
        self.index = {s: i for i, s in enumerate(self.symbols)}
        self.unk_id = self.index.get(UNK)

    @property
    def blank_id(self) -> int:
        return 0

    def __len__(self) -> int:
        return len(self.symbols)

    @property
    def metric_lang(self) -> str:
        """How decoded text is split for error rates: ``"en"`` (space-separated words) or ``"zh"`` (characters)."""
        return "zh" if self.lang == "zh" and self.units == "char" else "en"

    def normalize(self, text: str) -> str:
        if self.units == "pinyin":
            return normalize_pinyin(text)
        return normalize_en(text) if self.lang == "en" else normalize_zh(text)

    def encode(self, text: str) -> list[int]:
        """Text -> label ids (normalised first; never contains the blank)."""
        ids = []
        for c in self.normalize(text):
            i = self.index.get(c, self.unk_id)
            if i is not None:
                ids.append(i)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Label ids (already collapsed, blanks removed or not) -> text."""
        return "".join(self.symbols[i] for i in ids if i != 0 and self.symbols[i] != UNK)

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"lang": self.lang, "symbols": self.symbols}
        if self.units != "char":
            d["units"] = self.units
        return d

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=0))

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(d["symbols"], d["lang"], d.get("units", "char"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and self.to_dict() == other.to_dict()


def english_tokenizer() -> CharTokenizer:
    """29 symbols: blank, space, apostrophe, a-z (DS2's English output alphabet)."""
    return CharTokenizer([BLANK, " ", "'"] + [chr(c) for c in range(ord("a"), ord("z") + 1)], "en")


def mandarin_tokenizer(texts: Iterable[str], max_size: int = 6000, min_count: int = 1) -> CharTokenizer:
    """Vocabulary of the characters in ``texts`` (most frequent first, ties by code point), plus blank and unk."""
    counts = Counter(c for t in texts for c in normalize_zh(t))
    chars = sorted((c for c, n in counts.items() if n >= min_count), key=lambda c: (-counts[c], c))
    return CharTokenizer([BLANK, UNK] + chars[: max_size - 2], "zh")


def pinyin_tokenizer() -> CharTokenizer:
    """33 symbols: blank, space, a-z (v for u-umlaut), tone digits 1-5 (5: neutral)."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    return CharTokenizer([BLANK, " "] + letters + list("12345"), "zh", units="pinyin")


def build_tokenizer(lang: str, texts: Iterable[str] = (), units: str = "char") -> CharTokenizer:
    if units == "pinyin":
        if lang != "zh":
            raise ValueError("pinyin output units are for Mandarin (lang zh)")
        return pinyin_tokenizer()
    return english_tokenizer() if lang == "en" else mandarin_tokenizer(texts)
