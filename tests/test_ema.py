"""Weight averaging (deepspeech/training/ema.py): the update rule, its warm-up, and that applying it is undone."""

from __future__ import annotations

import pytest
import torch

from deepspeech.training.ema import WeightEMA


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


def test_update_is_the_exponential_average_with_warm_up() -> None:
    model = _model()
    ema = WeightEMA(model, decay=0.9)
    w0 = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model, step=0)  # warm-up: d = min(0.9, 1/10) = 0.1
    torch.testing.assert_close(ema.shadow["0.weight"], 0.1 * w0 + 0.9 * (w0 + 1.0))
    for step in range(1, 200):
        ema.update(model, step)  # the model stands still: the average converges to it
    torch.testing.assert_close(ema.shadow["0.weight"], model[0].weight.detach(), atol=1e-6, rtol=0)


def test_batch_norm_statistics_are_averaged_and_counters_copied() -> None:
    model = _model()
    ema = WeightEMA(model, decay=0.5)
    model.train()
    model(torch.randn(16, 3) + 5.0)
    ema.update(model, step=1000)  # d = 0.5
    torch.testing.assert_close(ema.shadow["1.running_mean"], 0.5 * model[1].running_mean)
    assert int(ema.shadow["1.num_batches_tracked"]) == 1


def test_applied_swaps_in_the_average_and_restores_the_live_weights() -> None:
    model = _model()
    ema = WeightEMA(model, decay=0.9)
    with torch.no_grad():
        model[0].weight.mul_(3.0)
    live = model[0].weight.detach().clone()
    with ema.applied(model) as m:
        assert m is model
        torch.testing.assert_close(model[0].weight.detach(), live / 3.0)
    assert torch.equal(model[0].weight.detach(), live)


def test_bad_decay_and_mismatched_state_are_refused() -> None:
    with pytest.raises(ValueError, match="decay"):
        WeightEMA(_model(), decay=1.0)
    ema = WeightEMA(_model(), decay=0.9)
    with pytest.raises(ValueError, match="do not match"):
        ema.load({"0.weight": torch.zeros(4, 3)})
