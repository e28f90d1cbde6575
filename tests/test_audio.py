"""deepspeech.frontend.audio: every readable format, rate and channel count -> mono float32 at 16 kHz; every failure is
an AudioError that names its source."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from deepspeech.frontend import audio
from deepspeech.frontend.audio import (
    MAX_CHANNELS,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    SAMPLE_RATE,
    AudioError,
    audio_duration,
    load_audio,
    load_pcm16,
    save_audio,
)

REPO = Path(__file__).resolve().parents[1]

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


# --- admission before decoding (issue 29) ----------------------------------------------------------------------


def old_load_audio(data: bytes) -> np.ndarray:
    """The loader every published model was trained with: decode all channels at once, mean, resample once."""
    with sf.SoundFile(io.BytesIO(data)) as f:
        sr = f.samplerate
        samples = f.read(dtype="float32", always_2d=True)
    mono = np.asarray(samples.mean(axis=1), dtype=np.float32)
    if sr != SAMPLE_RATE:
        mono = soxr.resample(mono, sr, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
    return np.ascontiguousarray(mono)


def without_length(flac: bytes) -> bytes:
    """The same FLAC with STREAMINFO's total-samples field set to 0 ("unknown", as a streaming encoder writes)."""
    assert flac[:4] == b"fLaC"
    d = bytearray(flac)
    fields = int.from_bytes(d[18:26], "big")  # 20 bits rate, 3 channels, 5 bits per sample, 36 total samples
    d[18:26] = (fields & ~((1 << 36) - 1)).to_bytes(8, "big")
    return bytes(d)


def wav_header(rate: int, channels: int, frames: int) -> bytes:
    """A 16-bit PCM WAV header claiming anything, followed by ``frames`` frames of silence."""
    data = frames * channels * 2
    return (b"RIFF" + struct.pack("<I", 36 + data) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate,
            rate * channels * 2, channels * 2, 16) + b"data" + struct.pack("<I", data) + b"\x00" * data)


def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> int:
        raise AssertionError("decoding started")
    monkeypatch.setattr(audio, "_read_into", refuse)


def equality_cases() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(29)
    cases = []
    for ext, subtype in [("wav", "FLOAT"), ("wav", "PCM_24"), ("flac", "PCM_16"), ("ogg", "VORBIS"),
                         ("opus", "OPUS"), ("mp3", "MPEG_LAYER_III")]:
        fmt = {"opus": "OGG", "mp3": "MP3"}.get(ext, ext.upper())
        for sr in [8000, 16000, 44100] if ext != "opus" else [8000, 48000]:
            for channels in [1, 2, 8] if ext != "mp3" else [1, 2]:
                x = (rng.standard_normal((int(0.61 * sr) + 1, channels)) * rng.uniform(0.01, 0.3, channels))
                buf = io.BytesIO()
                sf.write(buf, x.clip(-1, 1), sr, format=fmt, subtype=subtype)
                cases.append((f"{ext}-{subtype}-{sr}Hz-{channels}ch", buf.getvalue()))
    whole = dict(cases)
    cases += [("flac-truncated", whole["flac-PCM_16-44100Hz-8ch"][:30_000]),
              ("wav-truncated", whole["wav-FLOAT-44100Hz-2ch"][:50_001])]
    shipped = sorted((REPO / "data" / "fsdd" / "audio").glob("*.flac"))[:3]
    return cases + [(p.name, p.read_bytes()) for p in shipped]


@pytest.mark.parametrize("block_s,capacity_s", [(audio.BLOCK_S, audio.FIRST_CAPACITY_S), (0.0371, 0.1)])
def test_same_samples_as_whole_file_decoding(monkeypatch: pytest.MonkeyPatch, block_s: float,
                                             capacity_s: float) -> None:
    """Block-wise decoding and mixing gives the old loader's bits exactly (models were trained on them): with the
    default blocks, and with tiny ones that leave short tails and make the mono buffer grow."""
    monkeypatch.setattr(audio, "BLOCK_S", block_s)
    monkeypatch.setattr(audio, "FIRST_CAPACITY_S", capacity_s)
    for name, data in equality_cases():
        try:
            old = old_load_audio(data)
        except (RuntimeError, ValueError):  # the truncated FLAC may fail to decode: then so must the new loader
            with pytest.raises(AudioError):
                load_audio(data)
            continue
        new = load_audio(data)
        assert new.dtype == old.dtype and new.shape == old.shape, name
        assert new.tobytes() == old.tobytes(), name  # bit for bit, -0.0 included


