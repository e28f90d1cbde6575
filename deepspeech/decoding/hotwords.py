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
covered (a character-prefix state in the LM wrapper would be; use the pyctcdecode backend); pinyin models are word
models and take hotwords in numbered pinyin.

Multi-word phrases are biased word by word (each word of the phrase is a hotword). Hotwords are per decoder: a
caller with per-utterance or per-stream lists keeps one decoder per distinct list
(:meth:`deepspeech.decoding.beam.BeamSearchDecoder.with_hotwords` shares the loaded LM, so one costs the trie
rebuild, about 0.1-0.2 s for a 30k-word lexicon). The decoder without hotwords uses KenLM directly: its results
and speed do not change.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)


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


def biased_lm(fl: Any, base: Any, bonus: Mapping[int, float], alias: Mapping[int, int]) -> Any:
    """A flashlight ``LM`` that scores like ``base`` (flashlight's KenLM) plus ``bonus[word]`` for a hotword; a word
    index in ``alias`` (an out-of-vocabulary hotword) is scored as the index it maps to (``<unk>``). The states are
    ``base``'s own, so hypotheses merge exactly as without biasing."""

    class _Biased(fl.LM):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            fl.LM.__init__(self)
            self.base, self.bonus, self.alias = base, dict(bonus), dict(alias)

        def start(self, start_with_nothing: bool) -> Any:
            return self.base.start(start_with_nothing)

        def score(self, state: Any, word: int) -> tuple[Any, float]:
            out, s = self.base.score(state, self.alias.get(word, word))
            return out, s + self.bonus.get(word, 0.0)

        def finish(self, state: Any) -> tuple[Any, float]:
            return self.base.finish(state)

    return _Biased()
