"""N-best rescoring with a neural LM: the beam search's N best hypotheses (DS2 section 3.8's objective with an n-gram
LM) re-ranked by

    Q(y) = log P_ctc(y | x) + alpha * log P_ngram(y) + beta * |words(y)| + gamma * log P_neural(y)

(|words| = space-separated words for English and pinyin, characters for Mandarin; all logs natural). DS2 section
3.8 decodes with the n-gram LM only; a second pass over the N-best list with a stronger LM is the usual extension
(e.g. the neural rescoring of Amodei et al.'s successors); it costs one batched LM forward per utterance.

The core never imports an LM package: the neural LM is a :class:`SentenceScorer` (``lm.scorer.NeuralLM`` implements
it). Rescoring is a post-processing step (:class:`deepspeech.inference.recognizer.PostProcessing`), after a pinyin
model's syllables became characters, so a character LM scores what the user sees. A :class:`RescoringDecoder`
carries the :class:`Rescorer` to every route (eval, transcribe, the server's final results): it decodes as its beam
decoder does (which must be built with ``nbest = RescoreConfig.nbest``) and the recognizer's post-processing re-ranks.
``MODEL/rescore.json`` (``deepspeech lm tune --rescore``) holds the tuned weights and the identity of the LM they were
tuned with.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from deepspeech.decoding.beam import DecoderError
from deepspeech.decoding.hypothesis import Decoder, Hypothesis
from deepspeech.metrics import ErrorCounts, words

log = logging.getLogger(__name__)

RESCORE_JSON = "rescore.json"  # in a model directory: tuned rescoring weights (`deepspeech lm tune --rescore`)
NEURAL_KEY = "neural_lm"  # Hypothesis.extra: log P_neural of the text (natural log)
Q_KEY = "rescore"  # Hypothesis.extra: Q, the rescoring objective


@dataclass(frozen=True)
class RescoreConfig:
    alpha: float = 0.5  # n-gram LM weight (on the beam's natural-log lm_score); default: BeamConfig's
    beta: float = 1.0  # insertion bonus per word (per character for Mandarin); default: BeamConfig's
    gamma: float = 0.5  # neural LM weight (natural-log sentence probability)
    nbest: int = 16  # hypotheses the beam search hands over (at most its beam width)

    def __post_init__(self) -> None:
        if self.nbest < 1:
            raise ValueError("nbest must be >= 1")
        if not all(math.isfinite(v) for v in (self.alpha, self.beta, self.gamma)):
            raise ValueError("alpha, beta and gamma must be finite")


class SentenceScorer(Protocol):
    """A neural LM as rescoring needs it."""

    def log_probs(self, texts: Sequence[str]) -> list[float]:
        """Natural-log probability of each sentence, with sentence boundaries (one batched forward)."""
        ...


def objective(h: Hypothesis, neural: float, cfg: RescoreConfig, lang: str) -> float:
    """Q of one hypothesis given its neural LM score."""
    return h.am_score + cfg.alpha * h.lm_score + cfg.beta * len(words(h.text, lang)) + cfg.gamma * neural


def rerank(hyps: Sequence[Hypothesis], neural: Sequence[float], cfg: RescoreConfig, lang: str) -> list[Hypothesis]:
    """The N-best list ordered by Q, best first (stable: ties keep the beam's order); each hypothesis carries its
    neural score (``extra["neural_lm"]``) and Q (``extra["rescore"]``). Pure."""
    if len(hyps) != len(neural):
        raise ValueError(f"{len(hyps)} hypotheses, {len(neural)} scores")
    scored = [dataclasses.replace(h, extra={**h.extra, NEURAL_KEY: float(s), Q_KEY: objective(h, s, cfg, lang)})
              for h, s in zip(hyps, neural, strict=True)]
    order = sorted(range(len(scored)), key=lambda i: -scored[i].extra[Q_KEY])
    return [scored[i] for i in order]


class Rescorer:
    """One post-processing step: score an N-best list with the neural LM (one batch) and re-rank it."""

    def __init__(self, scorer: SentenceScorer, cfg: RescoreConfig, lang: str) -> None:
        self.scorer, self.cfg, self.lang = scorer, cfg, lang

    def __call__(self, hyps: Sequence[Hypothesis]) -> list[Hypothesis]:
        if not hyps:
            return []
        return rerank(hyps, self.scorer.log_probs([h.text for h in hyps]), self.cfg, self.lang)


class RescoringDecoder:
    """A beam decoder (built with nbest = the rescorer's N) and the rescorer that the recognizer's post-processing
    applies to its N-best lists. ``decode`` alone returns the beam's order; :class:`Recognizer` re-ranks."""

    def __init__(self, decoder: Decoder, rescorer: Rescorer) -> None:
        self.decoder, self.rescorer = decoder, rescorer

    def decode(self, logp: np.ndarray) -> list[Hypothesis]:
        """(T, V) log-probabilities -> the beam's N-best list, in the beam's order."""
        return self.decoder.decode(logp)


def read_rescore_json(model_dir: str | Path) -> dict[str, Any] | None:
    """MODEL/rescore.json as written by ``lm tune --rescore`` (None when absent; malformed: one DecoderError)."""
    p = Path(model_dir) / RESCORE_JSON
    if not p.is_file():
        return None
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
        cfg = raw["config"]
        RescoreConfig(**cfg)
        if not isinstance(raw.get("lm"), dict):
            raise TypeError("no lm object")
        return raw
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DecoderError(f"{p}: malformed ({e})") from None


def model_rescore_config(model_dir: str | Path, lm_sha256: str, default: RescoreConfig) -> RescoreConfig:
    """The weights of MODEL/rescore.json when they were tuned with this LM (its model.safetensors' sha256); else
    ``default`` (the beam's alpha and beta, RescoreConfig's gamma and nbest), with one warning line on a mismatch."""
    raw = read_rescore_json(model_dir)
    if raw is None:
        log.info("%s has no %s: rescoring with the default weights %s", model_dir, RESCORE_JSON, default)
        return default
    if raw["lm"].get("sha256") != lm_sha256:
        log.warning("%s/%s was tuned for another LM (%s): using the default weights (alpha and beta of the beam, "
                    "gamma %.2f); run `deepspeech lm tune --rescore` for this one", model_dir, RESCORE_JSON,
                    raw["lm"].get("path", "?"), default.gamma)
        return default
    return RescoreConfig(**raw["config"])


@dataclass(frozen=True)
class NBest:
    """One dev utterance's cached N-best list for tuning: features (N,) and each hypothesis' error counts."""

    am: np.ndarray
    lm: np.ndarray
    words: np.ndarray
    neural: np.ndarray
    counts: list[list[int]]  # ErrorCounts.as_list() per hypothesis

    @classmethod
    def build(cls, hyps: Sequence[Hypothesis], neural: Sequence[float], ref: str, lang: str) -> NBest:
        counts = []
        for h in hyps:
            c = ErrorCounts()
            c.add(ref, h.text, lang)
            counts.append(c.as_list())
        return cls(np.array([h.am_score for h in hyps]), np.array([h.lm_score for h in hyps]),
                   np.array([len(words(h.text, lang)) for h in hyps], dtype=np.float64),
                   np.asarray(neural, dtype=np.float64), counts)


def _counts(data: Sequence[NBest], pick: Sequence[int]) -> ErrorCounts:
    total = np.zeros(5, dtype=np.int64)
    for nb, k in zip(data, pick, strict=True):
        total += np.asarray(nb.counts[k])
    return ErrorCounts.from_list(total.tolist())


def tune_rescore(data: Sequence[NBest], lang: str, alphas: Sequence[float], betas: Sequence[float],
                 gammas: Sequence[float], nbest: int) -> dict[str, Any]:
    """Grid over (alpha, beta, gamma) re-ranking cached N-best lists (each hypothesis scored once): returns
    {"config": the best RescoreConfig, "metric", "before": the beam's top-1, "after", "grid": [...]}. Ties keep the
    earlier grid point (the grid is walked gamma 0 first, so rescoring must beat the n-gram re-ranking)."""
    metric = "wer" if lang == "en" else "cer"
    before = _counts(data, [0] * len(data)).summary()
    rows: list[dict[str, Any]] = []
    best: tuple[float, RescoreConfig, dict[str, Any]] | None = None
    for g in sorted(gammas):
        for a in alphas:
            for b in betas:
                pick = [int(np.argmax(nb.am + a * nb.lm + b * nb.words + g * nb.neural)) for nb in data]
                summary = _counts(data, pick).summary()
                rows.append({"alpha": a, "beta": b, "gamma": g, **summary})
                if best is None or summary[metric] < best[0] - 1e-12:
                    best = (summary[metric], RescoreConfig(alpha=a, beta=b, gamma=g, nbest=nbest), summary)
    if best is None:
        raise ValueError("empty alpha/beta/gamma grid")
    log.info("rescoring: best alpha %.2f beta %.2f gamma %.2f: %s %.4f (beam %.4f) on %d utterances",
             best[1].alpha, best[1].beta, best[1].gamma, metric, best[0], before[metric], len(data))
    return {"config": best[1], "metric": metric, "before": before, "after": best[2], "grid": rows}
