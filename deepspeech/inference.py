"""Batched inference: evaluation on a manifest and transcription of audio files (greedy or beam decoding).

``eval`` reads every utterance as ``transcribe`` reads the same file: one longer than the segmenting threshold goes
through the long-recording path (:func:`deepspeech.transcribe.transcribe_long_file`, bounded memory), and audio
without speech-level energy (:mod:`deepspeech.silence`) reads as empty text without running the network."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from deepspeech.audio import AudioError
from deepspeech.beam import BeamSearchDecoder
from deepspeech.checkpoint import AcousticModel
from deepspeech.data.dataset import SpeechDataset
from deepspeech.data.manifest import Utterance
from deepspeech.data.sampler import FRAMES_PER_SECOND
from deepspeech.decoding import greedy_decode
from deepspeech.longform import GATE, ChunkConfig
from deepspeech.metrics import ErrorCounts
from deepspeech.model import DeepSpeech2
from deepspeech.silence import SilenceGate, speech_present
from deepspeech.text import CharTokenizer, normalize_zh
from deepspeech.transcribe import file_duration, transcribe_long_file
from deepspeech.warp_search import Forward, acoustic_forward

log = logging.getLogger(__name__)


def length_batches(durations: Sequence[float], max_frames: int, max_batch: int) -> Iterator[list[int]]:
    """Indices grouped by similar duration for padding-efficient inference (order restored by the caller)."""
    order = np.argsort(np.asarray(durations), kind="stable").tolist()
    cur: list[int] = []
    for i in order:
        longest = max([durations[j] for j in cur] + [durations[i]]) * FRAMES_PER_SECOND
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
    ``forward`` replaces ``model(feats, lengths)``: a loaded model's :func:`deepspeech.warp_search.acoustic_forward`."""
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


class _GatedDataset(SpeechDataset):
    """A :class:`SpeechDataset` that sets aside audio without speech: :meth:`get` returns None for it and adds its
    index to ``silent`` (read as empty text by the caller, not as a failure)."""

    def __init__(self, *args: object, gate: SilenceGate | None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.gate = gate
        self.silent: set[int] = set()

    def get(self, i: int) -> tuple[torch.Tensor, torch.Tensor, str] | None:
        if i in self.silent:
            return None
        if self.gate is None or i in self._cache or i in self._bad:
            return super().get(i)
        try:
            wav = self._waveform(i)
        except AudioError:
            return super().get(i)  # reports it and remembers it as unreadable
        if not speech_present(wav, self.gate):
            self.silent.add(i)
            return None
        self._wav_cache[i] = wav  # the parent reads it from here instead of loading the file again
        try:
            return super().get(i)
        finally:
            self._wav_cache.pop(i, None)


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
    ds = _GatedDataset(utts, am.tokenizer, am.config.features, am.stats, cache=False, gate=gate)
    hyps: dict[int, str | None] = {}
    evaluate_dataset(am.model, ds, short, torch.device(device), progress=progress, hypotheses=hyps,  # type: ignore[arg-type]
                     decoder=decoder, forward=acoustic_forward(am))
    pinyin: dict[int, str | None] = dict(hyps) if am.hanzi is not None else {}
    if am.hanzi is not None:  # the short ones were decoded to pinyin: convert them as transcribe does
        hyps = {i: am.hanzi.convert(str(h)) for i, h in hyps.items()}
    for i in ds.silent:
        hyps[i] = pinyin[i] = ""
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
    ds = SpeechDataset(utts, am.tokenizer, am.config.features, am.stats, cache=False)
    forward = acoustic_forward(am)
    out: dict[int, tuple[np.ndarray, str]] = {}
    groups = list(length_batches([u.duration_s for u in utts], max_frames, max_batch))
    for group in tqdm(groups, desc="acoustic model", disable=not progress, leave=False):
        batch = ds.batch(group)
        if batch is None:
            continue
        logits, lengths = forward(batch.feats.to(device), batch.lengths.to(device))
        logp = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
        for b, (i, ref) in enumerate(zip(batch.indices, batch.texts, strict=True)):
            out[i] = (np.ascontiguousarray(logp[b, : int(lengths[b])]), ref)
    if len(out) < len(utts):
        log.warning("%d of %d utterances could not be read", len(utts) - len(out), len(utts))
    return [out[i] for i in sorted(out)]