def test_decompression_bomb_refused_before_decoding(tmp_path: Path) -> None:
    """A few KB of FLAC declaring 655,350 Hz x 8 channels: refused from its header, no memory spent."""
    path = tmp_path / "bomb.flac"
    sf.write(path, np.zeros((655_350, 8), np.int16), 655_350, subtype="PCM_16")  # 1 s, 42 MB as float32
    assert path.stat().st_size < 10_000
    tracemalloc.start()
    try:
        with pytest.raises(AudioError, match=r"bomb.flac: sample rate 655350 Hz is outside .*8000-192000 Hz"):
            load_audio(path)
        with pytest.raises(AudioError, match=r"<bytes>: sample rate 655350 Hz"):
            load_audio(path.read_bytes())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200_000, peak
    with pytest.raises(AudioError, match="655350 Hz"):
        audio_duration(path)


def test_too_many_channels_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sf.write(tmp_path / "nine.wav", np.zeros((800, MAX_CHANNELS + 1), np.int16), SAMPLE_RATE)
    sf.write(tmp_path / "eight.wav", np.full((800, MAX_CHANNELS), 0.25), SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(tmp_path / "eight.wav"), 0.25)
    no_decoding(monkeypatch)
    with pytest.raises(AudioError, match="nine.wav: 9 channels is more than the limit of 8"):
        load_audio(tmp_path / "nine.wav")
    with pytest.raises(AudioError, match="nine.wav: 9 channels"):
        audio_duration(tmp_path / "nine.wav")


@pytest.mark.parametrize("rate", [1, MIN_SAMPLE_RATE - 1, MAX_SAMPLE_RATE + 1])
def test_sample_rate_out_of_bounds_refused_fast(monkeypatch: pytest.MonkeyPatch, rate: int) -> None:
    """A header claiming 1 Hz made the old loader upsample 16,000x (minutes for a long file)."""
    data = wav_header(rate, 1, 50)
    assert sf.info(io.BytesIO(data)).samplerate == rate
    no_decoding(monkeypatch)
    start = time.perf_counter()
    with pytest.raises(AudioError, match=rf"<bytes>: sample rate {rate} Hz is outside the accepted 8000-192000 Hz"):
        load_audio(data)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("rate", [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE])
