"""Offline transcription of many files: batching, greedy or beam decoding, word times and confidences, long
recordings in bounded memory (:mod:`deepspeech.inference.longform`), output as txt / jsonl / srt / vtt, resumable.

Word times come from the CTC alignment of the chosen path: a word starts at the output frame of its first
character and ends after its last (output frame = feature hop x the model's time stride, 20 ms for DS2 models).
A word's confidence is the geometric mean, over its frames, of the most probable symbol's posterior (the greedy
path's own probability); the utterance confidence is the mean over words.

Audio without speech-level energy (:mod:`deepspeech.frontend.silence`) reads as empty text: a short file as a whole, a
long one segment by segment (a streaming model's long file, decoded in one pass, as a whole).

Every file takes the one path (:mod:`deepspeech.frontend.front_end` for audio and features,
:mod:`deepspeech.inference.recognizer` for the network, the decoder and the post-processing), whichever of the three
routes its length and model choose.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from deepspeech.checkpoint import AcousticModel
from deepspeech.decoding.hypothesis import Decoder, Hypothesis, Word
from deepspeech.frontend.audio import SAMPLE_RATE, AudioError
from deepspeech.frontend.silence import SilenceGate, SpeechDetector, speech_present
from deepspeech.inference.longform import GATE, ChunkConfig, decode_segments, segment_log_probs, stream_audio
from deepspeech.inference.recognizer import Recognizer

log = logging.getLogger(__name__)

FORMATS = ("txt", "jsonl", "srt", "vtt")


@dataclass
class TimedWord:
    word: str
    start: float  # seconds
    end: float
    confidence: float

    def to_json(self) -> dict[str, Any]:
        return {"word": self.word, "start": round(self.start, 3), "end": round(self.end, 3),
                "confidence": round(self.confidence, 4)}


@dataclass
class Transcript:
    path: str
    text: str | None
    error: str | None = None
    duration_s: float = 0.0
    words: list[TimedWord] = field(default_factory=list)
    confidence: float | None = None
    pinyin: str | None = None  # a pinyin model's syllables before conversion to characters (not written out)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "text": self.text, "duration_s": round(self.duration_s, 3),
                "confidence": None if self.confidence is None else round(self.confidence, 4),
                "words": [w.to_json() for w in self.words],
                "error": self.error}


def frame_seconds(am: AcousticModel) -> float:
    return am.config.features.hop_ms / 1000.0 * am.config.model.time_stride


def timed_words(words: Iterable[Word], logp: np.ndarray | None, frame_s: float, offset: int = 0) -> list[TimedWord]:
    """Frame spans -> seconds, with confidences from ``logp`` (the frames of the words' segment)."""
    out = []
    best = logp.max(axis=1) if logp is not None and logp.size else None
    for w in words:
        conf = 1.0
        if best is not None:
            span = best[max(0, w.start - offset): max(w.start - offset + 1, w.end - offset)]
            conf = float(np.exp(span.mean())) if span.size else 1.0
        out.append(TimedWord(w.text, w.start * frame_s, w.end * frame_s, conf))
    return out


def _finish(t: Transcript) -> Transcript:
    t.confidence = float(np.mean([w.confidence for w in t.words])) if t.words else None
    return t


def input_error(path: str | Path) -> str | None:
    """Why ``path`` cannot be an audio input (missing, or not a regular file: a FIFO, device or socket would block
    or never end), else None. Checked with stat, never by opening it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"no such file: {path}"
    except OSError as e:
        return f"{path}: {e.strerror or e}"
    if stat.S_ISDIR(mode):
        return f"{path}: is a directory"
    if not stat.S_ISREG(mode):
        return f"{path}: not a regular file (FIFO, device or socket): skipped"
    return None


def file_duration(path: str | Path) -> float:
    """Seconds of audio from the file header (0 when the header has no frame count); AudioError if unreadable."""
    why = input_error(path)
    if why is not None:
        raise AudioError(why)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioError(f"{path}: cannot read audio ({e})") from e
    return info.frames / info.samplerate if info.frames > 0 else 0.0


def transcribe_long_file(path: str | Path, am: AcousticModel, chunk: ChunkConfig,
                         decoder: Decoder | None = None, device: torch.device | str = "cpu",
                         duration: float = 0.0, gate: SilenceGate | None = GATE) -> Transcript:
    """A recording longer than ``chunk.min_segment_s`` in bounded memory: segmented in pauses, or, for a streaming
    model, in one pass with carried state. What ``transcribe`` and ``eval`` do with every long file."""
    long = _transcribe_streaming if _streamable(am) else _transcribe_segments
    return long(path, am, chunk, decoder, torch.device(device), duration, gate)


@torch.no_grad()
def transcribe_files(am: AcousticModel, paths: Sequence[str | Path], device: torch.device | str = "cpu",
                     max_batch: int = 16, progress: bool = True, decoder: Decoder | None = None,
                     chunk: ChunkConfig | None = None,
                     on_result: Callable[[Transcript], None] | None = None,
                     gate: SilenceGate | None = GATE) -> list[Transcript]:
    """Transcribe audio files in order. Files up to ``chunk.min_segment_s`` long are batched; longer ones are
    segmented in bounded memory (:func:`transcribe_long_file`). Missing, non-regular and unreadable files get
    ``error`` set and the run goes on; audio that ``gate`` finds without speech gets empty text. ``on_result`` sees each
    transcript as soon as it and every earlier one are done (for writing output incrementally)."""
    dev = torch.device(device)
    chunk = chunk or ChunkConfig()
    frame_s = frame_seconds(am)
    rec = Recognizer(am, decoder)
    out: list[Transcript | None] = []
    pending: list[tuple[int, torch.Tensor, float]] = []  # (index, normalised features, seconds cut off the start)
    emitted = 0

    def emit() -> None:
        nonlocal emitted
        while emitted < len(out) and out[emitted] is not None:
            if on_result:
                on_result(out[emitted])  # type: ignore[arg-type]
            emitted += 1

    def flush() -> None:
        if not pending:
            return
        logps = rec.log_probs([f for _, f, _ in pending], dev)
        for (k, _, cut_s), logp in zip(pending, logps, strict=True):
            hyp = rec.best(logp)  # decoded and post-processed (a pinyin model writes characters)
            t = out_pending[k]
            t.text, t.words = hyp.text, timed_words(hyp.words, logp, frame_s)
            t.pinyin = hyp.extra.get("pinyin")
            for w in t.words:  # back on the file's time line when endpointing cut its start
                w.start, w.end = w.start + cut_s, w.end + cut_s
            out[k] = _finish(t)
        pending.clear()
        emit()

    out_pending: dict[int, Transcript] = {}
    bar = tqdm(paths, desc="transcribe", unit="file", disable=not progress)
    for p in bar:
        k = len(out)
        out.append(None)
        try:
            duration = file_duration(p)
            if duration > chunk.min_segment_s:
                out[k] = transcribe_long_file(p, am, chunk, decoder, dev, duration, gate)
                emit()
                continue
            wav = rec.frontend.load(p)
        except AudioError as e:
            log.error("%s", e)
            out[k] = Transcript(str(p), None, str(e))
            emit()
            continue
        if gate is not None and not speech_present(wav, gate):
            out[k] = _finish(Transcript(str(p), "", None, wav.size / SAMPLE_RATE))
            emit()
            continue
        out_pending[k] = Transcript(str(p), None, None, wav.size / SAMPLE_RATE)
        feats, cut = rec.frontend.features(wav)
        pending.append((k, feats, cut * am.config.features.hop_ms / 1000.0))
        if len(pending) >= max_batch:
            flush()
    flush()
    return [t for t in out if t is not None]


def _transcribe_segments(path: str | Path, am: AcousticModel, chunk: ChunkConfig,
                         decoder: Decoder | None, device: torch.device, duration: float,
                         gate: SilenceGate | None) -> Transcript:
    frame_s = frame_seconds(am)
    words: list[TimedWord] = []
    pinyin: list[str] = []

    def keep(offset: int, hyp: Hypothesis, logp: np.ndarray) -> None:
        words.extend(timed_words((Word(w.text, w.start + offset, w.end + offset) for w in hyp.words),
                                 logp, frame_s, offset))
        if hyp.extra.get("pinyin"):
            pinyin.append(hyp.extra["pinyin"])

    hyp = decode_segments(segment_log_probs(path, am, chunk, device, gate), Recognizer(am, decoder),
                          on_segment=keep)
    return _finish(Transcript(str(path), hyp.text, None, duration, words,
                              pinyin=" ".join(pinyin) if am.hanzi is not None else None))


def _streamable(am: AcousticModel) -> bool:
    from deepspeech.inference.streaming import StreamingError, check_streamable

    try:
        check_streamable(am)
        return True
    except StreamingError:
        return False


def _transcribe_streaming(path: str | Path, am: AcousticModel, chunk: ChunkConfig,
                          decoder: Decoder | None, device: torch.device, duration: float,
                          gate: SilenceGate | None) -> Transcript:
    """A long file through a streaming (unidirectional) model: block by block with carried state, so the result is
    that of the whole file in one pass (no segmentation) in bounded memory, and equals the streaming server's.
    The silence gate judges the whole file, as a detector over the server's stream does."""
    from deepspeech.inference.streaming import StreamingModel

    if gate is not None:  # read ahead to the first speech (a silent file: to its end, without the network)
        detector = SpeechDetector(gate)
        for block in stream_audio(path, chunk.block_s):
            detector.update(block)
            if detector.speech:
                break
        if not detector.speech:
            return _finish(Transcript(str(path), "", None, duration))
    engine = StreamingModel(am, device)
    s = engine.run(stream_audio(path, chunk.block_s))
    logp = s.all_log_probs(engine.vocab)
    hyp = engine.final_hypothesis(s, decoder)
    return _finish(Transcript(str(path), hyp.text, None, duration, timed_words(hyp.words, logp, frame_seconds(am)),
                              pinyin=hyp.extra.get("pinyin")))


# ---------------------------------------------------------------------------------------------------- output


def _timestamp(t: float, sep: str) -> str:
    ms = int(round(t * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def cues(words: Sequence[TimedWord], lang: str, max_s: float = 5.0, max_chars: int = 42,
         pause_s: float = 0.6) -> list[tuple[float, float, str]]:
    """Subtitle cues: words grouped until a cue would pass ``max_s`` or ``max_chars``, or a pause."""
    sep = " " if lang == "en" else ""
    out: list[tuple[float, float, str]] = []
    cur: list[TimedWord] = []
    for w in words:
        if cur and (w.end - cur[0].start > max_s or len(sep.join(x.word for x in cur + [w])) > max_chars
                    or w.start - cur[-1].end > pause_s):
            out.append((cur[0].start, cur[-1].end, sep.join(x.word for x in cur)))
            cur = []
        cur.append(w)
    if cur:
        out.append((cur[0].start, cur[-1].end, sep.join(x.word for x in cur)))
    return out


def render(t: Transcript, fmt: str, lang: str) -> str:
    """One transcript in a per-file format (txt, srt, vtt) or as one JSON line (jsonl)."""
    if fmt == "jsonl":
        return json.dumps(t.to_json(), ensure_ascii=False) + "\n"
    if fmt == "txt":
        return (t.text or "") + "\n"
    lines = ["WEBVTT", ""] if fmt == "vtt" else []
    sep = "." if fmt == "vtt" else ","
    for k, (a, b, text) in enumerate(cues(t.words, lang), 1):
        if fmt == "srt":
            lines.append(str(k))
        lines += [f"{_timestamp(a, sep)} --> {_timestamp(b, sep)}", text, ""]
    return "\n".join(lines) + ("\n" if lines else "")


def output_path(audio: str, out_dir: Path, fmt: str, root: str | None) -> Path:
    """DIR/<audio path relative to the inputs' common folder, suffix replaced by the format>."""
    rel = os.path.relpath(os.path.abspath(audio), root) if root else os.path.basename(audio)
    return out_dir / Path(rel).with_suffix("." + fmt)


def done_in_jsonl(path: Path) -> set[str]:
    """Paths already transcribed (without error) in an existing JSON Lines output; bad lines are ignored."""
    done: set[str] = set()
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("error") is None and row.get("text") is not None:
            done.add(str(row.get("path")))
    return done
