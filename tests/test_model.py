"""The DS2 model: exact handling of variable lengths, masked batch norm, causality of the streaming family."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from deepspeech.model.config import ConvSpec, ModelConfig, ds2_convs
from deepspeech.model.ds2 import DeepSpeech2, ctc_loss
from deepspeech.model.layers import MaskedBatchNorm

# float32 through a few layers: per-utterance vs padded-batch results differ only by summation order inside
# BLAS/conv kernels (different batch shapes pick different blockings), i.e. a few ulps amplified by depth.
ATOL = 2e-5


def small_cfg(**kw: object) -> ModelConfig:
    base = ModelConfig(n_features=33, vocab_size=7, convs=(ConvSpec(4, (5, 5), (2, 2)), ConvSpec(4, (3, 5), (2, 1))),
                       rnn_layers=2, rnn_hidden=16)
    return dataclasses.replace(base, **kw)


def random_batch(lengths: list[int], f: int = 33, extra_pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    t = max(lengths) + extra_pad
    x = torch.zeros(len(lengths), t, f)
    for i, n in enumerate(lengths):
        x[i, :n] = torch.randn(n, f, generator=g)
    return x, torch.tensor(lengths)


@pytest.mark.parametrize("kind", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_padded_batch_equals_one_by_one_in_eval(kind: str, bidirectional: bool) -> None:
    torch.manual_seed(0)
    cfg = small_cfg(rnn_type=kind, bidirectional=bidirectional, lookahead=0 if bidirectional else 3)
    model = DeepSpeech2(cfg)
    model.train()
    x, lens = random_batch([40, 23, 31])
    model(x, lens)  # populate running statistics so eval differs from the initial identity
    model.eval()
    with torch.no_grad():
        y, out_lens = model(x, lens)
        for i, n in enumerate(lens.tolist()):
            yi, li = model(x[i : i + 1, :n], torch.tensor([n]))
            assert int(li) == int(out_lens[i])
            torch.testing.assert_close(yi[0], y[i, : int(li)], atol=ATOL, rtol=0)


def test_extra_padding_changes_nothing_in_training() -> None:
    """Batch statistics cover valid frames only: more padding gives the same outputs and gradients."""
    torch.manual_seed(0)
    model = DeepSpeech2(small_cfg())
    grads = []
    outs = []
    for pad in (0, 17):
        model.zero_grad()
        x, lens = random_batch([30, 21, 12], extra_pad=pad)
        y, ol = model(x, lens)
        loss = ctc_loss(y, ol, [torch.tensor([1, 2]), torch.tensor([3]), torch.tensor([4, 4])]).sum()
        loss.backward()
        outs.append([y[i, : int(ol[i])] for i in range(3)])
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], atol=1e-4, rtol=1e-4, msg=k)


def test_masked_batch_norm_matches_batchnorm_without_padding() -> None:
    x = torch.randn(4, 10, 6)
    ours = MaskedBatchNorm(6, channel_dim=-1)
    ref = nn.BatchNorm1d(6)
    y = ours(x, torch.ones(4, 10, 1))
    yr = ref(x.reshape(-1, 6)).reshape(4, 10, 6)
    torch.testing.assert_close(y, yr, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)


def test_output_lengths_match_convolutions() -> None:
    cfg = small_cfg()
    model = DeepSpeech2(cfg)
    for t in (1, 2, 7, 50, 51):
        x, lens = random_batch([t])
        y, ol = model(x, lens)
        assert y.shape[1] == int(ol[0]) == int(cfg.output_lengths(torch.tensor([t]))[0])


def test_streaming_model_is_causal_beyond_its_lookahead() -> None:
    """Output frame t of a unidirectional model sees input frames up to 2t + 15 (two 11-wide convs, time stride 2)
    plus 2 * lookahead; perturbing later frames must not change it."""
    torch.manual_seed(0)
    cfg = ModelConfig(n_features=33, vocab_size=7, convs=ds2_convs(2, (4, 4, 4)), rnn_layers=2, rnn_hidden=16,
                      bidirectional=False, lookahead=4)
    model = DeepSpeech2(cfg).eval()
    x, lens = random_batch([80])
    t = 10
    horizon = 2 * t + 15 + 2 * cfg.lookahead
    x2 = x.clone()
    x2[:, horizon + 1 :] += torch.randn_like(x2[:, horizon + 1 :])
    with torch.no_grad():
        y1, _ = model(x, lens)
        y2, _ = model(x2, lens)
    torch.testing.assert_close(y1[:, : t + 1], y2[:, : t + 1], atol=0, rtol=0)
    assert not torch.allclose(y1[:, t + 1 :], y2[:, t + 1 :])


def test_invalid_configs_are_rejected() -> None:
    with pytest.raises(ValueError):
        ModelConfig(rnn_layers=8)
    with pytest.raises(ValueError):
        ModelConfig(lookahead=5, bidirectional=True)
    with pytest.raises(ValueError):
        ModelConfig(rnn_type="transformer")
    with pytest.raises(ValueError):
        ds2_convs(4)
