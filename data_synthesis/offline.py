"""Offline augmentation: write a noisy (reverberant, perturbed) copy of a whole corpus, audio + manifest.

The same pipeline as the online loader (:func:`deepspeech.augment.perturb.augment_waveform`), run once: copy ``c`` of
utterance ``i`` uses a generator seeded by (seed, c, i), so the output does not depend on the number of worker
processes or their scheduling. Babble is made from other utterances of the input corpus.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

from data_synthesis.parallel import imap_jobs
from deepspeech.augment.noise import NoiseSources, load_noise_clips
from deepspeech.augment.perturb import AugmentConfig, augment_waveform
from deepspeech.data.manifest import Utterance, write_manifest
from deepspeech.frontend.audio import SAMPLE_RATE, AudioError, load_audio

log = logging.getLogger(__name__)

_STATE: dict[str, object] = {}  # per worker process: utterances, config, noise sources, output folder, seed


def _init(utts: Sequence[Utterance], cfg: AugmentConfig, out: Path, seed: int) -> None:
    clips = load_noise_clips(cfg.noise_manifest) if cfg.noise_manifest and "real" in cfg.noise_kinds else []
    corpus = lru_cache(maxsize=256)(lambda i: load_audio(utts[i].audio))
    _STATE.update(utts=utts, cfg=cfg, out=out, seed=seed,
                  sources=NoiseSources(clips, corpus, len(utts), cfg.babble_speakers))


def _one(job: tuple[int, int]) -> Utterance | str:
    i, copy = job
    utts: Sequence[Utterance] = _STATE["utts"]  # type: ignore[assignment]
    cfg: AugmentConfig = _STATE["cfg"]  # type: ignore[assignment]
    u = utts[i]
    try:
        wav = load_audio(u.audio)
    except AudioError as e:
        return str(e)
    rng = np.random.default_rng([int(_STATE["seed"]), copy, i])  # type: ignore[call-overload]
    if rng.random() < cfg.prob:
        wav = augment_waveform(wav, cfg, rng, _STATE["sources"])  # type: ignore[arg-type]
    path = Path(_STATE["out"]) / "audio" / f"{i:06d}_{copy}.flac"  # type: ignore[arg-type]
    sf.write(path, wav, SAMPLE_RATE, subtype="PCM_16")
    return Utterance(str(path), u.text, wav.size / SAMPLE_RATE, u.speaker, u.lang)


def augment_corpus(utts: Sequence[Utterance], out_dir: str | Path, cfg: AugmentConfig, seed: int = 0,
                   copies: int = 1, workers: int = 1, progress: bool = True) -> list[Utterance]:
    """Write ``copies`` augmented versions of every utterance to ``out_dir/audio/`` (16 kHz FLAC) and
    ``out_dir/manifest.jsonl``; unreadable inputs are reported and skipped. Returns the written utterances."""
    if copies < 1:
        raise ValueError("copies must be at least 1")
    out = Path(out_dir)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    jobs = [(i, c) for c in range(copies) for i in range(len(utts))]
    written: list[Utterance] = []
    skipped = 0
    for r in imap_jobs(_one, jobs, workers, _init, (utts, cfg, out, seed), "augmenting", progress, chunksize=16):
        if isinstance(r, str):
            skipped += 1
            log.warning("skipping utterance: %s", r)
        else:
            written.append(r)
    if not written:
        raise AudioError("no utterance could be read")
    write_manifest(out / "manifest.jsonl", written)
    log.info("%s: %d utterances (%.1f min), %d skipped", out, len(written),
             sum(u.duration_s for u in written) / 60, skipped)
    return written
