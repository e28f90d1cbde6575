"""bf16 autocast on the CPU (``deepspeech train --bf16``, ``TrainConfig.cpu_amp``): the fused GRU's large products in
bfloat16 stay close to float32, and a short training run follows the float32 run's loss curve.

bfloat16 keeps 8 significant bits (relative rounding error 2^-9 = 0.2%); products accumulate in float32, so a
layer's outputs and gradients differ from float32 by a few tenths of a percent of their norm. The bands below are
about 5x the largest differences seen, and a difference of exactly zero fails: it would mean bf16 never ran.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from deepspeech.native.build import cpu_has_fast_bf16, load_extension
from deepspeech.native.gru import gru_layer
from tests.conftest import run_cli
from tests.test_training import train_args


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.skipif(load_extension("gru") is None, reason="native GRU did not build here")
def test_fused_gru_under_cpu_autocast_is_bf16_and_close_to_float32() -> None:
    g = torch.Generator().manual_seed(0)
    B, T, I, H = 4, 50, 96, 64
    x = torch.randn(B, T, I, generator=g)
    params = [torch.randn(3 * H, I, generator=g) * 0.1, torch.randn(3 * H, H, generator=g) * 0.1,
              torch.randn(3 * H, generator=g) * 0.1, torch.randn(3 * H, generator=g) * 0.1]

    def run(bf16: bool) -> list[torch.Tensor]:
        xs = x.clone().requires_grad_(True)
        ps = [p.clone().requires_grad_(True) for p in params]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out, _ = gru_layer(xs.bfloat16() if bf16 else xs, None, *ps, native=True)  # a bf16 input, as conv gives
        assert out.dtype == torch.float32
        (out * torch.linspace(-1, 1, H)).sum().backward()
        return [out.detach(), xs.grad, *(p.grad for p in ps)]  # type: ignore[misc]

    ref, amp = run(False), run(True)
    for name, a, b in zip(["out", "dx", "dW_ih", "dW_hh", "db_ih", "db_hh"], amp, ref, strict=True):
        assert 0 < _rel(a, b) < 2e-2, (name, _rel(a, b))


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.skipif(not cpu_has_fast_bf16(),
                    reason="no AMX or AVX512-BF16 here: cpu_amp trains in float32 (the trainer says so)")
def test_bf16_training_follows_the_float32_loss_curve(tmp_path: Path, fsdd_small: tuple[Path, Path]) -> None:
    train, dev = fsdd_small
    steps = ["max_steps=30", "epochs=10", "optim.lr=3e-3", "optim.warmup_steps=5"]
    for name, extra in (("fp32", []), ("bf16", ["--bf16"])):
        res = run_cli("train", *train_args(train, dev, tmp_path / name, *steps), *extra)
        assert res.returncode == 0, res.stderr[-2000:]
    fp32, bf16 = _losses(tmp_path / "fp32"), _losses(tmp_path / "bf16")
    assert len(fp32) == len(bf16) == 30
    config = json.loads((tmp_path / "bf16" / "last" / "config.json").read_text())
    assert config.get("config", config)["cpu_amp"] is True
    assert fp32 != bf16  # bf16 ran
    # Same batches and initial weights: the curves start together and both learn (the batches differ in length, so
    # the mean of the last ten losses is compared with the first ten's); the rounding compounds over the steps,
    # so later losses are held to a band around float32's (largest difference seen: 2.2% of the loss).
    assert abs(bf16[0] - fp32[0]) < 0.01 * fp32[0]
    for curve in (fp32, bf16):
        assert sum(curve[-10:]) < 0.75 * sum(curve[:10]), curve
    worst = max(abs(a - b) / b for a, b in zip(bf16, fp32, strict=True))
    assert worst < 0.1, worst
