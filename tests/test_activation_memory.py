"""Activation bytes saved per transformer layer match the formulas of arXiv 2205.05198 (Table 2) within 5%.

Measured in bfloat16 on CPU with saved-tensor hooks (lm.activation_memory); t = 2 rows run in 2 gloo processes.
Mamba-2 layers (hybrid pattern "M") against lm.mamba2.activation_bytes plus the layer's RMSNorm.
Shape s=64, b=2, h=64, a=4 makes every term whole (5as/h = 20) and keeps the run under a second per case.
"""

from __future__ import annotations

import json

import pytest
import torch

from lm.activation_memory import CASES, MAMBA_CASES, LayerShape, memory_table, saved_bytes

SHAPE = LayerShape(s=64, b=2, h=64, a=4)


def layer_norm_stats_bytes_per_token() -> int:
    """What one LayerNorm saves besides its input and weights (its mean and 1/std), per token."""
    ln = torch.nn.LayerNorm(SHAPE.h).to(torch.bfloat16)
    x = torch.randn(10, SHAPE.h, dtype=torch.bfloat16, requires_grad=True)
    n, _ = saved_bytes(lambda: ln(x), ln)
    return (n - x.numel() * x.element_size()) // 10


def test_activation_memory_matches_formulas() -> None:
    """Every row within 5% of its formula, as the issue asks; and, exactly, the only excess is what the paper's
    accounting leaves out: the mean and 1/std of the layer's two LayerNorms (8 bytes per token against 54 h =
    3456 here; none under full recomputation, which keeps only the layer input). The exact check matters because a
    missing dropout mask (sbh/t) would still be inside 5% of a row."""
    rows = memory_table(SHAPE, tp=2)
    names = {(r["configuration"], r["t"]) for r in rows}
    for needed in [("no parallelism", 1), ("tensor parallel", 2), ("tensor + sequence parallel", 2),
                   ("tensor + sequence parallel + selective recompute", 2)]:
        assert needed in names
    stats = layer_norm_stats_bytes_per_token()
    sp = {c.name: c.sp for c in CASES}
    for r in rows:
        assert r["ratio"] == pytest.approx(1.0, abs=0.05), r
        if r["configuration"] not in sp:  # a Mamba-2 row: test_mamba2_layer_rows_match_their_formula
            continue
        tokens = SHAPE.s * SHAPE.b // (r["t"] if sp[r["configuration"]] else 1)
        excess = 0 if "full" in r["configuration"] else 2 * stats * tokens
        assert r["measured_bytes"] == r["formula_bytes"] + excess, r


def test_memory_command_prints_table_rows(capsys: pytest.CaptureFixture[str]) -> None:
    from deepspeech.cli import main

    assert main(["lm", "memory", "--tp", "1", "--s", "32", "--b", "1", "--h", "32", "--a", "2", "--format",
                 "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["configuration"] == "no parallelism" and rows[0]["s"] == 32
    assert all(abs(r["ratio"] - 1) < 0.05 for r in rows)


def test_mamba2_layer_rows_match_their_formula() -> None:
    """The Mamba-2 layer rows (t = 1, t = 2 with and without sequence parallelism, full recomputation): the bytes
    saved equal lm.mamba2.activation_bytes + the RMSNorm's (8h + 4) per local token exactly (so within the issue's
    5%). Exact because the formula counts every saved tensor of the mixer (s = 64 spans 4 chunks of 16, b G/t >= 2:
    the shapes where activation_bytes is exact, see its docstring)."""
    rows = memory_table(SHAPE, tp=2)
    names = {c.name for c in MAMBA_CASES}
    mamba = {(r["configuration"], r["t"]): r for r in rows if r["configuration"] in names}
    assert set(mamba) == {("Mamba-2 layer", 1), ("Mamba-2 layer + full recompute", 1), ("Mamba-2 layer", 2),
                          ("Mamba-2 layer + sequence parallel", 2)}
    for r in mamba.values():
        assert r["measured_bytes"] == r["formula_bytes"], r
