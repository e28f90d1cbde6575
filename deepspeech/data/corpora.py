"""Readers of real-speech corpora in their original layouts, and of the data kit's split manifests.

A user with a full corpus runs the same recipe as on the small data kit (../shared/data): CMU AN4
(:func:`import_an4`), Speech Commands v0.02 (:func:`import_speech_commands`) and the kit's own manifests
(:func:`import_kit`); LibriSpeech, Common Voice (both layouts), AISHELL-1 and FSDD are read by
:mod:`deepspeech.data.importers`. Each reader follows the importers' contract (:mod:`deepspeech.data.reading`):
absolute audio paths, the source's transcript, ``duration_s`` from :func:`deepspeech.frontend.audio.audio_duration`; a
bad entry is reported in one warning and skipped. ``run_import(kind, root, out, split=...)`` normalises the transcripts
and writes the manifest.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np
import soundfile as sf

from deepspeech.data.manifest import ManifestError, Utterance, parse_line
from deepspeech.data.reading import SPLITS, PathLike, _Candidate, _finish, _read_text, _root
from deepspeech.frontend.audio import AUDIO_SUFFIXES

log = logging.getLogger(__name__)

# CMU AN4: the data kit's dev speakers (../shared/data/en_an4/SOURCES.md: the 74 an4_clstk speaker ids sorted,
# every 12th); its train split is an4_clstk without them, its test split an4test_clstk (AN4's own test set)
AN4_DEV_SPEAKERS = ("flrp", "mbmg", "meht", "mkdb", "mrcb", "mtos")
AN4_RAW_SAMPLE_RATE = 16_000  # the headerless .raw distribution: 16-bit big-endian PCM, 16 kHz, mono
_AN4_AUDIO = (".sph", ".flac", ".wav", ".raw")  # when an utterance has several files, the first suffix wins
_AN4_LINE = re.compile(r"^(?P<text>.*?)\s*\((?P<uid>[^()\s]+)\)\s*$")  # "<s> YES </s> (an251-fash-b)"
_AN4_MARKERS = {"<s>", "</s>", "<sil>"}

# Speech Commands: folders of no speech, and the official split lists (a clip in neither list is train)
SPEECH_COMMANDS_NO_SPEECH = ("_background_noise_", "_silence_")
SPEECH_COMMANDS_LISTS = {"dev": "validation_list.txt", "test": "testing_list.txt"}
_SC_UNKNOWN = "_unknown_"  # the test-set archive's folder of other words: files <word>_<speaker>_nohash_<n>.wav
_SC_NAME = re.compile(r"^(?:(?P<word>[a-z]+)_)?(?P<speaker>[0-9a-f]{8})_nohash_\d+\.", re.IGNORECASE)


def _check_split(split: str | None, allow_none: bool = True) -> None:
    if split not in SPLITS and not (allow_none and split is None):
        raise ValueError(f"split must be one of {SPLITS}{' or None' if allow_none else ''}, got {split!r}")


def _an4_transcripts(path: Path) -> dict[str, str]:
    """``{utterance id: transcript}`` of an AN4 ``.transcription`` file; markers ``<s> </s>`` dropped."""
    texts: dict[str, str] = {}
    for lineno, line in enumerate((_read_text(path) or "").splitlines(), 1):
        if not line.strip():
            continue
        m = _AN4_LINE.match(line.strip())
        if m is None:
            log.warning("%s:%d: skipped: not 'TEXT (utterance-id)': %r", path, lineno, line[:80])
            continue
        texts[m["uid"]] = " ".join(w for w in m["text"].split() if w.lower() not in _AN4_MARKERS)
    return texts


def _an4_audio(folder: Path) -> dict[str, Path]:
    """``{file stem: audio path}`` under ``folder`` (recursive), one file per stem by :data:`_AN4_AUDIO` order."""
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        suffix = path.suffix.lower()
        if suffix in _AN4_AUDIO and path.is_file():
            old = found.get(path.stem)
            if old is None or _AN4_AUDIO.index(suffix) < _AN4_AUDIO.index(old.suffix.lower()):
                found[path.stem] = path
    return found


def _raw_to_flac(raw: Path, dest: Path) -> Path | None:
    """Convert an AN4 ``.raw`` file (headerless big-endian 16-bit PCM) to FLAC at ``dest``, losslessly; an
    up-to-date ``dest`` is kept. None (with a warning) when the file cannot be converted."""
    try:
        if dest.is_file() and dest.stat().st_mtime >= raw.stat().st_mtime:
            return dest
        data = raw.read_bytes()
        if not data or len(data) % 2:
            log.warning("%s: skipped: %d bytes is not 16-bit PCM", raw, len(data))
            return None
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        sf.write(str(tmp), np.frombuffer(data, dtype=">i2").astype(np.int16), AN4_RAW_SAMPLE_RATE,
                 format="FLAC", subtype="PCM_16")
        tmp.replace(dest)
        return dest
    except (OSError, sf.LibsndfileError) as e:
        log.warning("%s: skipped: cannot convert to FLAC (%s)", raw, e)
        return None


def import_an4(root: PathLike, split: str = "train", *, dev_speakers: Collection[str] = AN4_DEV_SPEAKERS,
               raw_dir: PathLike | None = None, progress: bool = True) -> list[Utterance]:
    """CMU AN4 in its original layout: ``an4/wav/an4_clstk/<speaker>/<id>.sph`` (train) and
    ``an4/wav/an4test_clstk/<speaker>/<id>.sph`` (test), transcripts ``an4/etc/an4_train.transcription`` and
    ``an4_test.transcription`` with lines ``<s> YES </s> (an251-fash-b)``. ``root`` is the ``an4`` folder or
    the folder holding it. Speaker = the audio's folder; text = the transcript without ``<s>``/``</s>``.

    ``split``: ``test`` is an4test_clstk; ``dev`` the ``dev_speakers`` of an4_clstk, ``train`` the others (the
    data kit's protocol; ``dev_speakers=()`` gives AN4's whole 948-utterance training set). NIST SPHERE, WAV or
    FLAC audio is read as it is; the headerless big-endian ``.raw`` distribution is converted once to FLAC, beside
    each file or, with ``raw_dir``, under ``raw_dir`` mirroring the paths under ``wav/``.
    """
    _check_split(split, allow_none=False)
    if split == "dev" and not dev_speakers:
        raise ValueError("split 'dev' needs dev_speakers")
    base = _root(root)
    if not (base / "etc").is_dir() and (base / "an4" / "etc").is_dir():
        base = base / "an4"
    subset, name = ("an4test_clstk", "test") if split == "test" else ("an4_clstk", "train")
    trans, folder = base / "etc" / f"an4_{name}.transcription", base / "wav" / subset
    for needed in (trans, folder):
        if not needed.exists():
            raise FileNotFoundError(f"AN4 layout: {needed} not found")
    texts, audio = _an4_transcripts(trans), _an4_audio(folder)
    dev = set(dev_speakers)

    def wanted(speaker: str) -> bool:
        return split == "test" or (speaker in dev) == (split == "dev")

    cands: list[_Candidate] = []
    used: set[str] = set()
    for uid, text in texts.items():
        stem, parts = uid, uid.split("-")  # ids are file stems (an251-fash-b); some copies put the speaker first
        if stem not in audio and len(parts) > 2:
            stem = "-".join([parts[1], parts[0], *parts[2:]])
        path = audio.get(stem)
        if path is None:
            log.warning("%s: skipped %s: audio file not found under %s", trans, uid, folder)
            continue
        used.add(stem)
        if not wanted(path.parent.name):
            continue
        if path.suffix.lower() == ".raw":
            dest = (Path(raw_dir) / path.relative_to(base / "wav") if raw_dir is not None else path)
            path = _raw_to_flac(path, dest.with_suffix(".flac"))
            if path is None:
                continue
        cands.append((path, text, path.parent.name))
    for stem in sorted(audio.keys() - used):
        if wanted(audio[stem].parent.name):
            log.warning("%s: skipped: no line in %s", audio[stem], trans.name)
    return _finish(cands, "en", progress, f"an4 {split}")


def _speech_commands_list(path: Path) -> set[str]:
    if not path.is_file():
        raise FileNotFoundError(f"Speech Commands split list not found: {path}")
    return {line.strip() for line in (_read_text(path) or "").splitlines() if line.strip()}


def import_speech_commands(root: PathLike, split: str | None = None, *,
                           progress: bool = True) -> list[Utterance]:
    """Google Speech Commands (v0.01/v0.02): ``root/<word>/<speaker>_nohash_<n>.wav``. Text = the word (the
    folder name), speaker = the 8-hex-digit hash of the file name. ``split``: ``dev`` = the clips named in
    ``validation_list.txt``, ``test`` = those in ``testing_list.txt``, ``train`` = all others; None = every clip.

    ``_background_noise_`` and ``_silence_`` hold no speech: skipped (one info line). The test-set archive's
    ``_unknown_/<word>_<speaker>_nohash_<n>.wav`` clips take their word from the file name.
    """
    _check_split(split)
    base = _root(root)
    listed = {name: _speech_commands_list(base / f) for name, f in SPEECH_COMMANDS_LISTS.items()} if split else {}
    cands: list[_Candidate] = []
    for folder in sorted(d for d in base.iterdir() if d.is_dir()):
        if folder.name in SPEECH_COMMANDS_NO_SPEECH:
            log.info("%s: skipped: no speech (%d files)", folder, sum(1 for _ in folder.iterdir()))
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in AUDIO_SUFFIXES:
                continue
            m = _SC_NAME.match(path.name)
            word = (m["word"] if folder.name == _SC_UNKNOWN else folder.name) if m else None
            if m is None or not word or word.startswith("_"):
                log.warning("%s: skipped: not <word>/<speaker>_nohash_<n>.wav", path)
                continue
            rel = f"{folder.name}/{path.name}"
            which = next((name for name, names in listed.items() if rel in names), "train")
            if split is None or which == split:
                cands.append((path, word.lower(), m["speaker"].lower()))
    return _finish(cands, "en", progress, f"speech commands {split or 'all'}")


def import_kit(root: PathLike, split: str | None = None, *, check_audio: bool = True,
               progress: bool = True) -> list[Utterance]:
    """A set of the data kit (../shared/data/<set>, or its ``manifest.jsonl``) whose lines carry a ``split``
    key (en_an4, en_minilibrispeech, en_commonvoice, en_speech_commands, zh_commonvoice): the lines of ``split``
    (None: all), without those marked ``text_lossy`` (a transcript that lost spoken content).

    With ``check_audio`` every file is opened (unreadable ones skipped) and ``duration_s`` is taken from it;
    without, only its presence is checked and the manifest's ``duration_s`` is kept.
    """
    _check_split(split)
    path = Path(root)
    manifest = path / "manifest.jsonl" if path.is_dir() else path
    if not manifest.is_file():
        raise FileNotFoundError(f"data kit manifest not found: {manifest}")
    base = manifest.resolve().parent
    utts: list[Utterance] = []
    has_split = lossy = 0
    for lineno, line in enumerate((_read_text(manifest) or "").splitlines(), 1):
        if not line.strip():
            continue
        try:
            u = parse_line(line, base)
        except ManifestError as e:
            log.warning("%s:%d: skipped: %s", manifest, lineno, e)
            continue
        d = json.loads(line)
        has_split += "split" in d
        if split is not None and d.get("split") != split:
            continue
        if d.get("text_lossy"):
            lossy += 1
            continue
        if not Path(u.audio).is_file():
            log.warning("%s:%d: skipped: audio file not found: %s", manifest, lineno, u.audio)
            continue
        utts.append(u)
    if split is not None and not has_split:
        raise ManifestError(f"{manifest}: no line has a 'split' key (for the older kit sets use `data prepare`)")
    if lossy:
        log.info("%s: %d text_lossy line(s) left out", manifest, lossy)
    if not check_audio:
        return utts
    by_lang: dict[str, list[Utterance]] = {}
    for u in utts:
        by_lang.setdefault(u.lang, []).append(u)
    checked: list[Utterance] = []
    for lang, group in by_lang.items():
        checked += _finish([(Path(u.audio), u.text, u.speaker) for u in group], lang, progress,
                           f"kit {split or 'all'}")
    return checked


CORPORA: dict[str, Callable[..., list[Utterance]]] = {
    "an4": import_an4,
    "speechcommands": import_speech_commands,
    "kit": import_kit,
}
