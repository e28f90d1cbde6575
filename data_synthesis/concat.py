"""Connected-speech corpora from isolated words: each new utterance joins 2-5 utterances of one speaker with pauses
(as TIDIGITS' connected digit strings), so a model trained on isolated digits also learns word boundaries, the
space between words and silence in the middle of an utterance (what a streaming server hears).

Deterministic from a seed; audio is written as 16 kHz FLAC next to a manifest.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from deepspeech.data.manifest import Utterance, write_manifest
from deepspeech.frontend.audio import SAMPLE_RATE, AudioError, load_audio, save_audio

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConcatConfig:
    words: tuple[int, int] = (2, 5)  # utterances joined, inclusive range
    pause_s: tuple[float, float] = (0.05, 0.5)  # silence between them
    edge_s: tuple[float, float] = (0.0, 0.3)  # silence before the first and after the last

    def __post_init__(self) -> None:
        if not 1 <= self.words[0] <= self.words[1]:
            raise ValueError(f"words must be 1 <= lo <= hi, got {self.words}")
        if not 0 <= self.pause_s[0] <= self.pause_s[1] or not 0 <= self.edge_s[0] <= self.edge_s[1]:
            raise ValueError("pause_s and edge_s must be 0 <= lo <= hi")


def concat_corpus(utts: Sequence[Utterance], out_dir: str | Path, count: int, cfg: ConcatConfig = ConcatConfig(),
                  seed: int = 0, progress: bool = True) -> list[Utterance]:
    """Write ``count`` joined utterances (audio/NNNNN.flac + manifest.jsonl) to ``out_dir``; returns them."""
    if not utts:
        raise ValueError("no utterances to join")
    out = Path(out_dir)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    by_speaker: dict[str | None, list[Utterance]] = defaultdict(list)
    for u in utts:  # synthetic speakers "voice/pitch/rate" (deepspeech synth tts) are grouped by voice
        by_speaker[u.speaker.split("/")[0] if u.speaker else None].append(u)
    speakers = sorted(by_speaker, key=str)
    weights = [len(by_speaker[s]) for s in speakers]
    cache: dict[str, np.ndarray] = {}
    done: list[Utterance] = []
    for i in tqdm(range(count), desc="concat", unit="utt", disable=not progress):
        spk = rng.choices(speakers, weights)[0]
        parts = rng.choices(by_speaker[spk], k=rng.randint(*cfg.words))
        clips, texts = [], []
        for u in parts:
            try:
                wav = cache.get(u.audio)
                if wav is None:
                    wav = cache.setdefault(u.audio, load_audio(u.audio))
            except AudioError as e:
                log.warning("skipping %s", e)
                continue
            clips.append(wav)
            texts.append(u.text.strip())
        if not texts:
            continue
        # Pauses carry the recordings' own background level, never digital silence (which no microphone gives
        # and which puts log-spectrogram frames at the log floor, far outside the training distribution).
        floor = min(_noise_floor(c) for c in clips)
        nprng = np.random.default_rng(rng.getrandbits(32))
        audio = [_pause(rng.uniform(*cfg.edge_s), floor, nprng)]
        for k, wav in enumerate(clips):
            if k:
                audio.append(_pause(rng.uniform(*cfg.pause_s), floor, nprng))
            audio.append(wav)
        audio.append(_pause(rng.uniform(*cfg.edge_s), floor, nprng))
        wav = np.concatenate(audio)
        path = out / "audio" / f"{i:05d}.flac"
        save_audio(path, wav)
        done.append(Utterance(str(path.resolve()), " ".join(texts), wav.size / SAMPLE_RATE, spk, parts[0].lang))
    write_manifest(out / "manifest.jsonl", done)
    return done


def _noise_floor(wav: np.ndarray) -> float:
    """RMS of the quietest 10% of 20 ms frames (the recording's background level), at least -80 dBFS."""
    n = wav.size // 320
    if n == 0:
        return 1e-4
    rms = np.sqrt(np.mean(wav[: n * 320].reshape(n, 320).astype(np.float64) ** 2, axis=1))
    return float(max(np.quantile(rms, 0.1), 1e-4))


def _pause(seconds: float, rms: float, rng: np.random.Generator) -> np.ndarray:
    """White noise at ``rms``: a pause at the background level of the speech around it."""
    return (rng.standard_normal(int(round(seconds * SAMPLE_RATE))) * rms).astype(np.float32)
