"""Deep Speech 2 input features: the log power spectrogram (DS2 section 3, "spectrograms of power normalized
audio clips"; 20 ms windows with a 10 ms hop, 161 frequency bins at 16 kHz).

Feature extraction is a pure function. The streaming version carries the unconsumed samples as explicit state and
produces, chunk by chunk, exactly the frames of the whole-utterance function (each frame is a function of its own
320 samples only). Normalisation statistics are computed on training data and saved with the model.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from deepspeech.frontend.audio import SAMPLE_RATE

UTTERANCE_NORMS = ("none", "mean", "smooth_mean")


@dataclass(frozen=True)
class FeatureConfig:
    # Hz. The pure functions here work at any rate; the model's front end (deepspeech.frontend.front_end) resamples all
    # audio
    # to 16 kHz and refuses any other value, as every model in this project runs at 16 kHz.
    sample_rate: int = SAMPLE_RATE
    window_ms: float = 20.0  # analysis window (DS2: 20 ms)
    hop_ms: float = 10.0  # frame step (DS2: 10 ms)
    window: str = "hamming"  # window function: hamming or hann
    log_floor: float = 1e-10  # added to the power before the log, so silence is finite
    # Per-utterance normalisation: none | mean (the per-bin mean) | smooth_mean (the per-bin mean smoothed across
    # frequency by a Gaussian of norm_smooth_hz: a channel's smooth colouring goes, the word's own formant-scale
    # average spectrum stays).
    utterance_norm: str = "none"
    norm_smooth_hz: float = 300.0
    # Endpointing (0 = off): cut the leading and trailing frames more than trim_db below the loudest frame,
    # keeping trim_margin_ms of them, so that recordings cut loosely or tightly around a word look alike.
    trim_db: float = 0.0
    trim_margin_ms: float = 20.0
    # Test-time frequency-warp search (empty = off; inference only, training ignores it): every utterance is run
    # under each of these warp factors and the most confident output is decoded (deepspeech.inference.warp_search).
    warp_search: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.window not in {"hamming", "hann"}:
            raise ValueError(f"unknown window {self.window!r}")
        if self.utterance_norm not in UTTERANCE_NORMS:
            raise ValueError(f"utterance_norm must be one of {', '.join(UTTERANCE_NORMS)}, got {self.utterance_norm!r}")
        if not self.norm_smooth_hz > 0:  # NaN too
            raise ValueError(f"norm_smooth_hz must be > 0, got {self.norm_smooth_hz}")
        if not (self.trim_db >= 0 and self.trim_margin_ms >= 0):  # NaN too
            raise ValueError(f"trim_db and trim_margin_ms must be >= 0, got {self.trim_db}, {self.trim_margin_ms}")
        if self.win_length <= 0 or self.hop_length <= 0 or self.hop_length > self.win_length:
            raise ValueError("need 0 < hop <= window")
        if not all(0.5 <= a <= 2.0 for a in self.warp_search):  # NaN too
            raise ValueError(f"warp_search factors must be in [0.5, 2], got {self.warp_search}")

    @property
    def win_length(self) -> int:
        return int(round(self.sample_rate * self.window_ms / 1000))

    @property
    def hop_length(self) -> int:
        return int(round(self.sample_rate * self.hop_ms / 1000))

    @property
    def n_bins(self) -> int:
        return self.win_length // 2 + 1

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for ``num_samples`` of audio (short input is padded to one window)."""
        return 1 + max(0, num_samples - self.win_length) // self.hop_length


@functools.lru_cache(maxsize=8)
def _window(cfg: FeatureConfig) -> torch.Tensor:
    fn = torch.hamming_window if cfg.window == "hamming" else torch.hann_window
    return fn(cfg.win_length, periodic=False, dtype=torch.float32)


@functools.lru_cache(maxsize=8)
def smoothing_matrix(n_bins: int, sigma_bins: float) -> torch.Tensor:
    """(n_bins, n_bins) float64 Gaussian smoothing across frequency: row f holds the weights exp(-(f - g)^2 / 2
    sigma^2) over bins g, normalised to sum to 1 (so the edges are local weighted means, not pulled to zero)."""
    f = torch.arange(n_bins, dtype=torch.float64)
    w = torch.exp(-0.5 * ((f[:, None] - f[None, :]) / sigma_bins) ** 2)
    return w / w.sum(1, keepdim=True)


