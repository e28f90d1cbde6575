"""Audio input: any file libsndfile reads, or raw 16-bit PCM, to mono float32 at 16 kHz.

Every failure (unreadable, empty, non-finite, over-long, wrong sample format) raises :class:`AudioError`, so a
caller that processes many files can catch one exception type, report the file and go on.

Admission happens before decoding: the header's sample rate, channel count and length are checked against
MIN_SAMPLE_RATE..MAX_SAMPLE_RATE, MAX_CHANNELS and the duration limit. The file is then decoded block by block
(BLOCK_S seconds), each block mixed to mono as it comes, so peak memory is the mono signal at the file's rate plus
one multi-channel block, however much the header claims. The samples are bit-identical to decoding the whole file
at once and mixing it with ``mean(axis=1)`` (the row mean of a block is the row mean of the whole array).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16_000  # every model in this project runs at 16 kHz
MAX_DURATION_S = 4 * 3600.0  # longer input is refused; long recordings are chunked by the caller
MIN_SAMPLE_RATE = 8_000  # below this a header is broken or hostile (a 1 Hz header means a 16,000x upsampling)
MAX_SAMPLE_RATE = 192_000  # the highest rate of real recording equipment
MAX_CHANNELS = 8  # 7.1 surround
BLOCK_S = 2.0  # decoded per read: at most 192 kHz x 8 channels x 2 s x 4 bytes = 12 MB
FIRST_CAPACITY_S = 60.0  # the mono buffer starts this long (or at the header's length) and doubles as data comes
RESAMPLE_QUALITY = "HQ"  # soxr quality of every resampling
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif")  # what folder scans pick up
_UNKNOWN_FRAMES = 2**63 - 1  # libsndfile's SF_COUNT_MAX: the header has no length (e.g. a streamed FLAC)


class AudioError(ValueError):
    """Raised for audio that cannot be turned into a usable 16 kHz mono waveform."""


def _too_long(name: str, seconds: float | None, max_duration_s: float) -> AudioError:
    """``seconds`` is None for a file without a length in its header, stopped once past the limit."""
    what = "audio without a length in its header" if seconds is None else f"{seconds:.0f} s"
    return AudioError(f"{name}: {what} is longer than the limit of {max_duration_s:.0f} s")


def _check_format(name: str, sample_rate: int, channels: int) -> None:
    """Refuse a sample rate or channel count outside the accepted bounds."""
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"{name}: sample rate {sample_rate} Hz is outside the accepted "
                         f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz")
    if channels > MAX_CHANNELS:
        raise AudioError(f"{name}: {channels} channels is more than the limit of {MAX_CHANNELS}")


@contextmanager
def _open(source: str | os.PathLike[str] | bytes, name: str) -> Iterator[sf.SoundFile]:
    """Open for reading (header only); libsndfile failures, at opening or while reading, become AudioError."""
    if not isinstance(source, bytes | bytearray):  # say what is wrong (libsndfile says "System error.")
        path = Path(source)
        if not path.exists():
            raise AudioError(f"{name}: no such file")
        if not path.is_file():
            raise AudioError(f"{name}: not a regular file")
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
        with sf.SoundFile(handle) as f:
            yield f
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, OSError, ValueError) as e:
        why = str(e).rsplit(": ", 1)[-1] if isinstance(source, bytes | bytearray) else str(e)  # no object repr
        raise AudioError(f"{name}: cannot read audio ({why})") from e


def _admit(f: sf.SoundFile, name: str, max_duration_s: float) -> int | None:
    """Check the header against the bounds, before anything is decoded -> its frame count, None if it has none."""
    _check_format(name, f.samplerate, f.channels)
    known = f.frames if 0 < f.frames < _UNKNOWN_FRAMES else None
    if known is not None and known / f.samplerate > max_duration_s:
        raise _too_long(name, known / f.samplerate, max_duration_s)
    return known


def _read_into(f: sf.SoundFile, out: np.ndarray) -> int:
    """Decode the next ``len(out)`` frames into ``out`` ((frames, channels) float32, C order) -> frames decoded.

    Calls libsndfile directly: ``SoundFile.read`` seeks after every read to track its position, and that seek
    re-primes the mp3 and opus decoders (the next samples differ by an ulp from a whole-file read) and fails on a
    FLAC without a length. Consecutive reads give the same samples as one read of the whole file.
    """
    n = sf._snd.sf_readf_float(f._file, sf._ffi.cast("float *", out.ctypes.data), len(out))
    err = sf._snd.sf_error(f._file)
    if err:
        raise sf.LibsndfileError(err)
    return int(n)


def _blocks(f: sf.SoundFile, name: str, known: int | None, max_duration_s: float,
            block_s: float = BLOCK_S) -> Iterator[np.ndarray]:
    """(n, channels) float32 blocks of the whole file (views of one reused buffer: use each before the next).

    Reads ``known`` frames (as a whole-file read does), or, without a length, until the end; stops with
    AudioError as soon as more than ``max_duration_s`` has been decoded (one frame past it).
    """
    sr = f.samplerate
    size = max(1, int(block_s * sr)) if known is None else min(max(1, int(block_s * sr)), known)
    block = np.empty((size, f.channels), np.float32)
    total = 0
    while known is None or total < known:
        if known is None:  # decode no more than one frame past the limit
            room = max_duration_s * sr - total
            want = size if room >= size else max(1, int(room) + 1)
        else:
            want = min(size, known - total)
        n = _read_into(f, block[:want])
        if n <= 0:
            return
        total += n
        if total / sr > max_duration_s:
            raise _too_long(name, None, max_duration_s)
        yield block[:n]


def _decode_mono(f: sf.SoundFile, name: str, known: int | None, max_duration_s: float) -> np.ndarray:
    """The whole file mixed to mono, (n,) float32 at the file's rate; the buffer grows with what is decoded."""
    sr = f.samplerate
    first = max(1, int(min(FIRST_CAPACITY_S, max_duration_s) * sr) + 1)
    buf = np.empty(first if known is None else min(first, known), np.float32)
    pos = 0
    for block in _blocks(f, name, known, max_duration_s):
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf or an overflow: refused just below
            mono = block.mean(axis=1)  # float32, the same row means as the whole (frames, channels) array gives
        if not np.all(np.isfinite(mono)):
            raise AudioError(f"{name}: audio contains NaN or infinite samples")
        if pos + mono.size > buf.size:  # realloc in place: no second copy of the buffer at any time
            grow = min(2 * buf.size, known if known is not None else max_duration_s * sr)
            buf.resize(int(max(grow, pos + mono.size)), refcheck=False)  # no view of buf exists here
        buf[pos: pos + mono.size] = mono
        pos += mono.size
    if pos == 0:
        raise AudioError(f"{name}: audio is empty")
    if pos < buf.size:
        buf.resize(pos, refcheck=False)
    return buf


