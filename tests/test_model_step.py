"""DeepSpeech2.step: streams stepped in pieces, batched together, equal ``forward`` on each whole utterance."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from deepspeech.model.config import ConvSpec, ModelConfig
from deepspeech.model.ds2 import DeepSpeech2
from deepspeech.model.state import FrameBuffer, StepState, time_major

pytestmark = pytest.mark.usefixtures("one_thread")

# Step and forward compute the same sums over the same frames in another order: the step's first convolution runs
# its time taps as channels, batches hold other rows and other chunk lengths (other GEMM blockings), ragged rows run
# packed recurrences. float32 accumulation order only: observed <= 3e-7 on logits of magnitude <= 0.7 (AVX2, one
# thread). 2e-5 leaves ~60x room for other CPUs' kernels and still catches a wrong frame or padding: neighbouring
# frames differ by 2e-2 to 0.4, and a change in the last input frame moves the last logits by >= 2e-5 (mostly 1e-3).
ATOL = 2e-5

CONVS = {
    "1 conv, time stride 2": (ConvSpec(4, (5, 5), (2, 2)),),
    "2 convs (DS2 strides)": (ConvSpec(4, (5, 5), (2, 2)), ConvSpec(3, (3, 5), (2, 1))),
    "3 convs, time strides 1, 2, 2": (ConvSpec(3, (3, 3), (2, 1)), ConvSpec(4, (5, 5), (2, 2)),
                                      ConvSpec(2, (3, 7), (1, 2))),
}
MODELS = [(rnn, convs, la) for rnn in ("gru", "lstm", "rnn") for convs, la in
          [("1 conv, time stride 2", 0), ("2 convs (DS2 strides)", 3), ("3 convs, time strides 1, 2, 2", 2)]]
MODELS += [("gru", "3 convs, time strides 1, 2, 2", 0), ("lstm", "2 convs (DS2 strides)", 0)]


def small_model(rnn_type: str, convs: str, lookahead: int, seed: int = 0) -> DeepSpeech2:
    """Random weights and random batch-norm statistics, in eval mode."""
    torch.manual_seed(seed)
    cfg = ModelConfig(n_features=33, vocab_size=7, convs=CONVS[convs], rnn_type=rnn_type, rnn_layers=2,
                      rnn_hidden=16, bidirectional=False, lookahead=lookahead)
    model = DeepSpeech2(cfg)
    for m in model.modules():
        if hasattr(m, "running_mean"):
            m.running_mean.normal_(0, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    return model.eval()


def whole(model: DeepSpeech2, feats: torch.Tensor) -> torch.Tensor:
    """forward on one utterance (T, F) -> logits (T', V)."""
    with torch.no_grad():
        y, _ = model(feats[None], torch.tensor([feats.shape[0]]))
    return y[0]


def stream(model: DeepSpeech2, utts: list[torch.Tensor], rng: np.random.Generator, max_chunk: int,
           p_step: float = 0.7) -> list[torch.Tensor]:
    """Each utterance fed to ``model.step`` in random pieces (0 frames included); each call a random subset of the
    unfinished streams, so rows of one batch hold different amounts at different positions. -> logits per stream."""
    states = model.initial_state(len(utts)).split()
    pos, done = [0] * len(utts), [False] * len(utts)
    outs: list[list[torch.Tensor]] = [[] for _ in utts]
    while not all(done):
        idx = [i for i in range(len(utts)) if not done[i] and rng.random() < p_step]
        if not idx:
            continue
        pieces, finals = [], []
        for i in idx:
            k = int(rng.integers(0, max_chunk + 1))
            pieces.append(utts[i][pos[i]: pos[i] + k])
            pos[i] += k
            finals.append(pos[i] >= utts[i].shape[0])
        lengths = [p.shape[0] for p in pieces]
        feats = torch.zeros(len(idx), max(lengths), utts[0].shape[1])
        for j, p in enumerate(pieces):
            feats[j, : p.shape[0]] = p
        feats[torch.arange(max(lengths))[None, :] >= torch.tensor(lengths)[:, None]] = 7.0  # ignored padding
        with torch.no_grad():
            y, out_n, new = model.step(feats, lengths, StepState.cat([states[i] for i in idx]), finals)
        assert y.shape[0] == len(idx) and y.shape[1] == max(out_n)
        for j, (i, row) in enumerate(zip(idx, new.split(), strict=True)):
            outs[i].append(y[j, : out_n[j]])
            states[i] = row
            done[i] = finals[j]
    return [torch.cat(o) for o in outs]


@pytest.mark.parametrize("rnn_type,convs,lookahead", MODELS)
@pytest.mark.parametrize("seed,max_chunk", [(0, 3), (1, 12), (2, 40)])
def test_ragged_chunked_batch_equals_forward(rnn_type: str, convs: str, lookahead: int, seed: int,
                                             max_chunk: int) -> None:
    model = small_model(rnn_type, convs, lookahead)
    g = torch.Generator().manual_seed(seed)
    utts = [torch.randn(n, 33, generator=g) for n in (1, 7, 30, 61)]
    got = stream(model, utts, np.random.default_rng(seed), max_chunk)
    for x, y in zip(utts, got, strict=True):
        ref = whole(model, x)
        assert y.shape == ref.shape
        torch.testing.assert_close(y, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("rnn_type,convs,lookahead", MODELS)
def test_lockstep_streams_equal_forward(rnn_type: str, convs: str, lookahead: int) -> None:
    """Streams at the same position with equal chunks (the server's usual case): the batched paths (one cat per
    buffer, one fused recurrent call), including the final call with its right padding."""
    model = small_model(rnn_type, convs, lookahead)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 40, 33, generator=g)
    state = model.initial_state(3)
    outs = []
    with torch.no_grad():
        for a in range(0, 40, 8):
            y, out_n, state = model.step(x[:, a: a + 8], [8] * 3, state, [a + 8 >= 40] * 3)
            assert len(set(out_n)) == 1
            outs.append(y)
    got = torch.cat(outs, dim=1)
    for i in range(3):
        torch.testing.assert_close(got[i], whole(model, x[i]), atol=ATOL, rtol=0)


@pytest.mark.parametrize("chunk", [1, 1000])
def test_frame_by_frame_and_all_at_once(chunk: int) -> None:
    model = small_model("gru", "3 convs, time strides 1, 2, 2", 2)
    x = torch.randn(45, 33, generator=torch.Generator().manual_seed(4))
    state, outs = model.initial_state(), []
    with torch.no_grad():
        for a in range(0, 45, chunk):
            y, out_n, state = model.step(x[None, a: a + chunk], [min(chunk, 45 - a)], state, [a + chunk >= 45])
            outs.append(y[0, : out_n[0]])
    torch.testing.assert_close(torch.cat(outs), whole(model, x), atol=ATOL, rtol=0)


def test_empty_final_call_flushes_the_buffers() -> None:
    """A stream whose last call brings no frames: the right padding alone completes its last outputs."""
    model = small_model("lstm", "2 convs (DS2 strides)", 3)
    x = torch.randn(20, 33, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y1, n1, state = model.step(x[None], [20], model.initial_state(), [False])
        y2, n2, _ = model.step(x.new_zeros(1, 0, 33), [0], state, [True])
    assert n2[0] > 0
    torch.testing.assert_close(torch.cat([y1[0, : n1[0]], y2[0, : n2[0]]]), whole(model, x), atol=ATOL, rtol=0)


def test_state_split_and_cat_round_trip() -> None:
    model = small_model("lstm", "3 convs, time strides 1, 2, 2", 2)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, 9, 33, generator=g)
    with torch.no_grad():
        _, _, state = model.step(x, [9, 4, 0], model.initial_state(3), [False] * 3)
    rows = state.split()
    assert [r.batch_size for r in rows] == [1, 1, 1]
    for r in rows:  # a stream's own state is exactly as wide as its pending frames
        assert all(b.frames.shape[-1] == b.lengths[0] for b in r.convs)
    again = StepState.cat(rows)
    for a, b in zip(again.convs + (again.lookahead,), state.convs + (state.lookahead,), strict=True):
        assert isinstance(a, FrameBuffer) and isinstance(b, FrameBuffer)
        assert a.lengths == b.lengths
        for i, n in enumerate(a.lengths):
            torch.testing.assert_close(a.frames[i, ..., :n], b.frames[i, ..., :n], atol=0, rtol=0)
    for a, b in zip(again.rnns, state.rnns, strict=True):
        torch.testing.assert_close(a.h, b.h, atol=0, rtol=0)
        torch.testing.assert_close(a.c, b.c, atol=0, rtol=0)
    # The row without frames kept its initial state.
    assert float(state.rnns[0].h[2].abs().max()) == 0.0


def test_lockstep_buffers_stay_time_major_and_rows_cut_alike() -> None:
    """Lockstep steps keep every buffer time-major (appending frames is then one contiguous copy per row, no
    transposing gather: a speed property a layout slip would lose silently), through the engine's gather of rows
    too; ``row(i)`` is ``split()[i]``."""
    model = small_model("gru", "2 convs (DS2 strides)", 3)
    x = torch.randn(4, 16, 33, generator=torch.Generator().manual_seed(8))
    state = model.initial_state(4)
    with torch.no_grad():
        for a in range(0, 16, 8):
            _, _, state = model.step(x[:, a: a + 8], [8] * 4, state, [False] * 4)
    bufs = (*state.convs, state.lookahead)
    assert all(b is not None and time_major(b.frames) for b in bufs)
    rows = state.split()
    for i, r in enumerate(rows):
        again = state.row(i)
        for a, b in zip((*again.convs, again.lookahead), (*r.convs, r.lookahead), strict=True):
            assert isinstance(a, FrameBuffer) and isinstance(b, FrameBuffer)
            assert a.lengths == b.lengths and torch.equal(a.frames, b.frames)
        assert all(torch.equal(a.h, b.h) for a, b in zip(again.rnns, r.rnns, strict=True))
    gathered = StepState.cat(rows)
    assert all(b is not None and time_major(b.frames) for b in (*gathered.convs, gathered.lookahead))


def test_new_weights_reach_the_cached_step_weights() -> None:
    """The step keeps channels-last copies of the convolution weights with their batch norms folded in (and the
    recurrent and output layers' folded input weights); loading other weights must refresh them all."""
    model = small_model("gru", "2 convs (DS2 strides)", 3, seed=0)
    other = small_model("gru", "2 convs (DS2 strides)", 3, seed=1)
    x = torch.randn(25, 33, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        model.step(x[None], [25], model.initial_state(), [True])
        model.load_state_dict(other.state_dict())
        y, n, _ = model.step(x[None], [25], model.initial_state(), [True])
    torch.testing.assert_close(y[0, : n[0]], whole(other, x), atol=ATOL, rtol=0)


def test_step_needs_eval_mode_and_a_unidirectional_model() -> None:
    model = small_model("gru", "1 conv, time stride 2", 0)
    x = torch.randn(1, 5, 33)
    with pytest.raises(RuntimeError, match="eval mode"):
        model.train().step(x, [5], model.initial_state(), [True])
    bi = DeepSpeech2(dataclasses.replace(model.cfg, bidirectional=True)).eval()
    with pytest.raises(ValueError, match="bidirectional"), torch.no_grad():
        bi.step(x, [5], bi.initial_state(), [True])
