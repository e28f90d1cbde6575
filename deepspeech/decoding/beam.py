"""CTC prefix beam search with an n-gram LM (DS1 section 3, DS2 section 3.8):

    Q(y) = log P_ctc(y | x) + alpha * log P_lm(y) + beta * |words(y)|

Two backends over the same KenLM directory (:mod:`lm.ngram`):

- ``pyctcdecode``: open vocabulary (words outside the LM get ``unk_score``), hotwords;
- ``flashlight``: flashlight-text's C++ decoders; English uses the ``LexiconDecoder`` (closed vocabulary: the LM's
  words, spelt letter by letter, a space closing each word), Mandarin the ``LexiconFreeDecoder`` over characters.
  Hotwords (contextual biasing: English words outside the LM included, a pinyin model's hotwords in characters or
  pinyin, biased as phrases) are :mod:`deepspeech.decoding.hotwords`.

Both implement the decoder protocol (:class:`deepspeech.decoding.hypothesis.Decoder`: (T, V) log-probabilities -> N-best
:class:`~deepspeech.decoding.hypothesis.Hypothesis` list) and first apply DS2's pruning: per frame only the most
probable symbols up to a cumulative probability ``cutoff_prob`` (DS2 used 0.99 for Mandarin) and at most
``cutoff_top_n`` are extended. Every hypothesis carries its acoustic score (log P_ctc of its best path, natural log),
its LM score (natural-log sentence probability from KenLM, with sentence boundaries), the backend's total score, and
words with output-frame spans.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepspeech.decoding.greedy import GreedyDecoder
from deepspeech.decoding.hanzi import HOTWORDS_KEY
from deepspeech.decoding.hypothesis import Decoder, Hypothesis, Word, path_words
from deepspeech.decoding.kenlm import NgramLM, load_kenlm
from deepspeech.text import BLANK, UNK, CharTokenizer

log = logging.getLogger(__name__)

BACKENDS = ("pyctcdecode", "flashlight")
DEFAULT_BACKEND = "flashlight"  # faster at equal WER (bench/decoders.py)
LN10 = math.log(10.0)
PRUNED_LOGP = -1e4  # log-probability given to symbols outside the cut-off (never extended)
PYCTCDECODE_HOTWORD_WEIGHT = 10.0  # pyctcdecode's own default
# Natural-log bonus per completed hotword word (flashlight): bench/hotwords.py's choice on its dev names with
# sentences-en (the largest of 4-12 that left the WER of sentences without names unchanged).
FLASHLIGHT_HOTWORD_WEIGHT = 12.0
# The same per syllable for pinyin models (a phrase of n syllables earns n times it on completion): bench/hotwords.py
# --lang zh's choice on its dev names with sentences-zh (the largest of 1-12 that left the CER of sentences without
# names unchanged; 4-8 all recognised every dev name, 12 raised that CER).
PINYIN_HOTWORD_WEIGHT = 8.0
UNK_WORD = "<unk>"  # a word every KenLM model scores (as its unknown word)


class DecoderError(RuntimeError):
    """A decoder backend is missing or the decoder configuration does not fit the model/LM."""


@dataclass(frozen=True)
class BeamConfig:
    backend: str = DEFAULT_BACKEND  # pyctcdecode | flashlight
    beam_width: int = 64
    alpha: float = 0.5  # LM weight (on natural-log LM probabilities)
    beta: float = 1.0  # word insertion bonus (per word; per character for Mandarin)
    cutoff_prob: float = 1.0  # keep the most probable symbols per frame up to this cumulative probability
    cutoff_top_n: int = 40  # ... and at most this many
    beam_threshold: float = 25.0  # drop hypotheses this far (natural log) below the best
    # pyctcdecode only: symbols below this log-probability are not extended unless they are the frame's best (its
    # default; far lower values make pyctcdecode 0.5 prefer wrong words at the end of an utterance).
    token_min_logp: float = -5.0
    unk_score: float = -10.0  # log score of a word outside the LM vocabulary (pyctcdecode; flashlight: closed)
    # Words/phrases to boost (contextual biasing), and the boost: pyctcdecode's hotword weight (None: 10), or for
    # flashlight the natural-log bonus per hotword word (None: FLASHLIGHT_HOTWORD_WEIGHT; pinyin models: per
    # syllable, PINYIN_HOTWORD_WEIGHT; :mod:`.hotwords`).
    hotwords: tuple[str, ...] = ()
    hotword_weight: float | None = None
    nbest: int = 1

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.beam_width < 1 or self.nbest < 1 or self.cutoff_top_n < 1:
            raise ValueError("beam_width, nbest and cutoff_top_n must be >= 1")
        if self.nbest > self.beam_width:
            raise ValueError("nbest cannot exceed beam_width")
        if not 0.0 < self.cutoff_prob <= 1.0:
            raise ValueError("cutoff_prob must be in (0, 1]")
        if self.beam_threshold <= 0:
            raise ValueError("beam_threshold must be > 0")
        if self.hotword_weight is not None and self.hotword_weight < 0:
            raise ValueError("hotword_weight must be >= 0")


def prune_cumulative(logp: np.ndarray, cutoff_prob: float, top_n: int) -> np.ndarray:
    """(T, V) log-probs -> the same with every symbol outside each frame's cut-off set to PRUNED_LOGP.

    The cut-off set of a frame is its most probable symbols whose probabilities first sum to >= cutoff_prob,
    capped at top_n (always at least the best symbol). Pure; the input is not changed."""
    if cutoff_prob >= 1.0 and top_n >= logp.shape[1]:
        return logp
    order = np.argsort(-logp, axis=1, kind="stable")
    sorted_p = np.exp(np.take_along_axis(logp, order, axis=1))
    before = np.cumsum(sorted_p, axis=1) - sorted_p  # probability mass ranked above each symbol
    keep_sorted = before < cutoff_prob
    keep_sorted[:, top_n:] = False
    keep_sorted[:, 0] = True
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=1)
    return np.where(keep, logp, PRUNED_LOGP).astype(np.float32)


def log_softmax_np(logits: np.ndarray) -> np.ndarray:
    m = logits.max(axis=-1, keepdims=True)
    z = logits - m
    return (z - np.log(np.exp(z).sum(axis=-1, keepdims=True))).astype(np.float32)


def best_hypothesis(logp: np.ndarray, tokenizer: CharTokenizer, decoder: Decoder | None) -> Hypothesis:
    """(T, V) log-probabilities of one utterance -> the decoder's best hypothesis (greedy when ``decoder`` is None),
    before post-processing (:mod:`deepspeech.inference.recognizer` adds it)."""
    return (decoder or GreedyDecoder(tokenizer)).decode(logp)[0]


class BeamSearchDecoder:
    """Beam search over one model's symbols with an optional KenLM directory; one instance serves many calls."""

    def __init__(self, tokenizer: CharTokenizer, lm: NgramLM | None, cfg: BeamConfig,
                 readings: Mapping[str, Sequence[str]] | None = None) -> None:
        """``readings``: a pinyin model's character -> syllables (its ``hanzi/`` lexicon,
        :func:`deepspeech.decoding.hanzi.load_readings`), to read hotwords given in characters."""
        self.tokenizer, self.lm, self.cfg = tokenizer, lm, cfg
        self._set_hotwords(readings)
        if lm is not None and (lm.unit == "word") != (tokenizer.metric_lang == "en"):
            raise DecoderError(f"a {lm.unit}-level LM does not fit a {tokenizer.lang} {tokenizer.units} model "
                               "(English and pinyin need a word LM, Mandarin characters a character LM; a pinyin "
                               "model's character LM turns its output into characters after decoding)")
        self._scorer = None
        if lm is not None:
            try:
                import kenlm  # noqa: F401  (load_kenlm imports it)
            except ImportError as e:
                raise DecoderError("beam search with an LM needs kenlm: pip install 'deepspeech[decode]'") from e
            self._scorer = load_kenlm(lm.binary)
        self._impl = _PyCtcDecode(self) if cfg.backend == "pyctcdecode" else _Flashlight(self)

    def with_hotwords(self, hotwords: Sequence[str], hotword_weight: float | None = None) -> BeamSearchDecoder:
        """A decoder like this one with other hotwords (None weight: this one's), sharing the loaded LM: for
        per-utterance or per-stream hotword lists, one per distinct list, cached by the caller."""
        cfg = dataclasses.replace(self.cfg, hotwords=tuple(hotwords),
                                  hotword_weight=self.cfg.hotword_weight if hotword_weight is None else hotword_weight)
        new = object.__new__(BeamSearchDecoder)
        new.tokenizer, new.lm, new.cfg, new._scorer = self.tokenizer, self.lm, cfg, self._scorer
        new._set_hotwords(self.readings)
        if isinstance(self._impl, _Flashlight):
            new._impl = _Flashlight(new, self._impl if self._impl.lexicon else None)
        else:
            new._impl = _PyCtcDecode(new, self._impl)
        return new

    def _set_hotwords(self, readings: Mapping[str, Sequence[str]] | None) -> None:
        """A pinyin model's hotwords as syllable sequences (:func:`.hotwords.pinyin_hotwords`), and those given in
        characters as the conversion's hint (:data:`.hanzi.HOTWORDS_KEY`)."""
        self.readings = readings
        self.pinyin_hot: list[Any] = []
        self._hanzi_hint: tuple[tuple[tuple[str, ...], str], ...] = ()
        if self.tokenizer.units == "pinyin" and self.cfg.hotwords:
            from deepspeech.decoding.hotwords import pinyin_hotwords

            self.pinyin_hot = pinyin_hotwords(self.cfg.hotwords, readings or {})
            self._hanzi_hint = tuple((h.syllables, h.characters) for h in self.pinyin_hot if h.characters)

    def lm_logprob(self, text: str) -> float:
        """Natural-log LM probability of a decoded text (0 without an LM)."""
        if self._scorer is None:
            return 0.0
        units = text if self.tokenizer.metric_lang == "en" else " ".join(text.replace(" ", ""))
        return float(self._scorer.score(units, bos=True, eos=True)) * LN10

    def decode(self, logp: np.ndarray) -> list[Hypothesis]:
        """(T, V) per-frame log-probabilities of one utterance -> up to ``nbest`` hypotheses, best first."""
        if logp.ndim != 2 or logp.shape[1] != len(self.tokenizer):
            raise DecoderError(f"expected (T, {len(self.tokenizer)}) log-probabilities, got {logp.shape}")
        if logp.shape[0] == 0:
            return [Hypothesis("")]
        logp = prune_cumulative(np.ascontiguousarray(logp, dtype=np.float32), self.cfg.cutoff_prob,
                                self.cfg.cutoff_top_n)
        hyps = self._impl.decode(logp)
        if self._hanzi_hint:  # for the pinyin-to-character conversion (hypothesis_to_characters)
            hyps = [dataclasses.replace(h, extra={**h.extra, HOTWORDS_KEY: self._hanzi_hint}) for h in hyps]
        return hyps[: self.cfg.nbest] or [Hypothesis("")]

    def decode_batch(self, logp: np.ndarray, lengths: Sequence[int]) -> list[list[Hypothesis]]:
        """(B, T, V) log-probabilities and valid lengths -> N-best lists."""
        return [self.decode(logp[b, : int(n)]) for b, n in enumerate(lengths)]


