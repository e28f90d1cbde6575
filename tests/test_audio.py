"""deepspeech.audio: every readable format, rate and channel count -> mono float32 at 16 kHz; every failure is an
AudioError that names its source."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from deepspeech.audio import SAMPLE_RATE, AudioError, audio_duration, load_audio, load_pcm16, save_audio

RATES = [8000, 22050, 44100, 48000]
FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS"),
           "mp3": ("MP3", "MPEG_LAYER_III")}
SECONDS = 0.5
FREQ = 440.0


def sine(sr: int, seconds: float = SECONDS, freq: float = FREQ, channels: int = 1, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    x = amp * np.sin(2 * np.pi * freq * t)
    return x if channels == 1 else np.stack([x] * channels, axis=1)


def peak_hz(y: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.argmax(spec) * sr / len(y))


def encode(data: np.ndarray, sr: int, ext: str) -> bytes:
    fmt, subtype = FORMATS[ext]
    buf = io.BytesIO()
    sf.write(buf, data, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("sr", RATES)
@pytest.mark.parametrize("ext", list(FORMATS))
def test_file_to_mono_16k(tmp_path: Path, ext: str, sr: int, channels: int) -> None:
    path = tmp_path / f"tone.{ext}"
    path.write_bytes(encode(sine(sr, channels=channels), sr, ext))
    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1 and y.flags.c_contiguous
    expected = int(SECONDS * SAMPLE_RATE)
    # Lossless formats keep the frame count exactly; the lossy codecs and the resampler may differ by a few samples.
    assert abs(y.size - expected) <= (1 if ext in ("wav", "flac") and sr == SAMPLE_RATE else 8), y.size
    # 0.5 s at 16 kHz: FFT bins are 2 Hz apart.
    assert abs(peak_hz(y) - FREQ) <= 4.0
    # Mono mix of identical channels keeps the amplitude (no summing); lossy codecs may overshoot slightly.
    mid = y[expected // 4: 3 * expected // 4]
    assert 0.45 < np.abs(mid).max() < 0.56
    if ext in ("wav", "flac"):
        ref = sine(SAMPLE_RATE)[: y.size].astype(np.float32)
        core = slice(200, y.size - 200)  # away from the resampler's edge transients
        assert np.max(np.abs(y[core] - ref[core])) < 2e-3


@pytest.mark.parametrize("ext", list(FORMATS))
def test_encoded_bytes_equal_file(tmp_path: Path, ext: str) -> None:
    data = encode(sine(22050, channels=2), 22050, ext)
    (tmp_path / f"x.{ext}").write_bytes(data)
    from_bytes = load_audio(data)
    np.testing.assert_array_equal(from_bytes, load_audio(tmp_path / f"x.{ext}"))
    np.testing.assert_array_equal(from_bytes, load_audio(bytearray(data)))
    np.testing.assert_array_equal(from_bytes, load_audio(str(tmp_path / f"x.{ext}")))


def test_16k_wav_is_not_resampled(tmp_path: Path) -> None:
    x = (np.random.default_rng(0).integers(-32768, 32768, size=1234)).astype(np.int16)
    sf.write(tmp_path / "a.wav", x, SAMPLE_RATE, subtype="PCM_16")
    np.testing.assert_array_equal(load_audio(tmp_path / "a.wav"), x.astype(np.float32) / 32768.0)


def test_stereo_is_averaged(tmp_path: Path) -> None:
    left, right = np.full(800, 0.5, np.float32), np.full(800, -0.25, np.float32)
    sf.write(tmp_path / "s.wav", np.stack([left, right], 1), SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "s.wav"), 0.125, atol=1e-7)


def test_save_audio_round_trip(tmp_path: Path) -> None:
    x = sine(SAMPLE_RATE, 0.25).astype(np.float32)
    save_audio(tmp_path / "r.flac", x)
    y = load_audio(tmp_path / "r.flac")
    assert y.size == x.size
    np.testing.assert_allclose(y, x, atol=1.0 / 32768 + 1e-7)  # 16-bit quantisation
    assert audio_duration(tmp_path / "r.flac") == pytest.approx(0.25)


# --- raw PCM ---------------------------------------------------------------------------------------------------


def test_pcm16_round_trip() -> None:
    x = np.random.default_rng(1).integers(-32768, 32768, size=4000).astype("<i2")
    y = load_pcm16(x.tobytes())
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, x.astype(np.float32) / 32768.0)
    assert np.array_equal(np.round(y * 32768).astype(np.int16), x)


def test_pcm16_stereo_interleaved_is_mixed() -> None:
    left = np.full(100, 1000, "<i2")
    right = np.full(100, -3000, "<i2")
    inter = np.stack([left, right], 1).reshape(-1)  # L R L R ...
    y = load_pcm16(inter.tobytes(), channels=2)
    assert y.shape == (100,)
    np.testing.assert_allclose(y, -1000 / 32768.0)


def test_pcm16_resamples() -> None:
    x = (sine(8000) * 32767).astype("<i2")
    y = load_pcm16(x.tobytes(), sample_rate=8000)
    assert abs(y.size - int(SECONDS * SAMPLE_RATE)) <= 2
    assert abs(peak_hz(y) - FREQ) <= 4.0


@pytest.mark.parametrize("data,channels", [(b"\x00\x01\x02", 1), (b"\x00" * 6, 4), (b"\x00" * 6, 0),
                                           (b"\x00" * 4, -1), (b"", 1)])
def test_pcm16_bad_input(data: bytes, channels: int) -> None:
    with pytest.raises(AudioError, match="<pcm>"):
        load_pcm16(data, channels=channels)


def test_pcm16_too_long() -> None:
    with pytest.raises(AudioError, match="<pcm>.*longer than the limit"):
        load_pcm16(b"\x00\x00" * 32000, max_duration_s=1.0)
    assert load_pcm16(b"\x00\x00" * 16000, max_duration_s=1.0).size == 16000  # exactly the limit is fine


# --- failures --------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match="nope.wav"):
        load_audio(path)
    with pytest.raises(AudioError, match="nope.wav"):
        audio_duration(path)


@pytest.mark.parametrize("data", [b"this is not audio \x00\x01" * 30, b"", b"RIFF" + b"\x00" * 100])
def test_garbage_bytes(data: bytes) -> None:
    with pytest.raises(AudioError, match="<bytes>: cannot read audio"):
        load_audio(data)


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.flac"
    path.write_bytes(b"\xff\xfe garbage" * 40)
    with pytest.raises(AudioError, match="junk.flac: cannot read audio"):
        load_audio(path)


@pytest.mark.parametrize("channels", [1, 2])
def test_empty_wav(tmp_path: Path, channels: int) -> None:
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros((0, channels)), SAMPLE_RATE)
    assert sf.info(str(path)).frames == 0  # a valid file with no frames
    with pytest.raises(AudioError, match="empty.wav: audio is empty"):
        load_audio(path)
    with pytest.raises(AudioError, match="<bytes>: audio is empty"):
        load_audio(path.read_bytes())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(tmp_path: Path, bad: float) -> None:
    x = np.zeros(1000, np.float32)
    x[500] = bad
    path = tmp_path / "nonfinite.wav"
    sf.write(path, x, 22050, subtype="FLOAT")
    with pytest.raises(AudioError, match="nonfinite.wav: audio contains NaN or infinite"):
        load_audio(path)


def test_too_long(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(3 * 8000, np.int16), 8000)  # 3 s
    with pytest.raises(AudioError, match="long.wav: 3 s is longer than the limit of 2 s"):
        load_audio(path, max_duration_s=2.0)
    with pytest.raises(AudioError, match="<bytes>: 3 s is longer"):
        load_audio(path.read_bytes(), max_duration_s=2.0)
    assert load_audio(path, max_duration_s=3.0).size == 3 * SAMPLE_RATE


def test_audio_error_is_value_error() -> None:
    assert issubclass(AudioError, ValueError)
