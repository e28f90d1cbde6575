"""Pipeline parallelism: 1F1B and interleaved 1F1B schedules over point-to-point sends, for any model cut into chunks.

Megatron-LM, arXiv 2104.04473:

* Section 2.2.1 (PipeDream-Flush, "1F1B"): rank r of p runs min(p - r - 1, m) warm-up forwards, then alternates one
  forward and one backward, then drains the remaining backwards. At most p micro-batches are in flight per rank
  (instead of m for GPipe), with the same bubble (p - 1) / m.
* Section 2.2.2 (interleaved 1F1B): each rank holds v non-contiguous model chunks (chunk c = k * p + r of the
  p * v chunks), cutting the bubble to (p - 1) / (v m) for v times the point-to-point traffic. Micro-batches go
  through the chunks in groups of p, so m must be a multiple of p.

A model family supplies its chunks (the GPT LM's: lm.stages): ``nn.Module``s called as ``chunk(inputs, targets)``,
where the first chunk takes the micro-batch's inputs and every other chunk the previous chunk's activations, and the
last chunk returns the mean loss (``targets`` is None elsewhere); ``chunk.boundary_shape(microbatch, seq_len)`` is
the shape of the activations that cross a stage boundary. A parameter held twice along the pipeline (a tied
embedding's second copy) carries ``pipeline_copy = True``.

Activations go to the same (dp, tp) coordinates on the next stage. Sends are asynchronous (isend; completed at the
end of the step), receives block, and every message carries a tag unique to (direction, chunk, micro-batch), so the
order of matching never depends on the schedule.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from deepspeech.parallel.dims import ParallelState
from deepspeech.parallel.mappings import all_reduce_sum, divide, group_size

log = logging.getLogger(__name__)

Action = tuple[str, int, int]  # ("F" | "B", local chunk index, micro-batch)


@dataclass
class CommCounter:
    """Bytes this rank sent, by kind ("pp_p2p", "dp_allreduce", ...): ring all-reduce counts 2 (n-1)/n of the data."""

    bytes: dict[str, float] = field(default_factory=dict)

    def add(self, kind: str, n: float) -> None:
        self.bytes[kind] = self.bytes.get(kind, 0.0) + n

    def reset(self) -> None:
        self.bytes.clear()


def chunk_layers(layers: int, pp: int, vpp: int, pp_rank: int, v: int) -> range:
    """Global layer indices of local chunk ``v`` on pipeline rank ``pp_rank`` (global chunk v * pp + pp_rank)."""
    if layers % (pp * vpp):
        raise ValueError(f"model layers {layers} is not divisible by pp * vpp = {pp * vpp} (pp {pp}, vpp {vpp}): "
                         "every pipeline chunk holds the same number of layers")
    per = layers // (pp * vpp)
    c = v * pp + pp_rank
    return range(c * per, (c + 1) * per)


def schedule(pp: int, vpp: int, microbatches: int, pp_rank: int) -> list[Action]:
    """This rank's order of forward ("F") and backward ("B") passes: 1F1B (vpp = 1) or interleaved 1F1B."""
    m = microbatches
    if vpp == 1:
        warm = min(pp - pp_rank - 1, m)
        fwd = [("F", 0, i) for i in range(m)]
        bwd = [("B", 0, i) for i in range(m)]
    else:
        divide(m, pp, "micro-batches for the interleaved schedule (a multiple of pp)")
        total = m * vpp
        warm = min((pp - pp_rank - 1) * 2 + (vpp - 1) * pp, total)

        def at(k: int, backward: bool) -> Action:
            v = (k // pp) % vpp
            return ("B" if backward else "F", vpp - 1 - v if backward else v, (k // (pp * vpp)) * pp + k % pp)

        fwd = [at(k, False) for k in range(total)]
        bwd = [at(k, True) for k in range(total)]
    steady = len(fwd) - warm
    order = fwd[:warm]
    for i in range(steady):
        order += [fwd[warm + i], bwd[i]]
    return order + bwd[steady:]


class _P2P:
    """Tagged sends and receives to the neighbouring pipeline ranks at this rank's (dp, tp) coordinates."""

    def __init__(self, state: ParallelState, vpp: int, microbatches: int, counter: CommCounter | None) -> None:
        self.state, self.vpp, self.m, self.counter = state, vpp, microbatches, counter
        dims, p, r = state.dims, state.dims.pp, state.pp_rank
        self.next = dims.rank_of((r + 1) % p, state.dp_rank, state.tp_rank)
        self.prev = dims.rank_of((r - 1) % p, state.dp_rank, state.tp_rank)
        self.pending: list[tuple[dist.Work, torch.Tensor]] = []

    def _tag(self, backward: bool, sender_chunk: int, mb: int) -> int:
        return ((int(backward) * self.state.dims.pp * self.vpp) + sender_chunk) * self.m + mb

    def send(self, x: torch.Tensor, backward: bool, sender_chunk: int, mb: int) -> None:
        x = x.contiguous()
        dst = self.prev if backward else self.next
        work = dist.isend(x, dst, group=self.state.pp_group, tag=self._tag(backward, sender_chunk, mb))
        self.pending.append((work, x))
        if self.counter is not None:
            self.counter.add("pp_p2p", x.numel() * x.element_size())

    def recv(self, shape: Sequence[int], dtype: torch.dtype, backward: bool, sender_chunk: int,
             mb: int) -> torch.Tensor:
        x = torch.empty(tuple(shape), dtype=dtype, device=self.state.device)
        src = self.next if backward else self.prev
        dist.recv(x, src, group=self.state.pp_group, tag=self._tag(backward, sender_chunk, mb))
        return x

    def wait(self) -> None:
        for work, _ in self.pending:
            work.wait()
        self.pending.clear()


def forward_backward(chunks: nn.ModuleList, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                     state: ParallelState, counter: CommCounter | None = None, bf16: bool = False) -> torch.Tensor:
    """Run every micro-batch (inputs (b_mb, s, ...), targets (b_mb, s, ...)) forward and backward through the
    pipeline, in the order of :func:`schedule`.

    Gradients accumulate into the chunks' parameters as the gradient of the mean loss over the micro-batches.
    Returns that mean loss on the rank holding the last chunk, 0 elsewhere (a float32 scalar).
    """
    pp, r, vpp, m = state.dims.pp, state.pp_rank, len(chunks), len(batches)
    n_chunks = pp * vpp
    b_mb, s = batches[0][0].shape[:2]
    act_shape = chunks[0].boundary_shape(b_mb, s)
    comm_dtype = torch.bfloat16 if bf16 else torch.float32
    p2p = _P2P(state, vpp, m, counter)
    inputs: dict[tuple[int, int], torch.Tensor] = {}
    outputs: dict[tuple[int, int], torch.Tensor] = {}
    total = torch.zeros((), dtype=torch.float32, device=state.device)
    for kind, v, mb in schedule(pp, vpp, m, r):
        c = v * pp + r
        if kind == "F":
            tokens, targets = batches[mb]
            if c == 0:
                inp = tokens.to(state.device)
            else:
                inp = p2p.recv(act_shape, comm_dtype, False, c - 1, mb).requires_grad_()
            with torch.autocast(state.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                out = chunks[v](inp, targets.to(state.device) if c == n_chunks - 1 else None)
            inputs[(v, mb)] = inp
            if c == n_chunks - 1:
                out = out.float() / m
                total += out.detach()
            else:
                out = out.to(comm_dtype)
                p2p.send(out.detach(), False, c, mb)
            outputs[(v, mb)] = out
        else:
            out, inp = outputs.pop((v, mb)), inputs.pop((v, mb))
            if c == n_chunks - 1:
                torch.autograd.backward(out)
            else:
                torch.autograd.backward(out, p2p.recv(out.shape, out.dtype, True, c + 1, mb))
            if c != 0:
                assert inp.grad is not None
                p2p.send(inp.grad, True, c, mb)
    p2p.wait()
    return total


def split_microbatches(x: torch.Tensor, y: torch.Tensor, microbatches: int
                       ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(b, s) inputs and targets -> ``microbatches`` equal pairs of (b / m, s) along the batch."""
    divide(x.shape[0], microbatches, "local batch over micro-batches")
    return list(zip(x.chunk(microbatches), y.chunk(microbatches), strict=True))


def all_reduce_dp_grads(params: Iterable[nn.Parameter], state: ParallelState, counter: CommCounter | None = None
                        ) -> None:
    """Average gradients over the data-parallel group (one flat all-reduce; DDP's bucketing is not needed here)."""
    dp = group_size(state.dp_group)
    grads = [p.grad for p in params if p.grad is not None]
    if dp == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce_sum(flat, state.dp_group).div_(dp)
    if counter is not None:
        counter.add("dp_allreduce", 2 * (dp - 1) / dp * flat.numel() * flat.element_size())
    for g, new in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        g.copy_(new.view_as(g))


def unique_parameters(chunks: Iterable[nn.Module]) -> Iterator[tuple[str, nn.Parameter]]:
    """(full-model name, parameter) of every chunk, without the parameters marked ``pipeline_copy``."""
    for chunk in chunks:
        for name, p in chunk.named_parameters():
            if not getattr(p, "pipeline_copy", False):
                yield name, p


def bubble_fraction(pp: int, vpp: int, microbatches: int) -> float:
    """Idle fraction of the ideal schedule, (p - 1) / (v m) (2104.04473 sections 2.2.1-2.2.2)."""
    return (pp - 1) / (vpp * microbatches) if pp > 1 else 0.0


__all__ = ["CommCounter", "schedule", "forward_backward", "split_microbatches", "all_reduce_dp_grads",
           "unique_parameters", "bubble_fraction", "chunk_layers"]
