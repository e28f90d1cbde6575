"""A pool of local gloo processes that run functions collectively: for CPU tests and small measurements.

The processes start once (``spawn``), join one gloo world through a FileStore (no port to race for), and then run
any picklable function on every rank: ``pool.run(fn, *args)`` returns ``[fn(*args) on rank 0, on rank 1, ...]``.
Inside ``fn`` the environment looks like torchrun's (RANK, WORLD_SIZE, LOCAL_RANK), so
``deepspeech.parallel.init_parallel(dims)`` builds the groups of any layout of that world size.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import tempfile
import traceback
from collections.abc import Callable
from datetime import timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _worker(rank: int, world: int, store_path: str, timeout_s: float, conn: Connection) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, world), rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s))
    try:
        while True:
            job = conn.recv()
            if job is None:
                break
            fn, args = job
            try:
                conn.send(("ok", fn(*args)))
            except Exception:  # reported to the parent, which raises
                conn.send(("error", traceback.format_exc()))
    finally:
        dist.destroy_process_group()


class GlooWorkers:
    """``world`` CPU processes in one gloo group. Use as a context manager; ``run`` is collective."""

    def __init__(self, world: int = 2, timeout_s: float = 60.0) -> None:
        self.world, self.timeout_s = world, timeout_s
        self._tmp = tempfile.TemporaryDirectory(prefix="gloo-workers-")
        ctx = mp.get_context("spawn")
        self._conns: list[Connection] = []
        self._procs = []
        store = str(Path(self._tmp.name) / "store")
        for rank in range(world):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(rank, world, store, timeout_s, child), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        self.broken = False

    def run(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """fn(*args) on every rank at once (fn must be importable by name); the results in rank order."""
        if self.broken:
            raise RuntimeError("the gloo workers failed earlier; start a new pool")
        for conn in self._conns:
            conn.send((fn, args))
        results: list[Any] = []
        errors: list[str] = []
        for rank, conn in enumerate(self._conns):
            # A failed rank leaves its peers blocked in a collective until the gloo timeout: wait that long at most.
            if not conn.poll(self.timeout_s + 10 if not errors else 5):
                errors.append(f"rank {rank}: no answer")
                continue
            try:
                status, value = conn.recv()
            except EOFError:
                errors.append(f"rank {rank}: process died")
                continue
            (results if status == "ok" else errors).append(value if status == "ok" else f"rank {rank}:\n{value}")
        if errors:
            self.broken = True
            self.close()
            raise RuntimeError("\n".join(errors))
        return results

    def close(self) -> None:
        for conn, proc in zip(self._conns, self._procs, strict=True):
            if proc.is_alive() and not self.broken:
                try:
                    conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        for conn in self._conns:
            conn.close()
        self._procs, self._conns = [], []
        self._tmp.cleanup()

    def __enter__(self) -> GlooWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
