"""Tune the beam-search weights alpha (LM) and beta (insertion bonus) on a dev set (DS2 section 3.8: "the weights
alpha and beta are tuned on a held-out development set"). The acoustic model runs once; each grid point re-decodes
the stored log-probabilities. The metric is WER for English and CER for Mandarin."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from deepspeech.decoding.beam import BeamConfig, BeamSearchDecoder, best_hypothesis
from deepspeech.decoding.kenlm import NgramLM
from deepspeech.metrics import ErrorCounts
from deepspeech.text import CharTokenizer

log = logging.getLogger(__name__)


def grid(spec: str) -> list[float]:
    """'START:STOP:STEP' (inclusive) or 'a,b,c' -> values."""
    if ":" in spec:
        start, stop, step = (float(x) for x in spec.split(":"))
        if step <= 0 or stop < start:
            raise ValueError(f"bad grid {spec!r}: need START <= STOP and STEP > 0")
        return [round(start + k * step, 6) for k in range(int(np.floor((stop - start) / step + 1e-9)) + 1)]
    values = [float(x) for x in spec.split(",") if x.strip()]
    if not values:
        raise ValueError(f"empty grid {spec!r}")
    return values


def score(data: Sequence[tuple[np.ndarray, str]], tokenizer: CharTokenizer,
          decoder: BeamSearchDecoder | None) -> ErrorCounts:
    """Error counts of greedy (decoder None) or beam decoding of stored (log-probs, reference) pairs."""
    counts = ErrorCounts()
    for logp, ref in data:
        counts.add(ref, best_hypothesis(logp, tokenizer, decoder).text, tokenizer.metric_lang)
    return counts


def tune(data: Sequence[tuple[np.ndarray, str]], tokenizer: CharTokenizer, lm: NgramLM, base: BeamConfig,
         alphas: Sequence[float], betas: Sequence[float], progress: bool = True) -> dict[str, Any]:
    """Grid search; returns {"config": best BeamConfig, "metric", "best": {...}, "greedy": {...}, "grid": [...]}."""
    metric = "wer" if tokenizer.metric_lang == "en" else "cer"
    greedy = score(data, tokenizer, None).summary()
    rows = []
    best: tuple[float, BeamConfig, dict[str, Any]] | None = None
    points = [(a, b) for a in alphas for b in betas]
    for a, b in tqdm(points, desc="alpha/beta grid", disable=not progress):
        cfg = dataclasses.replace(base, alpha=a, beta=b, nbest=1)
        summary = score(data, tokenizer, BeamSearchDecoder(tokenizer, lm, cfg)).summary()
        rows.append({"alpha": a, "beta": b, **summary})
        key = summary[metric]
        if best is None or key < best[0] - 1e-12:
            best = (key, cfg, summary)
    assert best is not None
    log.info("best alpha %.2f beta %.2f: %s %.4f (greedy %.4f) on %d utterances", best[1].alpha, best[1].beta,
             metric, best[0], greedy[metric], len(data))
    return {"config": best[1], "metric": metric, "best": best[2], "greedy": greedy, "grid": rows}
