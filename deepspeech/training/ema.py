"""Exponential moving average of the weights (Polyak averaging; the EMA form of Polyak & Juditsky 1992 used by
TensorFlow's ``ExponentialMovingAverage`` and by large speech models): validation and the shipped ``best/`` model
use the averaged weights, which on small corpora generalise better than the last iterate's and swing less from
epoch to epoch.

After every optimizer step, for each parameter and floating-point buffer ``v`` (batch-norm running statistics
included, so the averaged model carries statistics that match its averaged weights):

    shadow <- d * shadow + (1 - d) * v,   d = min(decay, (1 + step) / (10 + step))

The warm-up of ``d`` keeps the first steps' random weights from dominating short runs. Integer buffers (batch-norm
step counters) are copied. The shadow lives on the model's device, in the model's dtypes.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class WeightEMA:
    """Shadow copy of ``model.state_dict()`` updated by :meth:`update` after each optimizer step."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        """Fold the model's current weights in; ``step`` counts optimizer steps taken before this one."""
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if s.is_floating_point():
                s.lerp_(v.detach(), 1.0 - d)
            else:
                s.copy_(v)

    def load(self, shadow: dict[str, torch.Tensor]) -> None:
        """Restore a saved shadow (resuming); keys and shapes must match the model's."""
        if shadow.keys() != self.shadow.keys():
            raise ValueError("saved EMA weights do not match the model")
        for k, v in shadow.items():
            self.shadow[k].copy_(v)

    @contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Within the block the model holds the averaged weights; the live ones come back after."""
        live = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            model.load_state_dict(live)
