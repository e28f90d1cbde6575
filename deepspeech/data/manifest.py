"""JSON Lines manifests: one utterance a line,
``{"audio": path relative to the manifest (or absolute), "text": str, "duration_s": float, "speaker": str|null,
"lang": "en"|"zh"}``. Extra keys are ignored. Bad lines are reported (file, line number, reason) and skipped.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

LANGS = ("en", "zh")


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


def parse_line(line: str, base: Path) -> Utterance:
    """One JSON line -> Utterance with an absolute audio path; raises ManifestError with the reason."""
    try:
        d = json.loads(line)
    except ValueError as e:  # JSONDecodeError, or an integer literal over Python's digit limit
        raise ManifestError(f"not JSON ({getattr(e, 'msg', e)})") from None
    if not isinstance(d, dict):
        raise ManifestError("not a JSON object")
    audio, text, duration = d.get("audio"), d.get("text"), d.get("duration_s")
    if not isinstance(audio, str) or not audio:
        raise ManifestError("missing or empty 'audio'")
    if not isinstance(text, str):
        raise ManifestError("missing 'text'")
    try:
        good = not isinstance(duration, bool) and isinstance(duration, int | float) and math.isfinite(duration) \
            and duration > 0
    except OverflowError:  # an integer too large for a float
        good = False
    if not good:
        raise ManifestError(f"'duration_s' must be a positive number, got {duration!r}")
    speaker = d.get("speaker")
    if speaker is not None and not isinstance(speaker, str | int):
        raise ManifestError("'speaker' must be a string or null")
    lang = d.get("lang") or "en"
    if lang not in LANGS:
        raise ManifestError(f"'lang' must be one of {LANGS}, got {lang!r}")
    path = os.path.normpath(audio if os.path.isabs(audio) else base / audio)
    return Utterance(path, text, float(duration), None if speaker is None else str(speaker), lang)


def read_manifest(path: str | os.PathLike[str], check_files: bool = True) -> list[Utterance]:
    """Read a manifest; bad lines (and, with ``check_files``, missing audio files) are logged and skipped.

    Raises FileNotFoundError if the manifest itself is missing, ManifestError if no line is usable.
    """
    path = Path(path)
    base = path.resolve().parent
    utts, bad = [], 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
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
    return utts


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
