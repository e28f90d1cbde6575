"""CTC prefix beam search with an n-gram LM (DS1 section 3, DS2 section 3.8):

    Q(y) = log P_ctc(y | x) + alpha * log P_lm(y) + beta * |words(y)|

Two backends over the same KenLM directory (:mod:`lm.ngram`):

- ``pyctcdecode``: open vocabulary (words outside the LM get ``unk_score``), hotwords;
- ``flashlight``: flashlight-text's C++ decoders; English uses the ``LexiconDecoder`` (closed vocabulary: the LM's
  words, spelt letter by letter, a space closing each word), Mandarin the ``LexiconFreeDecoder`` over characters.

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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepspeech.decoding.greedy import GreedyDecoder
from deepspeech.decoding.hypothesis import Decoder, Hypothesis, Word, path_words
from deepspeech.decoding.kenlm import NgramLM, load_kenlm
from deepspeech.text import BLANK, UNK, CharTokenizer

log = logging.getLogger(__name__)

BACKENDS = ("pyctcdecode", "flashlight")
DEFAULT_BACKEND = "flashlight"  # faster at equal WER (bench/decoders.py)
LN10 = math.log(10.0)
PRUNED_LOGP = -1e4  # log-probability given to symbols outside the cut-off (never extended)


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
    hotwords: tuple[str, ...] = ()
    hotword_weight: float = 10.0
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
        if self.hotwords and self.backend != "pyctcdecode":
            raise ValueError("hotwords need the pyctcdecode backend")


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

    def __init__(self, tokenizer: CharTokenizer, lm: NgramLM | None, cfg: BeamConfig) -> None:
        self.tokenizer, self.lm, self.cfg = tokenizer, lm, cfg
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
        return hyps[: self.cfg.nbest] or [Hypothesis("")]

    def decode_batch(self, logp: np.ndarray, lengths: Sequence[int]) -> list[list[Hypothesis]]:
        """(B, T, V) log-probabilities and valid lengths -> N-best lists."""
        return [self.decode(logp[b, : int(n)]) for b, n in enumerate(lengths)]


class _PyCtcDecode:
    def __init__(self, owner: BeamSearchDecoder) -> None:
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
        beams = self.decoder.decode_beams(logp, beam_width=cfg.beam_width, beam_prune_logp=-cfg.beam_threshold,
                                          token_min_logp=cfg.token_min_logp,
                                          prune_history=False, hotwords=list(cfg.hotwords) or None,
                                          hotword_weight=cfg.hotword_weight)
        out = []
        for text, _state, word_frames, am_score, score in beams:
            text = " ".join(text.split())
            if owner.tokenizer.metric_lang == "zh":
                text = text.replace(" ", "").replace("\u2047", "")
            words = tuple(Word(w, int(s), int(e)) for w, (s, e) in word_frames if w)
            out.append(Hypothesis(text, words, float(score), float(am_score), owner.lm_logprob(text)))
        return out


class _Flashlight:
    def __init__(self, owner: BeamSearchDecoder) -> None:
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
        lm_weight = cfg.alpha * LN10
        self.words = None  # the English lexicon's word dictionary
        if lm is None:
            fl_lm = fl.ZeroLM()
        if tok.metric_lang == "zh":
            if lm is not None:
                fl_lm = KenLM(str(lm.binary), Dictionary([s for s in tok.symbols]))
            # No per-token insertion bonus in LexiconFree (beta is not used); silence is the blank, scored 0.
            opts = fl.LexiconFreeDecoderOptions(cfg.beam_width, min(cfg.cutoff_top_n, len(tok)), cfg.beam_threshold,
                                                lm_weight, 0.0, False, fl.CriterionType.CTC)
            self.decoder = fl.LexiconFreeDecoder(opts, fl_lm, self.sil, self.blank, [])
            self.lexicon = False
        else:
            vocab = [w for w in (lm.unigrams if lm else []) if w and all(c in tok.index for c in w)]
            if not vocab:
                raise DecoderError("the flashlight backend for English needs a word LM (its vocabulary is the lexicon)")
            self.words = Dictionary(vocab)
            fl_lm = KenLM(str(lm.binary), self.words)  # type: ignore[union-attr]
            trie = fl.Trie(len(tok), self.sil)
            start = fl_lm.start(False)
            for w in vocab:
                k = self.words.get_index(w)
                _, score = fl_lm.score(start, k)
                trie.insert([tok.index[c] for c in w] + [self.sil], k, score)
            trie.smear(fl.SmearingMode.MAX)
            unk = self.words.get_index("<unk>") if "<unk>" in vocab else -1
            opts = fl.LexiconDecoderOptions(cfg.beam_width, min(cfg.cutoff_top_n, len(tok)), cfg.beam_threshold,
                                            lm_weight, cfg.beta, -math.inf, 0.0, False, fl.CriterionType.CTC)
            self.decoder = fl.LexiconDecoder(opts, trie, fl_lm, self.sil, self.blank, unk, [], False)
            self.lexicon = True

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
                text = " ".join(self.words.get_entry(w) for w in r.words if w >= 0)  # type: ignore[union-attr]
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
    lm = None
    if use_lm:
        path = Path(lm_dir) if lm_dir else Path(model_dir) / MODEL_LM_DIR
        if lm_dir or (path / "lm.binary").is_file():
            lm = NgramLM.load(path)
        else:
            log.warning("%s has no LM (%s): beam search without one", model_dir, path)
    return BeamSearchDecoder(tokenizer, lm, cfg)
