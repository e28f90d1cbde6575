"""Activation memory of one transformer layer, measured against arXiv 2205.05198 (sections 4 and 5, Table 2).

Measured: the bytes autograd saves for backward during one layer's forward in bfloat16 (CPU), counted through
``torch.autograd.graph.saved_tensors_hooks`` as unique storages, parameters and buffers excluded. Dropout masks are
bool tensors, 1 byte per element, as the paper counts them. Formulas, per layer, in bytes:

=========================================  ==========================
no parallelism                              sbh (34 + 5as/h)
tensor parallel                             sbh (10 + 24/t + 5as/(ht))
tensor + sequence parallel                  sbh (34 + 5as/h) / t
tensor + sequence parallel + selective      34 sbh / t
=========================================  ==========================

plus, for reference, selective recomputation without sequence parallelism sbh (10 + 24/t) and full recomputation
2sbh (2sbh/t with sequence parallelism). The small rest is LayerNorm's saved mean and 1/std (4 fp32 numbers per
token and layer). Rows with t > 1 run in t local gloo processes.

Mamba-2 layers (a hybrid pattern's "M": x + mixer(RMSNorm(x)), lm.gpt.HybridLayer) are measured the same way
against lm.mamba2.activation_bytes (the mixer, mixer config lm.mamba2.Mamba2Config() at d_model = h) plus the
RMSNorm's saved fp32 tensors (its input upcast and normalised, 4h bytes each, and 1/rms, 4 bytes: (8h + 4) per token
of the local sequence, in any activation dtype); full recomputation keeps the layer input only.

    deepspeech lm memory --tp 2          (the command and its options: deepspeech.cli.lm)
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from lm.gpt import GPTConfig, build_layer
from lm.mamba2 import Mamba2Config, activation_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerShape:
    """s, b, h, a of the measured layer; the defaults make every formula term a whole number of sbh."""

    s: int = 128  # sequence length
    b: int = 4  # micro-batch
    h: int = 128  # hidden size
    a: int = 8  # attention heads (5as/h = 40)


@dataclass(frozen=True)
class Case:
    name: str
    sp: bool
    recompute: str
    formula: Callable[[LayerShape, int], float]  # bytes per layer for (shape, t)
    in_test: bool = True  # one of the four configurations of Table 2 checked by the tests
    kind: str = "transformer"  # or "mamba": a Mamba-2 layer of a hybrid pattern


def _sbh(x: LayerShape) -> float:
    return float(x.s * x.b * x.h)


CASES: tuple[Case, ...] = (
    Case("no parallelism", False, "none", lambda x, t: _sbh(x) * (34 + 5 * x.a * x.s / x.h)),
    Case("tensor parallel", False, "none", lambda x, t: _sbh(x) * (10 + 24 / t + 5 * x.a * x.s / (x.h * t))),
    Case("tensor + sequence parallel", True, "none", lambda x, t: _sbh(x) * (34 + 5 * x.a * x.s / x.h) / t),
    Case("tensor + sequence parallel + selective recompute", True, "selective", lambda x, t: _sbh(x) * 34 / t),
    Case("tensor parallel + selective recompute", False, "selective", lambda x, t: _sbh(x) * (10 + 24 / t), False),
    Case("full recompute", False, "full", lambda x, t: _sbh(x) * 2, False),
    Case("tensor + sequence parallel + full recompute", True, "full", lambda x, t: _sbh(x) * 2 / t, False),
)


def _mamba_formula(x: LayerShape, t: int, sp: bool, recompute: str) -> float:
    """A Mamba-2 layer's bytes in bf16: the mixer's activation_bytes plus the RMSNorm's (8h + 4) per local token."""
    tokens = x.s * x.b // (t if sp else 1)
    if recompute == "full":
        return 2.0 * tokens * x.h
    mixer = replace(Mamba2Config(), d_model=x.h, sequence_parallel=sp and t > 1)
    return float(activation_bytes(mixer, x.s, x.b, t, element_bytes=2) + (8 * x.h + 4) * tokens)


MAMBA_CASES: tuple[Case, ...] = (
    Case("Mamba-2 layer", False, "none", lambda x, t: _mamba_formula(x, t, False, "none"), False, "mamba"),
    Case("Mamba-2 layer + sequence parallel", True, "none", lambda x, t: _mamba_formula(x, t, True, "none"),
         False, "mamba"),
    Case("Mamba-2 layer + full recompute", False, "full", lambda x, t: _mamba_formula(x, t, False, "full"),
         False, "mamba"),
)