def resample(samples: np.ndarray, rate: int) -> np.ndarray:
    """(n,) float mono at ``rate`` -> (m,) float32 at :data:`SAMPLE_RATE`, in one call (soxr HQ, as every trained
    model's data was); the same samples as a :class:`Resampler` fed the signal in chunks of any size (tested).
    Raises :class:`AudioError` when the filter overflows. The one resampler of files, uploads and streams
    (:mod:`deepspeech.frontend.front_end` exports it)."""
    x = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
    if rate == SAMPLE_RATE:
        return x
    y = soxr.resample(x, rate, SAMPLE_RATE, quality=RESAMPLE_QUALITY).astype(np.float32, copy=False)
    if not np.all(np.isfinite(y)):  # finite float samples near 3e38 overflow in the filter
        raise AudioError("audio samples too large to resample (beyond float32 range)")
    return np.ascontiguousarray(y)


class Resampler:
    """:func:`resample` for a signal that arrives in chunks: ``resampler(chunk)`` -> the new 16 kHz samples it
    completes; ``resampler(chunk, last=True)`` also flushes the filter. At :data:`SAMPLE_RATE` chunks pass through
    (copied, so callers may reuse their buffers)."""

    def __init__(self, rate: int) -> None:
        self.rate = int(rate)
        self._rs = soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="float32", quality=RESAMPLE_QUALITY) \
            if self.rate != SAMPLE_RATE else None

    def __call__(self, chunk: np.ndarray, last: bool = False) -> np.ndarray:
        x = np.ascontiguousarray(chunk, dtype=np.float32).reshape(-1)
        if self._rs is None:
            return x.copy()
        return self._rs.resample_chunk(x, last=last)


