"""Map a function over jobs in worker processes, in order, with a progress bar."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from tqdm import tqdm

J = TypeVar("J")
R = TypeVar("R")


def imap_jobs(fn: Callable[[J], R], jobs: Sequence[J], workers: int, initializer: Callable[..., None],
              initargs: tuple[Any, ...], desc: str, progress: bool = True, chunksize: int = 8) -> Iterator[R]:
    """Yield ``fn(job)`` for every job in order. ``workers`` > 1 forks a pool whose processes each run
    ``initializer(*initargs)`` once; 1 runs everything here. Results never depend on the number of workers as long
    as ``fn`` is a pure function of its job (seed per job, not per process)."""
    if workers < 1:
        raise ValueError("workers must be at least 1")
    bar = tqdm(total=len(jobs), desc=desc, unit="utt", disable=not progress)
    pool = None
    if workers > 1:
        pool = mp.get_context("fork").Pool(workers, initializer=initializer, initargs=initargs)
        results: Iterator[R] = pool.imap(fn, jobs, chunksize=chunksize)
    else:
        initializer(*initargs)
        results = map(fn, jobs)
    try:
        for r in results:
            bar.update()
            yield r
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
