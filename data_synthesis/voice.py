"""Voice conversion by vocoder re-synthesis: new pitch and vocal-tract length for a real speaker's recording.

A recording is analysed by the WORLD vocoder (Morise et al., IEICE Trans. Inf. & Syst. E99-D(7), 2016) into a
fundamental frequency contour F0(t), a smooth spectral envelope S(t, f) (CheapTrick) and an aperiodicity A(t, f)
(D4C), and synthesised again with

    F0'(t) = s_f0 F0(t),     S'(t, f) = S(t, f / s_vtl),     A'(t, f) = A(t, f / s_vtl),

so pitch and formants move independently. ``s_vtl`` > 1 raises every formant by that factor, as a shorter vocal
tract does (the same axis warp as VTLP, Jaitly and Hinton 2013, but applied to the envelope only, leaving the
harmonics where the new F0 puts them). Speed perturbation and VTLP move pitch and formants together; this teaches
a model with few real speakers that the two vary separately between people. Timing, accent and articulation stay
the recorded speaker's.

The band is kept: frequencies that were empty in the source (a telephone-band 8 kHz recording upsampled to
16 kHz has nothing above 4 kHz) are emptied in the output, so neither a raised formant nor the vocoder's noise
fills a band the source never had.

WORLD comes from the ``pyworld`` package (``pip install 'deepspeech[voice]'``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr
from tqdm import tqdm

from deepspeech.data.manifest import Utterance, write_manifest
from deepspeech.frontend.audio import SAMPLE_RATE, AudioError, load_audio, save_audio

__all__ = ["VoiceConfig", "VoiceError", "convert_corpus", "convert_voice"]

log = logging.getLogger(__name__)

_FRAME_MS = 5.0  # WORLD's analysis hop
# D4C's voicing test sums power up to 7.9 kHz: below 16 kHz it reads past the end of its spectrum (uninitialised
# memory, so results change from call to call). Lower rates are converted at 16 kHz.
_WORLD_MIN_RATE = 16_000
_EMPTY_BAND_DB = 60.0  # a frequency this far below the strongest one's time-averaged power counts as empty


class VoiceError(RuntimeError):
    """The WORLD vocoder is unavailable or cannot analyse the input."""


def _world():
    try:
        with warnings.catch_warnings():  # pyworld 0.3.5 imports the deprecated pkg_resources
            warnings.simplefilter("ignore")
            import pyworld
    except ImportError as e:  # an optional dependency: only voice conversion needs it
        raise VoiceError("voice conversion needs the WORLD vocoder: pip install 'deepspeech[voice]' "
                         "(the pyworld package)") from e
    return pyworld


def _warp(env: np.ndarray, factor: float) -> np.ndarray:
    """(T, K) envelope on a linear frequency axis -> out[:, k] = env[:, k / factor], linearly interpolated; bins
    read from beyond the top edge take the top bin's value."""
    k = env.shape[1]
    src = np.arange(k, dtype=np.float64) / factor
    lo = np.clip(np.floor(src).astype(np.int64), 0, k - 2)
    w = np.clip(src - lo, 0.0, 1.0)
    return env[:, lo] * (1.0 - w) + env[:, lo + 1] * w


