"""Dataset importers and corpus readers on tiny fake layouts with real audio files (plus bad entries that must be
skipped); the data kit's split manifests when ../shared/data is present."""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from deepspeech.data.corpora import AN4_DEV_SPEAKERS, import_an4, import_kit, import_speech_commands
from deepspeech.data.importers import (
    FSDD_SPLITS,
    IMPORTERS,
    import_aishell,
    import_common_voice,
    import_folder,
    import_fsdd,
    import_librispeech,
    importer_kinds,
    normalize_transcript,
    normalize_utterances,
    run_import,
    split_by_speaker,
)
from deepspeech.data.manifest import ManifestError, Utterance, read_manifest
from deepspeech.frontend.audio import load_audio

SR = 16_000
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
FSDD_AUDIO = REPO / "data" / "fsdd" / "audio"
LOGGERS = ("deepspeech.data.importers", "deepspeech.data.corpora")


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
                     if r.name in LOGGERS and r.levelno == logging.WARNING)


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
        utts = normalize_utterances(IMPORTERS[kind](root, progress=False))
        assert n == len(utts) > 0
        assert str(tmp_path) not in out.read_text(encoding="utf-8")  # paths are relative to the manifest
        back = read_manifest(out)
        assert norm(back) == norm(sorted(utts, key=lambda u: u.audio))
    run_import(kind, root, out, normalize=False, progress=False)
    assert {u.text for u in read_manifest(out)} == {u.text for u in IMPORTERS[kind](root, progress=False)}


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
    assert set(importer_kinds()) == set(IMPORTERS) | {"an4", "speechcommands", "kit"}


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


# --- normalisation and the readers of deepspeech.data.corpora -------------------------------------------------


def test_normalize_transcript(caplog: pytest.LogCaptureFixture) -> None:
    assert normalize_transcript("  Hello, World! It's 3 o'clock.", "en") == "hello world it's three o'clock"
    assert normalize_transcript("汉元鼎六年，武帝平定 南越国。", "zh") == "汉元鼎六年武帝平定南越国"
    assert normalize_transcript("「北京」（上海）", "zh") == "北京上海"
    for text, lang in (("μ子是一种粒子", "zh"), ("我有2个", "zh"), ("ＡＢＣ好", "zh"), ("?!", "en"), ("。", "zh")):
        with pytest.raises(ValueError):
            normalize_transcript(text, lang)
    with pytest.raises(ValueError):
        normalize_transcript("bonjour", "fr")
    caplog.set_level(logging.WARNING)
    utts = [Utterance("/a.wav", "YES!", 1.0, "s", "en"), Utterance("/b.wav", "...", 1.0, None, "en"),
            Utterance("/c.wav", "アドベンチャー好", 1.0, None, "zh")]
    assert normalize_utterances(utts) == [Utterance("/a.wav", "yes", 1.0, "s", "en")]
    assert "/b.wav" in warned(caplog) and "/c.wav" in warned(caplog)


@functools.cache
def _fsdd_files() -> list[Path]:
    return sorted(FSDD_AUDIO.glob("*.flac"))


def speech(path: Path, i: int, fmt: str | None = None) -> float:
    """Write the i-th FSDD recording of the repository (real speech, at 16 kHz) to ``path``; its duration."""
    x = load_audio(_fsdd_files()[i])
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, SR, format=fmt, subtype={"OGG": "OPUS", "MP3": None}.get(fmt or "", "PCM_16"))
    return len(x) / SR


