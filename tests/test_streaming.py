"""deepspeech.inference.streaming: batched, chunked streaming equals the whole-utterance forward pass."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepspeech.checkpoint import AcousticModel
from deepspeech.decoding.greedy import greedy_decode_logp
from deepspeech.frontend.features import FeatureStats, extract
from deepspeech.inference.streaming import StreamingError, StreamingModel
from deepspeech.model.config import ds2_convs
from deepspeech.model.ds2 import DeepSpeech2
from deepspeech.presets import get_preset, tiny
from deepspeech.text import english_tokenizer

# The streamed and whole-utterance passes compute the same sums over the same frames, but through different GEMM
# shapes (batch composition, chunk lengths), so they differ by float32 accumulation order only: observed <= 5e-7
# on log-probs of order 1..10; 1e-4 leaves room and still catches any off-by-one frame (differences of order 1).
ATOL = 1e-4


def random_streaming_model(rnn_type: str = "gru", n_convs: int = 2, lookahead: int = 10, seed: int = 0
                           ) -> AcousticModel:
    """A real tiny-streaming network with random weights and random batch-norm statistics (eval mode)."""
    torch.manual_seed(seed)
    cfg = get_preset("tiny-streaming")
    convs = cfg.model.convs if n_convs == 2 else ds2_convs(n_convs, (4, 4, 4))
    mc = dataclasses.replace(cfg.model, vocab_size=29, rnn_type=rnn_type, convs=convs, lookahead=lookahead,
                             rnn_hidden=64)
    cfg = dataclasses.replace(cfg, model=mc)
    model = DeepSpeech2(mc)
    for m in model.modules():
        if hasattr(m, "running_mean"):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    stats = FeatureStats(tuple([-6.0] * 161), tuple([3.0] * 161))
    return AcousticModel(model.eval(), english_tokenizer(), stats, cfg)


def whole(am: AcousticModel, wav: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        f = am.stats.normalize(extract(wav, am.config.features))[None]
        logits, _ = am.model(f, torch.tensor([f.shape[1]]))
        return torch.log_softmax(logits[0], -1).numpy()


MODELS = {(r, n, la): random_streaming_model(r, n, la) for r, n, la in
          [("gru", 2, 10), ("lstm", 1, 3), ("rnn", 3, 0)]}


@settings(max_examples=12, deadline=None)
@given(key=st.sampled_from(sorted(MODELS)), lengths=st.lists(st.integers(1, 24_000), min_size=1, max_size=4),
       seed=st.integers(0, 2**16))
def test_batched_chunked_stream_equals_whole_utterance(key: tuple[str, int, int], lengths: list[int],
                                                       seed: int) -> None:
    am = MODELS[key]
    sm = StreamingModel(am)
    rng = np.random.default_rng(seed)
    wavs = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in lengths]
    sessions = [sm.new_session() for _ in wavs]
    pos = [0] * len(wavs)
    outs: list[list[np.ndarray]] = [[] for _ in wavs]
    while not all(s.finished for s in sessions):
        # A random subset of the open streams, each with a random amount of new audio (0 included).
        idx = [i for i, s in enumerate(sessions) if not s.finished and rng.random() < 0.7]
        chunks, finals = [], []
        for i in idx:
            k = int(rng.integers(0, 4000))
            chunks.append(wavs[i][pos[i]: pos[i] + k])
            pos[i] += k
            finals.append(pos[i] >= wavs[i].size)
        for i, r in zip(idx, sm.step([sessions[i] for i in idx], chunks, finals), strict=True):
            outs[i].append(r)
    for i, w in enumerate(wavs):
        ref = whole(am, w)
        got = np.concatenate(outs[i])
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)
        assert np.array_equal(got, sessions[i].all_log_probs(29))


@pytest.mark.parametrize("key", sorted(MODELS))
def test_streams_in_lockstep_equal_whole_utterance(key: tuple[str, int, int]) -> None:
    """Streams at the same position with equal chunks (the server's usual case) take the step's batched path for
    the convolution and lookahead buffers and hidden states (one cat per buffer and one fused recurrent call instead
    of per-stream copies and packed sequences), final step too."""
    am = MODELS[key]
    sm = StreamingModel(am)
    rng = np.random.default_rng(7)
    wavs = [(rng.standard_normal(9_600) * 0.1).astype(np.float32) for _ in range(3)]
    sessions = [sm.new_session() for _ in wavs]
    outs: list[list[np.ndarray]] = [[] for _ in wavs]
    for a in range(0, 9_600, 1_600):
        fin = a + 1_600 >= 9_600
        for o, r in zip(outs, sm.step(sessions, [w[a: a + 1_600] for w in wavs], [fin] * 3), strict=True):
            o.append(r)
    for w, o in zip(wavs, outs, strict=True):
        np.testing.assert_allclose(np.concatenate(o), whole(am, w), atol=ATOL, rtol=0)


def test_each_session_carries_its_own_row_of_the_model_state() -> None:
    """The engine gathers the sessions' states into one batch and scatters the model's new state back: each session
    keeps a batch of one whose buffers are exactly as wide as its pending frames (so streams at the same position
    gather with one cat), and a session stepped alone goes on where its batch left it."""
    am = MODELS[("lstm", 1, 3)]
    sm = StreamingModel(am)
    rng = np.random.default_rng(3)
    wavs = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in (8_000, 9_000, 6_000)]
    sessions = [sm.new_session() for _ in wavs]
    outs = [sm.step(sessions, [w[:n] for w, n in zip(wavs, (1_600, 3_000, 0), strict=True)], [False] * 3)]
    for s in sessions:
        assert s.state.batch_size == 1
        for buf in (*s.state.convs, s.state.lookahead):
            assert buf is not None and buf.frames.shape[0] == 1 and buf.frames.shape[-1] == buf.lengths[0]
    outs.append(sm.step([sessions[0]], [wavs[0][1_600:]], [True]))
    np.testing.assert_allclose(np.concatenate([outs[0][0], outs[1][0]]), whole(am, wavs[0]), atol=ATOL, rtol=0)


def test_batches_reused_reordered_and_split_equal_whole_utterance() -> None:
    """The engine hands the same sessions, stepped again together in the same order, their last batch as it is
    (no gather, no scatter); another order, a subset or a session alone gathers rows again. Every route gives
    each stream's whole-utterance log-probabilities."""
    am = MODELS[("gru", 2, 10)]
    sm = StreamingModel(am)
    rng = np.random.default_rng(11)
    wavs = [(rng.standard_normal(8_000) * 0.1).astype(np.float32) for _ in range(3)]
    sessions = [sm.new_session() for _ in wavs]
    outs: list[list[np.ndarray]] = [[] for _ in wavs]
    order_by_step = [[0, 1, 2], [0, 1, 2], [2, 0, 1], [2, 0, 1], [0, 2], [1], [0, 1, 2]]
    pos = [0, 0, 0]
    for k, order in enumerate(order_by_step):
        last = k == len(order_by_step) - 1
        chunk = [wavs[i][pos[i]: 8_000 if last else pos[i] + 1_000] for i in order]
        for i, lp in zip(order, sm.step([sessions[i] for i in order], chunk, [last] * len(order)), strict=True):
            outs[i].append(lp)
            pos[i] += 1_000
    for w, o in zip(wavs, outs, strict=True):
        np.testing.assert_allclose(np.concatenate(o), whole(am, w), atol=ATOL, rtol=0)


def test_partial_text_is_the_greedy_prefix() -> None:
    am = MODELS[("gru", 2, 10)]
    sm = StreamingModel(am)
    wav = (np.random.default_rng(1).standard_normal(20_000) * 0.1).astype(np.float32)
    hyp, logp = sm.transcribe(wav, chunk_samples=1_600)
    s = sm.new_session()
    for a in range(0, wav.size, 1_600):
        sm.step([s], [wav[a: a + 1_600]], [a + 1_600 >= wav.size])
        # The incrementally collapsed partial equals greedy decoding of all frames so far.
        assert sm.partial_text(s) == greedy_decode_logp(s.all_log_probs(29), am.tokenizer).text
    assert sm.partial_text(s) == hyp.text and hyp.text  # greedy final == the last partial
    np.testing.assert_allclose(logp, whole(am, wav), atol=ATOL, rtol=0)


def test_finished_stream_and_unstreamable_models_are_refused() -> None:
    am = MODELS[("gru", 2, 10)]
    sm = StreamingModel(am)
    s = sm.new_session()
    sm.step([s], [np.zeros(100, np.float32)], [True])
    assert s.finished and s.num_frames == 1  # shorter than a window: one padded frame, as offline
    with pytest.raises(StreamingError, match="finished"):
        sm.step([s], [np.zeros(10, np.float32)], [False])
    bi = tiny("en")
    with pytest.raises(StreamingError, match="bidirectional"):
        StreamingModel(AcousticModel(DeepSpeech2(dataclasses.replace(bi.model, vocab_size=29)), english_tokenizer(),
                                     am.stats, bi))
    norm = dataclasses.replace(am.config, features=dataclasses.replace(am.config.features, utterance_norm="mean"))
    with pytest.raises(StreamingError, match="per-utterance"):
        StreamingModel(dataclasses.replace(am, config=norm))
    trim = dataclasses.replace(am.config, features=dataclasses.replace(am.config.features, trim_db=30.0))
    with pytest.raises(StreamingError, match="endpointing"):
        StreamingModel(dataclasses.replace(am, config=trim))
    warp = dataclasses.replace(am.config, features=dataclasses.replace(am.config.features, warp_search=(0.9, 1.0)))
    with pytest.raises(StreamingError, match="warp search"):
        StreamingModel(dataclasses.replace(am, config=warp))
