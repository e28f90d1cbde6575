"""Tensor-parallel layers (Megatron-LM, arXiv 1909.08053 section 3) with sequence parallelism (2205.05198 s. 4.2).

* :class:`ColumnParallelLinear` splits the output features: Y_i = X A_i. Entered through ``copy_to_tp`` (f), or with
  sequence parallelism through an all-gather of the sequence whose input is saved as the local shard only and
  re-gathered in backward (2205.05198 section 4.2.2).
* :class:`RowParallelLinear` splits the input features: Y = sum_i X_i A_i, the sum an all-reduce (g), or with
  sequence parallelism a reduce-scatter along the sequence (g-bar).
* :class:`VocabParallelEmbedding` and :func:`vocab_parallel_cross_entropy` split the vocabulary; the loss never
  gathers the full-vocabulary logits (1909.08053 section 3, last paragraph).

Every layer draws its FULL weight from a generator seeded by ``(seed, name)`` and keeps its slice, so a model on t
ranks is an exact shard of the one-rank model built with the same seed. Sharded parameters carry ``tp_dim`` (the
split dimension); replicated ones that see only a sequence shard under sequence parallelism carry
``sequence_parallel = True`` and need :func:`sync_sequence_parallel_grads` after backward.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from deepspeech.parallel.mappings import (
    all_reduce_max,
    all_reduce_sum,
    copy_to_tp,
    divide,
    gather_along,
    group_rank,
    group_size,
    reduce_from_tp,
    reduce_scatter_first,
    reduce_scatter_to_sp,
)

Group = dist.ProcessGroup | None


def init_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator that depends only on (seed, name): initialisation independent of layout and build order."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def sharded_normal(shape: tuple[int, ...], std: float, seed: int, name: str, dim: int | None,
                   group: Group) -> torch.Tensor:
    """Draw the full ``shape`` from N(0, std) and keep this rank's chunk along ``dim`` (all of it when None)."""
    full = torch.empty(shape).normal_(0.0, std, generator=init_generator(seed, name))
    if dim is None or group_size(group) == 1:
        return full
    size = divide(shape[dim], group_size(group), f"dimension {dim} of {name} {shape}")
    return full.narrow(dim, group_rank(group) * size, size).clone()


def mark(p: nn.Parameter, tp_dim: int | None = None, sequence_parallel: bool = False) -> nn.Parameter:
    p.tp_dim = tp_dim  # type: ignore[attr-defined]
    p.sequence_parallel = sequence_parallel  # type: ignore[attr-defined]
    return p


def sharded_dropout(x: torch.Tensor, p: float, training: bool, dim: int | None = None,
                    group: Group = None) -> torch.Tensor:
    """Dropout whose mask is this rank's chunk (along ``dim``) of the mask the one-rank model would draw.

    Draws uniform noise of the full (unsplit) shape from the default generator, which every tensor-parallel rank
    advances identically, and keeps the local chunk: replicated regions get identical masks, split regions get
    disjoint parts of one mask, and TP=t equals TP=1 even with dropout on. Recomputation (torch.utils.checkpoint)
    restores the default generator, so recomputed masks are the same. Saves a bool mask (1 byte per element).
    """
    if not training or p == 0.0:
        return x
    shape = list(x.shape)
    t = group_size(group)
    if dim is not None and t > 1:
        shape[dim] *= t
    noise = torch.rand(shape, device=x.device)
    if dim is not None and t > 1:
        noise = noise.narrow(dim, group_rank(group) * x.shape[dim], x.shape[dim])
    keep = noise >= p
    return x * keep * (1.0 / (1.0 - p))


