"""The one path from audio to text (issue 31): every route shares the front end and the post-processing.

1. Sample rates: a file at 8, 22.05, 44.1 or 48 kHz gives the same text, words and log-probabilities whether it is
   transcribed or evaluated offline, or its PCM is fed at its own rate, in uneven chunks, to the streaming engine
   (what the server's streams do: ``serving.stream`` hands the client's PCM to the engine, whose front end
   resamples it). Resampling is one soxr HQ filter: whole-signal and chunked resampling give identical samples.
2. A pinyin model writes characters on every route: eval (short and long files), transcribe (short files, long
   files through the streaming engine), the streaming engine's partials and finals, and the server's dispatcher.
   Before the one post-processing step, the streaming routes wrote pinyin.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from deepspeech.checkpoint import AcousticModel, load_model_dir
from deepspeech.data.manifest import Utterance
from deepspeech.frontend.features import FeatureStats
from deepspeech.frontend.front_end import MODEL_RATE, FrontEnd, Resampler, resample
from deepspeech.frontend.silence import DEFAULT_GATE
from deepspeech.inference.evaluate import evaluate_manifest
from deepspeech.inference.longform import ChunkConfig
from deepspeech.inference.recognizer import Recognizer
from deepspeech.inference.streaming import StreamingModel
from deepspeech.inference.transcribe import frame_seconds, timed_words, transcribe_files

REPO = Path(__file__).resolve().parents[1]
FSDD = REPO / "data" / "fsdd" / "audio"
RATES = (8_000, 22_050, 44_100, 48_000)
FILES = ["0_theo_0.flac", "5_yweweler_2.flac", "9_theo_4.flac"]
# Streamed and whole-utterance passes compute the same sums over the same frames through different GEMM shapes
# (chunk lengths), so log-probabilities differ by float32 accumulation order only (streaming-en on these files,
# 8-48 kHz: observed <= 1.2e-5 on log-probs down to about -30); 1e-4 still catches a shifted frame or a resampling
# difference (both of order 0.1-1).
ATOL = 1e-4
CJK = re.compile(r"^[\u3400-\u9fff\uf900-\ufaff]*$")


@pytest.mark.parametrize("rate", RATES)
def test_chunked_resampling_equals_whole_signal(rate: int) -> None:
    """One resampler for files, uploads and streams: soxr's one-shot and stream resamplers agree bit for bit."""
    rng = np.random.default_rng(rate)
    x = (0.1 * rng.standard_normal(3 * rate)).astype(np.float32)
    rs = Resampler(rate)
    parts, a = [], 0
    while a < x.size:
        k = int(rng.integers(0, rate // 5))
        parts.append(rs(x[a: a + k]))
        a += k
    parts.append(rs(np.zeros(0, np.float32), last=True))
    assert np.array_equal(np.concatenate(parts), resample(x, rate))


def test_front_end_refuses_another_model_rate() -> None:
    from deepspeech.frontend.features import FeatureConfig

    with pytest.raises(ValueError, match="16000"):
        FrontEnd(FeatureConfig(sample_rate=8000))


@pytest.fixture(scope="module")
def streaming_en() -> AcousticModel:
    return load_model_dir(REPO / "models" / "streaming-en")


def _file_at(rate: int, name: str, out: Path) -> tuple[Path, np.ndarray]:
    """An FSDD recording (8 kHz) at ``rate`` with 0.3 s of silence around it, as a 16-bit WAV -> (path, the PCM it
    holds as float, k / 32768: what a client streams)."""
    wav, sr = sf.read(str(FSDD / name), dtype="float32")
    assert sr == 8_000
    if rate != sr:
        wav = soxr.resample(wav, sr, rate, quality="HQ")
    pad = np.zeros(int(0.3 * rate), np.float32)
    pcm = np.clip(np.round(np.concatenate([pad, wav, pad]) * 32768), -32768, 32767).astype(np.int16)
    path = out / f"{Path(name).stem}_{rate}.wav"
    sf.write(str(path), pcm, rate, subtype="PCM_16")
    assert sf.info(str(path)).samplerate == rate
    return path, pcm.astype(np.float32) / 32768.0


@pytest.mark.parametrize("rate", RATES)
def test_stream_at_its_own_rate_equals_offline(rate: int, streaming_en: AcousticModel, tmp_path: Path) -> None:
    am = streaming_en
    engine, rec, frame_s = StreamingModel(am), Recognizer(am), frame_seconds(am)
    for name in FILES:
        path, pcm = _file_at(rate, name, tmp_path)
        (offline,) = transcribe_files(am, [path], progress=False)
        _, records = evaluate_manifest(am, [Utterance(str(path), name[0], pcm.size / rate)], progress=False)
        (ref_logp,) = rec.log_probs([rec.frontend.features(rec.frontend.load(path))[0]])

        s = engine.new_session(rate, DEFAULT_GATE)
        rng, a = np.random.default_rng(rate), 0
        while not s.finished:  # uneven chunks, empty ones included, as a network delivers them
            k = int(rng.integers(0, rate // 10))
            engine.step([s], [pcm[a: a + k]], [a + k >= pcm.size])
            a += k
        hyp = engine.final_hypothesis(s, None)
        logp = s.all_log_probs(engine.vocab)

        assert s.speech and s.samples == pcm.size
        assert offline.text and hyp.text == offline.text == records[0]["hyp"], (rate, name)
        words = timed_words(hyp.words, logp, frame_s)
        assert [(w.word, w.start, w.end) for w in words] == [(w.word, w.start, w.end) for w in offline.words]
        assert logp.shape == ref_logp.shape
        np.testing.assert_allclose(logp, ref_logp, atol=ATOL, rtol=0)


def test_training_features_through_the_front_end_are_unchanged() -> None:
    """The dataset's augmented and plain items equal the order of operations the trainer used before the front
    end: waveform augmentation, spectrogram, endpointing and utterance normalisation, VTLP, statistics, SpecAugment,
    all drawing from one generator seeded by (seed, epoch, index)."""
    from deepspeech.augment.perturb import AugmentConfig, augment_waveform, spec_augment, vtlp
    from deepspeech.data.dataset import SpeechDataset
    from deepspeech.frontend.features import FeatureConfig, extract
    from deepspeech.text import english_tokenizer

    fcfg = FeatureConfig(utterance_norm="smooth_mean", trim_db=40.0)
    stats = FeatureStats((-6.0,) * 161, (3.0,) * 161)
    aug = AugmentConfig(prob=0.7, vtlp=(0.9, 1.1), noise_prob=0.5, noise_kinds=("coloured",), reverb_prob=0.5)
    utts = [Utterance(str(FSDD / f), f[0], 0.5) for f in FILES]
    for augment in (None, aug):
        ds = SpeechDataset(utts, english_tokenizer(), fcfg, stats, cache=False, augment=augment, seed=3)
        ds.set_epoch(2)
        for i, u in enumerate(utts):
            wav = ds.frontend.load(u.audio)
            rng = np.random.default_rng([3, 2, i])
            on = augment is not None and rng.random() < augment.prob
            if on:
                wav = augment_waveform(wav, aug, rng, ds.noise)
            ref = extract(wav, fcfg)
            if on:
                ref = vtlp(ref, float(rng.uniform(*aug.vtlp)))
            ref = stats.normalize(ref)
            if on:
                ref = spec_augment(ref, aug, rng)
            item = ds.get(i)
            assert item is not None and torch.equal(item[0], ref)


# ---------------------------------------------------------------------------------------------------- pinyin


@pytest.fixture(scope="module")
def pinyin_streaming() -> AcousticModel:
    """A tiny unidirectional pinyin model (random weights that emit letters, not only blanks) with the shipped
    ``sentences-zh`` converter: a streaming Mandarin model as the server would serve it."""
    from deepspeech.decoding.hanzi import PinyinToHanzi
    from tests.conftest import tiny_pinyin_model

    model, tok, cfg = tiny_pinyin_model("tiny-streaming-zh")
    am = AcousticModel(model, tok, FeatureStats((-6.0,) * 161, (3.0,) * 161), cfg,
                       PinyinToHanzi.load(REPO / "models" / "sentences-zh" / "hanzi"))
    assert am.text_lang == "zh"
    return am


def _characters(text: str | None, pinyin: str | None, am: AcousticModel) -> None:
    assert text and CJK.match(text), f"not characters: {text!r}"
    if pinyin is not None:
        assert pinyin and not CJK.match(pinyin) and text == am.hanzi.convert(pinyin)


def test_pinyin_streaming_model_writes_characters_on_every_route(pinyin_streaming: AcousticModel,
                                                                 tmp_path: Path) -> None:
    am = pinyin_streaming
    rng = np.random.default_rng(0)
    short, long = tmp_path / "short.wav", tmp_path / "long.wav"
    sf.write(short, (0.1 * rng.standard_normal(12_000)).astype(np.float32), MODEL_RATE)
    sf.write(long, (0.1 * rng.standard_normal(48_000)).astype(np.float32), MODEL_RATE)
    cc = ChunkConfig(min_segment_s=1.0, max_segment_s=2.0)  # long.wav (3 s) takes the long route

    for t in transcribe_files(am, [short, long], chunk=cc, progress=False):  # short: batched; long: streaming
        _characters(t.text, t.pinyin, am)
    _, records = evaluate_manifest(am, [Utterance(str(short), "你好", 0.75), Utterance(str(long), "你好", 3.0)],
                                   progress=False, chunk=cc)
    for r in records:
        _characters(str(r["hyp"]), str(r["hyp_pinyin"]), am)

    engine = StreamingModel(am)
    wav = sf.read(long, dtype="float32")[0]
    s = engine.new_session()
    engine.step([s], [wav[:24_000]], [False])
    _characters(engine.partial_text(s), None, am)
    engine.step([s], [wav[24_000:]], [True])
    hyp = engine.final_hypothesis(s, None)
    _characters(hyp.text, hyp.extra["pinyin"], am)

    from serving.config import ServerConfig
    from serving.dispatch import BatchDispatcher
    from serving.metrics import Metrics

    dispatcher = BatchDispatcher(StreamingModel(am), ServerConfig(), Metrics())
    dispatcher.start()
    messages: list[dict] = []
    done = threading.Event()

    def emit(m: dict) -> None:
        messages.append(m)
        if m["type"] in ("final", "error"):
            done.set()

    try:
        stream = dispatcher.open(emit)
        dispatcher.feed(stream, wav)
        dispatcher.end(stream)
        assert done.wait(60)
    finally:
        dispatcher.stop()
    final = messages[-1]
    assert final["type"] == "final"
    _characters(final["text"], None, am)
    assert final["text"] == hyp.text and [w["word"] for w in final["words"]] == list(final["text"])
    for m in messages[:-1]:
        assert m["type"] == "partial" and CJK.match(m["text"])
