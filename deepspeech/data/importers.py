"""Dataset importers: scan a corpus' on-disk layout and turn it into :class:`Utterance` lists / manifests.

Every importer returns utterances with absolute audio paths, the source's transcript with surrounding
whitespace stripped, ``duration_s`` from :func:`deepspeech.audio.audio_duration`, a speaker id and a language.
Bad entries (unreadable audio, a transcript line without audio, audio without transcript, empty text) are
reported with a warning on this module's logger and skipped; they never abort the import. ``run_import``
writes a manifest.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from tqdm import tqdm

from deepspeech.audio import AUDIO_SUFFIXES, AudioError, audio_duration
from deepspeech.data.manifest import LANGS, ManifestError, Utterance, write_manifest

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
AISHELL_SPLITS = ("train", "dev", "test")
AISHELL_TRANSCRIPT = Path("transcript") / "aishell_transcript_v0.8.txt"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FSDD_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("jackson", "lucas", "nicolas"), "dev": ("george",), "test": ("theo", "yweweler")}
_FSDD_NAME = re.compile(r"^(\d)_([A-Za-z0-9]+)_(\d+)\.(wav|flac)$", re.IGNORECASE)

# (audio path, raw text, speaker) found by a layout scan, before the audio is opened
_Candidate = tuple[Path, str, str | None]


def _root(root: PathLike) -> Path:
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    return path


def _check_lang(lang: str) -> None:
    if lang not in LANGS:
        raise ValueError(f"lang must be one of {LANGS}, got {lang!r}")


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


def import_librispeech(root: PathLike, lang: str = "en", *, progress: bool = True) -> list[Utterance]:
    """LibriSpeech: ``root/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`` with lines ``UTTID TEXT...``
    and the audio ``UTTID.flac`` beside it. ``root`` may be the corpus folder or one split
    (``train-clean-100``); transcripts are searched recursively. Speaker = the speaker folder name.
    """
    _check_lang(lang)
    base = _root(root)
    cands: list[_Candidate] = []
    for trans in sorted(base.rglob("*.trans.txt")):
        content = _read_text(trans)
        if content is None:
            continue
        speaker, listed = trans.parent.parent.name, set()
        for lineno, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            listed.add(uid)
            audio = trans.parent / f"{uid}.flac"
            if not audio.is_file():
                log.warning("%s:%d: skipped: audio file not found: %s", trans, lineno, audio.name)
                continue
            cands.append((audio, text, speaker))
        for flac in sorted(trans.parent.glob("*.flac")):
            if flac.stem not in listed:
                log.warning("%s: skipped: no transcript line in %s", flac, trans.name)
    return _finish(cands, lang, progress, "librispeech")


def import_aishell(root: PathLike, split: str | None = None, *, progress: bool = True) -> list[Utterance]:
    """AISHELL-1: ``root/transcript/aishell_transcript_v0.8.txt`` (lines ``ID word word ...``; the words are
    joined without spaces) and audio ``root/wav/<split>/<speaker>/<ID>.wav`` with split in train/dev/test.
    Speaker = the speaker folder (e.g. ``S0002``), lang ``zh``; ``split=None`` imports every split.

    Without the transcript file, each wav is expected to have a same-stem ``.txt`` transcript beside it
    (see :func:`import_folder`); ``split`` then keeps the files with a path component of that name.
    """
    if split is not None and split not in AISHELL_SPLITS:
        raise ValueError(f"split must be one of {AISHELL_SPLITS} or None, got {split!r}")
    base = _root(root)
    trans = base / AISHELL_TRANSCRIPT
    if not trans.is_file():
        utts = import_folder(base, lang="zh", progress=progress)
        if split is not None:
            utts = [u for u in utts if split in Path(u.audio).relative_to(base).parts[:-1]]
        return [Utterance(u.audio, "".join(u.text.split()), u.duration_s, u.speaker, u.lang) for u in utts]
    texts: dict[str, str] = {}
    content = _read_text(trans) or ""
    for line in content.splitlines():
        if line.split():
            uid, *words = line.split()
            texts[uid] = "".join(words)
    found: dict[str, Path] = {}
    for s in AISHELL_SPLITS if split is None else (split,):
        found.update((p.stem, p) for p in (base / "wav" / s).rglob("*.wav"))
    cands: list[_Candidate] = []
    for uid, audio in sorted(found.items()):
        if uid not in texts:
            log.warning("%s: skipped: no line in %s", audio, trans.name)
        else:
            cands.append((audio, texts[uid], audio.parent.name))
    if split is None:  # with one split, the other splits' lines are expected to have no audio here
        for uid in sorted(texts.keys() - found.keys()):
            log.warning("%s: skipped %s: audio file not found", trans, uid)
    return _finish(cands, "zh", progress, "aishell")


def import_common_voice(root: PathLike, split: str = "train", lang: str = "en", *,
                        progress: bool = True) -> list[Utterance]:
    """Common Voice: ``root/<split>.tsv`` (tab-separated, header with at least ``client_id``, ``path``,
    ``sentence``; no quoting) and audio ``root/clips/<path>`` (mp3). Speaker = ``client_id``.
    """
    _check_lang(lang)
    base = _root(root)
    tsv = base / f"{split}.tsv"
    if not tsv.is_file():
        raise FileNotFoundError(f"Common Voice split file not found: {tsv}")
    cands: list[_Candidate] = []
    with open(tsv, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = {"client_id", "path", "sentence"} - set(reader.fieldnames or ())
        if missing:
            raise ManifestError(f"{tsv}: header lacks column(s) {sorted(missing)}")
        for row in reader:
            name, lineno = (row.get("path") or "").strip(), reader.line_num
            if not name:
                log.warning("%s:%d: skipped: empty 'path'", tsv, lineno)
                continue
            audio = base / "clips" / name
            if not audio.is_file():
                log.warning("%s:%d: skipped: audio file not found: %s", tsv, lineno, name)
                continue
            cands.append((audio, row.get("sentence") or "", (row.get("client_id") or "").strip() or None))
    return _finish(cands, lang, progress, f"commonvoice {split}")


def import_fsdd(root: PathLike, *, progress: bool = True) -> list[Utterance]:
    """Free Spoken Digit Dataset: files ``{digit}_{speaker}_{index}.wav`` (or ``.flac``) in ``root`` or
    ``root/recordings``. Text = the digit as a lower-case English word, speaker from the file name,
    lang ``en``.
    """
    base = _root(root)
    if (base / "recordings").is_dir():
        base = base / "recordings"
    cands: list[_Candidate] = []
    for path in sorted(p for p in base.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES):
        m = _FSDD_NAME.match(path.name)
        if m is None:
            log.warning("%s: skipped: name is not {digit}_{speaker}_{index}.wav", path)
            continue
        cands.append((path, DIGIT_WORDS[int(m.group(1))], m.group(2)))
    return _finish(cands, "en", progress, "fsdd")


def split_by_speaker(utts: Iterable[Utterance],
                     splits: dict[str, tuple[str, ...]]) -> dict[str, list[Utterance]]:
    """Partition utterances by speaker: ``{split: [utterances of that split's speakers]}``.

    A speaker listed in two splits raises ValueError; utterances of unlisted speakers are dropped (logged).
    """
    owner: dict[str, str] = {}
    for name, speakers in splits.items():
        for spk in speakers:
            if spk in owner:
                raise ValueError(f"speaker {spk!r} is in both {owner[spk]!r} and {name!r}")
            owner[spk] = name
    out: dict[str, list[Utterance]] = {name: [] for name in splits}
    dropped: dict[str | None, int] = {}
    for u in utts:
        if u.speaker in owner:
            out[owner[u.speaker]].append(u)
        else:
            dropped[u.speaker] = dropped.get(u.speaker, 0) + 1
    for spk, n in sorted(dropped.items(), key=lambda kv: str(kv[0])):
        log.warning("speaker %r is in no split: %d utterance(s) dropped", spk, n)
    return out


def import_folder(root: PathLike, lang: str = "en", *, progress: bool = True) -> list[Utterance]:
    """Any folder tree: every audio file (``.wav .flac .ogg .mp3``, recursive) with a same-stem ``.txt``
    transcript beside it. Speaker = the audio file's parent folder name.
    """
    _check_lang(lang)
    base = _root(root)
    cands: list[_Candidate] = []
    for audio in sorted(p for p in base.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()):
        txt = audio.with_suffix(".txt")
        if not txt.is_file():
            log.warning("%s: skipped: transcript %s not found", audio, txt.name)
            continue
        text = _read_text(txt)
        if text is not None:
            cands.append((audio, text, audio.parent.name))
    return _finish(cands, lang, progress, "folder")


IMPORTERS: dict[str, Callable[..., list[Utterance]]] = {
    "librispeech": import_librispeech,
    "aishell": import_aishell,
    "commonvoice": import_common_voice,
    "fsdd": import_fsdd,
    "folder": import_folder,
}


def run_import(kind: str, root: PathLike, out_manifest: PathLike, **kwargs: object) -> int:
    """Import a dataset with ``IMPORTERS[kind]`` (``kwargs`` go to the importer) and write the utterances,
    sorted by audio path, to ``out_manifest`` (paths relative to it). Returns the number written.

    Raises ValueError for an unknown kind, FileNotFoundError for a missing root and ManifestError when no
    usable utterance was found.
    """
    if kind not in IMPORTERS:
        raise ValueError(f"unknown dataset kind {kind!r}; known: {sorted(IMPORTERS)}")
    if not Path(root).is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    utts = IMPORTERS[kind](root, **kwargs)
    if not utts:
        raise ManifestError(f"{root}: no usable utterances found for kind {kind!r}")
    return write_manifest(out_manifest, sorted(utts, key=lambda u: u.audio))
