"""N-best rescoring cost (suite row B11's "ms per utterance at N 16/64"): the neural LM's rescoring of each utterance's
N best (one batched forward of the N hypotheses, then the re-ranking) beside the peer, the beam search that produced
them, on the same utterances, in the same run.

The acoustic model runs once. Per N, every repetition times the beam search over all utterances (the peer) and then
the rescoring of the cached N-best lists (ours), alternating, one thread each; reported: median milliseconds per
utterance with the p10-p90 spread over repetitions and the ratio rescoring / beam. Correctness gates (hard): the
batched neural scores equal one-by-one scoring within 1e-4 (float32 sums, padding only changes matmul blocking) and
the rescored best is the hypothesis of highest Q. WER before and after rescoring is reported beside (weights: the
model's rescore.json when tuned for this LM, else the defaults; the number means little for an untuned LM).

    .venv/bin/python bench/rescore.py [--model models/digits-en] [--manifest data/fsdd/dev.jsonl] [--lm LM_DIR]
                                      [--n 50] [--reps 7] [--nbest 16,64]

Without --lm a tiny GPT LM is trained on the FSDD training transcripts (a few seconds) and exported to a temporary
directory. Results: bench/results/rescore.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

log = logging.getLogger("bench.rescore")


def tiny_lm(out: Path) -> Path:
    """Train gpt-tiny for 60 steps on the FSDD training transcripts and export it to ``out``."""
    from deepspeech.parallel import ParallelDims, ParallelState
    from lm.export import export_lm
    from lm.gpt import gpt_tiny
    from lm.tokenizer import read_text
    from lm.train import LMTrainConfig, train

    text = read_text(REPO / "data" / "fsdd" / "train.jsonl")
    cfg = LMTrainConfig(model=gpt_tiny(), steps=60, batch_size=8, save_dir=str(out / "ckpt"))
    _, tok, _ = train(cfg, ParallelState(ParallelDims()), text)
    tok.save(out / "ckpt" / "tokenizer.json")
    return export_lm(out / "ckpt", out / "lm")


def spread(xs: list[float]) -> dict[str, float]:
    q = np.percentile(xs, [10, 50, 90])
    return {"median": round(float(q[1]), 3), "p10": round(float(q[0]), 3), "p90": round(float(q[2]), 3)}


def run(args: argparse.Namespace, lm_dir: Path) -> dict[str, Any]:
    import torch

    from deepspeech.checkpoint import load_model_dir
    from deepspeech.data.manifest import read_manifest
    from deepspeech.decoding.rescore import Q_KEY
    from deepspeech.inference.evaluate import collect_log_probs
    from deepspeech.inference.recognizer import PostProcessing
    from deepspeech.metrics import error_rates
    from lm.scorer import rescoring_decoder

    torch.set_num_threads(1)
    am = load_model_dir(args.model)
    data = collect_log_probs(am, read_manifest(args.manifest)[: args.n], progress=False)
    refs = [r for _, r in data]
    lang = am.text_lang
    rows = []
    for n in args.nbest:
        dec = rescoring_decoder(args.model, am, lm_dir, nbest=n, backend=args.backend,
                                beam_threshold=args.beam_threshold)
        conv, rescorer = PostProcessing(am.hanzi), dec.rescorer
        lists = [conv(dec.decode(logp)) for logp, _ in data]  # warm-up of both, and the cached lists
        out = [rescorer(h) for h in lists]
        lm = rescorer.scorer
        texts = [h.text for h in lists[0]]
        one = [lm.log_probs([t])[0] for t in texts]  # type: ignore[attr-defined]
        if not np.allclose(lm.log_probs(texts), one, atol=1e-4, rtol=0):  # type: ignore[attr-defined]
            raise SystemExit("gate failed: batched neural scores differ from one-by-one scoring")
        if any(h[0].extra[Q_KEY] < max(x.extra[Q_KEY] for x in h) for h in out):
            raise SystemExit("gate failed: the rescored best is not the hypothesis of highest Q")
        beam_ms, resc_ms = [], []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            for logp, _ in data:
                dec.decode(logp)
            beam_ms.append(1e3 * (time.perf_counter() - t0) / len(data))
            t0 = time.perf_counter()
            for h in lists:
                rescorer(h)
            resc_ms.append(1e3 * (time.perf_counter() - t0) / len(data))
        metric = "wer" if lang == "en" else "cer"
        before = getattr(error_rates(refs, [h[0].text for h in lists], lang), metric)
        after = getattr(error_rates(refs, [h[0].text for h in out], lang), metric)
        ratios = [r / b for r, b in zip(resc_ms, beam_ms, strict=True)]
        rows.append({"nbest": n, "hyps_per_utt": round(statistics.mean(len(h) for h in lists), 1),
                     "beam_ms": spread(beam_ms), "rescore_ms": spread(resc_ms), "ratio": spread(ratios),
                     "metric": metric, "before": round(before, 4), "after": round(after, 4),
                     "weights": dec.rescorer.cfg.__dict__})
    return {"model": args.model, "manifest": args.manifest, "utterances": len(data), "lm": str(lm_dir),
            "backend": dec.decoder.cfg.backend, "beam_threshold": dec.decoder.cfg.beam_threshold,  # type: ignore[attr-defined]
            "reps": args.reps, "threads": 1, "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(REPO / "models" / "digits-en"))
    ap.add_argument("--manifest", default=str(REPO / "data" / "fsdd" / "dev.jsonl"))
    ap.add_argument("--lm", help="neural LM directory (`deepspeech lm export`); default: a tiny one trained here")
    ap.add_argument("--n", type=int, default=50, help="utterances")
    ap.add_argument("--reps", type=int, default=7, help="timed repetitions after the warm-up")
    ap.add_argument("--nbest", default="16,64", help="N values, comma-separated")
    ap.add_argument("--backend", choices=["pyctcdecode", "flashlight"], help="default: the model's decoder.json")
    ap.add_argument("--beam-threshold", type=float, help="beam pruning (default: the model's decoder.json; digits-en's "
                    "25 leaves about 2 hypotheses per single-word utterance)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "rescore.json"))
    args = ap.parse_args()
    args.nbest = [int(x) for x in args.nbest.split(",")]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="bench-rescore-") as tmp:
        lm_dir = Path(args.lm) if args.lm else tiny_lm(Path(tmp))
        result = run(args, lm_dir)
    if not args.lm:
        result["lm"] = "gpt-tiny, 60 steps on the FSDD training transcripts"
    print(f"N-best rescoring vs beam search ({result['backend']}, threshold {result['beam_threshold']}): "
          f"{result['utterances']} utterances of {args.manifest}, {args.reps} reps, 1 thread "
          "(median ms/utterance, p10-p90)")
    print(f"{'N':>4} {'hyps':>5} {'beam ms':>20} {'rescore ms':>20} {'rescore/beam':>20} {'before':>7} {'after':>7}")
    for r in result["rows"]:
        def cell(s: dict[str, float]) -> str:
            return f"{s['median']:.3f} ({s['p10']:.3f}-{s['p90']:.3f})"
        print(f"{r['nbest']:>4} {r['hyps_per_utt']:>5} {cell(r['beam_ms']):>20} {cell(r['rescore_ms']):>20} "
              f"{cell(r['ratio']):>20} {r['before']:>7.4f} {r['after']:>7.4f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
