"""Audio input: any file libsndfile reads, or raw 16-bit PCM, to mono float32 at 16 kHz.

Every failure (unreadable, empty, non-finite, over-long, wrong sample format) raises :class:`AudioError`, so a
caller that processes many files can catch one exception type, report the file and go on.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16_000  # every model in this project runs at 16 kHz
MAX_DURATION_S = 4 * 3600.0  # longer input is refused; long recordings are chunked by the caller
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif")  # what folder scans pick up


class AudioError(ValueError):
    """Raised for audio that cannot be turned into a usable 16 kHz mono waveform."""


def _finish(samples: np.ndarray, sr: int, source: str, max_duration_s: float) -> np.ndarray:
    """Mix to mono, check, resample to 16 kHz. ``samples`` is (n,) or (n, channels)."""
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    samples = np.asarray(samples, dtype=np.float32)
    if samples.size == 0:
        raise AudioError(f"{source}: audio is empty")
    if not np.all(np.isfinite(samples)):
        raise AudioError(f"{source}: audio contains NaN or infinite samples")
    if sr <= 0:
        raise AudioError(f"{source}: invalid sample rate {sr}")
    duration = samples.size / sr
    if duration > max_duration_s:
        raise AudioError(f"{source}: {duration:.0f} s is longer than the limit of {max_duration_s:.0f} s")
    if sr != SAMPLE_RATE:
        samples = soxr.resample(samples, sr, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
    return np.ascontiguousarray(samples)


def load_audio(
    source: str | os.PathLike[str] | bytes, max_duration_s: float = MAX_DURATION_S
) -> np.ndarray:
    """Read a file (path or encoded bytes: wav, flac, ogg, mp3, ...) -> (n,) float32 mono at 16 kHz in [-1, 1]."""
    name = "<bytes>" if isinstance(source, bytes | bytearray) else str(source)
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
        with sf.SoundFile(handle) as f:
            sr = f.samplerate
            if f.frames > 0 and f.frames / sr > max_duration_s:
                raise AudioError(
                    f"{name}: {f.frames / sr:.0f} s is longer than the limit of {max_duration_s:.0f} s"
                )
            samples = f.read(dtype="float32", always_2d=True)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, OSError, ValueError) as e:
        why = str(e).rsplit(": ", 1)[-1] if isinstance(source, bytes | bytearray) else str(e)  # no object repr
        raise AudioError(f"{name}: cannot read audio ({why})") from e
    return _finish(samples, sr, name, max_duration_s)


def load_pcm16(data: bytes, sample_rate: int = SAMPLE_RATE, channels: int = 1,
               max_duration_s: float = MAX_DURATION_S) -> np.ndarray:
    """Raw little-endian 16-bit PCM bytes (interleaved if ``channels`` > 1) -> (n,) float32 mono at 16 kHz."""
    if channels < 1:
        raise AudioError(f"<pcm>: invalid channel count {channels}")
    if len(data) % (2 * channels) != 0:
        raise AudioError(f"<pcm>: {len(data)} bytes is not a whole number of 16-bit frames of {channels} channels")
    samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    return _finish(samples.reshape(-1, channels), sample_rate, "<pcm>", max_duration_s)


def audio_duration(path: str | os.PathLike[str]) -> float:
    """Duration in seconds from the file header (decodes the file when the header has no frame count)."""
    try:
        info = sf.info(str(path))
        if info.frames > 0:
            return info.frames / info.samplerate
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioError(f"{path}: cannot read audio ({e})") from e
    return load_audio(path).size / SAMPLE_RATE


def save_audio(path: str | Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write a mono float waveform as 16-bit PCM (format from the suffix: .wav, .flac, .ogg)."""
    sf.write(str(path), np.clip(samples, -1.0, 1.0), sample_rate, subtype="PCM_16"
             if Path(path).suffix.lower() in {".wav", ".flac"} else None)
