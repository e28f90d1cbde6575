"""Benchmarks: one command, one table (and JSON in bench/results/).

    .venv/bin/python bench/run.py [--steps 16] [--quick]

Rows (../shared/BENCHMARKS.md, B6; the synthesis rows S1-S3 of ``bench/synth.py``; the soak B12 of
``bench/soak.py``):
- training throughput (audio seconds per wall second) of the ``tiny`` and ``small`` presets, one process;
- data parallel: ``tiny`` with 2 gloo processes x 1 thread against 1 process x 2 threads on the same global
  batches (same machine, same run, same total threads); ratio = 2-process throughput / 1-process throughput;
- soak: 32 real-time streams with abusive clients mixed in for ``--soak-minutes`` (10; 0.5 with ``--quick``)
  against a quiet run: p98 partial-latency ratio, server memory growth, correct finals, errors, streams left open.

Each figure is the median over the timed steps (the first steps are warm-up), with the spread (min..max).
Throughput comes from the trainer's own per-step log (``metrics.jsonl``), so it times exactly what training does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WARMUP = 3


def _manifest(tmp: Path, n: int) -> Path:
    rows = (REPO / "data" / "fsdd" / "train.jsonl").read_text().splitlines()
    out = []
    for line in rows[:: max(1, len(rows) // n)][:n]:
        d = json.loads(line)
        d["audio"] = str((REPO / "data" / "fsdd" / d["audio"]).resolve())
        out.append(json.dumps(d))
    p = tmp / "bench.jsonl"
    p.write_text("\n".join(out) + "\n")
    return p


def _train(preset: str, manifest: Path, out: Path, steps: int, nproc: int, threads: int) -> list[float]:
    sets = [f"data.train={manifest}", "data.dev=", f"max_steps={steps}", "log_every_steps=1", "epochs=1000",
            "data.sortagrad=false", "data.max_batch=32", "data.max_frames=8000", f"threads={threads}",
            "save_every_steps=0"]
    args = ["--preset", preset, "--out", str(out), "--no-progress", "--no-resume"]
    for s in sets:
        args += ["--set", s]
    if nproc == 1:
        cmd = [sys.executable, "-m", "deepspeech.cli", "train", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(REPO / "train.py"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["audio_s_per_s"] for r in recs if "audio_s_per_s" in r][WARMUP:]


def _summary(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def _training_rows(steps: int, cores: int, quick: bool) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        man = _manifest(tmp, 600)
        presets = ["tiny"] if quick else ["tiny", "small"]
        for p in presets:
            r = _summary(_train(p, man, tmp / f"{p}-1", steps, 1, cores))
            rows.append({"id": "B6", "what": f"train throughput {p}, 1 proc x {cores} threads",
                         "unit": "audio s/s", **r})
        one = _summary(_train("tiny", man, tmp / "dp1", steps, 1, 2))
        two = _summary(_train("tiny", man, tmp / "dp2", steps, 2, 1))
        rows.append({"id": "B6", "what": "tiny data parallel, 2 procs x 1 thread (gloo)", "unit": "audio s/s", **two})
        rows.append({"id": "B6", "what": "tiny data parallel peer: 1 proc x 2 threads", "unit": "audio s/s", **one})
        rows.append({"id": "B6", "what": "data-parallel ratio 2 procs / 1 proc", "unit": "x",
                     "median": two["median"] / one["median"], "min": two["min"] / one["max"],
                     "max": two["max"] / one["min"], "n": min(one["n"], two["n"])})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=16, help="optimiser steps per measurement (first 3 are warm-up)")
    ap.add_argument("--quick", action="store_true", help="tiny preset only, fewer steps")
    ap.add_argument("--only", choices=["all", "train", "synth", "soak"], default="all", help="which rows to run")
    ap.add_argument("--soak-minutes", type=float, default=None, help="the soak's abusive run (10; --quick 0.5)")
    args = ap.parse_args()
    steps = 8 if args.quick else args.steps
    cores = os.cpu_count() or 2
    rows = []
    if args.only in ("all", "synth"):
        sys.path.insert(0, str(REPO))
        from bench.synth import synthesis_rows
        rows += synthesis_rows(reps=3 if args.quick else 5)
    if args.only in ("all", "train"):
        rows += _training_rows(steps, cores, args.quick)
    if args.only in ("all", "soak"):
        sys.path.insert(0, str(REPO))
        from bench.soak import print_table, soak_rows
        minutes = args.soak_minutes if args.soak_minutes is not None else (0.5 if args.quick else 10.0)
        soak_part, soak_result = soak_rows(minutes)
        print_table(soak_result)
        rows += soak_part
    print(f"\n{'id':4} {'benchmark':52} {'median':>10} {'spread':>21} {'unit':>10}")
    for r in rows:
        spread = f"{r['min']:.2f}..{r['max']:.2f}"
        print(f"{r['id']:4} {r['what']:52} {r['median']:10.2f} {spread:>21} {r['unit']:>10}")
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"bench-{stamp}.json").write_text(json.dumps({"rows": rows, "cores": cores}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
