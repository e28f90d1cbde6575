"""Parallel layouts of the GPT LM (issue 7): step time of TP2, PP2 and TP2xPP2 against TP1, and bytes communicated.

Same model, same global batch, same script run: TP1 runs in this process (1 thread), the others on gloo worker pools
of tp * pp processes (1 thread each). Step time per layout: the median over timed steps (after warm-up) of the
slowest rank's step; ratio = TP1 median / layout median (> 1 is faster than one process).

Bytes per step are counted as they are sent, summed over all ranks:

* tensor-parallel collectives, by wrapping the collectives module's ``dist`` in the worker; an all-reduce of n bytes
  over t ranks counts 2 (t - 1) / t * n per rank (a ring), as in 2104.04473 section 3.2. The paper count is 4
  all-reduces of s b h per layer per step (2 in forward, 2 in backward; 1909.08053 section 3); the model adds one
  in the vocabulary-parallel embedding (forward) and one before the output layer (backward), plus the
  cross-entropy's three small (s, b) all-reduces.
* pipeline sends (deepspeech.parallel.pipeline.CommCounter): the paper count is one (s, b, h) activation per
  micro-batch per stage boundary in forward and its gradient in backward (2104.04473 section 3.2): 2 (p v - 1) s B h
  bytes per step, times t without sequence parallelism (every tensor-parallel rank sends the whole activation;
  Megatron's scatter/gather optimisation, not implemented here, would send s b h / t each).

    .venv/bin/python bench/parallel.py [--steps 10] [--warmup 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deepspeech.parallel import ParallelDims, init_parallel, mappings  # noqa: E402
from deepspeech.parallel.pipeline import CommCounter  # noqa: E402
from deepspeech.parallel.workers import GlooWorkers  # noqa: E402
from lm.gpt import GPTConfig  # noqa: E402
from lm.tokenizer import CharTokenizer  # noqa: E402
from lm.train import LMTrainConfig, train  # noqa: E402

MODEL = GPTConfig(layers=4, hidden=128, heads=8, seq_len=64, dropout=0.0)
TEXT = ("the quick brown fox jumps over the lazy dog and keeps running through the fields of the morning\n" * 40)
LAYOUTS = [("TP1", 1, 1), ("TP2", 2, 1), ("PP2", 1, 2), ("TP2xPP2", 2, 2)]


class _CountingDist:
    """``torch.distributed`` with the tensor-parallel group's collectives counted (ring bytes per rank)."""

    def __init__(self, real: Any, group: Any, sbh: int, counts: dict[str, float]) -> None:
        self.real, self.group, self.sbh, self.counts = real, group, sbh, counts
        self.t = real.get_world_size(group) if group is not None else 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def all_reduce(self, x: torch.Tensor, *args: Any, group: Any = None, **kw: Any) -> Any:
        if group is self.group and self.group is not None:
            key = "tp_allreduce_sbh" if x.numel() == self.sbh else "tp_allreduce_other"
            self.counts[key] = self.counts.get(key, 0.0) + 2 * (self.t - 1) / self.t * x.numel() * x.element_size()
        return self.real.all_reduce(x, *args, group=group, **kw)


def _job(cfg: LMTrainConfig, dims: ParallelDims) -> dict[str, Any]:
    state = init_parallel(dims)
    counts: dict[str, float] = {}
    sbh = MODEL.seq_len * (cfg.batch_size // cfg.microbatches) * MODEL.hidden
    real = mappings.dist
    mappings.dist = _CountingDist(real, state.tp_group, sbh, counts)  # type: ignore[assignment]
    counter = CommCounter()
    try:
        _, _, rec = train(cfg, state, TEXT, counter=counter)
    finally:
        mappings.dist = real
    for k, v in counter.bytes.items():
        counts[k] = v
    return {"seconds": [r["seconds"] for r in rec], "bytes": {k: v / cfg.steps for k, v in counts.items()},
            "loss": rec[-1]["loss"]}


def run_layout(name: str, tp: int, pp: int, base: LMTrainConfig, warmup: int) -> dict[str, Any]:
    m = 4 if pp > 1 else 1
    cfg = replace(base, microbatches=m)
    if tp * pp == 1:
        torch.set_num_threads(1)
        ranks = [_job(cfg, ParallelDims())]
    else:
        with GlooWorkers(tp * pp, timeout_s=300) as pool:
            ranks = pool.run(_job, cfg, ParallelDims(tp=tp, pp=pp))
    per_step = [max(r["seconds"][i] for r in ranks) for i in range(cfg.steps)]
    keys = sorted({k for r in ranks for k in r["bytes"]})
    total = {k: sum(r["bytes"].get(k, 0.0) for r in ranks) for k in keys}
    s, b, h = MODEL.seq_len, cfg.batch_size, MODEL.hidden
    act = s * b * h * 4  # fp32 activation bytes of the whole step's batch
    paper_tp = tp * 4 * MODEL.layers * 2 * (tp - 1) / tp * act if tp > 1 else 0.0
    with_extras = tp * (4 * MODEL.layers + 2) * 2 * (tp - 1) / tp * act if tp > 1 else 0.0
    paper_pp = 2 * (pp - 1) * act * tp if pp > 1 else 0.0
    return {"layout": name, "tp": tp, "pp": pp, "microbatches": m, "step_s": statistics.median(per_step[warmup:]),
            "bytes": total, "paper_tp_bytes": paper_tp, "model_tp_bytes": with_extras, "paper_pp_bytes": paper_pp,
            "loss": ranks[0]["loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "parallel.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    base = LMTrainConfig(model=MODEL, steps=args.steps, batch_size=8, grad_clip=1.0)
    rows = [run_layout(name, tp, pp, base, args.warmup) for name, tp, pp in LAYOUTS]
    ref = rows[0]["step_s"]
    mb = 1e6
    print("| layout | procs | micro-batches | step (ms, median) | speed vs TP1 | TP all-reduce sbh MB (measured / "
          "paper 4L / +emb,head) | TP other MB | PP p2p MB (measured / paper) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        r["ratio_vs_tp1"] = ref / r["step_s"]
        by = r["bytes"]
        print(f"| {r['layout']} | {r['tp'] * r['pp']} | {r['microbatches']} | {1000 * r['step_s']:.1f} | "
              f"{r['ratio_vs_tp1']:.2f}x | {by.get('tp_allreduce_sbh', 0) / mb:.2f} / {r['paper_tp_bytes'] / mb:.2f}"
              f" / {r['model_tp_bytes'] / mb:.2f} | {by.get('tp_allreduce_other', 0) / mb:.3f} | "
              f"{by.get('pp_p2p', 0) / mb:.2f} / {r['paper_pp_bytes'] / mb:.2f} |")
    vocab = CharTokenizer.train(TEXT).padded_vocab_size()  # what train() sets in place of MODEL.vocab_size
    meta = {"model": asdict(replace(MODEL, vocab_size=vocab)), "batch_size": base.batch_size, "steps": args.steps,
            "warmup": args.warmup,
            "threads_per_process": 1, "cpus": os.cpu_count(), "bytes_unit": "bytes per step, all ranks",
            "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
