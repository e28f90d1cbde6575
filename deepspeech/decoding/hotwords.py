"""Hotwords (contextual biasing) for flashlight-text's lexicon beam search.

Contextual biasing in the sense of WeNet and sherpa-onnx (a bonus for completing a listed word or phrase, and a
provisional bonus for its prefix that is taken back when the path leaves it; Zhao et al., "Shallow-fusion end-to-end
contextual biasing", Interspeech 2019) fitted to flashlight's ``LexiconDecoder``:

- the lexicon trie holds every hotword's spelling; a hotword outside the LM vocabulary (a name, usually, which the
  closed-vocabulary decoder could otherwise never emit) gets a word index of its own that the LM scores as KenLM's
  ``<unk>`` in context;
- the word-completion bonus: :func:`biased_lm` wraps the KenLM scorer so that scoring a hotword's index adds
  ``bonus`` (in the LM's units: the decoder multiplies by its LM weight);
- the prefix bonus: the trie's per-word score is the word's unigram LM score plus the same ``bonus``, and flashlight
  smears the best word score below each trie node over the node (``SmearingMode.MAX``), adding the difference as the
  path goes letter by letter and subtracting the smeared score again when the word ends (where the real LM score,
  bonus included, replaces it). A path that leaves the hotword's prefix loses the provisional bonus, as in WeNet.

The trie's score alone cannot carry the bonus: flashlight subtracts a word's smeared trie score when the word ends
and adds the LM's score instead, hence the LM wrapper. Mandarin character models (the ``LexiconFreeDecoder``) are not
covered (a character-prefix state in the LM wrapper would be; use the pyctcdecode backend); pinyin models (the
project's Mandarin models) are word models, syllables their words, and take hotwords in characters or in pinyin.

English multi-word phrases are biased word by word (each word of the phrase is a hotword).

Pinyin models (:func:`pinyin_hotwords`) take hotwords in numbered pinyin or in characters; characters are read with
the model's pinyin lexicon (``hanzi/lexicon.json``: every reading it lists for a character, so a polyphone gives
one syllable sequence per combination of readings, at most :data:`MAX_READINGS`), a character it lacks with
pypinyin. A hotword of several syllables is biased as a phrase, not syllable by syllable (which would boost every
``zhang1`` and every ``wei3`` wherever they occur): the whole sequence is one lexicon entry, its spelling the
syllables' letters with the spaces between them, and one word index of its own, whose LM score
(:func:`biased_lm`'s ``phrases``) is the syllables' KenLM scores chained in context plus the bonus of all its
syllables (``n * bonus``, and the ``n - 1`` word insertion bonuses a word-by-word path gets), so the path that
completes the phrase ends in the very KenLM state the word-by-word path reaches, and the two merge. Its trie score
carries one syllable's bonus only: the provisional credit is front-loaded (max smearing credits it at the phrase's
first letter), and ``n * bonus`` there would push everything else out of the beam. Syllables alone get nothing.
A hotword given in characters also biases the pinyin-to-character conversion (:mod:`deepspeech.decoding.hanzi`):
the decoder lists it in each hypothesis' ``extra`` (:data:`~deepspeech.decoding.hanzi.HOTWORDS_KEY`), and the
conversion writes its characters for a run of syllables equal to one of its readings, with a bonus.

Hotwords are per decoder: a caller with per-utterance or per-stream lists keeps one decoder per distinct list
(:meth:`deepspeech.decoding.beam.BeamSearchDecoder.with_hotwords` shares the loaded LM, so one costs the trie
rebuild, about 0.1-0.2 s for a 30k-word lexicon). The decoder without hotwords uses KenLM directly: its results
and speed do not change.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice, product
from typing import Any

log = logging.getLogger(__name__)

MAX_READINGS = 16  # syllable sequences of one character hotword (combinations of its characters' readings)
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_SYLLABLE = re.compile(r"^[a-z]+[1-5]$")


@dataclass(frozen=True)
class PinyinHotword:
    syllables: tuple[str, ...]  # numbered pinyin, one reading of the hotword
    characters: str | None  # the hotword as given in characters (None: given in pinyin)


def pinyin_hotwords(hotwords: Iterable[str], readings: Mapping[str, Sequence[str]]) -> list[PinyinHotword]:
    """A pinyin model's hotwords as syllable sequences, in first-seen order, without repeats: numbered pinyin as
    given (``"zhang1 wei3"``); characters (``"张伟"``) read with ``readings`` (character -> its syllables, most
    frequent first: the model's pinyin lexicon, :func:`deepspeech.decoding.hanzi.load_readings`), each combination
    of the listed readings of a polyphone (the first :data:`MAX_READINGS`), a character it lacks read by pypinyin.
    A hotword that is neither (or mixes the two) is dropped with a warning."""
    out: list[PinyinHotword] = []
    for phrase in hotwords:
        if _CJK.search(phrase):
            chars = "".join(phrase.split())
            options = [_readings_of(c, readings) for c in chars] if all(_CJK.match(c) for c in chars) else []
            if not options or not all(options):
                log.warning("hotword %r: not all of it is Chinese characters with a known reading: ignored", phrase)
                continue
            total = math.prod(len(o) for o in options)
            if total > MAX_READINGS:
                log.warning("hotword %r has %d readings: the first %d are biased", phrase, total, MAX_READINGS)
            found = [PinyinHotword(tuple(syl), chars) for syl in islice(product(*options), MAX_READINGS)]
        else:
            syllables = tuple(phrase.lower().split())
            if not syllables or not all(_SYLLABLE.match(s) for s in syllables):
                log.warning("hotword %r is neither Chinese characters nor numbered pinyin (zhang1 wei3): ignored",
                            phrase)
                continue
            found = [PinyinHotword(syllables, None)]
        out += [h for h in found if h not in out]
    return out


def _readings_of(char: str, readings: Mapping[str, Sequence[str]]) -> list[str]:
    """The lexicon's readings of a character, else pypinyin's one ([] when neither knows it)."""
    if readings.get(char):
        return list(readings[char])
    try:
        from deepspeech.text import to_pinyin

        syl = to_pinyin(char)
    except ImportError:
        return []
    return [syl] if _SYLLABLE.match(syl) else []


def hotword_words(hotwords: Iterable[str], alphabet: Iterable[str]) -> list[str]:
    """The distinct words of hotwords/phrases, lower-cased, in first-seen order; words with characters outside
    ``alphabet`` (the model's symbols) cannot be spelt and are dropped with a warning."""
    chars = set(alphabet)
    out: list[str] = []
    for phrase in hotwords:
        for w in phrase.lower().split():
            if not all(c in chars for c in w):
                log.warning("hotword %r has characters the model cannot emit: ignored", w)
            elif w not in out:
                out.append(w)
    return out


def biased_lm(fl: Any, base: Any, bonus: Mapping[int, float], alias: Mapping[int, int],
              phrases: Mapping[int, Sequence[int]] | None = None) -> Any:
    """A flashlight ``LM`` that scores like ``base`` (flashlight's KenLM) plus ``bonus[word]`` for a hotword; a word
    index in ``alias`` (an out-of-vocabulary hotword) is scored as the index it maps to (``<unk>``), one in
    ``phrases`` (a pinyin phrase) as its words' indices in turn (their scores summed, the state after the last).
    The states are ``base``'s own, so hypotheses merge exactly as without biasing."""
    chains = {k: list(v) for k, v in (phrases or {}).items()}

    class _Biased(fl.LM):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            fl.LM.__init__(self)
            self.base, self.bonus, self.alias = base, dict(bonus), dict(alias)

        def start(self, start_with_nothing: bool) -> Any:
            return self.base.start(start_with_nothing)

        def score(self, state: Any, word: int) -> tuple[Any, float]:
            chain = chains.get(word)
            if chain is None:
                out, s = self.base.score(state, self.alias.get(word, word))
                return out, s + self.bonus.get(word, 0.0)
            total = self.bonus.get(word, 0.0)
            for k in chain:
                state, s = self.base.score(state, k)
                total += s
            return state, total

        def finish(self, state: Any) -> tuple[Any, float]:
            return self.base.finish(state)

    return _Biased()
