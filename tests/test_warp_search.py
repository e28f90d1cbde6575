"""Test-time frequency-warp search (deepspeech/inference/warp_search.py): the most confident warp's output, per
utterance."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from deepspeech.augment.perturb import vtlp
from deepspeech.checkpoint import AcousticModel
from deepspeech.frontend.features import FeatureConfig, FeatureStats
from deepspeech.inference.warp_search import WarpSearch, acoustic_forward, warp_search
from deepspeech.model.ds2 import DeepSpeech2
from deepspeech.presets import tiny
from deepspeech.text import english_tokenizer

WARPS = (0.9, 0.95, 1.0, 1.05, 1.1)


def _setup() -> tuple[DeepSpeech2, FeatureStats, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = DeepSpeech2(dataclasses.replace(tiny("en").model, vocab_size=29)).eval()
    g = torch.Generator().manual_seed(1)
    stats = FeatureStats(tuple((torch.rand(161, generator=g) * 4 - 8).tolist()),
                         tuple((torch.rand(161, generator=g) + 1.5).tolist()))
    lengths = torch.tensor([70, 45, 90])
    feats = torch.randn(3, 90, 161, generator=g)
    feats = feats * (torch.arange(90)[None, :, None] < lengths[:, None, None])  # zero past each length, as collate
    return model, stats, feats, lengths


def test_vtlp_of_a_batch_is_vtlp_of_each_utterance() -> None:
    x = torch.randn(3, 20, 161)
    assert torch.equal(vtlp(x, 1.07), torch.stack([vtlp(u, 1.07) for u in x]))


def test_the_identity_warp_gives_the_model_output() -> None:
    model, stats, feats, lengths = _setup()
    plain, plain_len = model(feats, lengths)
    searched, searched_len = warp_search(model, feats, lengths, stats, (1.0,))
    assert torch.equal(plain_len, searched_len)
    # features go back to log power and are normalised again: float32 rounding of (x * std + mean - mean) / std
    torch.testing.assert_close(searched, plain, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_each_utterance_gets_its_most_confident_warp_whatever_the_batch() -> None:
    model, stats, feats, lengths = _setup()
    mean, std = torch.tensor(stats.mean), torch.tensor(stats.std)
    searched, out_len = warp_search(model, feats, lengths, stats, WARPS)
    for b in range(3):
        x = feats[b : b + 1, : int(lengths[b])] * std + mean
        outs = [model((vtlp(x, a) - mean) / std, lengths[b : b + 1]) for a in WARPS]
        conf = [torch.log_softmax(lo[0, : int(n[0])], -1).amax(-1).mean() for lo, n in outs]
        best = max(range(len(WARPS)), key=lambda k: conf[k])
        n = int(out_len[b])
        assert n == int(outs[best][1][0])
        # a batch of 15 padded rows against one unpadded row: the same frames, summed in another order
        torch.testing.assert_close(searched[b, :n], outs[best][0][0, :n], atol=1e-4, rtol=1e-4)
        alone, _ = warp_search(model, feats[b : b + 1, : int(lengths[b])], lengths[b : b + 1], stats, WARPS)
        torch.testing.assert_close(alone[0, :n], searched[b, :n], atol=1e-4, rtol=1e-4)


def test_warp_factors_are_validated() -> None:
    assert FeatureConfig(warp_search=WARPS).warp_search == WARPS
    for bad in [(0.3,), (1.0, 2.5), (float("nan"),)]:
        with pytest.raises(ValueError, match="warp_search"):
            FeatureConfig(warp_search=bad)


@torch.no_grad()
def test_a_loaded_model_reads_through_the_warp_search_its_config_names() -> None:
    """``AcousticModel.forward`` is the network alone; :func:`acoustic_forward` wraps it in :class:`WarpSearch`
    where ``features.warp_search`` lists warps, with the same call signature and the output of :func:`warp_search`."""
    model, stats, feats, lengths = _setup()
    cfg = tiny("en")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=29),
                              features=dataclasses.replace(cfg.features, warp_search=WARPS))
    am = AcousticModel(model, english_tokenizer(), stats, cfg)
    plain, plain_len = am.forward(feats, lengths)
    expected = model(feats, lengths)
    assert torch.equal(plain, expected[0]) and torch.equal(plain_len, expected[1])
    forward = acoustic_forward(am)
    assert isinstance(forward, WarpSearch) and forward.warps == WARPS
    searched, searched_len = forward(feats, lengths)
    direct, direct_len = warp_search(model, feats, lengths, stats, WARPS)
    assert torch.equal(searched, direct) and torch.equal(searched_len, direct_len)
    assert not torch.equal(searched, plain)  # some utterance chose another warp than 1
    am.config = dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, warp_search=()))
    assert acoustic_forward(am) == am.forward  # no warps: the plain forward, nothing wrapped
