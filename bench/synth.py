"""Synthesis benchmarks (issue 3): how fast data is made, and what online augmentation costs the loader.

Rows, each against a peer measured in the same run (alternating, median and spread over repetitions):
- S1 espeak-ng sentence synthesis (``synthesize_corpus``, 2 workers): seconds of audio made per wall second; the
  peer is real time (1.0), so the figure is itself the ratio.
- S2 offline noise superposition (``augment_corpus``, 2 workers, 1-3 tracks of real, coloured and babble noise,
  half with reverberation): seconds of audio made per wall second.
- S3 online augmentation in the training loader: wall time to build one batch of 32 FSDD utterances with the
  digits-en augmentation (speed, noise, gain, SpecAugment) against the same batch built without augmentation
  (waveforms cached in both, so both pay feature extraction and neither pays decoding); ratio = augmented / plain.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _summary(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def _fsdd(n: int) -> list:
    from deepspeech.data.manifest import read_manifest
    utts = read_manifest(REPO / "data" / "fsdd" / "train.jsonl")
    return utts[:: max(1, len(utts) // n)][:n]


def synthesis_rows(reps: int = 5) -> list[dict]:
    from data_synthesis.offline import augment_corpus
    from data_synthesis.tts import synthesize_corpus, voice_split
    from deepspeech.augment.perturb import AugmentConfig
    from deepspeech.presets import digits_en

    rows = []
    texts = ["the quick brown fox jumps over the lazy dog near the river bank",
             "she sells sea shells by the sea shore every summer morning"] * 10
    utts = _fsdd(64)
    noise_cfg = AugmentConfig(prob=1.0, noise_prob=1.0, reverb_prob=0.5,
                              noise_manifest=str(REPO / "data" / "noise" / "train.jsonl"))
    tts, mix = [], []
    with tempfile.TemporaryDirectory() as td:
        for r in range(reps):
            out = Path(td) / f"tts{r}"
            t = time.perf_counter()
            made = synthesize_corpus(texts, out, voice_split("en", "train"), seed=r, progress=False, workers=2)
            tts.append(sum(u.duration_s for u in made) / (time.perf_counter() - t))
            shutil.rmtree(out)
            out = Path(td) / f"mix{r}"
            t = time.perf_counter()
            made = augment_corpus(utts, out, noise_cfg, seed=r, workers=2, progress=False)
            mix.append(sum(u.duration_s for u in made) / (time.perf_counter() - t))
            shutil.rmtree(out)
    rows.append({"id": "S1", "what": "espeak-ng sentences, 2 workers (peer: real time)", "unit": "audio s/s",
                 **_summary(tts)})
    rows.append({"id": "S2", "what": "offline noise + reverb, 2 workers (peer: real time)", "unit": "audio s/s",
                 **_summary(mix)})
    rows.extend(_loader_rows(digits_en().augment, reps))
    return rows


def _loader_rows(aug, reps: int) -> list[dict]:
    import numpy as np

    from deepspeech.data.dataset import SpeechDataset
    from deepspeech.frontend.features import FeatureConfig
    from deepspeech.text import english_tokenizer

    utts = _fsdd(32)
    aug = dataclasses.replace(aug, noise_manifest=str(REPO / aug.noise_manifest))
    plain_ds = SpeechDataset(utts, english_tokenizer(), FeatureConfig(), None, augment=None, cache=False)
    aug_ds = SpeechDataset(utts, english_tokenizer(), FeatureConfig(), None, augment=aug)
    wavs = {i: aug_ds._waveform(i) for i in range(len(utts))}  # decode once for both
    plain_ds.cache = True  # waveforms stay in memory (the feature cache is emptied before every round)
    idx = list(range(len(utts)))
    plain, augd = [], []
    for r in range(reps + 1):
        plain_ds._cache.clear()
        plain_ds._wav_cache = dict(wavs)
        t = time.perf_counter()
        plain_ds.batch(idx)
        dt_plain = time.perf_counter() - t
        aug_ds.set_epoch(r)
        t = time.perf_counter()
        aug_ds.batch(idx)
        dt_aug = time.perf_counter() - t
        if r:  # the first round is warm-up
            plain.append(dt_plain * 1e3)
            augd.append(dt_aug * 1e3)
    ratio = [a / p for a, p in zip(augd, plain, strict=True)]
    return [{"id": "S3", "what": "loader batch of 32, digits-en augmentation", "unit": "ms", **_summary(augd)},
            {"id": "S3", "what": "peer: same batch, no augmentation", "unit": "ms", **_summary(plain)},
            {"id": "S3", "what": "augmentation overhead ratio, augmented / plain", "unit": "x",
             **_summary(ratio), "mean_ms_added": float(np.mean(augd) - np.mean(plain))}]


if __name__ == "__main__":
    for row in synthesis_rows():
        print(json.dumps(row))
