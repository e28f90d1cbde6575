"""Batched inference: evaluation on a manifest and transcription of audio files (greedy or beam decoding).

``eval`` reads every utterance as ``transcribe`` reads the same file: one longer than the segmenting threshold goes
through the long-recording path (:func:`deepspeech.inference.transcribe.transcribe_long_file`, bounded memory), and
audio without speech-level energy (:mod:`deepspeech.frontend.silence`) reads as empty text without running the network.
Short utterances take the one path of every route: :mod:`deepspeech.frontend.front_end` (audio, features) and
:class:`deepspeech.inference.recognizer.Recognizer` (network, decoder, post-processing); ``lm tune`` takes the same path
up to the log-probabilities (:func:`collect_log_probs`). :func:`evaluate_dataset` is the trainer's dev evaluation of a
bare network on an already-built dataset."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from deepspeech.checkpoint import AcousticModel
from deepspeech.data.dataset import SpeechDataset
from deepspeech.data.manifest import Utterance
from deepspeech.data.sampler import FRAMES_PER_SECOND
from deepspeech.decoding.beam import BeamSearchDecoder
from deepspeech.decoding.greedy import greedy_decode
from deepspeech.frontend.audio import AudioError
from deepspeech.frontend.silence import SilenceGate, speech_present
from deepspeech.inference.longform import GATE, ChunkConfig
from deepspeech.inference.recognizer import Recognizer
from deepspeech.inference.transcribe import file_duration, transcribe_long_file
from deepspeech.inference.warp_search import Forward
from deepspeech.metrics import ErrorCounts
from deepspeech.model.ds2 import DeepSpeech2
from deepspeech.text import CharTokenizer, normalize_zh

log = logging.getLogger(__name__)


def length_batches(durations: Sequence[float], max_frames: int, max_batch: int,
                   frames_per_second: float = FRAMES_PER_SECOND) -> Iterator[list[int]]:
    """Indices grouped by similar duration for padding-efficient inference (order restored by the caller)."""
    order = np.argsort(np.asarray(durations), kind="stable").tolist()
    cur: list[int] = []
    for i in order:
        longest = max([durations[j] for j in cur] + [durations[i]]) * frames_per_second
        if cur and ((len(cur) + 1) * longest > max_frames or len(cur) >= max_batch):
            yield cur
            cur = []
        cur.append(i)
    if cur:
        yield cur


@torch.no_grad()
def decode_texts(logits: torch.Tensor, lengths: torch.Tensor, tokenizer: CharTokenizer,
                 decoder: BeamSearchDecoder | None = None) -> list[str]:
    """(B, T, V) logits -> best texts: greedy, or beam search when ``decoder`` is given."""
    if decoder is None:
        return [r.text for r in greedy_decode(logits, lengths, tokenizer)]
    logp = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
    return [nbest[0].text for nbest in decoder.decode_batch(logp, lengths.tolist())]


def evaluate_dataset(model: DeepSpeech2, dataset: SpeechDataset, indices: Sequence[int], device: torch.device,
                     max_frames: int = 40_000, max_batch: int = 64, progress: bool = False,
                     hypotheses: dict[int, str] | None = None,
                     decoder: BeamSearchDecoder | None = None,
                     forward: Forward | None = None) -> ErrorCounts:
    """Decode ``indices`` of ``dataset`` (greedy, or ``decoder``) and count errors against normalised references.
    ``forward`` replaces ``model(feats, lengths)``: a loaded model's
    :func:`deepspeech.inference.warp_search.acoustic_forward`."""
    was_training = model.training
    model.eval()
    counts = ErrorCounts()
    durs = [dataset.utts[i].duration_s for i in indices]
    groups = list(length_batches(durs, max_frames, max_batch))
    for group in tqdm(groups, desc="eval", disable=not progress, leave=False):
        idx = [indices[g] for g in group]
        batch = dataset.batch(idx)
        if batch is None:
            continue
        logits, lengths = (forward or model)(batch.feats.to(device), batch.lengths.to(device))
        texts = decode_texts(logits, lengths, dataset.tokenizer, decoder)
        for i, ref, hyp in zip(batch.indices, batch.texts, texts, strict=True):
            counts.add(ref, hyp, dataset.tokenizer.metric_lang)
            if hypotheses is not None:
                hypotheses[i] = hyp
    model.train(was_training)
    return counts


def _short_log_probs(rec: Recognizer, utts: Sequence[Utterance], indices: Sequence[int],
                     device: torch.device | str, gate: SilenceGate | None, progress: bool, desc: str,
                     max_frames: int = 40_000, max_batch: int = 64) -> Iterator[tuple[int, np.ndarray | None]]:
    """(index, (T', V) log-probabilities) of ``utts[indices]``, batched by similar duration through the one path
    (front end, network); (index, None) for audio that ``gate`` finds without speech. Unreadable audio is
    reported and left out."""
    fps = 1000.0 / rec.frontend.cfg.hop_ms
    groups = list(length_batches([utts[i].duration_s for i in indices], max_frames, max_batch, fps))
    for group in tqdm(groups, desc=desc, disable=not progress, leave=False):
        items: list[tuple[int, torch.Tensor]] = []
        for i in (indices[g] for g in group):
            try:
                wav = rec.frontend.load(utts[i].audio)
            except AudioError as e:
                log.warning("skipping utterance: %s", e)
                continue
            if gate is not None and not speech_present(wav, gate):
                yield i, None
                continue
            items.append((i, rec.frontend.features(wav)[0]))
        yield from zip([i for i, _ in items], rec.log_probs([f for _, f in items], device), strict=True)


def evaluate_manifest(am: AcousticModel, utts: Sequence[Utterance], device: torch.device | str = "cpu",
                      progress: bool = True, decoder: BeamSearchDecoder | None = None,
                      chunk: ChunkConfig | None = None, gate: SilenceGate | None = GATE
                      ) -> tuple[ErrorCounts, list[dict[str, object]]]:
    """WER/CER of a loaded model on utterances; also returns per-utterance records (audio, ref, hyp; hyp None for
    unreadable audio). Utterances up to ``chunk.min_segment_s`` are batched; longer ones are read as ``transcribe``
    reads a long file (segmented in pauses, bounded memory). Audio that ``gate`` finds without speech reads as "".
    A pinyin model with a lexicon is scored on the characters it writes; its records keep ``ref_pinyin`` and
    ``hyp_pinyin``."""
    chunk = chunk or ChunkConfig()
    short, long = [], []
    for i, u in enumerate(utts):
        try:
            seconds = file_duration(u.audio) or u.duration_s
        except AudioError:
            seconds = 0.0  # the dataset reports it
        (long if seconds > chunk.min_segment_s else short).append(i)
    rec = Recognizer(am, decoder)
    hyps: dict[int, str | None] = {}
    pinyin: dict[int, str | None] = {}
    for i, logp in _short_log_probs(rec, utts, short, device, gate, progress, "eval"):
        hyp = rec.best(logp) if logp is not None else None  # decoded and post-processed, as transcribe does
        hyps[i] = hyp.text if hyp is not None else ""
        pinyin[i] = hyp.extra.get("pinyin") if hyp is not None else ""
    for i in tqdm(long, desc="eval long", disable=not progress or not long, leave=False):
        try:
            t = transcribe_long_file(utts[i].audio, am, chunk, decoder, device, gate=gate)
        except AudioError as e:
            log.warning("skipping utterance: %s", e)
            continue
        hyps[i], pinyin[i] = t.text, t.pinyin
    lang = am.text_lang
    counts = ErrorCounts()
    records: list[dict[str, object]] = []
    for i, u in enumerate(utts):
        ref = normalize_zh(u.text) if am.hanzi is not None else am.tokenizer.normalize(u.text)
        r: dict[str, object] = {"audio": u.audio, "ref": ref, "hyp": hyps.get(i)}
        if am.hanzi is not None:
            r["ref_pinyin"], r["hyp_pinyin"] = am.tokenizer.normalize(u.text), pinyin.get(i)
        if r["hyp"] is not None:
            counts.add(ref, str(r["hyp"]), lang)
        records.append(r)
    return counts, records


@torch.no_grad()
def collect_log_probs(am: AcousticModel, utts: Sequence[Utterance], device: torch.device | str = "cpu",
                      progress: bool = True, max_frames: int = 40_000, max_batch: int = 64
                      ) -> list[tuple[np.ndarray, str]]:
    """Per-utterance (T, V) float32 log-probabilities and normalised reference, in manifest order (for tuning
    decoders: the network runs once, the decoder many times). Unreadable utterances are skipped with a warning."""
    rec = Recognizer(am)
    out: dict[int, tuple[np.ndarray, str]] = {}
    for i, logp in _short_log_probs(rec, utts, range(len(utts)), device, None, progress, "acoustic model",
                                    max_frames, max_batch):
        assert logp is not None  # no gate: every readable utterance goes through the network
        out[i] = (logp, am.tokenizer.normalize(utts[i].text))
    if len(out) < len(utts):
        log.warning("%d of %d utterances could not be read", len(utts) - len(out), len(utts))
    return [out[i] for i in sorted(out)]