def _to_16k(mono: np.ndarray, sr: int, name: str) -> np.ndarray:
    """Resample the whole mono signal once."""
    try:
        return resample(mono, sr)
    except AudioError as e:
        raise AudioError(f"{name}: {e}") from None


def load_audio(
    source: str | os.PathLike[str] | bytes, max_duration_s: float = MAX_DURATION_S
) -> np.ndarray:
    """Read a file (path or encoded bytes: wav, flac, ogg, mp3, ...) -> (n,) float32 mono at 16 kHz in [-1, 1].

    Refuses, before decoding, a sample rate outside MIN_SAMPLE_RATE..MAX_SAMPLE_RATE, more than MAX_CHANNELS
    channels or a header length over ``max_duration_s``; a file without a length stops once past the limit.
    """
    name = "<bytes>" if isinstance(source, bytes | bytearray) else str(source)
    with _open(source, name) as f:
        sr = f.samplerate
        mono = _decode_mono(f, name, _admit(f, name, max_duration_s), max_duration_s)
    return _to_16k(mono, sr, name)


def load_pcm16(data: bytes, sample_rate: int = SAMPLE_RATE, channels: int = 1,
               max_duration_s: float = MAX_DURATION_S) -> np.ndarray:
    """Raw little-endian 16-bit PCM bytes (interleaved if ``channels`` > 1) -> (n,) float32 mono at 16 kHz."""
    if channels < 1:
        raise AudioError(f"<pcm>: invalid channel count {channels}")
    _check_format("<pcm>", sample_rate, channels)
    if len(data) % (2 * channels) != 0:
        raise AudioError(f"<pcm>: {len(data)} bytes is not a whole number of 16-bit frames of {channels} channels")
    frames = len(data) // (2 * channels)
    if frames == 0:
        raise AudioError("<pcm>: audio is empty")
    if frames / sample_rate > max_duration_s:
        raise _too_long("<pcm>", frames / sample_rate, max_duration_s)
    samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    return _to_16k(samples.reshape(-1, channels).mean(axis=1), sample_rate, "<pcm>")


def audio_duration(path: str | os.PathLike[str], max_duration_s: float = MAX_DURATION_S) -> float:
    """Duration in seconds from the file header, under the same admission as :func:`load_audio`; a file whose
    header has no length is decoded block by block (not kept) and counted, up to ``max_duration_s``."""
    name = str(path)
    with _open(path, name) as f:
        known = _admit(f, name, max_duration_s)
        if known is not None:
            return known / f.samplerate
        frames = sum(len(block) for block in _blocks(f, name, None, max_duration_s))
        if frames == 0:
            raise AudioError(f"{name}: audio is empty")
        return frames / f.samplerate


def stream_audio(path: str | os.PathLike[str], block_s: float = 10.0,
                 max_duration_s: float = MAX_DURATION_S) -> Iterator[np.ndarray]:
    """A long file as (n,) float32 mono 16 kHz blocks of about ``block_s`` seconds, decoded and resampled
    incrementally (:class:`Resampler`: the same samples as :func:`load_audio`), under the same admission as
    :func:`load_audio`."""
    name = str(path)
    with _open(path, name) as f:
        sr = f.samplerate
        known = _admit(f, name, max_duration_s)
        rs = Resampler(sr)
        total = 0
        for block in _blocks(f, name, known, max_duration_s, block_s):
            with np.errstate(invalid="ignore", over="ignore"):
                mono = np.ascontiguousarray(block.mean(axis=1), dtype=np.float32)
            if not np.all(np.isfinite(mono)):
                raise AudioError(f"{name}: audio contains NaN or infinite samples")
            total += mono.size
            out = rs(mono)  # a copy at 16 kHz: the block buffer is reused
            if out.size:
                yield out
        if total == 0:
            raise AudioError(f"{name}: audio is empty")
        tail = rs(np.zeros(0, np.float32), last=True)
        if tail.size:
            yield tail


def save_audio(path: str | Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write a mono float waveform as 16-bit PCM (format from the suffix: .wav, .flac, .ogg)."""
    sf.write(str(path), np.clip(samples, -1.0, 1.0), sample_rate, subtype="PCM_16"
             if Path(path).suffix.lower() in {".wav", ".flac"} else None)