def test_bounds_are_inclusive(rate: int) -> None:
    y = load_audio(wav_header(rate, MAX_CHANNELS, rate // 10))
    assert y.size == SAMPLE_RATE // 10 and not y.any()


def test_long_file_peak_memory(tmp_path: Path) -> None:
    """Peak memory: the mono signal at the file's rate, the 16 kHz output and one block, never all channels."""
    sr, channels, seconds = 48_000, 6, 10
    x = np.random.default_rng(3).integers(-3000, 3000, (sr * seconds, channels)).astype(np.int16)
    sf.write(tmp_path / "long.wav", x, sr, subtype="PCM_16")
    tracemalloc.start()
    try:
        y = load_audio(tmp_path / "long.wav")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    block = int(audio.BLOCK_S * sr)
    # the block (all channels), its row sums and means; 64 KB for small objects
    bound = 4 * sr * seconds + y.nbytes + 4 * block * (channels + 2) + 65_536
    assert peak < bound, (peak, bound)  # the old loader: 4 * sr * seconds * (channels + 1) = 13.4 MB
    assert peak < 4 * sr * seconds * channels


def test_file_without_length(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A FLAC whose header gives no length is decoded block by block: within the limit it gives what the same
    file with a length gives; past the limit it stops one frame past it."""
    x = np.random.default_rng(4).standard_normal((3 * 22_050, 2)) * 0.1
    buf = io.BytesIO()
    sf.write(buf, x, 22_050, format="FLAC", subtype="PCM_16")
    data = without_length(buf.getvalue())
    (tmp_path / "stream.flac").write_bytes(data)
    np.testing.assert_array_equal(load_audio(data), load_audio(buf.getvalue()))
    assert audio_duration(tmp_path / "stream.flac") == pytest.approx(3.0)
    decoded = []
    read_into = audio._read_into
    monkeypatch.setattr(audio, "_read_into", lambda f, out: decoded.append(read_into(f, out)) or decoded[-1])
    monkeypatch.setattr(audio, "BLOCK_S", 0.25)
    with pytest.raises(AudioError, match="<bytes>: audio without a length in its header is longer than the limit"):
        load_audio(data, max_duration_s=1.0)
    assert sum(decoded) == 22_050 + 1  # one frame past the limit, of 66,150
    decoded.clear()
    with pytest.raises(AudioError, match="stream.flac: audio without a length"):
        audio_duration(tmp_path / "stream.flac", max_duration_s=1.0)
    assert sum(decoded) == 22_050 + 1


def test_audio_duration_reads_only_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sf.write(tmp_path / "a.flac", np.zeros(12_000, np.int16), 8000)
    no_decoding(monkeypatch)
    assert audio_duration(tmp_path / "a.flac") == 1.5
    with pytest.raises(AudioError, match="a.flac: 2 s is longer than the limit of 1 s"):
        audio_duration(tmp_path / "a.flac", max_duration_s=1.0)


@pytest.mark.parametrize("rate,channels", [(1, 1), (MIN_SAMPLE_RATE - 1, 1), (MAX_SAMPLE_RATE + 1, 1),
                                           (SAMPLE_RATE, MAX_CHANNELS + 1)])
def test_pcm16_bounds(rate: int, channels: int) -> None:
    with pytest.raises(AudioError, match=r"<pcm>: (sample rate|9 channels)"):
        load_pcm16(b"\x00\x00" * channels * 100, sample_rate=rate, channels=channels)
    assert load_pcm16(b"\x00\x00" * MAX_CHANNELS * 100, sample_rate=MIN_SAMPLE_RATE, channels=MAX_CHANNELS).size == 200


def test_samples_too_large_to_resample(tmp_path: Path) -> None:
    """Finite float samples near the float32 maximum overflow in the resampling filter: refused, not NaN."""
    x = np.zeros(800, np.float32)
    x[400:403] = [3e38, -3e38, 3e38]
    sf.write(tmp_path / "huge.wav", x, 8000, subtype="FLOAT")
    with pytest.raises(AudioError, match="huge.wav: audio samples too large to resample"):
        load_audio(tmp_path / "huge.wav")
    sf.write(tmp_path / "huge16k.wav", x, SAMPLE_RATE, subtype="FLOAT")
    assert load_audio(tmp_path / "huge16k.wav")[401] == np.float32(-3e38)  # no resampling: kept as it is


def test_missing_and_non_regular_files_say_so(tmp_path: Path) -> None:
    """libsndfile reports both as "System error.": the loader names the real cause."""
    with pytest.raises(AudioError, match="no such file"):
        audio.load_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioError, match="not a regular file"):
        audio.load_audio(tmp_path)
    with pytest.raises(AudioError, match="no such file"):
        next(audio.stream_audio(tmp_path / "missing.wav"))


def test_stream_audio_admits_like_load_audio(tmp_path: Path) -> None:
    """The long-recording reader refuses what load_audio refuses (before decoding) and, at 16 kHz, yields the
    same samples block by block."""
    many = tmp_path / "nine.wav"
    sf.write(many, np.zeros((1600, 9), np.float32), 16_000, subtype="PCM_16")
    with pytest.raises(AudioError, match="channels"):
        next(audio.stream_audio(many))
    rng = np.random.default_rng(0)
    ok = tmp_path / "ok.wav"
    sf.write(ok, rng.uniform(-0.5, 0.5, (40_000, 2)).astype(np.float32), 16_000, subtype="PCM_16")
    blocks = list(audio.stream_audio(ok, block_s=0.5))
    assert len(blocks) == 5
    np.testing.assert_array_equal(np.concatenate(blocks), audio.load_audio(ok))
    with pytest.raises(AudioError, match="longer than the limit"):
        next(audio.stream_audio(ok, max_duration_s=1.0))
