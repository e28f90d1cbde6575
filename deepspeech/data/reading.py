"""The importers' contract, shared by the corpus readers of deepspeech.data.importers and deepspeech.data.corpora:
a layout scan yields candidates (audio path, raw transcript, speaker); :func:`_finish` opens each candidate's audio
for its duration and turns it into an :class:`Utterance`, skipping bad entries with one warning each (on the
importers' logger, where users and tests listen for them).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from deepspeech.data.manifest import Utterance
from deepspeech.frontend.audio import AudioError, audio_duration

log = logging.getLogger("deepspeech.data.importers")

PathLike = str | os.PathLike[str]
SPLITS = ("train", "dev", "test")

# (audio path, raw text, speaker) found by a layout scan, before the audio is opened
_Candidate = tuple[Path, str, str | None]


def _root(root: PathLike) -> Path:
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    return path


def _finish(cands: Iterable[_Candidate], lang: str, progress: bool, desc: str) -> list[Utterance]:
    """Open each candidate's audio for its duration; skip (with a warning) empty text and unreadable audio."""
    cands = list(cands)
    utts: list[Utterance] = []
    for audio, text, speaker in tqdm(cands, desc=desc, unit="file", disable=not progress):
        text = text.strip()
        if not text:
            log.warning("%s: skipped: empty transcript", audio)
            continue
        if not audio.is_file():
            log.warning("%s: skipped: audio file not found", audio)
            continue
        try:
            duration = audio_duration(audio)
        except AudioError as e:
            log.warning("%s: skipped: %s", audio, e)
            continue
        utts.append(Utterance(str(audio), text, float(duration), speaker, lang))
    if len(utts) < len(cands):
        log.warning("%s: %d of %d entries skipped", desc, len(cands) - len(utts), len(cands))
    return utts


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        log.warning("%s: skipped: cannot read transcript (%s)", path, e)
        return None
