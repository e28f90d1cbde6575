"""B13: the batched streaming step of a quantized model (int8, bf16) against the float32 model, same run.

One ``DeepSpeech2.step`` of N streams, each advanced by 100 ms (10 feature frames of real FSDD speech), for the
float32 model and its ``int8`` and ``bf16`` forms (:mod:`deepspeech.model.quantize`), alternating models round by
round with the same threads; median (and min-max spread) of 7 rounds (``--rounds``) of 5 steps after 2 warm-up
rounds. Then the engine's whole step (front end included, ``StreamingModel.step``) at the largest N. The
correctness gate, checked first: on 32 whole FSDD test utterances every quantized model's greedy symbol equals
float32's on >= 98% of frames (WER on the whole test set: docs/quantization.md).

    .venv/bin/python bench/quant.py [--model models/streaming-en] [--streams 1,8,32] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deepspeech.checkpoint import load_model_dir  # noqa: E402
from deepspeech.frontend.front_end import FrontEnd  # noqa: E402
from deepspeech.inference.streaming import StreamingModel  # noqa: E402
from deepspeech.model.ds2 import DeepSpeech2  # noqa: E402
from deepspeech.model.quantize import SCHEMES, QuantConfig, quantize  # noqa: E402

log = logging.getLogger("bench.quant")
FRAMES = 10  # 100 ms of 10 ms frames per stream and step


def utterances(model_dir: Path, n: int) -> list[torch.Tensor]:
    """n FSDD test utterances (every 7th) as (T, F) model input, through the model's front end."""
    am = load_model_dir(model_dir)
    fe = FrontEnd(am.config.features, am.stats)
    rows = [json.loads(line) for line in (REPO / "data/fsdd/test.jsonl").read_text().splitlines()]
    return [fe.features(fe.load(REPO / "data/fsdd" / rows[(7 * i) % len(rows)]["audio"]))[0] for i in range(n)]


def greedy_agreement(model: DeepSpeech2, ref: DeepSpeech2, utts: list[torch.Tensor]) -> float:
    """Share of valid frames where ``model``'s most probable symbol is ``ref``'s (offline forward, one batch)."""
    x = torch.nn.utils.rnn.pad_sequence(utts, batch_first=True)
    lengths = torch.tensor([u.shape[0] for u in utts])
    with torch.no_grad():
        got, out = model(x, lengths)
        want, _ = ref(x, lengths)
    valid = torch.arange(got.shape[1])[None, :] < out[:, None]
    return (got.argmax(-1) == want.argmax(-1))[valid].float().mean().item()


def real_features(model_dir: Path, n: int) -> torch.Tensor:
    """(n, FRAMES, F): 100 ms windows from the middle of FSDD test utterances, through the model's front end."""
    out = []
    for feats in utterances(model_dir, n):
        start = max(0, feats.shape[0] // 2 - FRAMES // 2)
        win = feats[start: start + FRAMES]
        out.append(torch.nn.functional.pad(win, (0, 0, 0, FRAMES - win.shape[0])))
    return torch.stack(out)


def time_steps(models: dict[str, DeepSpeech2], feats: torch.Tensor, rounds: int = 7, warmup: int = 2,
               steps: int = 5) -> dict[str, list[float]]:
    """ms per batched step of every model, alternating models each round."""
    n = feats.shape[0]
    states = {k: m.initial_state(n) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.no_grad():
        for r in range(warmup + rounds):
            for k, m in models.items():
                t = time.perf_counter()
                for _ in range(steps):
                    _, _, states[k] = m.step(feats, [FRAMES] * n, states[k], [False] * n)
                if r >= warmup:
                    times[k].append(1e3 * (time.perf_counter() - t) / steps)
    return times


def time_engine(engines: dict[str, StreamingModel], n: int, rounds: int = 7, warmup: int = 2, steps: int = 5
                ) -> dict[str, list[float]]:
    """ms per ``StreamingModel.step`` of n sessions with 100 ms of audio each, alternating models."""
    rng = np.random.default_rng(n)
    audio = [(0.05 * rng.standard_normal(16 * 100)).astype(np.float32) for _ in range(n)]
    sessions = {k: [e.new_session() for _ in range(n)] for k, e in engines.items()}
    times: dict[str, list[float]] = {k: [] for k in engines}
    for r in range(warmup + rounds):
        for k, e in engines.items():
            t = time.perf_counter()
            for _ in range(steps):
                e.step(sessions[k], audio, [False] * n)
            if r >= warmup:
                times[k].append(1e3 * (time.perf_counter() - t) / steps)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "models" / "streaming-en"))
    ap.add_argument("--streams", default="1,8,32")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the server's worker uses 1)")
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds per model (more on a busy machine)")
    ap.add_argument("--json", default="", help="also write the figures here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    am = load_model_dir(args.model)
    models: dict[str, DeepSpeech2] = {"fp32": am.model}
    models.update({s: quantize(am.model, QuantConfig(s)) for s in SCHEMES})
    gate_utts = utterances(Path(args.model), 32)
    for k, m in models.items():
        agree = greedy_agreement(m, am.model, gate_utts)
        log.info("%s: greedy symbol equal to fp32's on %.2f%% of frames", k, 100 * agree)
        if agree < 0.98:
            raise SystemExit(f"correctness gate failed: {k} agrees with fp32 on {100 * agree:.2f}% of frames")
    counts = [int(v) for v in args.streams.split(",")]
    feats_all = real_features(Path(args.model), max(counts))
    results: dict[str, dict[str, dict[str, float]]] = {}
    for n in counts:
        times = time_steps(models, feats_all[:n], rounds=args.rounds)
        results[str(n)] = {k: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v)}
                           for k, v in times.items()}
    engines = {}
    for k, m in models.items():
        eng = StreamingModel(am)
        eng.model = m
        engines[k] = eng
    big = max(counts)
    et = time_engine(engines, big, rounds=args.rounds)
    engine = {k: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v)} for k, v in et.items()}

    def row(label: str, r: dict[str, dict[str, float]]) -> str:
        base = r["fp32"]["median_ms"]
        cells = [f"{r[k]['median_ms']:.2f} ({r[k]['min_ms']:.2f}-{r[k]['max_ms']:.2f})" for k in models]
        ratios = [f"{base / r[k]['median_ms']:.2f}x ({r['fp32']['min_ms'] / r[k]['min_ms']:.2f}x)"
                  for k in models if k != "fp32"]
        return f"| {label} | " + " | ".join(cells + ratios) + " |"

    lines = [f"batched streaming step, 100 ms ({FRAMES} frames) per stream, {args.threads} thread(s), "
             f"{Path(args.model).name}; ms median (min-max) of {args.rounds} rounds, alternating; speed-up = fp32 "
             "median / median (and min / min)",
             "| streams | fp32 ms | int8 ms | bf16 ms | int8 speed-up | bf16 speed-up |", "|---|---|---|---|---|---|"]
    lines += [row(n, r) for n, r in results.items()]
    lines.append(row(f"{big} (engine step, front end included)", engine))
    log.info("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"network_step": results, "engine_step": {str(big): engine}},
                                              indent=1))


if __name__ == "__main__":
    main()