def _frames_to_logpower(frames: torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """(T, win) samples -> (T, n_bins) log power, frame by frame (so streaming and whole-utterance features are
    equal)."""
    spec = torch.fft.rfft(frames * _window(cfg), n=cfg.win_length, dim=-1)
    power = spec.real.square() + spec.imag.square()
    return torch.log(power + cfg.log_floor)


def log_spectrogram(samples: np.ndarray | torch.Tensor, cfg: FeatureConfig = FeatureConfig()) -> torch.Tensor:
    """(n,) float waveform at ``cfg.sample_rate`` -> (T, n_bins) float32 log power spectrogram.

    T = 1 + (n - win) // hop; input shorter than one window is zero-padded to one window.
    """
    x = torch.as_tensor(samples, dtype=torch.float32).reshape(-1)
    if x.numel() < cfg.win_length:
        x = torch.nn.functional.pad(x, (0, cfg.win_length - x.numel()))
    frames = x.unfold(0, cfg.win_length, cfg.hop_length)  # (T, win)
    return _frames_to_logpower(frames, cfg)


def extract(samples: np.ndarray | torch.Tensor, cfg: FeatureConfig = FeatureConfig()) -> torch.Tensor:
    """The model's raw input features: :func:`log_spectrogram`, endpointed (:func:`trim_bounds`), then the
    configured per-utterance normalisation. (T, n_bins); global statistics (:class:`FeatureStats`) are applied on
    top of this."""
    return prepare_utterance(log_spectrogram(samples, cfg), cfg)[0]


def prepare_utterance(feats: torch.Tensor, cfg: FeatureConfig) -> tuple[torch.Tensor, int]:
    """(T, n_bins) log power of one utterance -> (its endpointed, normalised frames, the number of frames
    endpointing cut from the start: what word times add back to stay on the recording's time line)."""
    start, end = trim_bounds(feats, cfg)
    return utterance_normalize(feats[start:end], cfg), start


def trim_bounds(feats: torch.Tensor, cfg: FeatureConfig) -> tuple[int, int]:
    """[start, end) of the frames of (T, n_bins) log power that endpointing keeps: from the first to the last
    frame within ``cfg.trim_db`` of the loudest (:func:`speech_frames`), widened by ``cfg.trim_margin_ms`` on each
    side; (0, T) when ``cfg.trim_db`` is 0. An energy rule, like the trimming of the synthetic corpora
    (``data_synthesis.tts.trim``): speakers who leave 0.2 s of room tone before a word and speakers who leave
    none then give the model the same picture."""
    t = int(feats.shape[0])
    if cfg.trim_db <= 0 or t == 0:
        return 0, t
    loud = torch.nonzero(speech_frames(feats, cfg.trim_db)).flatten()
    margin = int(round(cfg.trim_margin_ms / cfg.hop_ms))
    return max(int(loud[0]) - margin, 0), min(int(loud[-1]) + 1 + margin, t)


def speech_frames(feats: torch.Tensor, range_db: float) -> torch.Tensor:
    """(T,) bool: the frames of (T, n_bins) log power whose total power is within ``range_db`` of the loudest
    frame's (an energy voice-activity rule; at least the loudest frame is always selected)."""
    level_db = torch.logsumexp(feats, dim=1) * (10.0 / math.log(10.0))
    return level_db >= level_db.max() - range_db


def utterance_normalize(feats: torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """The configured per-utterance normalisation of (T, n_bins) log power: none, mean (cepstral mean subtraction)
    or smooth_mean.

    Per-bin means remove the recording channel's spectral colouring, but over a single short word they also remove
    much of the word's own average spectrum ("six" is mostly frication). ``smooth_mean`` subtracts the per-bin mean
    smoothed across frequency (a Gaussian of ``norm_smooth_hz``), so a channel's broad colouring and the gain go,
    while structure finer than that, the formants of the word's vowels, stays."""
    if cfg.utterance_norm == "smooth_mean" and feats.shape[0] > 0:
        sigma_bins = cfg.norm_smooth_hz * cfg.win_length / cfg.sample_rate
        mean = feats.double().mean(0)  # float64, rounded once: no ulp-level dependence on the number of frames' sums
        return feats - (smoothing_matrix(feats.shape[1], sigma_bins) @ mean).float()
    if cfg.utterance_norm == "mean":
        feats = feats - feats.mean(0, keepdim=True)
    return feats


@dataclass
class StreamState:
    """What the streaming featurizer carries between chunks."""

    pending: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # samples not yet in a full frame
    frames_emitted: int = 0


def stream_frames(
    chunk: np.ndarray | torch.Tensor, state: StreamState | None, cfg: FeatureConfig = FeatureConfig(),
    final: bool = False,
) -> tuple[torch.Tensor, StreamState]:
    """The windowing half of :func:`stream_log_spectrogram`: ``(frames (t, win) samples, new_state)``. A caller
    with many streams cuts each stream's frames, then turns all of them into features in one call of
    :func:`frames_to_log_spectrogram`."""
    state = state or StreamState()
    buf = torch.cat([state.pending, torch.as_tensor(chunk, dtype=torch.float32).reshape(-1)])
    if final and state.frames_emitted == 0 and buf.numel() < cfg.win_length:
        buf = torch.nn.functional.pad(buf, (0, cfg.win_length - buf.numel()))
    n = 0 if buf.numel() < cfg.win_length else 1 + (buf.numel() - cfg.win_length) // cfg.hop_length
    if n == 0:
        return torch.zeros(0, cfg.win_length), StreamState(buf, state.frames_emitted)
    return buf.unfold(0, cfg.win_length, cfg.hop_length), StreamState(buf[n * cfg.hop_length:].clone(),
                                                                       state.frames_emitted + n)


def frames_to_log_spectrogram(frames: torch.Tensor, cfg: FeatureConfig = FeatureConfig()) -> torch.Tensor:
    """(t, win) samples -> (t, n_bins) log power; a frame's features do not depend on its neighbours."""
    if frames.shape[0] == 0:
        return torch.zeros(0, cfg.n_bins)
    return _frames_to_logpower(frames, cfg)


def stream_log_spectrogram(
    chunk: np.ndarray | torch.Tensor, state: StreamState | None, cfg: FeatureConfig = FeatureConfig(),
    final: bool = False,
) -> tuple[torch.Tensor, StreamState]:
    """Streaming :func:`log_spectrogram`: feed chunks in order, pass ``final=True`` with the last one.

    Returns ``(frames (t, n_bins), new_state)``; concatenating all ``frames`` equals the whole-utterance output.
    """
    frames, state = stream_frames(chunk, state, cfg, final)
    return frames_to_log_spectrogram(frames, cfg), state


@dataclass(frozen=True)
class FeatureStats:
    """Per-bin mean and standard deviation of training features, applied as (x - mean) / std."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def normalize(self, feats: torch.Tensor) -> torch.Tensor:
        """(..., n_bins) -> same shape, normalised."""
        mean = torch.tensor(self.mean, dtype=feats.dtype, device=feats.device)
        std = torch.tensor(self.std, dtype=feats.dtype, device=feats.device)
        return (feats - mean) / std

    def denormalize(self, feats: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`normalize`: x * std + mean."""
        mean = torch.tensor(self.mean, dtype=feats.dtype, device=feats.device)
        std = torch.tensor(self.std, dtype=feats.dtype, device=feats.device)
        return feats * std + mean

    @classmethod
    def compute(cls, feature_iter: Iterable[torch.Tensor], min_std: float = 1e-3) -> FeatureStats:
        """Statistics over all frames of (T, n_bins) feature matrices, accumulated in float64."""
        total = sq = None
        count = 0
        for f in feature_iter:
            f64 = f.to(torch.float64)
            s, q = f64.sum(0), f64.square().sum(0)
            total = s if total is None else total + s
            sq = q if sq is None else sq + q
            count += f.shape[0]
        if total is None or sq is None or count == 0:
            raise ValueError("no frames to compute feature statistics from")
        mean = total / count
        var = (sq / count - mean.square()).clamp_min(0.0)
        std = var.sqrt().clamp_min(min_std)
        return cls(tuple(mean.tolist()), tuple(std.tolist()))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        try:
            d = json.loads(Path(path).read_text())
            mean, std = [float(v) for v in d["mean"]], [float(v) for v in d["std"]]
        except (KeyError, TypeError, ValueError) as e:  # not JSON, not an object, missing key, not numbers
            raise ValueError(f"{path}: malformed feature statistics ({e!r})") from None
        if not mean or len(mean) != len(std) or not all(math.isfinite(v) for v in mean) \
                or not all(math.isfinite(v) and v > 0 for v in std):
            raise ValueError(f"{path}: malformed feature statistics")
        return cls(tuple(mean), tuple(std))
