"""Dataset importers on tiny fake layouts with real audio files (plus bad entries that must be skipped)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from deepspeech.data.importers import (
    FSDD_SPLITS,
    IMPORTERS,
    import_aishell,
    import_common_voice,
    import_folder,
    import_fsdd,
    import_librispeech,
    run_import,
    split_by_speaker,
)
from deepspeech.data.manifest import ManifestError, Utterance, read_manifest

SR = 16_000
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LOGGER = "deepspeech.data.importers"


def tone(path: Path, seconds: float = 0.3, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), SR, format=fmt)
    return path


def garbage(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not audio at all \x00\x01\x02" * 20)
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def summary(utts: list[Utterance]) -> dict[str, tuple[str, str | None, str]]:
    """{file name: (text, speaker, lang)}; also checks the paths are absolute and files exist."""
    for u in utts:
        assert os.path.isabs(u.audio) and os.path.isfile(u.audio)
    return {Path(u.audio).name: (u.text, u.speaker, u.lang) for u in utts}


def durations(utts: list[Utterance]) -> dict[str, float]:
    return {Path(u.audio).name: u.duration_s for u in utts}


def warned(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records
                     if r.name == LOGGER and r.levelno == logging.WARNING)


@pytest.fixture
def librispeech(tmp_path: Path) -> Path:
    split = tmp_path / "LibriSpeech" / "train-clean-100"
    ch = split / "19" / "198"
    write(ch / "19-198.trans.txt", "19-198-0000 HELLO WORLD\n19-198-0001  SECOND ONE  \n"
          "19-198-0002 MISSING AUDIO\n19-198-0003 CORRUPT AUDIO\n19-198-0004\n\n")
    tone(ch / "19-198-0000.flac")
    tone(ch / "19-198-0001.flac", 0.5)
    garbage(ch / "19-198-0003.flac")
    tone(ch / "19-198-0004.flac")
    tone(ch / "19-198-0009.flac")  # no transcript line
    write(split / "26" / "495" / "26-495.trans.txt", "26-495-0000 ANOTHER SPEAKER\n")
    tone(split / "26" / "495" / "26-495-0000.flac", 0.4)
    return split


def test_librispeech(librispeech: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    for root in (librispeech, librispeech.parent):  # a split folder or the corpus folder
        utts = import_librispeech(root, progress=False)
        assert summary(utts) == {
            "19-198-0000.flac": ("HELLO WORLD", "19", "en"),
            "19-198-0001.flac": ("SECOND ONE", "19", "en"),
            "26-495-0000.flac": ("ANOTHER SPEAKER", "26", "en"),
        }
        assert durations(utts) == pytest.approx(
            {"19-198-0000.flac": 0.3, "19-198-0001.flac": 0.5, "26-495-0000.flac": 0.4})
    log = warned(caplog)
    for bad in ("19-198-0002.flac", "19-198-0003.flac", "19-198-0004.flac", "19-198-0009.flac"):
        assert bad in log
    assert "empty transcript" in log and "not found" in log and "cannot read audio" in log


@pytest.fixture
def aishell(tmp_path: Path) -> Path:
    root = tmp_path / "data_aishell"
    write(root / "transcript" / "aishell_transcript_v0.8.txt",
          "BAC009S0002W0122 而 对 楼市 成交 抑制 作用 最 大 的 限 购\n"
          "BAC009S0002W0123 也 成为 地方 政府 的 眼中 钉\n"
          "BAC009S0724W0121 甚至 出现 交易 几乎 停滞 的 情况\n"
          "BAC009S0764W0121 损坏 的 音频\n"
          "BAC009S0764W0122 没有 音频 文件\n"
          "BAC009S0764W0123\n\n")
    wav = root / "wav"
    tone(wav / "train" / "S0002" / "BAC009S0002W0122.wav")
    tone(wav / "train" / "S0002" / "BAC009S0002W0123.wav", 0.5)
    tone(wav / "dev" / "S0724" / "BAC009S0724W0121.wav", 0.4)
    garbage(wav / "test" / "S0764" / "BAC009S0764W0121.wav")
    tone(wav / "test" / "S0764" / "BAC009S0764W0123.wav")  # empty transcript
    tone(wav / "test" / "S0764" / "BAC009S0764W0999.wav")  # no transcript line
    return root


def test_aishell(aishell: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    utts = import_aishell(aishell, progress=False)
    assert summary(utts) == {
        "BAC009S0002W0122.wav": ("而对楼市成交抑制作用最大的限购", "S0002", "zh"),
        "BAC009S0002W0123.wav": ("也成为地方政府的眼中钉", "S0002", "zh"),
        "BAC009S0724W0121.wav": ("甚至出现交易几乎停滞的情况", "S0724", "zh"),
    }
    assert durations(utts)["BAC009S0002W0123.wav"] == pytest.approx(0.5)
    log = warned(caplog)
    for bad in ("BAC009S0764W0121", "BAC009S0764W0122", "BAC009S0764W0123", "BAC009S0764W0999"):
        assert bad in log
    assert set(summary(import_aishell(aishell, split="dev", progress=False))) == {"BAC009S0724W0121.wav"}
    assert set(summary(import_aishell(aishell, split="train", progress=False))) == {
        "BAC009S0002W0122.wav", "BAC009S0002W0123.wav"}
    with pytest.raises(ValueError):
        import_aishell(aishell, split="valid")


def test_aishell_per_file_transcripts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    d = tmp_path / "sample" / "wav" / "train" / "S0150"
    tone(d / "BAC009S0150W0121.wav")
    write(d / "BAC009S0150W0121.txt", "\ufeff其中 有 两个\n")  # BOM and word spaces are dropped
    tone(d / "BAC009S0150W0122.wav")  # no .txt
    tone(tmp_path / "sample" / "wav" / "dev" / "S0252" / "BAC009S0252W0121.wav", 0.4)
    write(tmp_path / "sample" / "wav" / "dev" / "S0252" / "BAC009S0252W0121.txt", "就是根据")
    utts = import_aishell(tmp_path / "sample", progress=False)
    assert summary(utts) == {"BAC009S0150W0121.wav": ("其中有两个", "S0150", "zh"),
                             "BAC009S0252W0121.wav": ("就是根据", "S0252", "zh")}
    assert "BAC009S0150W0122.wav" in warned(caplog)
    assert set(summary(import_aishell(tmp_path / "sample", split="dev", progress=False))) == {
        "BAC009S0252W0121.wav"}


@pytest.fixture
def common_voice(tmp_path: Path) -> Path:
    root = tmp_path / "cv-corpus" / "en"
    clips = root / "clips"
    tone(clips / "common_voice_en_1.mp3", 0.3, fmt="MP3")
    tone(clips / "common_voice_en_2.mp3", 0.5, fmt="MP3")
    tone(clips / "common_voice_en_4.mp3", 0.3, fmt="MP3")
    garbage(clips / "common_voice_en_5.mp3")
    header = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\n"
    write(root / "train.tsv", header
          + "abc123\tcommon_voice_en_1.mp3\t  Hello there.  \t2\t0\t\t\n"
          + 'def456\tcommon_voice_en_2.mp3\tHe said "hi, you" loudly.\t2\t0\t\t\n'
          + "def456\tcommon_voice_en_3.mp3\tNo clip for this one.\t2\t0\t\t\n"
          + "abc123\tcommon_voice_en_4.mp3\t\t2\t0\t\t\n"
          + "ghi789\tcommon_voice_en_5.mp3\tCorrupt clip.\t2\t0\t\t\n")
    write(root / "dev.tsv", header + "zzz\tcommon_voice_en_4.mp3\tDev sentence\t1\t0\t\t\n")
    return root


def test_common_voice(common_voice: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    utts = import_common_voice(common_voice, progress=False)
    assert summary(utts) == {
        "common_voice_en_1.mp3": ("Hello there.", "abc123", "en"),
        "common_voice_en_2.mp3": ('He said "hi, you" loudly.', "def456", "en"),
    }
    assert durations(utts) == pytest.approx({"common_voice_en_1.mp3": 0.3, "common_voice_en_2.mp3": 0.5},
                                            abs=0.05)
    log = warned(caplog)
    for bad in ("common_voice_en_3.mp3", "common_voice_en_4.mp3", "common_voice_en_5.mp3"):
        assert bad in log
    assert summary(import_common_voice(common_voice, split="dev", progress=False)) == {
        "common_voice_en_4.mp3": ("Dev sentence", "zzz", "en")}
    with pytest.raises(FileNotFoundError):
        import_common_voice(common_voice, split="test", progress=False)
    write(common_voice / "other.tsv", "client_id\tfile\tsentence\n")
    with pytest.raises(ManifestError, match="path"):
        import_common_voice(common_voice, split="other", progress=False)


@pytest.fixture
def fsdd(tmp_path: Path) -> Path:
    rec = tmp_path / "fsdd" / "recordings"
    tone(rec / "0_jackson_0.wav")
    tone(rec / "7_george_12.flac", 0.5)
    tone(rec / "3_theo_2.wav", 0.4)
    tone(rec / "9_yweweler_1.wav")
    tone(rec / "5_nobody_0.wav")  # speaker in no split
    tone(rec / "hello.wav")  # not an FSDD name
    garbage(rec / "9_lucas_0.wav")
    write(rec / "README.txt", "not audio, ignored")
    return tmp_path / "fsdd"


def test_fsdd_and_split(fsdd: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    expected = {
        "0_jackson_0.wav": ("zero", "jackson", "en"),
        "7_george_12.flac": ("seven", "george", "en"),
        "3_theo_2.wav": ("three", "theo", "en"),
        "9_yweweler_1.wav": ("nine", "yweweler", "en"),
        "5_nobody_0.wav": ("five", "nobody", "en"),
    }
    for root in (fsdd, fsdd / "recordings"):
        utts = import_fsdd(root, progress=False)
        assert summary(utts) == expected
    assert durations(utts)["7_george_12.flac"] == pytest.approx(0.5)
    log = warned(caplog)
    assert "hello.wav" in log and "9_lucas_0.wav" in log
    parts = split_by_speaker(utts, FSDD_SPLITS)
    assert {k: sorted(Path(u.audio).name for u in v) for k, v in parts.items()} == {
        "train": ["0_jackson_0.wav"], "dev": ["7_george_12.flac"],
        "test": ["3_theo_2.wav", "9_yweweler_1.wav"]}
    assert "nobody" in warned(caplog)
    with pytest.raises(ValueError, match="theo"):
        split_by_speaker(utts, {"a": ("theo",), "b": ("theo", "george")})


def test_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    root = tmp_path / "my_corpus"
    tone(root / "alice" / "a1.wav")
    write(root / "alice" / "a1.txt", "  first sentence \n")
    tone(root / "alice" / "a2.ogg", 0.5, fmt="OGG")
    write(root / "alice" / "a2.txt", "second")
    tone(root / "bob" / "deep" / "b1.flac", 0.4)
    write(root / "bob" / "deep" / "b1.txt", "third one")
    tone(root / "bob" / "b2.wav")  # no transcript
    tone(root / "bob" / "b3.wav")
    write(root / "bob" / "b3.txt", "   \n")  # empty transcript
    garbage(root / "bob" / "b4.wav")
    write(root / "bob" / "b4.txt", "corrupt")
    utts = import_folder(root, progress=False)
    assert summary(utts) == {"a1.wav": ("first sentence", "alice", "en"), "a2.ogg": ("second", "alice", "en"),
                             "b1.flac": ("third one", "deep", "en")}
    assert durations(utts) == pytest.approx({"a1.wav": 0.3, "a2.ogg": 0.5, "b1.flac": 0.4}, abs=0.01)
    log = warned(caplog)
    assert "b2.wav" in log and "b3.wav" in log and "b4.wav" in log
    with pytest.raises(ValueError):
        import_folder(root, lang="fr")


def norm(utts: list[Utterance]) -> list[Utterance]:
    return [Utterance(os.path.normpath(u.audio), u.text, round(u.duration_s, 4), u.speaker, u.lang)
            for u in utts]


@pytest.mark.parametrize("kind", ["librispeech", "fsdd"])
def test_run_import_round_trip(kind: str, librispeech: Path, fsdd: Path, tmp_path: Path) -> None:
    root = {"librispeech": librispeech, "fsdd": fsdd}[kind]
    for out in (root / "manifest.jsonl", tmp_path / "manifests" / f"{kind}.jsonl"):
        n = run_import(kind, root, out, progress=False)
        utts = IMPORTERS[kind](root, progress=False)
        assert n == len(utts) > 0
        assert str(tmp_path) not in out.read_text(encoding="utf-8")  # paths are relative to the manifest
        back = read_manifest(out)
        assert norm(back) == norm(sorted(utts, key=lambda u: u.audio))


def test_run_import_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown"):
        run_import("timit", tmp_path, tmp_path / "m.jsonl")
    with pytest.raises(FileNotFoundError):
        run_import("folder", tmp_path / "absent", tmp_path / "m.jsonl")
    write(tmp_path / "empty" / "notes.txt", "nothing here")
    with pytest.raises(ManifestError):
        run_import("folder", tmp_path / "empty", tmp_path / "m.jsonl", progress=False)
    assert not (tmp_path / "m.jsonl").exists()
    assert set(IMPORTERS) == {"librispeech", "aishell", "commonvoice", "fsdd", "folder"}


@pytest.mark.shared_data
def test_shared_fsdd() -> None:
    audio = SHARED_DATA / "en_fsdd_digits" / "audio"
    if not audio.is_dir():
        pytest.skip(f"{audio} not present")
    utts = import_fsdd(audio, progress=False)
    assert len(utts) == 3000
    parts = split_by_speaker(utts, FSDD_SPLITS)
    assert {k: len(v) for k, v in parts.items()} == {"train": 1500, "dev": 500, "test": 1000}
    assert all(u.text in {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
               for u in utts)
