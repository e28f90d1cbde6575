"""Property tests (hypothesis) for the two readers of untrusted input (issue 29).

deepspeech.frontend.audio.load_audio, on arbitrary bytes and on real WAV/FLAC/OGG bytes with bits flipped, cut short or
header fields rewritten (Ogg pages get their checksum recomputed, so the change reaches the decoder): it returns a
finite float32 mono array within the duration limit or raises AudioError, nothing else. deepspeech.data.manifest on
arbitrary byte lines mixed with good ones: it never raises, and keeps every good line in order.
"""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepspeech.data import manifest as manifest_module
from deepspeech.data.manifest import LANGS, Utterance, read_manifest_report
from deepspeech.frontend.audio import SAMPLE_RATE, AudioError, load_audio

LIMIT_S = 1.0  # small, so that no example decodes for long
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _encode(fmt: str, subtype: str, sr: int, channels: int) -> bytes:
    t = np.arange(int(0.3 * sr)) / sr
    x = np.stack([0.3 * np.sin(2 * np.pi * (300 + 100 * c) * t) for c in range(channels)], axis=1)
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


SEEDS = {"wav": _encode("WAV", "PCM_16", 8000, 2), "wav-float": _encode("WAV", "FLOAT", 22_050, 1),
         "flac": _encode("FLAC", "PCM_16", 16_000, 1), "ogg": _encode("OGG", "VORBIS", 22_050, 2)}

# (offset, struct format) of the WAV header's fields: RIFF size, channels, rate, byte rate, block align, bits, data size
WAV_FIELDS = [(4, "<I"), (22, "<H"), (24, "<I"), (28, "<I"), (32, "<H"), (34, "<H"), (40, "<I")]
# FLAC STREAMINFO's packed 64 bits at byte 18: (shift, width) of sample rate, channels - 1, bits - 1, total samples
FLAC_FIELDS = [(44, 20), (41, 3), (36, 5), (0, 36)]
INTERESTING = [0, 1, 2, 7, 8, 9, 255, 7_999, 8_000, 16_000, 192_000, 192_001, 655_350, 2**16 - 1, 2**20 - 1,
               2**31 - 1, 2**32 - 1, 2**36 - 1, 2**63 - 1]


def _ogg_crc(page: bytes) -> int:
    crc = 0
    for byte in page:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1) & 0xFFFFFFFF
    return crc


def _ogg_pages(data: bytearray) -> list[tuple[int, int]]:
    """(start, end) of each whole page."""
    pages, pos = [], 0
    while data[pos: pos + 4] == b"OggS" and pos + 27 <= len(data):
        nseg = data[pos + 26]
        end = pos + 27 + nseg + sum(data[pos + 27: pos + 27 + nseg])
        if end > len(data):
            break
        pages.append((pos, end))
        pos = end
    return pages


def _ogg_reseal(data: bytearray) -> None:
    """Recompute every whole page's checksum, so that the decoder sees a changed field instead of a bad page."""
    for start, end in _ogg_pages(data):
        data[start + 22: start + 26] = b"\0\0\0\0"
        data[start + 22: start + 26] = struct.pack("<I", _ogg_crc(bytes(data[start:end])))


