"""Synthetic speech corpora from espeak-ng (Debian package ``espeak-ng``): many voices, voice variants, pitches
and speaking rates, so that a model trained on few real speakers sees many "speakers" (in the spirit of Deep
Speech 1, arXiv 1412.5567 section 4: synthesising training data the real corpus lacks).

Each utterance: espeak-ng speaks the text to 22.05 kHz WAV, leading/trailing silence is trimmed, the audio is
resampled to the target rate (8 kHz matches telephone-band corpora such as FSDD) and scaled to a random peak.
Everything is a pure function of (texts, seed): the same call writes the same corpus.
"""

from __future__ import annotations

import io
import logging
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

from deepspeech.data.manifest import Utterance, write_manifest

log = logging.getLogger(__name__)

# espeak-ng's own English voices (formant synthesis; the mbrola voices need the separate mbrola program).
ENGLISH_VOICES = ("en-gb", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd",
                  "en-029", "en-us-nyc")


class SynthesisError(RuntimeError):
    """espeak-ng is missing or failed."""


@dataclass(frozen=True)
class TTSConfig:
    voices: tuple[str, ...] = ENGLISH_VOICES  # espeak-ng voice names
    use_variants: bool = True  # add a random voice variant (+m3, +f2, +croak, ...) to each voice
    pitch: tuple[int, int] = (20, 80)  # espeak-ng -p range (0-99)
    rate: tuple[int, int] = (110, 220)  # espeak-ng -s range, words per minute
    sample_rate: int = 16_000  # output rate
    peak: tuple[float, float] = (0.1, 0.9)  # output peak amplitude range
    trim_db: float = -30.0  # silence threshold for trimming, relative to the loudest 10 ms
    margin_s: float = 0.02  # silence kept at each end


def _espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SynthesisError("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    return exe


def list_variants() -> list[str]:
    out = subprocess.run([_espeak(), "--voices=variant"], capture_output=True, text=True, check=True).stdout
    return [line.split()[4].removeprefix("!v/") for line in out.splitlines()[1:] if len(line.split()) > 4]


def speak(text: str, voice: str, pitch: int, rate: int) -> tuple[np.ndarray, int]:
    """espeak-ng -> (samples float32, sample rate)."""
    res = subprocess.run([_espeak(), "-v", voice, "-p", str(pitch), "-s", str(rate), "--stdout", text],
                         capture_output=True, timeout=60)
    if res.returncode != 0 or not res.stdout:
        raise SynthesisError(f"espeak-ng failed for voice {voice!r}: {res.stderr.decode(errors='replace')[:200]}")
    x, sr = sf.read(io.BytesIO(res.stdout), dtype="float32")
    return x, sr


def trim(x: np.ndarray, sr: int, threshold_db: float, margin_s: float) -> np.ndarray:
    """Cut leading and trailing frames quieter than ``threshold_db`` below the loudest 10 ms frame."""
    hop = max(1, sr // 100)
    n = x.size // hop
    if n == 0:
        return x
    energy = (x[: n * hop].reshape(n, hop) ** 2).mean(1)
    loud = np.nonzero(energy > energy.max() * 10 ** (threshold_db / 10))[0]
    if loud.size == 0:
        return x
    m = int(margin_s * sr)
    return x[max(loud[0] * hop - m, 0): min((loud[-1] + 1) * hop + m, x.size)]


def synthesize_corpus(texts: Sequence[str], out_dir: str | Path, cfg: TTSConfig = TTSConfig(), seed: int = 0,
                      lang: str = "en", progress: bool = True) -> list[Utterance]:
    """Speak each text once with a random voice/variant/pitch/rate; write FLAC files and ``manifest.jsonl``."""
    out = Path(out_dir)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    variants = list_variants() if cfg.use_variants else []
    utts: list[Utterance] = []
    for k, text in enumerate(tqdm(texts, desc="synthesising", unit="utt", disable=not progress)):
        voice = str(rng.choice(cfg.voices))
        if variants:
            voice += "+" + str(rng.choice(variants))
        pitch, rate = int(rng.integers(cfg.pitch[0], cfg.pitch[1] + 1)), int(rng.integers(cfg.rate[0], cfg.rate[1] + 1))
        peak = float(rng.uniform(*cfg.peak))
        x, sr = speak(text, voice, pitch, rate)
        x = trim(x, sr, cfg.trim_db, cfg.margin_s)
        y = soxr.resample(x, sr, cfg.sample_rate).astype(np.float32)
        if y.size == 0 or not np.any(y):
            log.warning("%r with %s gave silence; skipped", text, voice)
            continue
        y = y / np.abs(y).max() * peak
        path = out / "audio" / f"tts_{k:06d}.flac"
        sf.write(path, y, cfg.sample_rate, subtype="PCM_16")
        utts.append(Utterance(str(path), text, y.size / cfg.sample_rate, f"{voice}/p{pitch}/s{rate}", lang))
    write_manifest(out / "manifest.jsonl", utts)
    return utts