def _band_edge(x: np.ndarray, sample_rate: int) -> float:
    """The highest frequency (Hz) whose time-averaged power is within _EMPTY_BAND_DB of the strongest one."""
    n = 512
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(x, (0, max(0, n - x.size))), n)[:: n // 2]
    psd = (np.abs(np.fft.rfft(frames * np.hanning(n), axis=1)) ** 2).mean(axis=0)
    level = 10.0 * np.log10(psd + 1e-30)
    return float(np.flatnonzero(level >= level.max() - _EMPTY_BAND_DB)[-1] * sample_rate / n)


def convert_voice(wav: np.ndarray, sample_rate: int, f0_scale: float = 1.0, vtl_scale: float = 1.0) -> np.ndarray:
    """(N,) float waveform -> (N',) float32 waveform with F0 times ``f0_scale`` and formants times ``vtl_scale``
    (N' equals N up to one analysis frame). The output RMS matches the input's."""
    if not (0.25 <= f0_scale <= 4.0 and 0.5 <= vtl_scale <= 2.0):
        raise ValueError(f"f0_scale must be in [0.25, 4] and vtl_scale in [0.5, 2], got {f0_scale}, {vtl_scale}")
    x = np.ascontiguousarray(wav, dtype=np.float64)
    if x.ndim != 1 or x.size < sample_rate * _FRAME_MS / 1000 * 4 or not np.isfinite(x).all():
        raise VoiceError("voice conversion needs a finite mono waveform of at least 4 analysis frames (20 ms)")
    pw = _world()
    if sample_rate < _WORLD_MIN_RATE:  # analyse and synthesise at 16 kHz, return at the caller's rate
        y = convert_voice(soxr.resample(x, sample_rate, _WORLD_MIN_RATE), _WORLD_MIN_RATE, f0_scale, vtl_scale)
        return soxr.resample(y, _WORLD_MIN_RATE, sample_rate).astype(np.float32)
    f0, t = pw.dio(x, sample_rate, frame_period=_FRAME_MS)
    f0 = pw.stonemask(x, f0, t, sample_rate)
    sp = pw.cheaptrick(x, f0, t, sample_rate)
    ap = pw.d4c(x, f0, t, sample_rate)
    if vtl_scale != 1.0:
        sp, ap = _warp(sp, vtl_scale), np.clip(_warp(ap, vtl_scale), 0.0, 1.0)
    y = pw.synthesize(np.ascontiguousarray(f0 * f0_scale), np.ascontiguousarray(sp), np.ascontiguousarray(ap),
                      sample_rate, _FRAME_MS)
    edge = _band_edge(x, sample_rate)
    if edge < 0.95 * sample_rate / 2:  # the vocoder and the warp leak into a band the source never had
        spec = np.fft.rfft(y)
        spec[np.fft.rfftfreq(y.size, 1.0 / sample_rate) > edge] = 0.0
        y = np.fft.irfft(spec, n=y.size)
    rms_in, rms_out = float(np.sqrt(np.mean(x ** 2))), float(np.sqrt(np.mean(y ** 2)))
    if rms_out > 0:
        y = y * (rms_in / rms_out)
    return y.astype(np.float32)


@dataclass(frozen=True)
class VoiceConfig:
    # Scales drawn log-uniformly per copy. The defaults span about +-40% in F0 and +-15% in formants around the
    # source speaker: roughly the spread of adult male voices around one of them (Peterson and Barney, JASA 1952).
    f0_scale: tuple[float, float] = (0.7, 1.45)
    vtl_scale: tuple[float, float] = (0.87, 1.15)
    sample_rate: int = SAMPLE_RATE  # input and output rate (8000 for telephone-band sources; WORLD runs at >= 16 kHz)

    def __post_init__(self) -> None:
        if not (0.25 <= self.f0_scale[0] <= self.f0_scale[1] <= 4.0 and
                0.5 <= self.vtl_scale[0] <= self.vtl_scale[1] <= 2.0):
            raise ValueError("f0_scale must be an increasing range within [0.25, 4], vtl_scale within [0.5, 2]")
        if not 4000 <= self.sample_rate <= 48000:
            raise ValueError(f"sample_rate must be in [4000, 48000], got {self.sample_rate}")


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def convert_corpus(utts: Sequence[Utterance], out_dir: str | Path, cfg: VoiceConfig = VoiceConfig(), copies: int = 1,
                   seed: int = 0, progress: bool = True) -> list[Utterance]:
    """Write ``copies`` voice-converted copies of every utterance (audio/NNNNN.flac + manifest.jsonl) to
    ``out_dir``; returns them. Copy c of utterance i draws its scales from a generator seeded (seed, c * len + i),
    so the output is deterministic. A converted speaker is named ``SOURCE/f0=1.10/vtl=0.95``: the part before the
    first slash is the recorded speaker, as speaker cross-validation needs. Unreadable audio is skipped with a
    warning."""
    if copies < 1:
        raise ValueError("copies must be >= 1")
    _world()  # fail before any work if the vocoder is missing
    out = Path(out_dir)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    done: list[Utterance] = []
    jobs = [(c, i) for c in range(copies) for i in range(len(utts))]
    for c, i in tqdm(jobs, desc="voices", unit="utt", disable=not progress):
        u = utts[i]
        rng = np.random.default_rng([seed, c * len(utts) + i])
        f0, vtl = _log_uniform(rng, *cfg.f0_scale), _log_uniform(rng, *cfg.vtl_scale)
        try:
            wav = load_audio(u.audio)
            if cfg.sample_rate != SAMPLE_RATE:
                wav = soxr.resample(wav, SAMPLE_RATE, cfg.sample_rate)
            y = convert_voice(wav, cfg.sample_rate, f0, vtl)
        except (AudioError, VoiceError) as e:
            log.warning("skipping %s: %s", u.audio, e)
            continue
        path = out / "audio" / f"{len(done):05d}.flac"
        save_audio(path, y, cfg.sample_rate)
        done.append(Utterance(str(path.resolve()), u.text, len(y) / cfg.sample_rate,
                              f"{u.speaker or 'unknown'}/f0={f0:.2f}/vtl={vtl:.2f}", u.lang))
    write_manifest(out / "manifest.jsonl", done)
    return done
