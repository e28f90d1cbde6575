"""Communication functions with their autograd pairs: every collective of the parallel core lives here.

Tensor parallelism (Megatron-LM, arXiv 1909.08053 section 3): the conjugate operators f and g around a
column-parallel -> row-parallel pair. ``copy_to_tp`` is f (forward identity, backward all-reduce) and
``reduce_from_tp`` is g (forward all-reduce, backward identity).

Sequence parallelism (arXiv 2205.05198 section 4.2.2): outside the tensor-parallel regions activations are split
along the sequence dimension (dim 0 of the (s, b, h) layout), and g / g-bar become all-gather and reduce-scatter:
``gather_from_sp`` (forward all-gather, backward reduce-scatter) enters a tensor-parallel region and
``reduce_scatter_to_sp`` (forward reduce-scatter, backward all-gather) leaves one.

Groups are always passed in. Every function returns its input unchanged when the group is None or has one rank,
so the single-process path runs the same code without communication.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

# torch >= 2.10 names the flat-tensor collectives *_single; older releases only have the *_tensor names.
_all_gather_flat = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_flat = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def group_size(group: dist.ProcessGroup | None) -> int:
    return 1 if group is None else dist.get_world_size(group)


def group_rank(group: dist.ProcessGroup | None) -> int:
    return 0 if group is None else dist.get_rank(group)


def divide(n: int, parts: int, what: str = "size") -> int:
    """n / parts, or a ValueError naming ``what`` when it does not divide."""
    if n % parts:
        raise ValueError(f"{what} {n} is not divisible by {parts}")
    return n // parts


# --- plain collectives (no autograd) -------------------------------------------------------------------------------

def all_reduce_sum(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """In-place sum over ranks without autograd (metrics, counters). Returns ``x``."""
    if group_size(group) > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
    return x


def all_reduce_max(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """In-place maximum over ranks without autograd. Returns ``x``."""
    if group_size(group) > 1:
        dist.all_reduce(x, op=dist.ReduceOp.MAX, group=group)
    return x


def split_along(x: torch.Tensor, dim: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    """This rank's contiguous chunk of ``x`` along ``dim`` (no communication)."""
    t = group_size(group)
    if t == 1:
        return x
    size = divide(x.shape[dim], t, f"dimension {dim} of shape {tuple(x.shape)}")
    return x.narrow(dim, group_rank(group) * size, size).contiguous()


def gather_along(x: torch.Tensor, dim: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Concatenate every rank's ``x`` along ``dim`` (all-gather), rank order."""
    t = group_size(group)
    if t == 1:
        return x
    out = torch.empty((t * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    _all_gather_flat(out, x.contiguous(), group=group)
    if dim in (0, -x.dim()):
        return out
    return torch.cat(out.chunk(t, dim=0), dim=dim)


def reduce_scatter_first(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Sum over ranks, each rank keeping its chunk along dim 0: (s, ...) -> (s/t, ...)."""
    t = group_size(group)
    if t == 1:
        return x
    size = divide(x.shape[0], t, f"dimension 0 of shape {tuple(x.shape)}")
    out = torch.empty((size, *x.shape[1:]), dtype=x.dtype, device=x.device)
    _reduce_scatter_flat(out, x.contiguous(), op=dist.ReduceOp.SUM, group=group)
    return out


# --- autograd pairs ------------------------------------------------------------------------------------------------

class _AllReduceSum(torch.autograd.Function):
    """forward: all-reduce (sum) over the group; backward: all-reduce (sum) of the gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return all_reduce_sum(x.clone(), group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return all_reduce_sum(grad.clone(), ctx.group), None


class _CopyToTP(torch.autograd.Function):
    """forward: identity; backward: all-reduce (sum) of the gradient (Megatron's f)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return all_reduce_sum(grad.clone(), ctx.group), None


class _ReduceFromTP(torch.autograd.Function):
    """forward: all-reduce (sum); backward: identity (Megatron's g)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        return all_reduce_sum(x.clone(), group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class _ScatterToTP(torch.autograd.Function):
    """forward: keep this rank's chunk of the last dimension; backward: all-gather along the last dimension."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return split_along(x, -1, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return gather_along(grad, -1, ctx.group), None


class _GatherFromTP(torch.autograd.Function):
    """forward: all-gather along the last dimension; backward: keep this rank's chunk of the gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return gather_along(x, -1, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return split_along(grad, -1, ctx.group), None


class _ScatterToSP(torch.autograd.Function):
    """forward: keep this rank's chunk of the sequence (dim 0); backward: all-gather along the sequence."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return split_along(x, 0, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return gather_along(grad, 0, ctx.group), None


class _GatherFromSP(torch.autograd.Function):
    """forward: all-gather along the sequence (dim 0); backward: reduce-scatter (or split) of the gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup, grad_is_partial: bool) -> torch.Tensor:
        ctx.group, ctx.grad_is_partial = group, grad_is_partial
        return gather_along(x, 0, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        if ctx.grad_is_partial:
            return reduce_scatter_first(grad, ctx.group), None, None
        return split_along(grad, 0, ctx.group), None, None


class _ReduceScatterToSP(torch.autograd.Function):
    """forward: reduce-scatter along the sequence (dim 0); backward: all-gather of the gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return reduce_scatter_first(x, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return gather_along(grad, 0, ctx.group), None


def all_reduce_sum_with_grad(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Differentiable sum over ranks: each rank gets sum_r x_r; the gradient of each x_r is sum_r grad_r.

    Used for statistics shared across data-parallel ranks (synchronised sequence-wise batch norm).
    """
    return x if group_size(group) == 1 else _AllReduceSum.apply(x, group)


def copy_to_tp(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """forward: identity; backward: all-reduce. Enters a tensor-parallel region (f in 1909.08053 fig. 3)."""
    return x if group_size(group) == 1 else _CopyToTP.apply(x, group)


def reduce_from_tp(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """forward: all-reduce; backward: identity. Leaves a tensor-parallel region (g in 1909.08053 fig. 3)."""
    return x if group_size(group) == 1 else _ReduceFromTP.apply(x, group)


def scatter_to_tp(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """forward: split the last dimension, keep this rank's chunk; backward: all-gather the last dimension."""
    return x if group_size(group) == 1 else _ScatterToTP.apply(x, group)


def gather_from_tp(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """forward: all-gather the last dimension; backward: split it, keep this rank's chunk."""
    return x if group_size(group) == 1 else _GatherFromTP.apply(x, group)


def scatter_to_sp(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """forward: split the sequence (dim 0), keep this rank's chunk; backward: all-gather the sequence.

    Enters the sequence-parallel part of the model from a replicated tensor (after the embedding).
    """
    return x if group_size(group) == 1 else _ScatterToSP.apply(x, group)


def gather_from_sp(x: torch.Tensor, group: dist.ProcessGroup | None, grad_is_partial: bool = True) -> torch.Tensor:
    """forward: all-gather the sequence (dim 0); backward: reduce-scatter the gradient (g in 2205.05198 fig. 5).

    ``grad_is_partial=False`` when every rank's gradient is already complete (then backward only splits).
    """
    return x if group_size(group) == 1 else _GatherFromSP.apply(x, group, grad_is_partial)


def reduce_scatter_to_sp(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """forward: reduce-scatter along the sequence (dim 0); backward: all-gather (g-bar in 2205.05198 fig. 5)."""
    return x if group_size(group) == 1 else _ReduceScatterToSP.apply(x, group)