def saved_bytes(fn: Callable[[], torch.Tensor], exclude: nn.Module) -> tuple[int, torch.Tensor]:
    """Bytes of the distinct storages autograd saves while running ``fn``, without ``exclude``'s parameters and
    buffers; and fn's output (keep it alive: it holds the graph)."""
    skip = {t.untyped_storage().data_ptr() for t in itertools.chain(exclude.parameters(), exclude.buffers())}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip and storage.nbytes():
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def measure_layer(shape: LayerShape, case: Case, group: torch.distributed.ProcessGroup | None = None) -> int:
    """Bytes saved for backward by one training-mode layer (dropout 0.1, bfloat16) in ``case``'s configuration."""
    t = 1 if group is None else torch.distributed.get_world_size(group)
    cfg = GPTConfig(vocab_size=8, layers=1, hidden=shape.h, heads=shape.a, seq_len=shape.s, dropout=0.1,
                    recompute=case.recompute, sequence_parallel=case.sp and t > 1)
    if case.kind == "mamba":  # dropout off: the transformer formulas' dropout masks are not the mixer's
        cfg = replace(cfg, dropout=0.0, positions="none", hybrid_override_pattern="M", mamba=Mamba2Config())
    layer = build_layer(cfg, group, seed=0, index=0).to(torch.bfloat16).train()
    s_local = shape.s // t if cfg.sequence_parallel else shape.s
    x = torch.randn(s_local, shape.b, shape.h, dtype=torch.bfloat16, requires_grad=True)
    n, out = saved_bytes(lambda: layer(x), layer)
    out.float().sum().backward()  # runs the recomputation and the backward collectives on every rank alike
    return n


def _row(shape: LayerShape, case: Case, t: int, measured: int) -> dict[str, object]:
    formula = case.formula(shape, t)
    return {"configuration": case.name, "t": t, "measured_bytes": measured, "formula_bytes": round(formula),
            "ratio": round(measured / formula, 4), "in_table_2": case.in_test}


def _tp_rows(shape: LayerShape, t: int) -> list[dict[str, object]]:
    """On each of t gloo ranks: the rows of the tensor-parallel cases."""
    from deepspeech.parallel import ParallelDims, init_parallel

    state = init_parallel(ParallelDims(tp=t))
    return [_row(shape, c, t, measure_layer(shape, c, state.tp_group))
            for c in (*CASES, *MAMBA_CASES) if c.name not in ("no parallelism", "Mamba-2 layer + full recompute")]


def memory_table(shape: LayerShape, tp: int = 2) -> list[dict[str, object]]:
    """Every case at t = 1 (this process) and, for tp > 1, the tensor-parallel cases at t = tp (tp processes)."""
    torch.manual_seed(0)
    rows = [_row(shape, c, 1, measure_layer(shape, c)) for c in (*CASES, *MAMBA_CASES)
            if c.name == "no parallelism" or not c.sp]
    if tp > 1:
        from deepspeech.parallel.workers import GlooWorkers

        with GlooWorkers(tp) as workers:
            rows += workers.run(_tp_rows, shape, tp)[0]
    return rows


def format_table(shape: LayerShape, rows: list[dict[str, object]]) -> str:
    head = f"activation bytes per layer, bf16, s={shape.s} b={shape.b} h={shape.h} a={shape.a} (arXiv 2205.05198)"
    lines = [head, f"{'configuration':50} {'t':>2} {'measured':>10} {'formula':>10} {'ratio':>7}"]
    for r in rows:
        lines.append(f"{r['configuration']!s:50} {r['t']!s:>2} {r['measured_bytes']!s:>10} "
                     f"{r['formula_bytes']!s:>10} {float(r['ratio']):7.4f}")  # type: ignore[arg-type]
    return "\n".join(lines)


def run_memory(args: argparse.Namespace) -> int:
    d = LayerShape()
    shape = LayerShape(*(getattr(args, k) or getattr(d, k) for k in ("s", "b", "h", "a")))
    rows = memory_table(shape, args.tp)
    if args.format == "json":
        for r in rows:
            print(json.dumps({**asdict(shape), **r}))
    else:
        print(format_table(shape, rows))
    return 0
