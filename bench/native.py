"""Native kernel benchmarks (issue 5, row B1): the fused CTC loss against log-softmax + ``F.ctc_loss``.

Forward + backward from logits (T, B=16, V) with random targets (T/4 labels for 29 symbols, T/8 for 5,000),
the two alternating, 2 warm-up rounds then 9 timed rounds each, same threads; median and spread (min..max) per
shape, and the ratio torch / native of the medians. Correctness gate: the losses agree to 1e-4 relative.

    .venv/bin/python bench/native.py [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deepspeech.native import ctc_loss, ctc_loss_reference, native_available  # noqa: E402


def _time(fn, x: torch.Tensor, *args: torch.Tensor) -> tuple[float, torch.Tensor]:  # type: ignore[no-untyped-def]
    x.grad = None
    t = time.perf_counter()
    loss = fn(x, *args, reduction="sum", zero_infinity=True)
    loss.backward()
    return time.perf_counter() - t, loss.detach()


def bench_ctc(T: int, V: int, B: int = 16, rounds: int = 9, warmup: int = 2) -> dict[str, float]:
    g = torch.Generator().manual_seed(T * 7 + V)
    L = T // 4 if V < 100 else T // 8
    x = torch.randn(T, B, V, generator=g).requires_grad_()
    targets = torch.randint(1, V, (B, L), generator=g)
    il, tl = torch.full((B,), T), torch.full((B,), L)
    ours, ref = [], []
    for k in range(warmup + rounds):
        a, la = _time(ctc_loss, x, targets, il, tl)
        b, lb = _time(ctc_loss_reference, x, targets, il, tl)
        if k == 0 and not torch.allclose(la, lb, rtol=1e-4):
            raise SystemExit(f"correctness gate failed at T={T} V={V}: {float(la)} vs {float(lb)}")
        if k >= warmup:
            ours.append(a)
            ref.append(b)
    return {"T": T, "V": V, "B": B, "native_ms": 1000 * statistics.median(ours), "native_min": 1000 * min(ours),
            "native_max": 1000 * max(ours), "torch_ms": 1000 * statistics.median(ref), "torch_min": 1000 * min(ref),
            "torch_max": 1000 * max(ref), "ratio": statistics.median(ref) / statistics.median(ours)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lengths", default="150,400,1000")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not native_available("ctc_loss"):
        raise SystemExit("the native CTC kernel did not build here")
    rows = [bench_ctc(T, V) for V in (29, 5000) for T in (int(t) for t in args.lengths.split(","))]
    print(f"\nB1 CTC forward+backward, batch 16, {args.threads} threads (median of 9; min..max)")
    for r in rows:
        print(f"  V {r['V']:>5} T {r['T']:>5}: native {r['native_ms']:8.1f} ms "
              f"({r['native_min']:.1f}..{r['native_max']:.1f})  torch {r['torch_ms']:8.1f} ms "
              f"({r['torch_min']:.1f}..{r['torch_max']:.1f})  ratio {r['ratio']:.2f}x")
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "native.json").write_text(json.dumps({"threads": args.threads, "ctc": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
