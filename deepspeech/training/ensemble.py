"""Training an ensemble (``members`` > 1): independent runs from seeds seed, seed + 1, ..., then one model directory.

Member K trains into ``OUT/members/K/`` as an ordinary run (its own ``best/``, ``last/``, ``metrics.jsonl`` and
resumable checkpoints), so a killed ensemble resumes member by member. ``OUT/best`` and ``OUT/last`` are then
assembled from the members' (:func:`deepspeech.checkpoint.assemble_ensemble`) and decode as one model
(:mod:`deepspeech.ensemble`).

On CPU in a single process the members train side by side in child processes, each with its share of the cores:
the small recurrent layers of a CPU-sized model use one core well and two poorly (two one-thread runs of
``digits-en`` finish in about 1.4x the time of one two-thread run, not 2x). On GPUs, or under ``torchrun``, the
members train one after another, each with every process.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from deepspeech.checkpoint import assemble_ensemble
from deepspeech.config import TrainConfig, to_dict
from deepspeech.parallel import ParallelState
from deepspeech.training.trainer import TrainResult, train

log = logging.getLogger(__name__)

MEMBER_RUNS = "members"


def member_config(cfg: TrainConfig, k: int, threads: int = 0) -> TrainConfig:
    """Member ``k`` of ``cfg``: a single model trained from seed ``cfg.seed + k``."""
    return dataclasses.replace(cfg, members=1, seed=cfg.seed + k, threads=threads or cfg.threads)


def train_ensemble(cfg: TrainConfig, out_dir: str | Path, resume: bool = True, progress: bool = True,
                   parallel: ParallelState | None = None, jobs: int = 0) -> TrainResult:
    """Train ``cfg.members`` members into ``out_dir/members/K`` and assemble ``out_dir/best`` and ``out_dir/last``.
    ``jobs``: members trained at once on CPU (0: as many as there are cores, at most ``cfg.members``)."""
    out = Path(out_dir)
    runs = [out / MEMBER_RUNS / str(k) for k in range(cfg.members)]
    side_by_side = (parallel is None or not parallel.distributed) and not torch.cuda.is_available()
    jobs = min(cfg.members, jobs or os.cpu_count() or 1) if side_by_side else 1
    results: list[TrainResult] = []
    if jobs > 1:
        threads = max(1, (cfg.threads or os.cpu_count() or 1) // jobs)
        _train_children([member_config(cfg, k, threads) for k in range(cfg.members)], runs, jobs, resume, progress)
        results = [TrainResult(r, *_position(r), _best_record(r)) for r in runs]
    else:
        for k, r in enumerate(runs):
            log.info("ensemble member %d of %d (seed %d)", k + 1, cfg.members, cfg.seed + k)
            results.append(train(member_config(cfg, k), r, resume=resume, progress=progress, parallel=parallel))
    if parallel is None or parallel.is_main:
        for name in ("best", "last"):
            assemble_ensemble([r / name for r in runs], out / name)
        log.info("ensemble of %d assembled in %s", cfg.members, out / "best")
    return TrainResult(out, sum(r.step for r in results), max(r.epoch for r in results),
                       {"members": [r.best for r in results]})


def _best_record(run: Path) -> dict | None:
    p = run / "best" / "metrics.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _die_with_parent() -> None:  # a child must not outlive a killed parent (Linux; elsewhere a no-op)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _train_children(cfgs: list[TrainConfig], runs: list[Path], jobs: int, resume: bool, progress: bool) -> None:
    """Run ``deepspeech train`` for each member, ``jobs`` at once; progress in finished epochs of all members."""
    pending = list(range(len(cfgs)))
    running: dict[int, tuple[subprocess.Popen[bytes], object]] = {}
    bar = tqdm(total=sum(c.epochs for c in cfgs), desc=f"ensemble of {len(cfgs)}", unit="epoch", disable=not progress)
    try:
        while pending or running:
            while pending and len(running) < jobs:
                k = pending.pop(0)
                runs[k].mkdir(parents=True, exist_ok=True)
                cfg_path = runs[k] / "member_config.json"
                cfg_path.write_text(json.dumps({"config": to_dict(cfgs[k])}, indent=1))
                cmd = [sys.executable, "-m", "deepspeech.cli", "train", "--config", str(cfg_path), "--out",
                       str(runs[k]), "--no-progress"] + ([] if resume else ["--no-resume"])
                logf = open(runs[k] / "train.log", "ab")  # noqa: SIM115 (closed when the child ends)
                env = {**os.environ, "OMP_NUM_THREADS": str(cfgs[k].threads)}
                running[k] = (subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                               preexec_fn=_die_with_parent), logf)
                log.info("member %d (seed %d) training in %s (log: train.log)", k, cfgs[k].seed, runs[k])
            time.sleep(2.0)
            bar.n = sum(_position(r)[1] for r in runs)
            bar.refresh()
            for k, (proc, logf) in list(running.items()):
                if proc.poll() is None:
                    continue
                logf.close()  # type: ignore[attr-defined]
                del running[k]
                if proc.returncode != 0:
                    raise RuntimeError(f"ensemble member {k} failed (exit {proc.returncode}); "
                                       f"see {runs[k] / 'train.log'}")
    finally:
        for proc, logf in running.values():
            proc.kill()
            proc.wait()
            logf.close()  # type: ignore[attr-defined]
        bar.close()


def _position(run: Path) -> tuple[int, int]:
    """(step, epochs finished) of a member run, from its ``metrics.jsonl`` (epoch records have no loss)."""
    p = run / "metrics.jsonl"
    step = done = 0
    for line in p.read_text().splitlines() if p.is_file() else []:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        step = max(step, int(rec.get("step", 0)))
        if "loss" not in rec and "epoch" in rec:
            done = max(done, int(rec["epoch"]))
    return step, done
