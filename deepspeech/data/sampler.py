"""Duration-bucketed batches with a frames budget, SortaGrad, and data-parallel sharding.

SortaGrad (DS2 section 3.4): in the first epoch, batches go in increasing order of the longest utterance; later
epochs shuffle. Batches are formed from utterances sorted by duration (lightly jittered after the first epoch, so
batch composition varies), each holding at most ``max_batch`` utterances and ``batch size x longest`` at most
``max_frames`` frames. Everything is a pure function of (durations, seed, epoch): a resumed run sees the same
batches, and every data-parallel rank builds the same global batch list and takes its own slice of each batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from deepspeech.frontend.features import FeatureConfig

FRAMES_PER_SECOND = 1000.0 / FeatureConfig.hop_ms  # feature frames per second at the default hop (10 ms: 100)


@dataclass(frozen=True)
class BatchPlan:
    """Inputs to batching. ``min_batch`` (>= data-parallel size) lets a batch exceed the frames budget rather
    than leave a rank without data."""

    max_frames: int
    max_batch: int
    sortagrad: bool = True
    seed: int = 0
    min_batch: int = 1
    jitter: float = 0.1  # relative duration jitter used to vary batch composition after the first epoch
    hop_ms: float = FeatureConfig.hop_ms  # feature hop: d seconds of audio are ceil(d * 1000 / hop_ms) frames

    def __post_init__(self) -> None:
        if self.max_frames < 1 or self.max_batch < 1 or self.min_batch < 1 or self.min_batch > self.max_batch \
                or not self.hop_ms > 0:
            raise ValueError(f"invalid batch plan {self}")


def _pack(order: np.ndarray, frames: np.ndarray, plan: BatchPlan) -> list[list[int]]:
    batches: list[list[int]] = []
    cur: list[int] = []
    longest = 0
    for i in order.tolist():
        f = int(frames[i])
        new_longest = max(longest, f)
        fits = (len(cur) + 1) * new_longest <= plan.max_frames and len(cur) < plan.max_batch
        if cur and not fits and len(cur) >= plan.min_batch:
            batches.append(cur)
            cur, new_longest = [], f
        cur.append(i)
        longest = new_longest
    if cur:
        if len(cur) < plan.min_batch and batches:
            # Too few to give every rank one: merge with the previous batch. If that breaks max_batch, split the
            # merged run into two halves instead (both >= min_batch whenever max_batch >= 2 * min_batch - 1;
            # otherwise keep the single over-size batch, as no split gives every rank data).
            merged = batches.pop() + cur
            half = len(merged) // 2
            if len(merged) > plan.max_batch and half >= plan.min_batch:
                batches += [merged[:half], merged[half:]]
            else:
                batches.append(merged)
        else:
            batches.append(cur)
    return batches


def epoch_batches(durations: Sequence[float], plan: BatchPlan, epoch: int) -> list[list[int]]:
    """Global batches (lists of utterance indices) for ``epoch``; identical on every rank."""
    d = np.asarray(durations, dtype=np.float64)
    frames = np.ceil(d * (1000.0 / plan.hop_ms)).astype(np.int64)
    if len(d) < plan.min_batch:
        raise ValueError(f"{len(d)} utterances cannot fill a batch for {plan.min_batch} data-parallel ranks")
    if epoch == 0 and plan.sortagrad:
        return _pack(np.argsort(d, kind="stable"), frames, plan)
    rng = np.random.default_rng([plan.seed, epoch])
    key = d * (1.0 + plan.jitter * rng.uniform(-1.0, 1.0, size=len(d)))
    batches = _pack(np.argsort(key, kind="stable"), frames, plan)
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def shard(batch: Sequence[int], rank: int, world: int) -> list[int]:
    """This rank's part of a global batch (strided, so shard sizes differ by at most one)."""
    return list(batch[rank::world])