@st.composite
def mutated_audio(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "cut", "overwrite", "field"]))
        if not data:
            break
        if kind == "flip":
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            data = data[: draw(st.integers(0, len(data)))]
        elif kind == "overwrite":
            pos = draw(st.integers(0, min(len(data), 200)))
            data[pos: pos + 8] = draw(st.binary(min_size=1, max_size=8))
        elif name.startswith("wav"):
            offset, fmt = draw(st.sampled_from(WAV_FIELDS))
            value = draw(st.sampled_from(INTERESTING)) % 2 ** (8 * struct.calcsize(fmt))
            data[offset: offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
        elif name == "flac" and len(data) >= 26:
            shift, width = draw(st.sampled_from(FLAC_FIELDS))
            mask = ((1 << width) - 1) << shift
            packed = int.from_bytes(data[18:26], "big") & ~mask
            value = draw(st.sampled_from(INTERESTING)) % (1 << width)
            data[18:26] = (packed | (value << shift)).to_bytes(8, "big")
        elif name == "ogg":  # the identification header (channels, rate) or the last page's granule position
            if draw(st.booleans()):
                offset, fmt = draw(st.sampled_from([(39, "<B"), (40, "<I")]))
                value = draw(st.sampled_from(INTERESTING)) % 2 ** (8 * struct.calcsize(fmt))
                data[offset: offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
            elif pages := _ogg_pages(data):
                start = pages[-1][0]
                data[start + 6: start + 14] = struct.pack("<Q", draw(st.sampled_from(INTERESTING)))
            _ogg_reseal(data)
    return bytes(data)


def check_loader(data: bytes) -> None:
    try:
        y = load_audio(data, max_duration_s=LIMIT_S)
    except AudioError as e:
        assert str(e).startswith("<bytes>: ") and "\n" not in str(e)
        return
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.ndim == 1 and y.flags.c_contiguous
    assert np.all(np.isfinite(y))
    assert y.size <= LIMIT_S * SAMPLE_RATE + 16  # the resampler may round up a little


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_seeds_load(name: str) -> None:
    assert load_audio(SEEDS[name], max_duration_s=LIMIT_S).size == int(0.3 * SAMPLE_RATE)


def test_ogg_reseal_keeps_a_good_file() -> None:
    data = bytearray(SEEDS["ogg"])
    _ogg_reseal(data)
    assert bytes(data) == SEEDS["ogg"]


@FUZZ
@given(mutated_audio())
def test_mutated_audio(data: bytes) -> None:
    check_loader(data)


@FUZZ
@given(st.one_of(st.binary(max_size=512),
                 st.tuples(st.sampled_from([b"RIFF\x00\x00\x00\x00WAVEfmt ", b"fLaC\x00\x00\x00\x22", b"OggS\x00\x02",
                                            b"FORM\x00\x00\x00\x00AIFF", b"ID3\x03\x00"]),
                           st.binary(max_size=512)).map(b"".join)))
def test_arbitrary_bytes(data: bytes) -> None:
    check_loader(data)


# --- manifests ---------------------------------------------------------------------------------------------------

_text = st.text(max_size=30)
good_rows = st.fixed_dictionaries(
    {"audio": st.text("abcxyz_-0123456789", min_size=1, max_size=12).map(lambda s: s + ".wav"), "text": _text,
     "duration_s": st.floats(1e-3, 1e5), "speaker": st.one_of(st.none(), _text, st.integers(-10**6, 10**6)),
     "lang": st.sampled_from([*LANGS, None])})
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | _text,
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
                     max_leaves=10)
bad_lines = st.one_of(
    st.binary(max_size=120),
    st.integers(1, 20_000).map(lambda n: b"[" * n),  # nested too deeply, or not closed
    st.binary(min_size=1, max_size=20).map(lambda b: b"\xff" + b),  # not UTF-8
    _json.map(lambda v: json.dumps(v).encode()),  # JSON, mostly not an object
    st.fixed_dictionaries({"audio": _json, "text": _json, "duration_s": _json, "lang": _json}).map(
        lambda d: json.dumps(d).encode()),  # the keys, with values of any type
    st.integers(1001, 3000).map(lambda n: json.dumps({"audio": "a.wav", "text": "x" * n, "duration_s": 1}).encode()),
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("manifests")


@FUZZ
@given(rows=st.lists(st.one_of(good_rows.map(lambda d: ("good", d)), bad_lines.map(lambda b: ("bad", b))),
                     max_size=20),
       ensure_ascii=st.booleans(), sep=st.sampled_from([b"\n", b"\r\n"]))
def test_manifest_lines(folder: Path, rows: list[tuple[str, object]], ensure_ascii: bool, sep: bytes) -> None:
    path = folder / "m.jsonl"
    path.write_bytes(sep.join(json.dumps(v, ensure_ascii=ensure_ascii).encode() if kind == "good" else v
                              for kind, v in rows))
    base = path.resolve().parent
    expected = [Utterance(os.path.normpath(base / d["audio"]), d["text"], float(d["duration_s"]),
                          None if d["speaker"] is None else str(d["speaker"]), d["lang"] or "en")
                for kind, d in rows if kind == "good"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(manifest_module, "MAX_LINE_BYTES", 1000)  # good lines are shorter; the last bad kind longer
        try:
            report = read_manifest_report(path, check_files=False)
        except manifest_module.ManifestError as e:
            assert not expected and "no usable utterances" in str(e)
            return
    it = iter(report.utts)
    assert all(any(u == want for u in it) for want in expected)  # every good line, in order
    assert report.skipped + len(report.utts) <= path.read_bytes().count(b"\n") + path.read_bytes().count(b"\r") + 1
