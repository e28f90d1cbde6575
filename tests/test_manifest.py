"""deepspeech.data.manifest: good lines kept, each bad line reported with file:line and skipped, path resolution,
write/read round trip."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from deepspeech.data import manifest as manifest_module
from deepspeech.data.manifest import (
    MAX_LINE_BYTES,
    ManifestError,
    Utterance,
    parse_line,
    read_manifest,
    read_manifest_report,
    write_manifest,
)

LOGGER = "deepspeech.data.manifest"


def tone(path: Path, seconds: float = 0.1, sr: int = 16_000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(str(path), (0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), sr)
    return path


def line(**kw: object) -> str:
    return json.dumps(kw, ensure_ascii=False)


BAD_LINES = {
    "not JSON": "{this is not json",
    "not a JSON object": "[1, 2, 3]",
    "missing or empty 'audio'": line(text="x", duration_s=1.0),
    "missing 'text'": line(audio="a.wav", duration_s=1.0),
    "'duration_s' must be a positive number, got -1": line(audio="a.wav", text="x", duration_s=-1),
    "'duration_s' must be a positive number, got 0": line(audio="a.wav", text="x", duration_s=0),
    "'duration_s' must be a positive number, got nan": '{"audio": "a.wav", "text": "x", "duration_s": NaN}',
    "'duration_s' must be a positive number, got inf": '{"audio": "a.wav", "text": "x", "duration_s": Infinity}',
    "'duration_s' must be a positive number, got '1.0'": line(audio="a.wav", text="x", duration_s="1.0"),
    "'duration_s' must be a positive number, got True": line(audio="a.wav", text="x", duration_s=True),
    "'duration_s' must be a positive number, got None": line(audio="a.wav", text="x"),
    "'duration_s' must be a positive number, got 1000": '{"audio": "a.wav", "text": "x", "duration_s": 1' + "0" * 400
                                                        + "}",  # too large for a float
    "'lang' must be one of": line(audio="a.wav", text="x", duration_s=1.0, lang="fr"),
    "'speaker' must be a string or null": line(audio="a.wav", text="x", duration_s=1.0, speaker=[1]),
    "audio file not found": line(audio="missing.wav", text="x", duration_s=1.0),
}


def test_bad_lines_are_skipped_and_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tone(tmp_path / "a.wav")
    tone(tmp_path / "sub" / "b.flac")
    good = [line(audio="a.wav", text="hello", duration_s=0.1, speaker="s1"),
            line(audio="sub/b.flac", text="你好", duration_s=0.1, speaker=7, lang="zh", extra="ignored")]
    lines = [good[0], *BAD_LINES.values(), "", "   ", good[1]]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        utts = read_manifest(manifest)
    assert [u.text for u in utts] == ["hello", "你好"]
    assert utts[0] == Utterance(str(tmp_path.resolve() / "a.wav"), "hello", 0.1, "s1", "en")
    assert utts[1] == Utterance(str(tmp_path.resolve() / "sub" / "b.flac"), "你好", 0.1, "7", "zh")
    per_line = [r.getMessage() for r in caplog.records if ": skipped: " in r.getMessage()]
    assert len(per_line) == len(BAD_LINES)  # one warning per bad line; blank lines are not bad
    for lineno, (reason, msg) in enumerate(zip(BAD_LINES, per_line, strict=True), start=2):
        assert msg.startswith(f"{manifest}:{lineno}: skipped: "), msg
        assert reason in msg, (reason, msg)
    assert any(f"{len(BAD_LINES)} bad line(s) skipped, 2 utterances kept" in r.getMessage() for r in caplog.records)


def test_clean_manifest_logs_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tone(tmp_path / "a.wav")
    (tmp_path / "m.jsonl").write_text(line(audio="a.wav", text="x", duration_s=0.1) + "\n")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert len(read_manifest(tmp_path / "m.jsonl")) == 1
    assert not caplog.records


def test_check_files_off_keeps_missing_audio(tmp_path: Path) -> None:
    (tmp_path / "m.jsonl").write_text(line(audio="nowhere.wav", text="x", duration_s=1.0) + "\n")
    with pytest.raises(ManifestError):
        read_manifest(tmp_path / "m.jsonl")
    utts = read_manifest(tmp_path / "m.jsonl", check_files=False)
    assert utts[0].audio == str(tmp_path.resolve() / "nowhere.wav")


def test_relative_and_absolute_paths(tmp_path: Path) -> None:
    elsewhere = tone(tmp_path / "elsewhere" / "abs.wav").resolve()
    tone(tmp_path / "audio" / "rel.wav")
    manifest = tmp_path / "lists" / "m.jsonl"
    manifest.parent.mkdir()
    manifest.write_text("\n".join([line(audio="../audio/rel.wav", text="r", duration_s=0.1),
                                   line(audio=str(elsewhere), text="a", duration_s=0.1)]) + "\n")
    rel, absolute = read_manifest(manifest)
    assert rel.audio == str(tmp_path.resolve() / "audio" / "rel.wav")  # against the manifest's folder, normalised
    assert os.path.isabs(rel.audio) and ".." not in Path(rel.audio).parts
    assert absolute.audio == str(elsewhere)
    # the same manifest read from another working directory gives the same paths
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path / "audio")
        assert read_manifest(Path("..") / "lists" / "m.jsonl") == [rel, absolute]
    finally:
        os.chdir(cwd)


def test_no_usable_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text("nope\n" + line(audio="missing.wav", text="x", duration_s=1.0) + "\n")
    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(ManifestError, match="no usable"):
        read_manifest(manifest)
    assert sum(": skipped: " in r.getMessage() for r in caplog.records) == 2
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ManifestError, match="no usable"):
        read_manifest(tmp_path / "empty.jsonl")
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / "absent.jsonl")


def test_parse_line_defaults(tmp_path: Path) -> None:
    u = parse_line(line(audio="x.wav", text="", duration_s=2, lang=None), tmp_path)
    assert u == Utterance(os.path.normpath(tmp_path / "x.wav"), "", 2.0, None, "en")
    assert isinstance(u.duration_s, float)


def test_write_read_round_trip(tmp_path: Path) -> None:
    utts = [
        Utterance(str(tone(tmp_path / "data" / "a.wav").resolve()), "hello world", 0.1, "spk1", "en"),
        Utterance(str(tone(tmp_path / "data" / "deep" / "b.flac", 0.25).resolve()), "你好世界", 0.25, None, "zh"),
        Utterance(str(tone(tmp_path / "other" / "c.ogg", 0.2).resolve()), "it's", 0.2, "3", "en"),
    ]
    manifest = tmp_path / "data" / "lists" / "train.jsonl"
    assert write_manifest(manifest, iter(utts)) == 3
    assert not manifest.with_name("train.jsonl.tmp").exists()
    rows = [json.loads(x) for x in manifest.read_text(encoding="utf-8").splitlines()]
    assert [r["audio"] for r in rows] == ["../a.wav", "../deep/b.flac", "../../other/c.ogg"]  # relative, posix
    assert "你好世界" in manifest.read_text(encoding="utf-8")  # not \u-escaped
    assert read_manifest(manifest) == utts
    # moving the whole tree keeps the manifest valid
    moved = tmp_path.parent / (tmp_path.name + "_moved")
    os.rename(tmp_path, moved)
    try:
        again = read_manifest(moved / "data" / "lists" / "train.jsonl")
        assert [u.audio for u in again] == [u.audio.replace(str(tmp_path.resolve()), str(moved.resolve()))
                                            for u in utts]
    finally:
        os.rename(moved, tmp_path)


def test_to_json_rounds_duration() -> None:
    d = Utterance("/data/a.wav", "x", 1.234567, None).to_json()
    assert d == {"audio": "/data/a.wav", "text": "x", "duration_s": 1.2346, "speaker": None, "lang": "en"}


# --- hostile lines (issue 29): each is skipped with one log line naming file:line, the rest of the file is read ----


def skipped(caplog: pytest.LogCaptureFixture) -> list[str]:
    msgs = [r.getMessage() for r in caplog.records if ": skipped: " in r.getMessage()]
    assert all("\n" not in m and len(m) < 500 for m in msgs), msgs  # one short line each
    return msgs


def read_bytes_manifest(tmp_path: Path, lines: list[bytes], caplog: pytest.LogCaptureFixture,
                        sep: bytes = b"\n") -> tuple[Path, list[Utterance], int]:
    tone(tmp_path / "a.wav")
    path = tmp_path / "m.jsonl"
    path.write_bytes(sep.join(lines) + sep)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        report = read_manifest_report(path)
    return path, report.utts, report.skipped


GOOD = line(audio="a.wav", text="héllo", duration_s=0.1).encode()


def test_non_utf8_line_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    latin1 = line(audio="a.wav", text="héllo", duration_s=0.1).encode("latin-1")
    path, utts, bad = read_bytes_manifest(tmp_path, [GOOD, b"\xff\xfe\x00garbage", latin1, GOOD], caplog)
    assert [u.text for u in utts] == ["héllo", "héllo"] and bad == 2
    assert skipped(caplog) == [f"{path}:2: skipped: not UTF-8 (byte 0xff at column 1)",
                               f"{path}:3: skipped: not UTF-8 (byte 0xe9 at column 30)"]


@pytest.mark.parametrize("nested", [b"[" * 100_000, b"[" * 100_000 + b"]" * 100_000,
                                    b'{"audio": "a.wav", "text": "x", "duration_s": 1, "x": ' + b"{\"a\": " * 50_000])
def test_deeply_nested_line_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture, nested: bytes) -> None:
    path, utts, bad = read_bytes_manifest(tmp_path, [GOOD, nested, GOOD], caplog)
    assert len(utts) == 2 and bad == 1
    [msg] = skipped(caplog)
    assert msg.startswith(f"{path}:2: skipped: not JSON"), msg


def test_overlong_line_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    overlong = line(audio="a.wav", text="x" * MAX_LINE_BYTES, duration_s=0.1).encode()  # valid JSON, 1 MB + 50
    path, utts, bad = read_bytes_manifest(tmp_path, [GOOD, overlong, GOOD, overlong], caplog)
    assert len(utts) == 2 and bad == 2
    assert skipped(caplog) == [f"{path}:{n}: skipped: line longer than {MAX_LINE_BYTES} bytes" for n in (2, 4)]


def test_line_length_limit_is_exact(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest_module, "MAX_LINE_BYTES", len(GOOD))
    for sep in (b"\n", b"\r\n"):
        caplog.clear()
        longer = GOOD[:-1] + b" }"
        _, utts, bad = read_bytes_manifest(tmp_path, [GOOD, longer, GOOD], caplog, sep)
        assert len(utts) == 2 and bad == 1


def test_invalid_fields_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lines = [b'{"audio": "a.wav", "text": "\\ud800", "duration_s": 1}',  # a lone surrogate no writer can encode
             b'{"audio": "a\\u0000.wav", "text": "x", "duration_s": 1}',
             line(audio="a.wav", text="x", duration_s="9" * 10_000).encode(),
             line(audio="a.wav", text="x", duration_s=[[[[1]]]]).encode(),
             line(audio="a.wav", text="x", duration_s=1, lang="x" * 10_000).encode(), GOOD]
    path, utts, bad = read_bytes_manifest(tmp_path, lines, caplog)
    assert len(utts) == 1 and bad == 5
    msgs = skipped(caplog)
    assert msgs[0] == f"{path}:1: skipped: 'text' is not valid Unicode"
    assert msgs[1] == f"{path}:2: skipped: 'audio' contains a NUL character"
    assert msgs[2].endswith("got '" + "9" * 39 + "...")
    assert msgs[3].endswith("got a JSON array")
    assert msgs[4].endswith("got '" + "x" * 39 + "...")


def test_line_endings_and_bom_as_in_text_mode(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for sep in (b"\n", b"\r\n", b"\r"):
        caplog.clear()
        path, utts, bad = read_bytes_manifest(tmp_path, [b"\xef\xbb\xbf" + GOOD, b"nope", b"", GOOD], caplog, sep)
        assert len(utts) == 2 and bad == 1
        assert skipped(caplog) == [f"{path}:2: skipped: not JSON (Expecting value)"]


def test_report_counts_what_was_skipped(tmp_path: Path) -> None:
    tone(tmp_path / "a.wav")
    (tmp_path / "m.jsonl").write_bytes(b"\n".join([GOOD, b"\xff", b"", b"[]", GOOD]))
    report = read_manifest_report(tmp_path / "m.jsonl")
    assert len(report.utts) == 2 and report.skipped == 2
    assert read_manifest(tmp_path / "m.jsonl") == report.utts