class _PyCtcDecode:
    def __init__(self, owner: BeamSearchDecoder, base: _PyCtcDecode | None = None) -> None:
        if base is not None:  # hotwords are given per call: the same pyctcdecode decoder serves
            self.owner, self.decoder = owner, base.decoder
            return
        try:
            from pyctcdecode import build_ctcdecoder
        except ImportError as e:
            raise DecoderError("the pyctcdecode backend needs pyctcdecode: pip install 'deepspeech[decode]'") from e
        self.owner = owner
        tok, lm, cfg = owner.tokenizer, owner.lm, owner.cfg
        if tok.metric_lang == "en":
            labels = ["" if s == BLANK else ("\u2047" if s == UNK else s) for s in tok.symbols]
        else:  # every character its own word: pyctcdecode's BPE convention ("\u2581" starts a word)
            labels = ["" if s == BLANK else "\u2581" + ("\u2047" if s == UNK else s) for s in tok.symbols]
        quiet = logging.getLogger("pyctcdecode")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # it warns about unigrams/alphabet coverage we handle ourselves
        try:
            self.decoder = build_ctcdecoder(labels, str(lm.binary) if lm else None,
                                            unigrams=lm.unigrams if lm else None, alpha=cfg.alpha,
                                            beta=cfg.beta, unk_score_offset=cfg.unk_score)
        finally:
            quiet.setLevel(level)

    def decode(self, logp: np.ndarray) -> list[Hypothesis]:
        cfg, owner = self.owner.cfg, self.owner
        # pyctcdecode biases phrases itself: a pinyin model's hotwords go in as their syllable sequences
        hot = [" ".join(h.syllables) for h in owner.pinyin_hot] if owner.tokenizer.units == "pinyin" \
            else list(cfg.hotwords)
        beams = self.decoder.decode_beams(logp, beam_width=cfg.beam_width, beam_prune_logp=-cfg.beam_threshold,
                                          token_min_logp=cfg.token_min_logp,
                                          prune_history=False, hotwords=hot or None,
                                          hotword_weight=PYCTCDECODE_HOTWORD_WEIGHT if cfg.hotword_weight is None
                                          else cfg.hotword_weight)
        out = []
        for text, _state, word_frames, am_score, score in beams:
            text = " ".join(text.split())
            if owner.tokenizer.metric_lang == "zh":
                text = text.replace(" ", "").replace("\u2047", "")
            words = tuple(Word(w, int(s), int(e)) for w, (s, e) in word_frames if w)
            out.append(Hypothesis(text, words, float(score), float(am_score), owner.lm_logprob(text)))
        return out


