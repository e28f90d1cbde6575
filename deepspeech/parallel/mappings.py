"""Communication functions with their autograd pairs (Megatron-LM, arXiv 1909.08053 section 3, the f/g operators).

Every function returns its input unchanged when the group is None or has one rank, so the single-process path
runs the same code without communication.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def group_size(group: dist.ProcessGroup | None) -> int:
    return 1 if group is None else dist.get_world_size(group)


class _AllReduceSum(torch.autograd.Function):
    """forward: all-reduce (sum) over the group; backward: all-reduce (sum) of the gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def all_reduce_sum_with_grad(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Differentiable sum over ranks: each rank gets sum_r x_r; the gradient of each x_r is sum_r grad_r.

    Used for statistics shared across data-parallel ranks (synchronised sequence-wise batch norm).
    """
    if group_size(group) == 1:
        return x
    return _AllReduceSum.apply(x, group)


def all_reduce_sum(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """In-place sum over ranks without autograd (metrics, counters). Returns ``x``."""
    if group_size(group) > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
    return x