class _SequenceParallelLinear(torch.autograd.Function):
    """Y = all_gather_seq(X) A^T + b, saving only the local sequence shard X (2205.05198 section 4.2.2).

    forward: all-gather along the sequence, then the matmul; backward: all-gather X again for the weight
    gradient, reduce-scatter the input gradient.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                group: dist.ProcessGroup) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.group, ctx.has_bias = group, bias is not None
        return torch.nn.functional.linear(gather_along(x, 0, group), weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, None]:
        x, weight = ctx.saved_tensors
        # Under bf16 autocast the forward matmul ran in bf16 on fp32 inputs: backward in the gradient's dtype, and
        # gradients returned in the inputs' dtypes (fp32 master weights).
        total = gather_along(x, 0, ctx.group).to(grad.dtype)
        grad_input = reduce_scatter_first(grad.matmul(weight.to(grad.dtype)), ctx.group).to(x.dtype)
        grad_weight = grad.reshape(-1, grad.shape[-1]).t().matmul(total.reshape(-1, total.shape[-1]))
        grad_weight = grad_weight.to(weight.dtype)
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0).to(weight.dtype) if ctx.has_bias else None
        return grad_input, grad_weight, grad_bias, None


def column_parallel_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, group: Group,
                           sequence_parallel: bool = False) -> torch.Tensor:
    """x: (s, b, in) or, sequence-parallel, (s/t, b, in); weight: (out/t, in) -> (s, b, out/t)."""
    if sequence_parallel and group_size(group) > 1:
        return _SequenceParallelLinear.apply(x, weight, bias, group)
    return torch.nn.functional.linear(copy_to_tp(x, group), weight, bias)


class ColumnParallelLinear(nn.Module):
    """Linear layer with the output features split over the tensor-parallel group: (s, b, in) -> (s, b, out/t)."""

    def __init__(self, in_features: int, out_features: int, group: Group, *, seed: int, name: str,
                 std: float = 0.02, bias: bool = True, sequence_parallel: bool = False) -> None:
        super().__init__()
        self.group, self.sequence_parallel = group, sequence_parallel
        self.out_local = divide(out_features, group_size(group), f"{name}: output features")
        self.weight = mark(nn.Parameter(sharded_normal((out_features, in_features), std, seed, name, 0, group)), 0)
        self.bias = mark(nn.Parameter(torch.zeros(self.out_local)), 0) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return column_parallel_linear(x, self.weight, self.bias, self.group, self.sequence_parallel)


class RowParallelLinear(nn.Module):
    """Linear layer with the input features split: (s, b, in/t) -> (s, b, out), or (s/t, b, out) sequence-parallel.

    The partial products are summed by an all-reduce (or a reduce-scatter along the sequence); the bias is added
    once, after the sum.
    """

    def __init__(self, in_features: int, out_features: int, group: Group, *, seed: int, name: str,
                 std: float = 0.02, bias: bool = True, sequence_parallel: bool = False) -> None:
        super().__init__()
        self.group, self.sequence_parallel = group, sequence_parallel
        divide(in_features, group_size(group), f"{name}: input features")
        self.weight = mark(nn.Parameter(sharded_normal((out_features, in_features), std, seed, name, 1, group)), 1)
        sp = sequence_parallel and group_size(group) > 1
        self.bias = mark(nn.Parameter(torch.zeros(out_features)), None, sp) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        partial = torch.nn.functional.linear(x, self.weight)
        if self.sequence_parallel:
            out = reduce_scatter_to_sp(partial, self.group)
        else:
            out = reduce_from_tp(partial, self.group)
        return out if self.bias is None else out + self.bias


class VocabParallelEmbedding(nn.Module):
    """Embedding with the vocabulary rows split: ids (s, b) -> (s, b, h), each rank looking up its own rows.

    Ids outside this rank's range give zero rows; the all-reduce (g) sums the one non-zero contribution.
    """

    def __init__(self, vocab_size: int, hidden: int, group: Group, *, seed: int, name: str,
                 std: float = 0.02) -> None:
        super().__init__()
        self.group = group
        self.vocab_local = divide(vocab_size, group_size(group), f"{name}: vocabulary size")
        self.start = group_rank(group) * self.vocab_local
        self.weight = mark(nn.Parameter(sharded_normal((vocab_size, hidden), std, seed, name, 0, group)), 0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if group_size(self.group) == 1:
            return torch.nn.functional.embedding(ids, self.weight)
        outside = (ids < self.start) | (ids >= self.start + self.vocab_local)
        local = (ids - self.start).masked_fill(outside, 0)
        rows = torch.nn.functional.embedding(local, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_tp(rows, self.group)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Cross-entropy over vocabulary-split logits: max, target logit and sum of exponentials are all-reduced."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, target: torch.Tensor, group: Group) -> torch.Tensor:
        v_local = logits.shape[-1]
        x = logits.float()
        x = x - all_reduce_max(x.max(dim=-1).values, group).unsqueeze(-1)  # the global max: exp() cannot overflow
        start = group_rank(group) * v_local
        outside = (target < start) | (target >= start + v_local)
        local = (target - start).masked_fill(outside, 0)
        picked = x.gather(-1, local.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0.0)
        all_reduce_sum(picked, group)
        exp = x.exp_()
        sum_exp = all_reduce_sum(exp.sum(dim=-1), group)
        loss = sum_exp.log() - picked
        softmax = exp.div_(sum_exp.unsqueeze(-1))
        ctx.save_for_backward(softmax, outside, local)
        ctx.dtype = logits.dtype
        return loss

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        softmax, outside, local = ctx.saved_tensors
        g = softmax.clone()
        g.scatter_add_(-1, local.unsqueeze(-1), -(~outside).unsqueeze(-1).to(g.dtype))
        return (g * grad.unsqueeze(-1)).to(ctx.dtype), None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, group: Group) -> torch.Tensor:
    """Per-token loss (...) from this rank's logits (..., v/t) and global target ids (...), in float32."""
    return _VocabParallelCrossEntropy.apply(logits, target, group)


def sync_sequence_parallel_grads(params: Iterable[nn.Parameter], group: Group) -> None:
    """Sum over the tensor-parallel group the gradients of replicated parameters that saw a sequence shard.

    Under sequence parallelism each rank's LayerNorm (and row-parallel bias) gradient covers only its s/t
    positions; the full gradient is their sum (2205.05198 section 4.2.2).
    """
    if group_size(group) == 1:
        return
    grads = [p.grad for p in params if getattr(p, "sequence_parallel", False) and p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce_sum(flat, group)
    for g, new in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        g.copy_(new.view_as(g))


def clip_grad_norm(params: Iterable[nn.Parameter], max_norm: float, group: Group, pp_group: Group = None) -> float:
    """Clip by the global gradient norm of the unsharded model; returns the norm before clipping.

    Sharded parameters (``tp_dim`` set) contribute their squares summed over the group; replicated ones, equal on
    every rank, count once. With a pipeline group the stages' sums are added; a stage's copy of another stage's
    parameter (``pipeline_copy``, the tied embedding) is clipped but not counted.
    """
    with_grad = [p for p in params if p.grad is not None]
    sharded = torch.zeros((), dtype=torch.float64)
    replicated = torch.zeros((), dtype=torch.float64)
    for p in with_grad:
        if getattr(p, "pipeline_copy", False):
            continue
        sq = p.grad.detach().double().pow(2).sum()
        if getattr(p, "tp_dim", None) is not None:
            sharded += sq
        else:
            replicated += sq
    total = all_reduce_sum(sharded, group) + replicated
    norm = math.sqrt(float(all_reduce_sum(total, pp_group)))
    if max_norm > 0 and norm > max_norm:
        for p in with_grad:
            p.grad.mul_(max_norm / (norm + 1e-6))
    return norm
