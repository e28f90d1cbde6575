"""deepspeech.text: English and Mandarin normalisers, number spelling, character tokenizers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepspeech.text import (
    BLANK,
    UNK,
    CharTokenizer,
    build_tokenizer,
    english_tokenizer,
    mandarin_tokenizer,
    normalize_en,
    normalize_pinyin,
    normalize_zh,
    number_to_words,
    pinyin_tokenizer,
)


@pytest.mark.parametrize("raw,expected", [
    ("Hello, World!", "hello world"),
    ("  MiXeD   case\tand\nspace  ", "mixed case and space"),
    ("don't", "don't"),
    ("don\u2019t", "don't"),  # curly apostrophe
    ("\u2018it\u2019s\u2019", "it's"),  # curly quotes around a word with an apostrophe
    ("'quoted' and don't", "quoted and don't"),
    ('"double" \u201ccurly\u201d', "double curly"),
    ("rock 'n' roll", "rock n roll"),
    ("the boys' toys", "the boys toys"),  # trailing apostrophe is treated as a quote
    ("In 1905.", "in one thousand nine hundred five"),
    ("pi is 3.14", "pi is three point one four"),
    ("1,000,000 people", "one million people"),
    ("42%", "forty two percent"),
    ("rock & roll", "rock and roll"),
    ("caf\u00e9 na\u00efve r\u00e9sum\u00e9", "cafe naive resume"),
    ("cafe\u0301", "cafe"),  # already decomposed accent
    ("\u0130stanbul", "istanbul"),
    ("ＡＢＣ", "abc"),  # full width
    ("3rd", "three rd"),
    ("", ""),
    ("?!.,;:", ""),
])
def test_normalize_en(raw: str, expected: str) -> None:
    assert normalize_en(raw) == expected


@pytest.mark.parametrize("n,words", [
    (0, "zero"),
    (7, "seven"),
    (13, "thirteen"),
    (20, "twenty"),
    (42, "forty two"),
    (100, "one hundred"),
    (101, "one hundred one"),
    (999, "nine hundred ninety nine"),
    (1000, "one thousand"),
    (1905, "one thousand nine hundred five"),
    (1_000_001, "one million one"),
    (2_000_030_000, "two billion thirty thousand"),
    (-5, "minus five"),
    (10**15, "one " + " ".join(["zero"] * 15)),  # beyond trillions: digit by digit
])
def test_number_to_words(n: int, words: str) -> None:
    assert number_to_words(n) == words


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(0, 10**15 - 1))
def test_number_to_words_is_normalised_text(n: int) -> None:
    w = number_to_words(n)
    assert w and w == normalize_en(w)  # lower case letters and single spaces only
    assert normalize_en(str(n)) == w


def test_english_tokenizer() -> None:
    tok = english_tokenizer()
    assert len(tok) == 29 and tok.blank_id == 0 and tok.symbols[0] == BLANK
    assert tok.symbols[1:3] == [" ", "'"] and "".join(tok.symbols[3:]) == "abcdefghijklmnopqrstuvwxyz"
    assert tok.unk_id is None and tok.lang == "en"
    ids = tok.encode("Don't 2!")
    assert ids == [tok.index[c] for c in "don't two"]
    assert 0 not in ids
    assert tok.decode(ids) == "don't two"
    assert tok.decode([0, *ids, 0]) == "don't two"  # blanks are skipped
    assert build_tokenizer("en") == tok


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.text(max_size=80))
def test_english_round_trip(text: str) -> None:
    tok = english_tokenizer()
    norm = normalize_en(text)
    assert normalize_en(norm) == norm  # idempotent
    assert set(norm) <= set(tok.symbols[1:])
    assert "  " not in norm and norm == norm.strip()
    ids = tok.encode(text)
    assert all(1 <= i < 29 for i in ids)
    assert tok.decode(ids) == norm


def test_normalize_zh() -> None:
    assert normalize_zh("ＡＢＣ１２３") == "ABC123"  # NFKC full width -> half width
    assert normalize_zh("你好，世界！ hello world。") == "你好世界HELLOWORLD"
    assert normalize_zh("「北京」、（上海）…… 《广州》") == "北京上海广州"
    assert normalize_zh("   ") == ""


def test_mandarin_tokenizer() -> None:
    texts = ["你好你好", "你们好", "世界，你好！", "ＡＢ"]
    tok = mandarin_tokenizer(texts)
    assert tok.lang == "zh" and tok.symbols[:2] == [BLANK, UNK] and tok.unk_id == 1
    # counts: 你 4, 好 4, 们 1, 世 1, 界 1, A 1, B 1; ties by code point
    assert tok.symbols[2:] == ["你", "好", "A", "B", "世", "们", "界"]
    assert "，" not in tok.index and "！" not in tok.index and "Ａ" not in tok.index
    assert tok.encode("你好吗") == [2, 3, 1]  # unseen character -> <unk>
    assert tok.decode(tok.encode("你好吗")) == "你好"  # <unk> is not spelt out
    assert tok.encode("ａｂ，你") == [4, 5, 2]  # full width and lower case map onto the vocabulary
    assert mandarin_tokenizer(texts, max_size=4).symbols == [BLANK, UNK, "你", "好"]
    assert mandarin_tokenizer(texts, min_count=2).symbols == [BLANK, UNK, "你", "好"]
    assert build_tokenizer("zh", texts) == tok


@pytest.mark.parametrize("tok", [english_tokenizer(), mandarin_tokenizer(["中文字符，测试", "语音识别 ABC"])],
                         ids=["en", "zh"])
def test_save_load(tmp_path: Path, tok: CharTokenizer) -> None:
    tok.save(tmp_path / "tok.json")
    loaded = CharTokenizer.load(tmp_path / "tok.json")
    assert loaded == tok and loaded.symbols == tok.symbols and loaded.lang == tok.lang
    assert loaded.encode("语音 test 中文") == tok.encode("语音 test 中文")
    assert json.loads((tmp_path / "tok.json").read_text(encoding="utf-8"))["symbols"] == tok.symbols


def test_equality() -> None:
    assert english_tokenizer() == english_tokenizer()
    assert english_tokenizer() != mandarin_tokenizer(["a"])
    assert english_tokenizer() != "not a tokenizer"


@pytest.mark.parametrize("symbols,lang", [
    ([" ", BLANK, "a"], "en"),  # blank not first
    ([], "en"),
    ([BLANK, "a", "a"], "en"),  # duplicate
    ([BLANK, UNK, "中", "中"], "zh"),
    ([BLANK, "a"], "fr"),  # unknown language
])
def test_invalid_vocabulary(symbols: list[str], lang: str) -> None:
    with pytest.raises(ValueError):
        CharTokenizer(symbols, lang)


def test_pinyin_tokenizer_spells_characters_and_round_trips(tmp_path: Path) -> None:
    pytest.importorskip("pypinyin")
    tok = build_tokenizer("zh", units="pinyin")
    assert tok == pinyin_tokenizer() and len(tok) == 33 and tok.metric_lang == "en"
    assert tok.normalize("你好，世界！") == "ni3 hao3 shi4 jie4"
    assert tok.normalize("绿色的") == "lv4 se4 de5"  # u-umlaut as v, neutral tone as 5
    assert tok.normalize("第3条") == "di4 tiao2"  # digits (reading unknown) are dropped
    for text in ("法律规定", "ni3 hao3", "NI3 hao3 x"):  # already pinyin: kept; malformed words dropped
        once = tok.normalize(text)
        assert tok.normalize(once) == once and tok.decode(tok.encode(once)) == once
    assert normalize_pinyin("NI3 hao3 x") == "ni3 hao3"
    tok.save(tmp_path / "t.json")
    loaded = CharTokenizer.load(tmp_path / "t.json")
    assert loaded == tok and loaded.units == "pinyin"
    with pytest.raises(ValueError, match="units"):
        CharTokenizer(tok.symbols, "en", units="pinyin")
    with pytest.raises(ValueError):
        build_tokenizer("en", units="pinyin")
    assert mandarin_tokenizer(["中"]).metric_lang == "zh" and english_tokenizer().metric_lang == "en"
