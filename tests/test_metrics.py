"""deepspeech.metrics: Levenshtein distance, corpus WER/CER (checked against jiwer), Mandarin WER == CER."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jiwer
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepspeech.metrics import ErrorCounts, chars, edit_distance, error_rates, words


def brute_distance(a: Sequence[object], b: Sequence[object]) -> int:
    """The recursive definition, memoised."""

    @functools.cache
    def d(i: int, j: int) -> int:
        if i == 0 or j == 0:
            return i + j
        return min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))

    return d(len(a), len(b))


@pytest.mark.parametrize("a,b,dist", [
    ("", "", 0),
    ("abc", "", 3),
    ("", "abc", 3),
    ("abc", "abc", 0),
    ("kitten", "sitting", 3),
    ("flaw", "lawn", 2),
    ("intention", "execution", 5),
    (["the", "cat", "sat"], ["the", "sat"], 1),
    (["a", "b"], ["b", "a"], 2),
    ([1, 2, 3], [1, 2, 3, 4, 5], 2),
])
def test_edit_distance_known(a: Sequence[object], b: Sequence[object], dist: int) -> None:
    assert edit_distance(a, b) == dist
    assert edit_distance(b, a) == dist


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from("abc"), max_size=9), st.lists(st.sampled_from("abc"), max_size=9))
def test_edit_distance_brute_force(a: list[str], b: list[str]) -> None:
    d = edit_distance(a, b)
    assert d == brute_distance(a, b)
    assert d == edit_distance(b, a)
    assert abs(len(a) - len(b)) <= d <= max(len(a), len(b))


WORDS = st.lists(st.sampled_from(["a", "b", "ab", "ba", "c"]), max_size=12)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(WORDS.filter(bool), WORDS)
def test_against_jiwer(ref_words: list[str], hyp_words: list[str]) -> None:
    ref, hyp = " ".join(ref_words), " ".join(hyp_words)
    c = error_rates([ref], [hyp], "en")
    assert c.words == len(ref_words) and c.chars == len(ref) and c.n == 1
    assert c.wer == pytest.approx(jiwer.wer(ref, hyp))
    assert c.cer == pytest.approx(jiwer.cer(ref, hyp))


@settings(max_examples=50, deadline=None, derandomize=True)
@given(st.lists(st.tuples(WORDS.filter(bool), WORDS), min_size=1, max_size=5))
def test_corpus_rates_against_jiwer(pairs: list[tuple[list[str], list[str]]]) -> None:
    refs = [" ".join(r) for r, _ in pairs]
    hyps = [" ".join(h) for _, h in pairs]
    c = error_rates(refs, hyps, "en")
    # corpus level: total edits / total reference units, as jiwer computes for lists
    assert c.wer == pytest.approx(jiwer.wer(refs, hyps))
    assert c.cer == pytest.approx(jiwer.cer(refs, hyps))


def test_whitespace_is_collapsed() -> None:
    c = error_rates(["the  cat\tsat "], [" the cat sat"], "en")
    assert (c.word_edits, c.char_edits) == (0, 0)
    assert chars("a  b", "en") == ["a", " ", "b"]
    assert words(" a  b ", "en") == ["a", "b"]


def test_mandarin_wer_equals_cer() -> None:
    refs, hyps = ["今天 天气很好", "我爱北京"], ["今天天汽很好啊", "我 北京"]
    c = error_rates(refs, hyps, "zh")
    assert words("今天 天气", "zh") == chars("今天 天气", "zh") == ["今", "天", "天", "气"]
    assert c.words == c.chars == 10
    assert c.word_edits == c.char_edits == 3  # 气->汽, +啊, -爱
    assert c.wer == c.cer == pytest.approx(0.3)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.text(alphabet="你好世界天 ", min_size=1), st.text(alphabet="你好世界天 "))
def test_mandarin_wer_equals_cer_random(ref: str, hyp: str) -> None:
    c = error_rates([ref], [hyp], "zh")
    assert c.wer == c.cer and c.word_edits == c.char_edits


def test_counts_accumulate_and_serialise() -> None:
    c = ErrorCounts()
    c.add("a b c", "a x c", "en")
    c.add("d e", "d e f", "en")
    assert c.as_list() == [2, 5, 1 + 2, 5 + 3, 2]  # chars: b->x; insert " f"
    assert c.wer == pytest.approx(2 / 5) and c.cer == pytest.approx(3 / 8)
    assert ErrorCounts.from_list(c.as_list()) == c
    assert c.summary() == {"wer": c.wer, "cer": c.cer, "n": 2, "words": 5, "chars": 8}
    assert ErrorCounts().wer == 0.0 and ErrorCounts().cer == 0.0  # no division by zero
    with pytest.raises(ValueError):
        error_rates(["a"], ["a", "b"])