class _Flashlight:
    def __init__(self, owner: BeamSearchDecoder, base: _Flashlight | None = None) -> None:
        """``base``: a decoder of the same model and LM whose loaded LM and lexicon this one shares (only the
        hotwords differ; :meth:`BeamSearchDecoder.with_hotwords`)."""
        try:
            from flashlight.lib.text import decoder as fl
            from flashlight.lib.text.decoder.kenlm import KenLM
            from flashlight.lib.text.dictionary import Dictionary
        except ImportError as e:
            raise DecoderError("the flashlight backend needs flashlight-text: pip install 'deepspeech[decode]'") from e
        self.owner, self.fl = owner, fl
        tok, lm, cfg = owner.tokenizer, owner.lm, owner.cfg
        self.blank = tok.blank_id
        self.sil = tok.index[" "] if tok.metric_lang == "en" else tok.blank_id
        # flashlight adds LM scores as given: KenLM's are log10, so the weight is alpha * ln(10) on natural logs.
        self.lm_weight = cfg.alpha * LN10
        self.words = None  # the English lexicon's word dictionary
        self.extra: list[str] = []  # hotwords outside the LM vocabulary: word indices from the dictionary's size
        if lm is None:
            fl_lm = fl.ZeroLM()
        if tok.metric_lang == "zh":
            if cfg.hotwords:
                raise DecoderError("hotwords with the flashlight backend need a word-level model (English, "
                                   "pinyin); use the pyctcdecode backend for Mandarin characters")
            if lm is not None:
                fl_lm = KenLM(str(lm.binary), Dictionary([s for s in tok.symbols]))
            # No per-token insertion bonus in LexiconFree (beta is not used); silence is the blank, scored 0.
            opts = fl.LexiconFreeDecoderOptions(cfg.beam_width, min(cfg.cutoff_top_n, len(tok)), cfg.beam_threshold,
                                                self.lm_weight, 0.0, False, fl.CriterionType.CTC)
            self.decoder = fl.LexiconFreeDecoder(opts, fl_lm, self.sil, self.blank, [])
            self.lexicon = False
            return
        if base is not None:
            self.vocab, self.words, self.kenlm, self.entries = base.vocab, base.words, base.kenlm, base.entries
        else:
            self.vocab = [w for w in (lm.unigrams if lm else []) if w and all(c in tok.index for c in w)]
            if not self.vocab:
                raise DecoderError("the flashlight backend for English needs a word LM (its vocabulary is the lexicon)")
            # One word past the vocabulary, never in the lexicon: the index out-of-vocabulary hotwords are scored as.
            self.words = Dictionary(self.vocab + ([] if UNK_WORD in self.vocab else [UNK_WORD]))
            self.kenlm = KenLM(str(lm.binary), self.words)  # type: ignore[union-attr]
            start = self.kenlm.start(False)
            self.entries: list[tuple[list[int], int, float]] = []  # (spelling + closing space, word, unigram score)
            for w in self.vocab:
                k = self.words.get_index(w)
                self.entries.append(([tok.index[c] for c in w] + [self.sil], k, self.kenlm.score(start, k)[1]))
        trie = fl.Trie(len(tok), self.sil)
        fl_lm = self.kenlm
        if not cfg.hotwords:
            for spelling, k, score in self.entries:
                trie.insert(spelling, k, score)
        else:
            fl_lm = self._biased_lexicon(trie)
        trie.smear(fl.SmearingMode.MAX)
        unk = self.words.get_index(UNK_WORD) if UNK_WORD in self.vocab else -1
        opts = fl.LexiconDecoderOptions(cfg.beam_width, min(cfg.cutoff_top_n, len(tok)), cfg.beam_threshold,
                                        self.lm_weight, cfg.beta, -math.inf, 0.0, False, fl.CriterionType.CTC)
        self.decoder = fl.LexiconDecoder(opts, trie, fl_lm, self.sil, self.blank, unk, [], False)
        self.lexicon = True
        self.trie, self.lm_obj = trie, fl_lm  # the decoder holds them by reference: keep them alive

    def _biased_lexicon(self, trie: Any) -> Any:
        """Fill ``trie`` with the vocabulary and the hotwords, and return the biased LM (:mod:`.hotwords`)."""
        from deepspeech.decoding.hotwords import biased_lm, hotword_words

        tok, cfg = self.owner.tokenizer, self.owner.cfg
        if self.lm_weight <= 0:
            raise DecoderError("hotwords with the flashlight backend need an LM weight (alpha) > 0")
        default = PINYIN_HOTWORD_WEIGHT if tok.units == "pinyin" else FLASHLIGHT_HOTWORD_WEIGHT
        weight = default if cfg.hotword_weight is None else cfg.hotword_weight
        bonus_lm = weight / self.lm_weight  # in the LM's units (log10), as the decoder weighs them
        phrases: list[tuple[str, ...]] = []  # a pinyin model's hotwords of several syllables
        if tok.units == "pinyin":
            hot = [h.syllables[0] for h in self.owner.pinyin_hot if len(h.syllables) == 1]
            phrases = list(dict.fromkeys(h.syllables for h in self.owner.pinyin_hot if len(h.syllables) > 1))
        else:
            hot = hotword_words(cfg.hotwords, (s for s in tok.symbols if s not in (BLANK, UNK, " ")))
        words = self.words
        known = {words.get_index(w) for w in hot if words.contains(w)}  # type: ignore[union-attr]
        bonus: dict[int, float] = dict.fromkeys(known, bonus_lm)
        for spelling, k, score in self.entries:
            trie.insert(spelling, k, score + bonus_lm if k in known else score)
        unk_k = self.words.get_index(UNK_WORD)  # type: ignore[union-attr]
        unk_score = self.kenlm.score(self.kenlm.start(False), unk_k)[1]
        alias: dict[int, int] = {}
        for w in hot:
            if words.contains(w):  # type: ignore[union-attr]
                continue
            k = words.index_size() + len(self.extra)  # type: ignore[union-attr]
            self.extra.append(w)
            alias[k], bonus[k] = unk_k, bonus_lm
            trie.insert([tok.index[c] for c in w] + [self.sil], k, unk_score + bonus_lm)
        # A phrase: one entry spelling all its syllables (spaces between), one index scored as the chain of its
        # syllables' (:mod:`.hotwords`): the bonus of n words and the n - 1 insertion bonuses it skips on
        # completion, one word's bonus in the trie (the provisional credit).
        chains: dict[int, list[int]] = {}
        for syllables in phrases:
            k = words.index_size() + len(self.extra)  # type: ignore[union-attr]
            self.extra.append(" ".join(syllables))
            chains[k] = [words.get_index(w) if words.contains(w) else unk_k for w in syllables]  # type: ignore
            bonus[k] = len(syllables) * bonus_lm + (len(syllables) - 1) * cfg.beta / self.lm_weight
            state, chained = self.kenlm.start(False), 0.0
            for w in chains[k]:
                state, sc = self.kenlm.score(state, w)
                chained += sc
            trie.insert([tok.index[c] for w in syllables for c in w + " "], k, chained + bonus_lm)
        return biased_lm(self.fl, self.kenlm, bonus, alias, chains)

    def word(self, k: int) -> str:
        n = self.words.index_size()  # type: ignore[union-attr]
        return self.extra[k - n] if k >= n else self.words.get_entry(k)  # type: ignore[union-attr]

    def decode(self, logp: np.ndarray) -> list[Hypothesis]:
        owner, tok = self.owner, self.owner.tokenizer
        if self.lexicon:
            # A word is emitted only when its closing space is consumed: one extra frame that is surely a space.
            tail = np.full((1, logp.shape[1]), PRUNED_LOGP, dtype=np.float32)
            tail[0, self.sil] = 0.0
            logp = np.concatenate([logp, tail])
        em = np.ascontiguousarray(logp, dtype=np.float32)
        results = self.decoder.decode(em.ctypes.data, em.shape[0], em.shape[1])
        out = []
        for r in results[: owner.cfg.nbest]:
            frames_tokens = list(r.tokens)[1:-1][: em.shape[0]]  # per frame, with a start and an end entry
            ids, frames, prev = [], [], self.blank
            for t, s in enumerate(frames_tokens):
                if s != self.blank and s != prev and s >= 0:
                    ids.append(s)
                    frames.append(t)
                prev = s
            if self.lexicon:
                T = logp.shape[0] - 1
                keep = [k for k, t in enumerate(frames) if t < T]
                ids, frames = [ids[k] for k in keep], [frames[k] for k in keep]
                word = self.word if self.extra else self.words.get_entry  # type: ignore[union-attr]
                text = " ".join(word(w) for w in r.words if w >= 0)
            else:
                text = tok.decode(ids)
                text = " ".join(text.split()) if tok.metric_lang == "en" else text
            am = float(np.take_along_axis(em, np.asarray(frames_tokens, dtype=np.int64)[:, None].clip(0), 1).sum())
            out.append(Hypothesis(text, path_words(ids, frames, tok), float(r.score), am, owner.lm_logprob(text)))
        return out


