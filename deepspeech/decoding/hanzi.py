"""Numbered pinyin -> Chinese characters: the second half of a Mandarin model with pinyin output units.

A pinyin acoustic model (``data.units = "pinyin"``) emits syllables such as ``"fa3 lv4 gui1 ding4"``. Like an input
method, this module picks the character sequence that maximises

    sum_i  log P_lm(c_i | c_{i-n+1} .. c_{i-1})  +  w * log P(s_i | c_i)

with a beam search over the candidate characters of each syllable (a noisy-channel model: the LM proposes
characters, the lexicon says how they are read). P_lm is a character KenLM n-gram in the model directory's
``hanzi/`` (``deepspeech lm ngram --lang zh``, DS2 section 3.8's character LM); P(s | c), below 1 only for
characters with several readings, comes from (syllable, character) counts of the same text (``--pinyin-lexicon``
writes ``lexicon.json``). The pinyin may come from greedy decoding or from a beam search with a syllable LM in
``lm/`` (``--lang zh-pinyin``). A syllable the lexicon does not know (a recognition error) borrows the candidates
of its other tones, or of the nearest known spelling, at a penalty.

On the synthetic dev sentences, the reference pinyin converts at 4.3% CER with exact tones (w = 1; 5.6% with
P(c | s) in place of P(s | c), which counts a character's frequency twice) and 8.4% with ``tone_penalty`` 1; but a
small model hears tones worst, and on its output soft tones win (after one epoch of ``sentences-zh``: 59% CER
against 73% with exact tones), so ``tone_penalty`` is tuned on dev output.

Hotwords given in characters (:mod:`deepspeech.decoding.hotwords`) bias the conversion: where a run of recognised
syllables equals one of a hotword's readings, the search may also write the hotword's characters for the whole run
at once, with a bonus of ``hotword_bonus`` per character (a phrase: the run's characters together or not at all).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepspeech.decoding.hypothesis import Hypothesis, Word
from deepspeech.metrics import edit_distance, error_rates
from deepspeech.text import to_pinyin

LEXICON = "lexicon.json"  # in MODEL/hanzi/, beside the character LM
# Hypothesis.extra: the hotwords given in characters, ((syllables, characters), ...), from the beam decoder for
# hypothesis_to_characters (which consumes it)
HOTWORDS_KEY = "hanzi_hotwords"
Hotwords = Sequence[tuple[tuple[str, ...], str]]
SETTINGS = "hanzi.json"  # tuned HanziConfig (``deepspeech lm hanzi-tune``)
_CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_LOG10 = math.log(10.0)


class HanziError(RuntimeError):
    """A missing or unusable pinyin lexicon or language model."""


@dataclass(frozen=True)
class HanziConfig:
    beam: int = 16  # partial character sequences kept per syllable
    candidates: int = 80  # best-scored characters tried per syllable (own tone first)
    lexicon_weight: float = 1.0  # w: weight of log P(syllable | character), the noisy channel, against the LM
    tone_penalty: float = 1.0  # natural-log penalty for reading a syllable with another tone
    fallback_penalty: float = 4.0  # natural-log penalty for reading an unknown spelling as the nearest known ones
    # natural-log bonus per character for writing a hotword's characters over a run of its syllables: the LM's
    # dislike of a rare name (a character LM gives an unseen pair of characters some -10 to -15) is what it beats
    hotword_bonus: float = 10.0


def pinyin_pairs(sentence: str) -> Iterator[tuple[str, str]]:
    """(syllable, character) pairs of a sentence's Chinese characters; runs whose reading does not align one
    syllable per character are skipped."""
    for run in _CJK_RUN.findall(sentence):
        syllables = to_pinyin(run).split()
        if len(syllables) == len(run):
            yield from zip(syllables, run, strict=True)


class LexiconCounter:
    """Counts (syllable, character) pairs of lines as they stream past (e.g. into ``lmplz``)."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter[str]] = defaultdict(Counter)

    def wrap(self, lines: Iterable[str]) -> Iterator[str]:
        for line in lines:
            for syl, char in pinyin_pairs(line.replace(" ", "")):
                self.counts[syl][char] += 1
            yield line

    def save(self, path: str | Path) -> int:
        """Write ``{syllable: [[character, count], ...]}`` (most frequent first); returns the pair count."""
        lex = {s: sorted(c.items(), key=lambda kv: (-kv[1], kv[0])) for s, c in sorted(self.counts.items())}
        Path(path).write_text(json.dumps(lex, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
        return sum(len(v) for v in lex.values())


def load_readings(lm_dir: str | Path) -> dict[str, list[str]]:
    """character -> its syllables, most frequent first, from a ``hanzi/`` directory's pinyin lexicon (to read
    hotwords given in characters)."""
    path = Path(lm_dir) / LEXICON
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        for syl, pairs in raw.items():
            for c, n in pairs:
                counts[str(c)][str(syl)] += int(n)
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise HanziError(f"{path}: unreadable or malformed ({e})") from None
    return {c: [s for s, _ in n.most_common()] for c, n in counts.items()}


class PinyinToHanzi:
    """Beam search from numbered pinyin to characters with a character KenLM and a pinyin lexicon."""

    def __init__(self, lexicon: dict[str, list[tuple[str, int]]], lm_binary: str | Path | None,
                 cfg: HanziConfig = HanziConfig()) -> None:
        if not lexicon:
            raise HanziError("empty pinyin lexicon")
        self.cfg = cfg
        char_total: Counter[str] = Counter()
        for pairs in lexicon.values():
            for c, n in pairs:
                char_total[c] += n
        self._cands: dict[str, list[tuple[str, float]]] = {}
        for syl, pairs in lexicon.items():  # the most frequent characters of the syllable, scored log P(s | c)
            top = sorted(pairs, key=lambda cn: -cn[1])[: cfg.candidates]
            self._cands[syl] = [(c, math.log(n / char_total[c])) for c, n in top]
        self._by_base: dict[str, list[str]] = defaultdict(list)
        for syl in self._cands:
            self._by_base[syl.rstrip("12345")].append(syl)
        self._memo: dict[str, list[tuple[str, float]]] = {}
        self.lm = None
        if lm_binary is not None:
            try:
                import kenlm
            except ImportError as e:
                raise HanziError("pinyin-to-character conversion with an LM needs the kenlm module") from e
            from deepspeech.decoding.kenlm import KenLMError, load_kenlm

            try:
                self.lm = load_kenlm(lm_binary)
            except KenLMError as e:
                raise HanziError(str(e)) from None
            if self.lm.order > 5:
                raise HanziError(f"{lm_binary}: order {self.lm.order}; the search recombines on 4 characters (<= 5)")
            self._state = kenlm.State

    @classmethod
    def load(cls, lm_dir: str | Path, cfg: HanziConfig | None = None) -> PinyinToHanzi:
        """From a directory holding ``lexicon.json``, (optionally) its KenLM binary and (optionally) the tuned
        settings ``hanzi.json``; ``cfg`` overrides the latter."""
        from deepspeech.decoding.kenlm import LM_BINARY

        d = Path(lm_dir)
        if not (d / LEXICON).is_file():
            raise HanziError(f"{d}: no {LEXICON} (build it with `deepspeech lm ngram --lang zh --pinyin-lexicon`)")
        try:
            if cfg is None:
                tuned = json.loads((d / SETTINGS).read_text(encoding="utf-8"))["config"] \
                    if (d / SETTINGS).is_file() else {}
                cfg = HanziConfig(**tuned)
            raw = json.loads((d / LEXICON).read_text(encoding="utf-8"))
            lexicon = {str(s): [(str(c), int(n)) for c, n in v] for s, v in raw.items()}
        except (ValueError, TypeError, KeyError, AttributeError) as e:  # bad JSON, wrong shapes or types
            raise HanziError(f"{d}: malformed {LEXICON} or {SETTINGS} ({e})") from None
        binary = d / LM_BINARY
        return cls(lexicon, binary if binary.is_file() else None, cfg)

    def candidates(self, syl: str) -> list[tuple[str, float]]:
        """(character, log P(syllable | character) - penalty) for one recognised syllable: its own characters,
        those of its other tones at ``tone_penalty`` (tones are the hardest part to hear), or, for a spelling the
        lexicon does not know, those of the nearest known spellings at ``fallback_penalty``."""
        if syl not in self._memo:
            base = syl.rstrip("12345")
            merged: dict[str, float] = {c: lp for c, lp in self._cands.get(syl, [])}
            near = [s for s in self._by_base.get(base, []) if s != syl]
            penalty = self.cfg.tone_penalty
            if not near and not merged:  # a misspelt syllable: the nearest known spellings
                dist = {b: edit_distance(base, b) for b in self._by_base}
                best = min(dist.values())
                near = [s for b, syls in self._by_base.items() if dist[b] == best for s in syls]
                penalty = self.cfg.fallback_penalty
            for s in near:
                for c, lp in self._cands[s]:
                    merged[c] = max(merged.get(c, -math.inf), lp - penalty)
            self._memo[syl] = sorted(merged.items(), key=lambda kv: -kv[1])[: self.cfg.candidates]
        return self._memo[syl]

    def convert(self, pinyin: str, hotwords: Hotwords = ()) -> str:
        """``"fa3 lv4"`` -> ``"法律"``; words that are not syllables (no tone digit) are read toneless.
        ``hotwords``: (syllables, characters) pairs; a run of ``syllables`` may be written as ``characters``, with
        ``hotword_bonus`` per character."""
        syllables = pinyin.split()
        if not syllables:
            return ""
        spans: dict[int, list[str]] = defaultdict(list)  # position -> hotword characters whose reading starts there
        for syls, chars in hotwords:
            n = len(syls)
            if n != len(chars):
                continue
            for i in range(len(syllables) - n + 1):
                if tuple(syllables[i: i + n]) == tuple(syls) and chars not in spans[i]:
                    spans[i].append(chars)
        if self.lm is None:
            return self._convert_without_lm(syllables, spans)
        w, bonus = self.cfg.lexicon_weight, self.cfg.hotword_bonus
        start = self._state()
        self.lm.BeginSentenceWrite(start)
        # (score, LM state, text, characters of a hotword still to write)
        beam: list[tuple[float, Any, str, str]] = [(0.0, start, "", "")]
        for i, syl in enumerate(syllables):
            expanded: dict[tuple[str, str], tuple[float, Any, str, str]] = {}
            for score, state, text, pending in beam:
                if pending:  # inside a hotword's run: its next character only
                    self._extend(expanded, score, state, text, pending[0], w * self._channel(syl, pending[0]),
                                 pending[1:])
                    continue
                for char, lp in self.candidates(syl):
                    self._extend(expanded, score, state, text, char, w * lp, "")
                for chars in spans.get(i, ()):  # a hotword's run starts here: the bonus of all its characters
                    self._extend(expanded, score + bonus * len(chars), state, text, chars[0],
                                 w * self._channel(syl, chars[0]), chars[1:])
            beam = sorted(expanded.values(), key=lambda h: -h[0])[: self.cfg.beam]
        end = self._state()
        return max(beam, key=lambda h: h[0] + _LOG10 * self.lm.BaseScore(h[1], "</s>", end))[2]

    def _extend(self, expanded: dict[tuple[str, str], tuple[float, Any, str, str]], score: float, state: Any,
                text: str, char: str, channel: float, pending: str) -> None:
        """Add ``text + char`` to ``expanded`` unless a better hypothesis with the same future is there."""
        out = self._state()
        s = score + _LOG10 * self.lm.BaseScore(state, char, out) + channel
        # same last 4 characters (and hotword characters left to write) = same future under an LM of order <= 5
        key = (text[-3:] + char, pending)
        if key not in expanded or expanded[key][0] < s:
            expanded[key] = (s, out, text + char, pending)

    def _channel(self, syl: str, char: str) -> float:
        """log P(syllable | character) of a hotword's character (0 where the lexicon does not pair them: the
        hotword's reading is taken on trust)."""
        return next((lp for c, lp in self.candidates(syl) if c == char), 0.0)

    def _convert_without_lm(self, syllables: list[str], spans: dict[int, list[str]]) -> str:
        out, i = [], 0
        while i < len(syllables):
            if spans.get(i):
                out.append(spans[i][0])
                i += len(spans[i][0])
            else:
                out.append(self.candidates(syllables[i])[0][0])
                i += 1
        return "".join(out)


def hypothesis_to_characters(hyp: Hypothesis, conv: PinyinToHanzi) -> Hypothesis:
    """A pinyin hypothesis -> the same in characters: one character per syllable, each keeping its syllable's
    output frames; the pinyin stays in ``extra["pinyin"]``. Hotwords the beam decoder listed in
    ``extra[HOTWORDS_KEY]`` bias the conversion (and leave ``extra``)."""
    text = conv.convert(hyp.text, hyp.extra.get(HOTWORDS_KEY, ()))
    words = tuple(Word(c, w.start, w.end) for c, w in zip(text, hyp.words, strict=True)) \
        if len(text) == len(hyp.words) else ()
    extra = {k: v for k, v in hyp.extra.items() if k != HOTWORDS_KEY}
    return dataclasses.replace(hyp, text=text, words=words, extra={**extra, "pinyin": hyp.text})


def tune_hanzi(lm_dir: str | Path, pinyin: Sequence[str], refs: Sequence[str], tone_penalties: Sequence[float],
               beams: Sequence[int], progress: bool = True) -> tuple[HanziConfig, list[dict[str, float]]]:
    """Grid search of ``tone_penalty`` x ``beam`` on recognised pinyin (a dev set's) against its character
    references; returns the config with the lowest CER (ties: the smaller beam) and the whole table."""
    from tqdm import tqdm

    table: list[dict[str, float]] = []
    best: tuple[float, int, HanziConfig] | None = None
    for beam in sorted(beams):
        for tp in tqdm(tone_penalties, desc=f"hanzi beam {beam}", disable=not progress, leave=False):
            cfg = HanziConfig(beam=beam, tone_penalty=tp)
            conv = PinyinToHanzi.load(lm_dir, cfg)
            cer = error_rates(refs, [conv.convert(p) for p in pinyin], "zh").cer
            table.append({"beam": beam, "tone_penalty": tp, "cer": cer})
            if best is None or cer < best[0]:
                best = (cer, beam, cfg)
    if best is None:
        raise HanziError("empty tuning grid")
    return best[2], table
