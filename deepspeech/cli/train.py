"""``deepspeech train``: train an acoustic model from a preset or a saved config (torchrun for data parallel)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

from deepspeech.cli.common import Subparsers, add_command, add_common


def add_parser(subparsers: Subparsers, argv: Sequence[str] | None = None) -> None:
    p = add_command(subparsers, "train", "train an acoustic model (torchrun for data parallel)", argv, run)
    if p is None:
        return
    p.add_argument("--preset", default="digits-en", help="preset or recipe name (default: %(default)s)")
    p.add_argument("--config", help="a config.json (from a model directory) instead of a preset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. optim.lr=1e-3")
    p.add_argument("--out", help="run directory (default: runs/<name>)")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if the run directory has a checkpoint")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU too (sets amp and cpu_amp; pays on "
                   "CPUs with AMX or AVX512-BF16); CUDA uses it unless --set amp=false")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--format", choices=["text", "json"], default="text")
    add_common(p)


def run(args: argparse.Namespace) -> int:
    from deepspeech.config import TrainConfig, apply_overrides, from_dict, to_dict
    from deepspeech.parallel import destroy_parallel, init_parallel
    from deepspeech.presets import get_preset
    from deepspeech.training.trainer import train

    if args.config:
        raw = json.loads(Path(args.config).read_text())
        cfg = from_dict(TrainConfig, raw.get("config", raw))
    else:
        cfg = get_preset(args.preset)
    cfg = apply_overrides(cfg, args.set or [])
    if args.bf16:
        cfg = dataclasses.replace(cfg, amp=True, cpu_amp=True)
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=1))
        return 0
    if not cfg.data.train:
        raise SystemExit("no training data: give --set data.train=MANIFEST (or a recipe preset such as digits-en)")
    out = args.out or os.path.join("runs", cfg.name)
    ps = init_parallel()
    try:
        result = train(cfg, out, resume=not args.no_resume, progress=not args.no_progress, parallel=ps)
    finally:
        destroy_parallel()
    if ps.is_main:
        summary = {"out": str(result.out_dir), "best_model": str(Path(result.out_dir) / "best"),
                   "step": result.step, "epoch": result.epoch, "best": result.best}
        print(json.dumps(summary) if args.format == "json" else
              f"trained {cfg.name}: {result.step} steps; best model in {summary['best_model']}; "
              f"best dev: {result.best}")
    return 0