DECODER_JSON = "decoder.json"  # in a model directory: tuned beam-search settings (`deepspeech lm tune`)
MODEL_LM_DIR = "lm"  # in a model directory: its default n-gram LM


def model_decoder_settings(model_dir: str | Path) -> dict[str, Any]:
    """The BeamConfig fields saved in a model directory's decoder.json ({} when absent)."""
    p = Path(model_dir) / DECODER_JSON
    if not p.is_file():
        return {}
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
        settings = raw.get("config", raw)
        known = {f.name for f in dataclasses.fields(BeamConfig)}
        return {k: (tuple(v) if isinstance(v, list) else v) for k, v in settings.items() if k in known}
    except (ValueError, AttributeError) as e:  # bad JSON or UTF-8, not an object
        raise DecoderError(f"{p}: malformed ({e})") from None


def build_decoder(model_dir: str | Path, tokenizer: CharTokenizer, lm_dir: str | Path | None = None,
                  use_lm: bool = True, **overrides: Any) -> BeamSearchDecoder:
    """A beam-search decoder for a model directory: its LM (``MODEL/lm``) unless ``lm_dir`` is given or
    ``use_lm`` is False; settings from ``MODEL/decoder.json``, then ``overrides`` (None values ignored)."""
    settings = model_decoder_settings(model_dir)
    settings.update({k: v for k, v in overrides.items() if v is not None})
    cfg = BeamConfig(**settings)
    readings = None
    if tokenizer.units == "pinyin" and cfg.hotwords:  # hotwords in characters are read with the model's lexicon
        from deepspeech.checkpoint import HANZI
        from deepspeech.decoding.hanzi import LEXICON, HanziError, load_readings

        if (Path(model_dir) / HANZI / LEXICON).is_file():
            try:
                readings = load_readings(Path(model_dir) / HANZI)
            except HanziError as e:
                raise DecoderError(str(e)) from None
    lm = None
    if use_lm:
        path = Path(lm_dir) if lm_dir else Path(model_dir) / MODEL_LM_DIR
        if lm_dir or (path / "lm.binary").is_file():
            lm = NgramLM.load(path)
        else:
            log.warning("%s has no LM (%s): beam search without one", model_dir, path)
    return BeamSearchDecoder(tokenizer, lm, cfg, readings)
