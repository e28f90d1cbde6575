"""Native kernel benchmarks (issue 5).

B1: the fused CTC loss against log-softmax + ``F.ctc_loss``. Forward + backward from logits (T, B=16, V) with
random targets (T/4 labels for 29 symbols, T/8 for 5,000). Correctness gate: the losses agree to 1e-4 relative.

B2: the fused GRU layer against ``nn.GRU`` with the same weights. Training step (forward + backward of one
unidirectional layer, batch 16, T 200) at the tiny (I 328, H 192) and small (I 656, H 384) presets' first-layer
shapes; and one streaming step (no autograd) at batch 1, 8, 32 against ``nn.GRU`` called on one frame and
``nn.GRUCell``. Correctness gate: outputs agree to 1e-4.

Each pair alternates, 2 warm-up rounds then 9 timed rounds each (a step round is the mean of 50 calls), same
threads; median and spread (min..max), and the ratio torch / native of the medians.

    .venv/bin/python bench/native.py [--threads 2] [--only ctc,gru] [--clock wall|cpu]

``--clock cpu`` times the GRU rows by this process's CPU time instead of wall time: on a machine whose cores other
jobs share, being descheduled then costs nothing (at 1 thread it is the work done; at 2 it sums both threads).
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
from deepspeech.native.gru import FusedGRU, gru_step  # noqa: E402

_clock = time.perf_counter  # the GRU rows' clock: wall (perf_counter) or CPU time (process_time), set by --clock


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


def _summary(ours: list[float], ref: list[float], scale: float = 1000.0) -> dict[str, float]:
    return {"native_ms": scale * statistics.median(ours), "native_min": scale * min(ours),
            "native_max": scale * max(ours), "torch_ms": scale * statistics.median(ref), "torch_min": scale * min(ref),
            "torch_max": scale * max(ref), "ratio": statistics.median(ref) / statistics.median(ours)}


def _gru_pair(I: int, H: int) -> tuple[torch.nn.GRU, FusedGRU]:
    torch.manual_seed(I + H)
    ref = torch.nn.GRU(I, H, batch_first=True)
    ours = FusedGRU(I, H, native=True)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def bench_gru_train(I: int, H: int, B: int = 16, T: int = 200, rounds: int = 9, warmup: int = 2) -> dict[str, float]:
    """Forward + backward of one layer (loss = sum of outputs), x (B, T, I) requiring grad as in the model."""
    ref, ours = _gru_pair(I, H)
    x = torch.randn(B, T, I).requires_grad_()

    def step(m: torch.nn.Module) -> tuple[float, torch.Tensor]:
        x.grad = None
        m.zero_grad(set_to_none=True)
        t = _clock()
        out, _ = m(x)
        out.sum().backward()
        return _clock() - t, out.detach()

    a_t, b_t = [], []
    for k in range(warmup + rounds):
        a, oa = step(ours)
        b, ob = step(ref)
        if k == 0 and not torch.allclose(oa, ob, atol=1e-4):
            raise SystemExit(f"correctness gate failed for the GRU at I={I} H={H}")
        if k >= warmup:
            a_t.append(a)
            b_t.append(b)
    return {"I": I, "H": H, "B": B, "T": T, **_summary(a_t, b_t)}


@torch.no_grad()
def bench_gru_step(I: int, H: int, B: int, calls: int = 50, rounds: int = 9, warmup: int = 2) -> dict[str, float]:
    """One streaming step x (B, I), h (B, H) -> h'; times in microseconds per call."""
    ref, ours = _gru_pair(I, H)
    cell = torch.nn.GRUCell(I, H)
    cell.load_state_dict({k[:-3]: v for k, v in ref.state_dict().items()})
    w = (ours.weight_ih_l0, ours.weight_hh_l0, ours.bias_ih_l0, ours.bias_hh_l0)
    x, h = torch.randn(B, I), torch.randn(B, H)
    if not torch.allclose(gru_step(x, h, *w, native=True), ref(x[:, None], h[None])[1][0], atol=1e-4):
        raise SystemExit(f"correctness gate failed for the GRU step at I={I} H={H} B={B}")

    def per_call(fn) -> float:  # type: ignore[no-untyped-def]
        t = _clock()
        for _ in range(calls):
            fn()
        return (_clock() - t) / calls

    fns = {"native": lambda: gru_step(x, h, *w, native=True), "gru": lambda: ref(x[:, None], h[None]),
           "cell": lambda: cell(x, h)}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for k in range(warmup + rounds):
        for name, fn in fns.items():
            dt = per_call(fn)
            if k >= warmup:
                times[name].append(dt)
    row = {"I": I, "H": H, "B": B, **_summary(times["native"], times["gru"], scale=1e6)}
    row["cell_us"] = 1e6 * statistics.median(times["cell"])
    row["ratio_cell"] = statistics.median(times["cell"]) / statistics.median(times["native"])
    return row


