"""JSON Lines manifests: one utterance a line,
``{"audio": path relative to the manifest (or absolute), "text": str, "duration_s": float, "speaker": str|null,
"lang": "en"|"zh"}``. Extra keys are ignored. Bad lines (not UTF-8, not JSON, nested too deeply, not an object,
missing or invalid fields, longer than MAX_LINE_BYTES) are reported (file, line number, reason) and skipped;
:func:`read_manifest_report` also says how many.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

log = logging.getLogger(__name__)

LANGS = ("en", "zh")
MAX_LINE_BYTES = 1 << 20  # a longer line is skipped without being held in memory


@dataclass(frozen=True)
class Utterance:
    audio: str  # absolute path once read from a manifest
    text: str
    duration_s: float
    speaker: str | None = None
    lang: str = "en"

    def to_json(self, relative_to: Path | None = None) -> dict[str, object]:
        audio = self.audio
        if relative_to is not None:
            audio = os.path.relpath(audio, relative_to)
        return {"audio": Path(audio).as_posix(), "text": self.text, "duration_s": round(self.duration_s, 4),
                "speaker": self.speaker, "lang": self.lang}


class ManifestError(ValueError):
    """A manifest line that cannot be used."""


def _shown(value: object) -> str:
    """A field's value for a log line: one short line, whatever it holds."""
    if isinstance(value, list | dict):
        return "a JSON array" if isinstance(value, list) else "a JSON object"
    r = repr(value)
    return r if len(r) <= 40 else r[:40] + "..."


def _text_field(d: dict[str, object], key: str) -> str | None:
    value = d.get(key)
    if not isinstance(value, str):
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape: no file system or writer takes it
        raise ManifestError(f"{key!r} is not valid Unicode") from None
    return value


def parse_line(line: str, base: Path) -> Utterance:
    """One JSON line -> Utterance with an absolute audio path; raises ManifestError with the reason."""
    try:
        d = json.loads(line)
    except ValueError as e:  # JSONDecodeError, or an integer literal over Python's digit limit
        raise ManifestError(f"not JSON ({getattr(e, 'msg', e)})") from None
    except RecursionError:
        raise ManifestError("not JSON (nested too deeply)") from None
    if not isinstance(d, dict):
        raise ManifestError("not a JSON object")
    audio, text, duration = _text_field(d, "audio"), _text_field(d, "text"), d.get("duration_s")
    if not audio:
        raise ManifestError("missing or empty 'audio'")
    if "\x00" in audio:
        raise ManifestError("'audio' contains a NUL character")
    if text is None:
        raise ManifestError("missing 'text'")
    try:
        good = not isinstance(duration, bool) and isinstance(duration, int | float) and math.isfinite(duration) \
            and duration > 0
    except OverflowError:  # an integer too large for a float
        good = False
    if not good:
        raise ManifestError(f"'duration_s' must be a positive number, got {_shown(duration)}")
    speaker = d.get("speaker")
    if speaker is not None and not isinstance(speaker, str | int):
        raise ManifestError("'speaker' must be a string or null")
    if isinstance(speaker, str):
        _text_field(d, "speaker")
    lang = d.get("lang") or "en"
    if lang not in LANGS:
        raise ManifestError(f"'lang' must be one of {LANGS}, got {_shown(lang)}")
    path = os.path.normpath(audio if os.path.isabs(audio) else base / audio)
    return Utterance(path, text, float(duration), None if speaker is None else str(speaker), lang)


def _lines(f: TextIO) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes without the line break) per line of ``f``, a file opened with ``encoding="latin-1",
    newline=None``: each character is one byte, and lines end at \\n, \\r\\n or \\r as in any text-mode file.
    None stands for a line over MAX_LINE_BYTES, read past in pieces without holding it."""
    lineno = 0
    while chunk := f.readline(MAX_LINE_BYTES + 1):
        lineno += 1
        if chunk.endswith("\n"):
            yield lineno, chunk[:-1].encode("latin-1")
        elif len(chunk) <= MAX_LINE_BYTES:  # the last line, without a line break
            yield lineno, chunk.encode("latin-1")
        else:
            while chunk and not chunk.endswith("\n"):
                chunk = f.readline(MAX_LINE_BYTES)
            yield lineno, None


def _decode(raw: bytes | None, lineno: int) -> str:
    if raw is None:
        raise ManifestError(f"line longer than {MAX_LINE_BYTES} bytes")
    try:
        return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError(f"not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None


@dataclass(frozen=True)
class ManifestReport:
    utts: list[Utterance]  # the usable lines, in file order
    skipped: int  # lines left out (bad, or with ``check_files`` naming a missing audio file), each logged


def read_manifest_report(path: str | os.PathLike[str], check_files: bool = True) -> ManifestReport:
    """Read a manifest; bad lines (and, with ``check_files``, missing audio files) are logged and skipped.

    Each line is decoded and parsed on its own, so no line can stop the others. Raises FileNotFoundError if the
    manifest itself is missing, ManifestError if no line is usable.
    """
    path = Path(path)
    base = path.resolve().parent
    utts, bad = [], 0
    with open(path, encoding="latin-1", newline=None) as f:  # bytes as they are; each line is decoded on its own
        for lineno, raw in _lines(f):
            try:
                line = _decode(raw, lineno)
                if not line.strip():
                    continue
                u = parse_line(line, base)
                if check_files and not os.path.isfile(u.audio):
                    raise ManifestError(f"audio file not found: {u.audio}")
            except ManifestError as e:
                bad += 1
                log.warning("%s:%d: skipped: %s", path, lineno, e)
                continue
            utts.append(u)
    if bad:
        log.warning("%s: %d bad line(s) skipped, %d utterances kept", path, bad, len(utts))
    if not utts:
        raise ManifestError(f"{path}: no usable utterances")
    return ManifestReport(utts, bad)


def read_manifest(path: str | os.PathLike[str], check_files: bool = True) -> list[Utterance]:
    """The usable utterances of a manifest (see :func:`read_manifest_report`, which also counts the skipped)."""
    return read_manifest_report(path, check_files).utts


def write_manifest(path: str | os.PathLike[str], utts: Iterable[Utterance]) -> int:
    """Write utterances with audio paths relative to the manifest's folder, atomically. Returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for u in utts:
            f.write(json.dumps(u.to_json(base), ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n