def lines(manifest: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def an4(tmp_path: Path) -> tuple[Path, dict[str, float]]:
    """AN4's original layout (NIST SPHERE), with a .wav copy, an id written speaker first and bad entries."""
    root, wav = tmp_path / "an4", tmp_path / "an4" / "wav"
    write(root / "etc" / "an4_train.transcription",
          "<s> YES </s> (an251-fash-b)\n<s> H I N I C H </s> (cen1-fash-b)\n<s> GO </s> (fash-an253-b)\n"
          "<s> ENTER SIX TWO FOUR </s> (an87-fbbh-b)\n<s> S Z K W W TWO THIRTY SEVEN </s> (an21-flrp-b)\n"
          "<s> REPEAT </s> (an24-flrp-b)\nline without an id\n")
    write(root / "etc" / "an4_test.transcription", "\nNO (an416-fjlp-b)\nP I T T S B U R G H (cen5-fjlp-b)\n")
    d = {name: speech(wav / sub / spk / f"{name}.sph", i, "NIST") for i, (sub, spk, name) in enumerate([
        ("an4_clstk", "fash", "an251-fash-b"), ("an4_clstk", "fash", "cen1-fash-b"),
        ("an4_clstk", "fash", "an253-fash-b"), ("an4_clstk", "fash", "an254-fash-b"),
        ("an4_clstk", "flrp", "an21-flrp-b"), ("an4test_clstk", "fjlp", "an416-fjlp-b"),
        ("an4test_clstk", "fjlp", "cen5-fjlp-b")])}
    speech(wav / "an4_clstk" / "fash" / "an253-fash-b.wav", 20)  # a copy: the .sph is read
    garbage(wav / "an4_clstk" / "flrp" / "an24-flrp-b.sph")
    return root, d


def test_an4(an4: tuple[Path, dict[str, float]], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, dur = an4
    caplog.set_level(logging.WARNING)
    train = {"an251-fash-b.sph": ("YES", "fash", "en"), "cen1-fash-b.sph": ("H I N I C H", "fash", "en"),
             "an253-fash-b.sph": ("GO", "fash", "en")}
    dev = {"an21-flrp-b.sph": ("S Z K W W TWO THIRTY SEVEN", "flrp", "en")}
    for r in (root, root.parent):  # the an4 folder or the one holding it
        assert summary(import_an4(r, progress=False)) == train
    assert summary(import_an4(root, "dev", progress=False)) == dev
    assert summary(import_an4(root, "test", progress=False)) == {
        "an416-fjlp-b.sph": ("NO", "fjlp", "en"), "cen5-fjlp-b.sph": ("P I T T S B U R G H", "fjlp", "en")}
    utts = import_an4(root, dev_speakers=(), progress=False)  # AN4's whole training set
    assert summary(utts) == {**train, **dev}
    assert durations(utts) == pytest.approx({f"{k}.sph": v for k, v in dur.items() if "fjlp" not in k
                                             and k != "an254-fash-b"})
    log = warned(caplog)
    for bad in ("an87-fbbh-b", "an254-fash-b.sph", "an24-flrp-b.sph", "line without an id"):
        assert bad in log
    assert "flrp" in AN4_DEV_SPEAKERS
    with pytest.raises(ValueError):
        import_an4(root, "valid")
    with pytest.raises(ValueError):
        import_an4(root, "dev", dev_speakers=())
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(FileNotFoundError, match="an4_train.transcription"):
        import_an4(tmp_path / "elsewhere")

    out = tmp_path / "manifests" / "an4_train.jsonl"
    assert run_import("an4", root.parent, out, split="train", progress=False) == 3
    sph = "../an4/wav/an4_clstk/fash/"
    assert lines(out) == [
        {"audio": f"{sph}an251-fash-b.sph", "text": "yes", "duration_s": round(dur["an251-fash-b"], 4),
         "speaker": "fash", "lang": "en"},
        {"audio": f"{sph}an253-fash-b.sph", "text": "go", "duration_s": round(dur["an253-fash-b"], 4),
         "speaker": "fash", "lang": "en"},
        {"audio": f"{sph}cen1-fash-b.sph", "text": "h i n i c h", "duration_s": round(dur["cen1-fash-b"], 4),
         "speaker": "fash", "lang": "en"}]


def test_an4_raw(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The .raw distribution (headerless big-endian 16-bit, 16 kHz) is converted to FLAC losslessly, once."""
    caplog.set_level(logging.WARNING)
    root = tmp_path / "an4"
    write(root / "etc" / "an4_train.transcription", "<s> YES </s> (an251-fash-b)\n<s> NO </s> (an252-fash-b)\n")
    pcm = (load_audio(_fsdd_files()[5]) * 32767).astype(np.int16)
    raw = root / "wav" / "an4_clstk" / "fash" / "an251-fash-b.raw"
    raw.parent.mkdir(parents=True)
    raw.write_bytes(pcm.astype(">i2").tobytes())
    (raw.parent / "an252-fash-b.raw").write_bytes(b"\x00\x01\x02")  # not whole 16-bit samples
    conv = tmp_path / "converted"
    utts = import_an4(root, raw_dir=conv, progress=False)
    flac = conv / "an4_clstk" / "fash" / "an251-fash-b.flac"
    assert [(u.audio, u.text, u.speaker) for u in utts] == [(str(flac), "YES", "fash")]
    assert utts[0].duration_s == pytest.approx(len(pcm) / SR)
    back, rate = sf.read(str(flac), dtype="int16")
    assert rate == SR and np.array_equal(back, pcm)
    stamp = flac.stat().st_mtime_ns
    import_an4(root, raw_dir=conv, progress=False)
    assert flac.stat().st_mtime_ns == stamp  # up to date: not converted again
    assert "an252-fash-b.raw" in warned(caplog)
    beside = import_an4(root, progress=False)  # without raw_dir: beside the .raw file
    assert [u.audio for u in beside] == [str(raw.with_suffix(".flac"))]


def test_librispeech_speaker_split(librispeech: Path) -> None:
    from deepspeech.data.importers import MINI_LIBRISPEECH_SPLITS

    names = {s: set(summary(import_librispeech(librispeech, split=s, progress=False))) for s in ("train", "test")}
    assert names == {"test": {"19-198-0000.flac", "19-198-0001.flac"}, "train": {"26-495-0000.flac"}}
    assert import_librispeech(librispeech, split="dev", progress=False) == []
    with pytest.raises(ValueError):
        import_librispeech(librispeech, split="valid")
    parts = split_by_speaker(import_librispeech(librispeech, progress=False), MINI_LIBRISPEECH_SPLITS, rest="train")
    assert {k: len(v) for k, v in parts.items()} == {"dev": 0, "test": 2, "train": 1}


def test_common_voice_v1(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    root = tmp_path / "cv_corpus_v1"
    clips = root / "cv-valid-dev"
    d0 = speech(clips / "sample-000000.mp3", 0, "MP3")
    d1 = speech(clips / "sample-000001.mp3", 1, "MP3")
    speech(clips / "sample-000004.mp3", 4, "MP3")
    garbage(clips / "sample-000003.mp3")
    speech(root / "cv-valid-train" / "sample-000000.mp3", 2, "MP3")
    header = "filename,text,up_votes,down_votes,age,gender,accent,duration\n"
    write(root / "cv-valid-dev.csv", header
          + "cv-valid-dev/sample-000000.mp3,be careful with your prognostications said the stranger,1,0,,,,\n"
          + 'cv-valid-dev/sample-000001.mp3,"then why, should they",2,0,twenties,male,us,\n'
          + "cv-valid-dev/sample-000002.mp3,no clip here,1,0,,,,\n"
          + "cv-valid-dev/sample-000003.mp3,corrupt clip,1,0,,,,\n"
          + "cv-valid-dev/sample-000004.mp3,,1,0,,,,\n")
    write(root / "cv-valid-train.csv", header + "cv-valid-train/sample-000000.mp3,a train sentence,1,0,,,,\n")
    utts = import_common_voice(root, split="dev", progress=False)
    assert summary(utts) == {"sample-000000.mp3": ("be careful with your prognostications said the stranger", None,
                                                   "en"),
                             "sample-000001.mp3": ("then why, should they", None, "en")}
    assert durations(utts) == pytest.approx({"sample-000000.mp3": d0, "sample-000001.mp3": d1}, abs=0.06)
    log = warned(caplog)
    for bad in ("sample-000002.mp3", "sample-000003.mp3", "sample-000004.mp3"):
        assert bad in log
    assert summary(import_common_voice(root, split="train", progress=False)) == {
        "sample-000000.mp3": ("a train sentence", None, "en")}
    with pytest.raises(FileNotFoundError, match="cv-valid-test.csv"):
        import_common_voice(root, split="test")
    write(root / "cv-valid-other.csv", "filename,sentence\n")
    with pytest.raises(ManifestError, match="text"):
        import_common_voice(root, split="other")
    out = tmp_path / "cv_dev.jsonl"
    assert run_import("commonvoice", root, out, split="dev", progress=False) == 2
    assert [(r["audio"], r["text"], r["speaker"]) for r in lines(out)] == [
        ("cv_corpus_v1/cv-valid-dev/sample-000000.mp3", "be careful with your prognostications said the stranger",
         None), ("cv_corpus_v1/cv-valid-dev/sample-000001.mp3", "then why should they", None)]


@pytest.fixture
def speech_commands(tmp_path: Path) -> Path:
    root = tmp_path / "speech_commands_v0.02"
    for i, rel in enumerate(("yes/0a7c2a8d_nohash_0.wav", "yes/0a7c2a8d_nohash_1.wav", "no/bb05582b_nohash_3.wav",
                             "zero/0a7c2a8d_nohash_0.wav", "_unknown_/backward_9a7c1f83_nohash_0.wav.wav",
                             "yes/hello.wav", "_background_noise_/white_noise.wav", "_silence_/clip_0.wav")):
        speech(root / rel, i)
    garbage(root / "no" / "c1d39ce8_nohash_0.wav")
    write(root / "LICENSE", "CC BY 4.0")
    write(root / "validation_list.txt", "no/bb05582b_nohash_3.wav\n")
    write(root / "testing_list.txt", "zero/0a7c2a8d_nohash_0.wav\n_unknown_/backward_9a7c1f83_nohash_0.wav.wav\n")
    return root


def test_speech_commands(speech_commands: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    full = {s: {f"{Path(u.audio).parent.name}/{Path(u.audio).name}": (u.text, u.speaker, u.lang)
                for u in import_speech_commands(speech_commands, s, progress=False)}
            for s in ("train", "dev", "test", None)}
    assert full["train"] == {"yes/0a7c2a8d_nohash_0.wav": ("yes", "0a7c2a8d", "en"),
                             "yes/0a7c2a8d_nohash_1.wav": ("yes", "0a7c2a8d", "en")}
    assert full["dev"] == {"no/bb05582b_nohash_3.wav": ("no", "bb05582b", "en")}
    assert full["test"] == {"zero/0a7c2a8d_nohash_0.wav": ("zero", "0a7c2a8d", "en"),
                            "_unknown_/backward_9a7c1f83_nohash_0.wav.wav": ("backward", "9a7c1f83", "en")}
    assert full[None] == {**full["train"], **full["dev"], **full["test"]}
    log = warned(caplog)
    assert "hello.wav" in log and "c1d39ce8_nohash_0.wav" in log
    assert "_silence_" not in log and "_background_noise_" not in log  # no speech: skipped without a warning
    (speech_commands / "testing_list.txt").unlink()
    with pytest.raises(FileNotFoundError, match="testing_list"):
        import_speech_commands(speech_commands, "train")
    assert len(import_speech_commands(speech_commands, progress=False)) == 5
    with pytest.raises(ValueError):
        import_speech_commands(speech_commands, "validation")


@pytest.fixture
def kit(tmp_path: Path) -> tuple[Path, dict[str, float]]:
    """A data kit set: Opus audio and a manifest with split keys, a text_lossy line and bad lines."""
    root = tmp_path / "shared" / "data" / "en_x"
    dur = {n: speech(root / "audio" / f"{n}.opus", i, "OGG") for i, n in enumerate(("s1/u1", "s1/u2", "s2/u3",
                                                                                    "s3/u4"))}
    garbage(root / "audio" / "s3" / "bad.opus")
    rows = [("s1/u1", "yes", "s1", "train", {"text_raw": "YES"}), ("s1/u2", "team will meet", "s1", "train",
                                                                   {"text_lossy": True}),
            ("s2/u3", "go", "s2", "dev", {}), ("s3/u4", "stop it", "s3", "test", {}),
            ("s3/missing", "gone", "s3", "test", {}), ("s3/bad", "bad", "s3", "test", {})]
    text = "".join(json.dumps({"audio": f"audio/{a}.opus", "text": t, "speaker": s, "lang": "en",
                               "duration_s": round(dur.get(a, 1.0), 3), "sample_rate": SR, "split": sp, **extra})
                   + "\n" for a, t, s, sp, extra in rows)
    write(root / "manifest.jsonl", text + "not json\n")
    return root, dur


def test_kit(kit: tuple[Path, dict[str, float]], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, dur = kit
    caplog.set_level(logging.WARNING)
    names = {s: summary(import_kit(root, s, check_audio=False, progress=False)) for s in ("train", "dev", "test")}
    assert names == {"train": {"u1.opus": ("yes", "s1", "en")}, "dev": {"u3.opus": ("go", "s2", "en")},
                     "test": {"u4.opus": ("stop it", "s3", "en"), "bad.opus": ("bad", "s3", "en")}}
    log = warned(caplog)
    assert "missing.opus" in log and "not JSON" in log
    checked = import_kit(root / "manifest.jsonl", "test", progress=False)  # the manifest itself as root
    assert summary(checked) == {"u4.opus": ("stop it", "s3", "en")}
    assert durations(checked) == pytest.approx({"u4.opus": dur["s3/u4"]}, abs=1e-3)
    assert "bad.opus" in warned(caplog)
    assert set(summary(import_kit(root, progress=False))) == {"u1.opus", "u3.opus", "u4.opus"}
    with pytest.raises(ValueError):
        import_kit(root, "valid")

    out = tmp_path / "work" / "data" / "train.jsonl"  # paths relative to where the manifest is written
    assert run_import("kit", root, out, split="train", progress=False) == 1
    assert lines(out) == [{"audio": "../../shared/data/en_x/audio/s1/u1.opus", "text": "yes",
                           "duration_s": round(dur["s1/u1"], 4), "speaker": "s1", "lang": "en"}]
    assert read_manifest(out)[0].audio == str(root / "audio" / "s1" / "u1.opus")
    write(tmp_path / "old" / "manifest.jsonl", json.dumps({"audio": "a.wav", "text": "x", "duration_s": 1.0}))
    with pytest.raises(ManifestError, match="split"):
        import_kit(tmp_path / "old", "train", check_audio=False)


# split counts of ../shared/data/README.md's protocol table, less the text_lossy lines (SOURCES.md of each set:
# en_commonvoice 2 in train, zh_commonvoice 4 in train and 1 in test)
KIT_COUNTS = {"en_an4": (869, 79, 130), "en_minilibrispeech": (1265, 118, 136),
              "en_commonvoice": (3318 - 2, 387, 370), "en_speech_commands": (3353, 344, 601),
              "zh_commonvoice": (1953 - 4, 250, 564 - 1)}


@pytest.mark.shared_data
def test_shared_kit_splits(shared_data: Path) -> None:
    for name, counts in KIT_COUNTS.items():
        parts = {s: import_kit(shared_data / name, s, check_audio=name == "en_an4", progress=False)
                 for s in ("train", "dev", "test")}
        assert tuple(len(normalize_utterances(p)) for p in parts.values()) == counts, name
        for utts in parts.values():
            assert {u.lang for u in utts} == {"zh" if name.startswith("zh") else "en"}
        if name in ("en_an4", "en_minilibrispeech", "en_speech_commands"):  # speaker-disjoint splits
            spk = [{u.speaker for u in p} for p in parts.values()]
            assert not (spk[0] & spk[1] or spk[0] & spk[2] or spk[1] & spk[2]), name
    test = {u.speaker for u in import_kit(shared_data / "en_an4", "test", check_audio=False, progress=False)}
    dev = {u.speaker for u in import_kit(shared_data / "en_an4", "dev", check_audio=False, progress=False)}
    assert dev == set(AN4_DEV_SPEAKERS) and len(test) == 10