def _print_gru(train: list[dict[str, float]], steps: list[dict[str, float]], threads: str) -> None:
    print(f"\nB2 GRU layer forward+backward, batch 16, T 200, {threads} (median of 9; min..max)")
    for r in train:
        print(f"  I {r['I']:>4} H {r['H']:>4}: native {r['native_ms']:8.1f} ms "
              f"({r['native_min']:.1f}..{r['native_max']:.1f})  nn.GRU {r['torch_ms']:8.1f} ms "
              f"({r['torch_min']:.1f}..{r['torch_max']:.1f})  ratio {r['ratio']:.2f}x")
    print(f"B2 GRU streaming step, no autograd, {threads} (us per call, median of 9 x 50 calls)")
    for r in steps:
        print(f"  I {r['I']:>4} H {r['H']:>4} B {r['B']:>3}: native {r['native_ms']:7.1f}  nn.GRU one frame "
              f"{r['torch_ms']:7.1f} (ratio {r['ratio']:.2f}x)  nn.GRUCell {r['cell_us']:7.1f} "
              f"(ratio {r['ratio_cell']:.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lengths", default="150,400,1000")
    ap.add_argument("--only", default="ctc,gru", help="comma-separated rows to run: ctc (B1), gru (B2)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="the GRU rows' clock")
    args = ap.parse_args()
    global _clock
    _clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    only = set(args.only.split(","))
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    path = out / "native.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    if results.get("threads") != args.threads:  # rows measured with other threads are not comparable
        results = {}
    results["threads"] = args.threads
    if "ctc" in only:
        if not native_available("ctc_loss"):
            raise SystemExit("the native CTC kernel did not build here")
        rows = [bench_ctc(T, V) for V in (29, 5000) for T in (int(t) for t in args.lengths.split(","))]
        print(f"\nB1 CTC forward+backward, batch 16, {args.threads} threads (median of 9; min..max)")
        for r in rows:
            print(f"  V {r['V']:>5} T {r['T']:>5}: native {r['native_ms']:8.1f} ms "
                  f"({r['native_min']:.1f}..{r['native_max']:.1f})  torch {r['torch_ms']:8.1f} ms "
                  f"({r['torch_min']:.1f}..{r['torch_max']:.1f})  ratio {r['ratio']:.2f}x")
        results["ctc"] = rows
    if "gru" in only:
        if not native_available("gru"):
            raise SystemExit("the native GRU kernel did not build here")
        shapes = [(328, 192), (656, 384)]  # tiny and small presets: conv_out_features(), rnn_hidden
        results["gru_train"] = [bench_gru_train(I, H) for I, H in shapes]
        results["gru_step"] = [bench_gru_step(I, H, B) for I, H in shapes for B in (1, 8, 32)]
        results["gru_clock"] = args.clock
        _print_gru(results["gru_train"], results["gru_step"], f"{args.threads} threads, {args.clock} clock")
    path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
