"""Parallel layout: sizes checked against the world, process groups built once and passed explicitly.

The layout follows Megatron-LM (arXiv 2104.04473, section 2.3) with ranks ordered tensor-fastest, then data, then
pipeline: rank = (pp_rank * dp + dp_rank) * tp + tp_rank, so tensor-parallel peers are neighbours (on GPUs: the
same node). Nothing here reads a global; callers keep the returned :class:`ParallelState` and pass its groups in.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

# A collective that waits longer than this for a peer raises (10 minutes: long enough for a slow checkpoint save or
# a first-step compile on a busy node, short enough that a dead job frees its machines).
DEFAULT_TIMEOUT_S = 600.0
TIMEOUT_ENV = "DEEPSPEECH_DIST_TIMEOUT_S"


@dataclass(frozen=True)
class ParallelDims:
    """Sizes of each parallel dimension; their product must equal the world size."""

    dp: int = 1  # data parallel
    tp: int = 1  # tensor parallel
    pp: int = 1  # pipeline parallel

    def __post_init__(self) -> None:
        for name in ("dp", "tp", "pp"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def world_size(self) -> int:
        return self.dp * self.tp * self.pp

    def check(self, world_size: int) -> None:
        if self.world_size != world_size:
            raise ValueError(
                f"dp({self.dp}) * tp({self.tp}) * pp({self.pp}) = {self.world_size} != world size {world_size}"
            )

    def coords(self, rank: int) -> tuple[int, int, int]:
        """rank -> (pp_rank, dp_rank, tp_rank)."""
        return rank // (self.dp * self.tp), (rank // self.tp) % self.dp, rank % self.tp

    def rank_of(self, pp_rank: int, dp_rank: int, tp_rank: int) -> int:
        return (pp_rank * self.dp + dp_rank) * self.tp + tp_rank


@dataclass
class ParallelState:
    """This process's place in the layout and the groups it belongs to (None where the group has one rank)."""

    dims: ParallelDims
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dp_group: dist.ProcessGroup | None = None
    tp_group: dist.ProcessGroup | None = None
    pp_group: dist.ProcessGroup | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S  # the longest a collective waits for its peers

    @property
    def pp_rank(self) -> int:
        return self.dims.coords(self.rank)[0]

    @property
    def dp_rank(self) -> int:
        return self.dims.coords(self.rank)[1]

    @property
    def tp_rank(self) -> int:
        return self.dims.coords(self.rank)[2]

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _new_groups(dims: ParallelDims, rank: int, timeout: timedelta) -> dict[str, dist.ProcessGroup | None]:
    """Create every group of every dimension (new_group is collective) and keep the ones holding ``rank``.

    ``timeout`` is passed on explicitly: new_group does not inherit init_process_group's, it takes torch's default
    (30 minutes), and every collective of the trainers runs on these groups."""
    mine: dict[str, dist.ProcessGroup | None] = {"dp": None, "tp": None, "pp": None}
    for name, size in (("tp", dims.tp), ("dp", dims.dp), ("pp", dims.pp)):
        seen: set[tuple[int, ...]] = set()
        for r in range(dims.world_size):
            p, d, t = dims.coords(r)
            if name == "tp":
                ranks = tuple(dims.rank_of(p, d, i) for i in range(dims.tp))
            elif name == "dp":
                ranks = tuple(dims.rank_of(p, i, t) for i in range(dims.dp))
            else:
                ranks = tuple(dims.rank_of(i, d, t) for i in range(dims.pp))
            if ranks in seen:
                continue
            seen.add(ranks)
            group = dist.new_group(list(ranks), timeout=timeout)
            if rank in ranks and size > 1:
                mine[name] = group
    return mine


def collective_timeout_s() -> float:
    """Seconds a collective may wait for its peers: $DEEPSPEECH_DIST_TIMEOUT_S, else DEFAULT_TIMEOUT_S."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ValueError(f"{TIMEOUT_ENV}={raw!r}: need a positive number of seconds")
    return value


def init_parallel(dims: ParallelDims | None = None, backend: str | None = None,
                  timeout_s: float | None = None) -> ParallelState:
    """Initialise from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) or run as one process.

    ``dims`` defaults to pure data parallelism over the whole world. NCCL on CUDA, gloo on CPU. RANK (global) places
    the process in the layout; LOCAL_RANK (within its node) picks its GPU. ``timeout_s`` (default
    :func:`collective_timeout_s`) bounds every collective, so that ranks whose peer died or hangs fail instead of
    waiting forever.
    """
    timeout_s = collective_timeout_s() if timeout_s is None else timeout_s
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dims = dims or ParallelDims(dp=world)
    dims.check(world)
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world == 1:
        return ParallelState(dims, device=device)
    if not dist.is_initialized():
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    groups = _new_groups(dims, rank, timedelta(seconds=timeout_s))
    log.info("rank %d/%d (local %d): dp=%d tp=%d pp=%d on %s, collective timeout %g s", rank, world, local_rank,
             dims.dp, dims.tp, dims.pp, device, timeout_s)
    return ParallelState(dims, rank, world, local_rank, device, groups["dp"], groups["tp"], groups["pp"], timeout_s)


class PeerFailure(ConnectionError):
    """A collective failed because a peer process died or stopped answering (an OSError, so the CLI reports it as
    one line)."""


# gloo's own errors are plain RuntimeErrors; these mark the ones that mean "a peer is gone or silent".
_PEER_ERRORS = ("Timed out waiting", "Connection closed by peer", "Connection reset by peer", "gloo/transport")


@contextmanager
def peer_failures_as_errors(state: ParallelState) -> Iterator[None]:
    """Re-raise a collective's failure caused by a lost peer (torch's DistError, gloo's connection and timeout
    errors) as one-line :class:`PeerFailure` naming this rank and the timeout; other errors pass unchanged."""
    try:
        yield
    except RuntimeError as e:
        text = str(e)
        if not state.distributed or not (isinstance(e, dist.DistError) or any(m in text for m in _PEER_ERRORS)):
            raise
        first = re.sub(r"^\[[^\]]*\]\s*", "", text.strip().splitlines()[0] if text.strip() else type(e).__name__)
        raise PeerFailure(f"rank {state.rank}/{state.world_size}: a collective failed: {first.split('. ')[0]} (a peer "
                          f"process died or stopped answering; collectives wait at most {TIMEOUT_ENV}="
                          f"{state.timeout_s:g} s)") from e


def destroy_parallel() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
