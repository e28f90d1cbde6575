"""B4 (engine): one batched streaming step of N streams against N single-stream steps, no server, no network.

The cost the Batch Dispatch worker pays per step: N sessions of the streaming model each advanced by the same
amount of audio (100 ms of noise-like audio by default) in one ``StreamingModel.step``, against the same N sessions
each stepped alone (what the unbatched server does). Same process, same threads, alternating rounds; median of 9
rounds of 5 steps each after 2 warm-up rounds.

    .venv/bin/python bench/stream_step.py [--model models/streaming-en] [--streams 1,8,32,48,64] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deepspeech.checkpoint import load_model_dir  # noqa: E402
from deepspeech.inference.streaming import StreamingModel  # noqa: E402


def bench(engine: StreamingModel, n: int, chunk: int, rounds: int = 9, warmup: int = 2, steps: int = 5
          ) -> tuple[float, float]:
    """(batched ms per step of n streams, unbatched ms for the same n streams stepped one by one)."""
    rng = np.random.default_rng(n)
    audio = [(0.05 * rng.standard_normal(chunk)).astype(np.float32) for _ in range(n)]
    batched = [engine.new_session() for _ in range(n)]
    alone = [engine.new_session() for _ in range(n)]
    tb, ta = [], []
    for r in range(warmup + rounds):
        t = time.perf_counter()
        for _ in range(steps):
            engine.step(batched, audio, [False] * n)
        dt_b = (time.perf_counter() - t) / steps
        t = time.perf_counter()
        for _ in range(steps):
            for s, a in zip(alone, audio, strict=True):
                engine.step([s], [a], [False])
        dt_a = (time.perf_counter() - t) / steps
        if r >= warmup:
            tb.append(dt_b)
            ta.append(dt_a)
    return 1e3 * statistics.median(tb), 1e3 * statistics.median(ta)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "models" / "streaming-en"))
    ap.add_argument("--streams", default="1,8,32,48,64")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the server's worker uses 1)")
    ap.add_argument("--chunk-ms", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    engine = StreamingModel(load_model_dir(args.model))
    chunk = 16 * args.chunk_ms
    print(f"streaming step, {args.chunk_ms} ms of audio per stream, {args.threads} thread(s); median of 9")
    print("| streams | batched step ms | unbatched (one step per stream) ms | ratio | batched step / audio |")
    print("|---|---|---|---|---|")
    for n in (int(v) for v in args.streams.split(",")):
        b, a = bench(engine, n, chunk)
        print(f"| {n} | {b:.1f} | {a:.1f} | {a / b:.2f}x | {b / args.chunk_ms:.2f} |")


if __name__ == "__main__":
    main()
