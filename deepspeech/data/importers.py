"""Dataset importers: scan a corpus' on-disk layout and turn it into :class:`Utterance` lists / manifests.

Every importer returns utterances with absolute audio paths, the source's transcript with surrounding
whitespace stripped, ``duration_s`` from :func:`deepspeech.frontend.audio.audio_duration`, a speaker id and a language.
Bad entries (unreadable audio, a transcript line without audio, audio without transcript, empty text) are
reported with a warning on this module's logger and skipped; they never abort the import. ``run_import``
normalises the transcripts (:func:`normalize_transcript`) and writes a manifest. More corpora (CMU AN4, Speech
Commands, the data kit's manifests) are read by :mod:`deepspeech.data.corpora`.
"""

from __future__ import annotations

import csv
import logging
import re
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path

from deepspeech.data.corpora import CORPORA
from deepspeech.data.manifest import LANGS, ManifestError, Utterance, write_manifest
from deepspeech.data.reading import SPLITS, PathLike, _Candidate, _finish, _read_text, _root
from deepspeech.frontend.audio import AUDIO_SUFFIXES
from deepspeech.text import _CJK, normalize_en

log = logging.getLogger(__name__)

AISHELL_SPLITS = SPLITS
AISHELL_TRANSCRIPT = Path("transcript") / "aishell_transcript_v0.8.txt"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FSDD_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("jackson", "lucas", "nicolas"), "dev": ("george",), "test": ("theo", "yweweler")}
# The data kit's Mini LibriSpeech protocol (../shared/data/en_minilibrispeech): held-out speakers; train = the rest
MINI_LIBRISPEECH_SPLITS: dict[str, tuple[str, ...]] = {"dev": ("226", "2136", "6272"), "test": ("19", "1867", "3947")}
_FSDD_NAME = re.compile(r"^(\d)_([A-Za-z0-9]+)_(\d+)\.(wav|flac)$", re.IGNORECASE)

def _check_lang(lang: str) -> None:
    if lang not in LANGS:
        raise ValueError(f"lang must be one of {LANGS}, got {lang!r}")


def import_librispeech(root: PathLike, lang: str = "en", *, split: str | None = None,
                       progress: bool = True) -> list[Utterance]:
    """LibriSpeech: ``root/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`` with lines ``UTTID TEXT...``
    and the audio ``UTTID.flac`` beside it. ``root`` may be the corpus folder or one subset
    (``train-clean-100``, ``dev-clean``: LibriSpeech's own splits); transcripts are searched recursively.
    Speaker = the speaker folder name.

    ``split`` (train | dev | test) selects by speaker as the data kit's Mini LibriSpeech protocol does
    (:data:`MINI_LIBRISPEECH_SPLITS`; train = every other speaker); None keeps every speaker.
    """
    _check_lang(lang)
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    base = _root(root)
    cands: list[_Candidate] = []
    for trans in sorted(base.rglob("*.trans.txt")):
        content = _read_text(trans)
        if content is None:
            continue
        speaker, listed = trans.parent.parent.name, set()
        if split is not None and _librispeech_split(speaker) != split:
            continue
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


def _librispeech_split(speaker: str) -> str:
    return next((name for name, spk in MINI_LIBRISPEECH_SPLITS.items() if speaker in spk), "train")


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
    """Common Voice, either layout. Releases since 2018: ``root/<split>.tsv`` (tab-separated, header with at
    least ``client_id``, ``path``, ``sentence``; no quoting) and audio ``root/clips/<path>`` (mp3); speaker =
    ``client_id``. Version 1 (2017): ``root/cv-valid-<split>.csv`` (or ``<split>.csv``; comma-separated, header
    with at least ``filename``, ``text``) and audio ``root/<filename>`` (``cv-valid-dev/sample-000000.mp3``);
    v1 published no speaker ids, so speaker = None. A ``.tsv`` is used when both exist.
    """
    _check_lang(lang)
    base = _root(root)
    tsv = base / f"{split}.tsv"
    if tsv.is_file():
        cands = _cv_rows(tsv, base, "client_id", "path", "sentence")
    else:
        tried = [tsv] + [base / f"{pre}{split}.csv" for pre in ("cv-valid-", "cv-", "")]
        table = next((p for p in tried[1:] if p.is_file()), None)
        if table is None:
            raise FileNotFoundError(f"Common Voice split file not found: {' or '.join(map(str, tried))}")
        cands = _cv_rows(table, base, None, "filename", "text")
    return _finish(cands, lang, progress, f"commonvoice {split}")


def _cv_rows(table: Path, base: Path, speaker_col: str | None, path_col: str, text_col: str) -> list[_Candidate]:
    """Candidates of one Common Voice table: a .tsv (with ``speaker_col``) or a v1 .csv (without)."""
    cands: list[_Candidate] = []
    columns = {c for c in (speaker_col, path_col, text_col) if c}
    with open(table, encoding="utf-8-sig", newline="") as f:
        if table.suffix == ".tsv":
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.DictReader(f)
        missing = columns - set(reader.fieldnames or ())
        if missing:
            raise ManifestError(f"{table}: header lacks column(s) {sorted(missing)}")
        for row in reader:
            name, lineno = (row.get(path_col) or "").strip(), reader.line_num
            if not name:
                log.warning("%s:%d: skipped: empty %r", table, lineno, path_col)
                continue
            # releases since 2018: clips/<path>; v1: <filename> relative to the csv's folder
            audio = base / "clips" / name if table.suffix == ".tsv" else base / name
            if not audio.is_file():
                log.warning("%s:%d: skipped: audio file not found: %s", table, lineno, name)
                continue
            speaker = ((row.get(speaker_col) or "").strip() or None) if speaker_col else None
            cands.append((audio, row.get(text_col) or "", speaker))
    return cands


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


def split_by_speaker(utts: Iterable[Utterance], splits: dict[str, tuple[str, ...]],
                     rest: str | None = None) -> dict[str, list[Utterance]]:
    """Partition utterances by speaker: ``{split: [utterances of that split's speakers]}``.

    A speaker listed in two splits raises ValueError; utterances of unlisted speakers go to split ``rest``
    (e.g. ``"train"`` with ``splits`` naming only the held-out speakers), or are dropped (logged) without one.
    """
    owner: dict[str, str] = {}
    for name, speakers in splits.items():
        for spk in speakers:
            if spk in owner:
                raise ValueError(f"speaker {spk!r} is in both {owner[spk]!r} and {name!r}")
            owner[spk] = name
    out: dict[str, list[Utterance]] = {name: [] for name in splits}
    if rest is not None:
        out.setdefault(rest, [])
    dropped: dict[str | None, int] = {}
    for u in utts:
        if u.speaker in owner:
            out[owner[u.speaker]].append(u)
        elif rest is not None:
            out[rest].append(u)
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


def importer_kinds() -> dict[str, Callable[..., list[Utterance]]]:
    """Every corpus kind ``run_import`` knows: :data:`IMPORTERS` and :data:`deepspeech.data.corpora.CORPORA`."""
    return {**IMPORTERS, **CORPORA}


def normalize_transcript(text: str, lang: str) -> str:
    """The manifest form of a transcript. English: lower-case letters, apostrophes inside words and single
    spaces, numbers spelt out (:func:`deepspeech.text.normalize_en`). Mandarin: Chinese characters only (after
    NFKC), punctuation and spaces removed.

    Raises ValueError when nothing is left, or when Mandarin text holds other letters or digits (Latin, Greek,
    kana, 0-9): their reading is unknown, so dropping them would lose spoken content (the data kit marks such
    lines ``text_lossy``).
    """
    _check_lang(lang)
    if lang == "en":
        out = normalize_en(text)
    else:
        text = unicodedata.normalize("NFKC", text)
        lost = sorted({c for c in text if c.isalnum() and not _CJK.match(c)})
        if lost:
            raise ValueError(f"letters or digits other than Chinese characters in Mandarin text: {''.join(lost)}")
        out = "".join(_CJK.findall(text))
    if not out:
        raise ValueError("transcript empty once normalised")
    return out


def normalize_utterances(utts: Iterable[Utterance]) -> list[Utterance]:
    """Each utterance with its transcript normalised (:func:`normalize_transcript`); those whose transcript
    cannot be are reported with a warning and left out."""
    out = []
    for u in utts:
        try:
            out.append(Utterance(u.audio, normalize_transcript(u.text, u.lang), u.duration_s, u.speaker, u.lang))
        except ValueError as e:
            log.warning("%s: skipped: %s (%r)", u.audio, e, u.text)
    return out


def run_import(kind: str, root: PathLike, out_manifest: PathLike, *, normalize: bool = True,
               **kwargs: object) -> int:
    """Import a corpus with the importer of ``kind`` (:func:`importer_kinds`; ``kwargs`` go to it), normalise
    the transcripts (unless ``normalize`` is False; see :func:`normalize_utterances`) and write the
    utterances, sorted by audio path, to ``out_manifest`` (paths relative to it). Returns the number written.

    Raises ValueError for an unknown kind, FileNotFoundError for a missing root and ManifestError when no
    usable utterance was found.
    """
    kinds = importer_kinds()
    if kind not in kinds:
        raise ValueError(f"unknown dataset kind {kind!r}; known: {sorted(kinds)}")
    if not Path(root).exists():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    utts = kinds[kind](root, **kwargs)
    if normalize:
        utts = normalize_utterances(utts)
    if not utts:
        raise ManifestError(f"{root}: no usable utterances found for kind {kind!r}")
    return write_manifest(out_manifest, sorted(utts, key=lambda u: u.audio))
