"""Held-out bits per character of the ~10M LM families (issue 32): GPT, BLOOM, Nemotron-4, Mamba-2 and
Mamba-2-Hybrid (lm.families.PRESETS_10M) trained from scratch on equal training tokens, against a KenLM character
n-gram of the same training text, in English and Mandarin.

Text: ``deepspeech lm text --lang L --out DIR`` (lm.corpus: the data kit's sentences less the last 1,000 lines of
each file, plus train transcripts; test.txt = those last 1,000-line blocks). Give each language's folder with
``--corpus L=DIR``; without it the kit's text alone is used (lm.corpus.kit_lm_text, no transcripts).

Bits per character: every test line is scored on its own, as a rescorer scores a hypothesis, conditioned on a
newline (the previous line's end, KenLM's ``<s>``), every character of the line and its closing newline predicted:
bpc = sum of -ln p / (ln 2 * characters). Characters never seen in training map to the tokenizer's unknown id (the
n-gram's ``<unk>``) and are scored like any other. The scoring is the rescorer's own (lm.scorer.NeuralLM: lines
longer than the model's context in windows of s tokens advancing by s/2).

Training: lm.train.train, one process, the same global batch, sequence length, AdamW, cosine schedule and precision
(``--precision``: bf16 autocast where the CPU multiplies bf16 natively, else float32; rows are kept per precision) for
every family (steps = tokens / (batch * s)); checkpoints in lm.train's format under OUT/LANG/tokens-N/PRESET/checkpoint
(plus tokenizer.json) for ``deepspeech lm export``. Speed: training tokens/s of each run (median step after the first
three), and, as BENCHMARKS.md asks, a ratio against GPT measured in one run: each family's training step on the same
batch, families alternated, median over repetitions after a warm-up step, same thread count.

The n-gram: lmplz (modified Kneser-Ney, Chen and Goodman 1998) over the training text with each character a token
(space spelt ``<sp>``, the newline as ``</s>``), order 8 by default (lmplz takes any order; the ARPA file is read
here, only the n-grams the test text needs, so KenLM's compiled maximum of 6 for querying does not apply).

Resumable: each finished row is written to OUT/lm_bpc.json at once; a rerun skips rows already there (same
language, model and token budget), so a large ``--tokens`` table can be built over several sessions.

    .venv/bin/python bench/lm_bpc.py --corpus en=runs/lm_text/en --corpus zh=runs/lm_text/zh --tokens 2000000
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deepspeech.native import cpu_has_fast_bf16  # noqa: E402
from deepspeech.parallel import ParallelDims, ParallelState  # noqa: E402
from deepspeech.parallel.sharded_checkpoint import CONFIG  # noqa: E402
from lm.families import PRESETS, PRESETS_10M  # noqa: E402
from lm.gpt import GPT, GPTConfig  # noqa: E402
from lm.ngram import kenlm_binary  # noqa: E402
from lm.scorer import NeuralLM  # noqa: E402
from lm.tokenizer import CharTokenizer  # noqa: E402
from lm.train import LMTrainConfig, build_optimizer, train  # noqa: E402

log = logging.getLogger("bench.lm_bpc")
LN2 = math.log(2.0)
SPACE, BOS, EOS, UNK = "<sp>", "<s>", "</s>", "<unk>"  # the n-gram's tokens for " ", line start, "\n", unseen
RESULTS = REPO / "bench" / "results" / "lm_bpc"


@dataclass(frozen=True)
class BpcConfig:
    tokens: int = 2_000_000  # training tokens (characters) per neural model
    batch_size: int = 8  # sequences per step, every family
    lr: float = 1e-3  # AdamW peak, every family
    min_lr: float = 1e-4  # cosine floor at the last step
    warmup: float = 0.05  # warm-up steps as a fraction of the steps (at least 1)
    seed: int = 0
    ngram_order: int = 8
    eval_batch: int = 16  # test lines per forward pass
    speed_reps: int = 5  # alternated timed steps per family for the ratio against GPT (0: skip)
    # bf16 autocast for every family's training and speed steps (fp32 weights, AdamW state and loss; scoring in
    # fp32): the default where the CPU multiplies bf16 natively (2.6x a GPT-10m step, 1.4x Mamba-2's, one thread)
    bf16: bool = False

    def __post_init__(self) -> None:
        if self.tokens < 1 or self.batch_size < 1 or self.eval_batch < 1 or self.speed_reps < 0:
            raise ValueError("tokens, batch_size and eval_batch must be >= 1, speed_reps >= 0")
        if not 0 <= self.min_lr <= self.lr or not 0 <= self.warmup < 1:
            raise ValueError("need 0 <= min_lr <= lr and 0 <= warmup < 1")
        if not 2 <= self.ngram_order <= 16:
            raise ValueError("ngram_order must be 2..16")

    def train_config(self, model: GPTConfig, save_dir: str | None = None) -> LMTrainConfig:
        """The same schedule for every family: steps = ceil(tokens / (batch * s))."""
        steps = max(1, -(-self.tokens // (self.batch_size * model.seq_len)))
        return LMTrainConfig(model=replace(model, dropout=0.0), steps=steps, batch_size=self.batch_size, lr=self.lr,
                             min_lr=self.min_lr, warmup_steps=max(1, round(self.warmup * steps)), seed=self.seed,
                             save_dir=save_dir, bf16=self.bf16)

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"


# ---- bits per character of a neural LM ----

def neural_bpc(model: GPT, tokenizer: CharTokenizer, lines: Sequence[str], batch: int = 16) -> tuple[float, int]:
    """(bits per character, characters scored) of ``lines``, each scored as rescoring scores a sentence
    (:class:`lm.scorer.NeuralLM`: "\\n" + line + "\\n", the first newline as context, windows past seq_len), so
    every character and each closing newline counts; ``batch`` lines a forward, shortest first (less padding)."""
    scorer = NeuralLM(model, tokenizer)
    ordered = sorted(lines, key=len)
    nll = -sum(sum(scorer.log_probs(ordered[i: i + batch])) for i in range(0, len(ordered), batch))
    n = sum(len(line) + 1 for line in lines)
    return nll / (n * LN2), n


# ---- bits per character of a KenLM character n-gram ----

def char_tokens(line: str) -> list[str]:
    """A line as the n-gram's tokens: one per character, the space spelt <sp>."""
    return [SPACE if c == " " else c for c in line]


def build_char_ngram(train_lines: Iterable[str], arpa: Path, order: int, memory: str = "10%") -> None:
    """lmplz --order ``order`` over the lines, each character a token (lines of only spaces count as empty)."""
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "chars.txt"
        with open(text, "w", encoding="utf-8") as f:
            for line in train_lines:
                f.write(" ".join(char_tokens(line)) + "\n")
        with open(text, "rb") as stdin:
            proc = subprocess.run([kenlm_binary("lmplz"), "-o", str(order), "-S", memory, "-T", tmp,
                                   "--discount_fallback", "--arpa", str(arpa)], stdin=stdin, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"lmplz failed: {proc.stderr.decode(errors='replace')[-2000:]}")


class ArpaScorer:
    """Back-off n-gram probabilities from an ARPA file, holding only the n-grams some needed sequence contains.

    log10 p(w | h) = log10 p*(h w) if the n-gram h w is listed, else backoff(h) + log10 p(w | h minus its first
    token) (Katz's recursion as KenLM evaluates an ARPA model); an unlisted context has backoff 0, an unlisted word
    scores as <unk>.
    """

    def __init__(self, arpa: Path, needed: Iterable[Sequence[str]], order: int) -> None:
        keys = {" ".join(seq[i:j]) for seq in needed for j in range(1, len(seq) + 1)
                for i in range(max(0, j - order), j)}
        keys.add(UNK)
        self.order = order
        self.prob: dict[str, float] = {}
        self.backoff: dict[str, float] = {}
        with open(arpa, encoding="utf-8") as f:
            for line in f:
                if not line or line[0] in "\\\n" or line.startswith("ngram "):
                    continue
                parts = line.rstrip("\n").split("\t")
                if len(parts) < 2 or parts[1] not in keys:
                    continue
                self.prob[parts[1]] = float(parts[0])
                if len(parts) > 2:
                    self.backoff[parts[1]] = float(parts[2])
        self.found_order = max((k.count(" ") + 1 for k in self.prob), default=0)

    def log10_prob(self, context: Sequence[str], word: str) -> float:
        context = list(context[len(context) - (self.order - 1):]) if self.order > 1 else []
        penalty = 0.0
        while True:
            key = " ".join([*context, word])
            if key in self.prob:
                return penalty + self.prob[key]
            if not context:
                return penalty + self.prob[UNK]
            penalty += self.backoff.get(" ".join(context), 0.0)
            context = context[1:]

    def line_log10(self, line: str) -> tuple[float, int]:
        """Summed log10 probability of a line's characters and its end (</s> = the newline), and their count."""
        toks = [BOS, *char_tokens(line), EOS]
        return sum(self.log10_prob(toks[:i], toks[i]) for i in range(1, len(toks))), len(toks) - 1


def ngram_bpc(arpa: Path, lines: Sequence[str], order: int) -> tuple[float, int]:
    """(bits per character, characters scored) of ``lines`` under the character ARPA model."""
    scorer = ArpaScorer(arpa, [[BOS, *char_tokens(ln), EOS] for ln in lines], order)
    total, n = 0.0, 0
    for ln in lines:
        lp, k = scorer.line_log10(ln)
        total += lp
        n += k
    return -total / (n * math.log10(2.0)), n


# ---- the benchmark ----

def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def load_corpus(lang: str, folder: Path | None, out: Path) -> tuple[list[str], list[str]]:
    """(train lines, test lines) of a `deepspeech lm text` folder, or built from the kit into OUT/text-LANG."""
    if folder is None:
        from lm.corpus import kit_lm_text, write_lm_text

        folder = out / f"text-{lang}"
        if not (folder / "test.txt").is_file():
            write_lm_text(kit_lm_text(lang), folder)
    return read_lines(folder / "train.txt"), read_lines(folder / "test.txt")


def model_row(lang: str, preset: str, cfg: BpcConfig, train_lines: list[str], test_lines: list[str],
              out: Path) -> dict[str, Any]:
    """Train ``preset`` on the training text for cfg.tokens tokens, then score the test lines."""
    run_dir = out / lang / f"tokens-{cfg.tokens}{'-bf16' if cfg.bf16 else ''}" / preset
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = run_dir / "checkpoint"
    tcfg = cfg.train_config(PRESETS[preset](), str(ckpt))
    # a long run checkpoints 8 times and, interrupted, resumes from its newest complete checkpoint (lm.train
    # replays the batch stream, so the resumed run is the uninterrupted one); only the last is kept at the end
    resume = any(_complete(d) for d in ckpt.glob("step-*"))
    tcfg = replace(tcfg, save_every=tcfg.steps // 8 if tcfg.steps >= 80 else 0,
                   load_dir=str(ckpt) if resume else None)
    text = "".join(line + "\n" for line in train_lines)
    t0 = time.perf_counter()
    every = max(1, tcfg.steps // 10)

    def emit(r: dict[str, Any]) -> None:
        if r["step"] % every == 0 or r["step"] == tcfg.steps:
            log.info("%s %s step %d/%d loss %.4f %.0f tokens/s", lang, preset, r["step"], tcfg.steps, r["loss"],
                     r["tokens_per_s"])

    model, tokenizer, records = train(tcfg, ParallelState(ParallelDims()), text, emit)
    seconds_train = time.perf_counter() - t0
    tokenizer.save(run_dir / "tokenizer.json")
    steps = sorted(d for d in ckpt.glob("step-*") if _complete(d))
    for d in steps[:-1]:
        shutil.rmtree(d)
    assert isinstance(model, GPT)
    t0 = time.perf_counter()
    bpc, n = neural_bpc(model, tokenizer, test_lines, cfg.eval_batch)
    timed = [r["tokens_per_s"] for r in records[3:]] or [r["tokens_per_s"] for r in records]
    seen = set(tokenizer.chars)
    return {"lang": lang, "model": preset, "tokens": tcfg.steps * tcfg.batch_size * model.cfg.seq_len,
            "params": sum(p.numel() for p in model.parameters()), "vocab": tokenizer.vocab_size,
            "padded_vocab": model.cfg.vocab_size, "steps": tcfg.steps, "batch": tcfg.batch_size,
            "seq_len": model.cfg.seq_len, "lr": tcfg.lr, "precision": cfg.precision,
            "resumed_at_step": records[0]["step"] - 1 if records else tcfg.steps,
            "final_train_loss": records[-1]["loss"] if records else None,
            "bpc": round(bpc, 4), "test_chars": n,
            "unseen_test_chars": sum(c not in seen for ln in test_lines for c in ln),
            "train_tokens_per_s": round(statistics.median(timed), 1) if timed else None,
            "threads": torch.get_num_threads(),
            "seconds_train": round(seconds_train, 1), "seconds_eval": round(time.perf_counter() - t0, 1),
            "checkpoint": str((run_dir / "checkpoint").relative_to(out)),
            "tokenizer": str((run_dir / "tokenizer.json").relative_to(out))}


def _complete(step_dir: Path) -> bool:
    """A checkpoint directory whose save finished (its config.json is written last)."""
    return (step_dir / CONFIG).is_file()


def ngram_row(lang: str, cfg: BpcConfig, train_lines: list[str], test_lines: list[str], out: Path
              ) -> dict[str, Any]:
    arpa = out / lang / f"char-{cfg.ngram_order}gram.arpa"
    arpa.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    build_char_ngram(train_lines, arpa, cfg.ngram_order)
    seconds_train = time.perf_counter() - t0
    bpc, n = ngram_bpc(arpa, test_lines, cfg.ngram_order)
    seen = {c for ln in train_lines for c in ln}
    from lm.ngram import arpa_counts

    return {"lang": lang, "model": f"kenlm-char-{cfg.ngram_order}gram", "tokens": sum(len(x) + 1 for x in train_lines),
            "params": sum(arpa_counts(arpa).values()), "order": cfg.ngram_order, "bpc": round(bpc, 4),
            "test_chars": n, "unseen_test_chars": sum(c not in seen for ln in test_lines for c in ln),
            "seconds_train": round(seconds_train, 1), "arpa": str(arpa.relative_to(out))}


def speed_row(lang: str, cfg: BpcConfig, presets: Sequence[str], train_lines: list[str]) -> dict[str, Any]:
    """Training steps (forward, backward, AdamW) on one fixed batch, the families alternated, cfg.speed_reps timed
    repetitions after one warm-up: median tokens/s per family and its ratio to GPT's (spread: min..max of the
    per-repetition ratios)."""
    tokenizer = CharTokenizer.train("".join(line + "\n" for line in train_lines))
    built = {}
    for p in presets:
        mcfg = replace(PRESETS[p](), vocab_size=tokenizer.padded_vocab_size(), dropout=0.0)
        model = GPT(mcfg, seed=cfg.seed)
        built[p] = (model, build_optimizer(model, cfg.train_config(mcfg)), mcfg.seq_len)
    times: dict[str, list[float]] = {p: [] for p in presets}
    for rep in range(cfg.speed_reps + 1):
        for p, (model, opt, s) in built.items():
            need = cfg.batch_size * (s + 1)
            text = "\n".join(train_lines[:20000])
            text = (text * (need // max(1, len(text)) + 1))[:need]  # a short text repeated: the batch is full
            ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
            x = ids.view(cfg.batch_size, s + 1)[:, :-1]
            y = ids.view(cfg.batch_size, s + 1)[:, 1:]
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                _, loss = model(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if rep:
                times[p].append(time.perf_counter() - t0)
    tokens = {p: cfg.batch_size * built[p][2] for p in presets}
    rate = {p: statistics.median(tokens[p] / t for t in times[p]) for p in presets}
    peer = "gpt-10m" if "gpt-10m" in presets else presets[0]
    ratios = {p: [(tokens[p] / a) / (tokens[peer] / b) for a, b in zip(times[p], times[peer], strict=True)]
              for p in presets}
    return {"lang": lang, "model": "speed", "peer": peer, "reps": cfg.speed_reps, "threads": torch.get_num_threads(),
            "precision": cfg.precision,
            "tokens_per_s": {p: round(rate[p], 1) for p in presets},
            "ratio_to_peer": {p: round(statistics.median(ratios[p]), 3) for p in presets},
            "ratio_spread": {p: [round(min(ratios[p]), 3), round(max(ratios[p]), 3)] for p in presets}}


def save_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"rows": rows}, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def row_key(r: dict[str, Any]) -> str:
    """What makes a row: language, model, token budget and, for trained LMs, their training precision (rows from
    before the precision was recorded are float32; the n-gram has none)."""
    if "order" in r:
        return f"{r['lang']}/{r['model']}/{r['tokens_budget']}"
    return f"{r['lang']}/{r['model']}/{r['tokens_budget']}/{r.get('precision', 'fp32')}"


def table(rows: list[dict[str, Any]], budget: int, precision: str) -> str:
    rows = [r for r in rows if "order" in r or r.get("precision", "fp32") == precision]
    speed = {r["lang"]: r for r in rows if r["model"] == "speed" and r["tokens_budget"] == budget}
    lines = [f"Held-out bits per character (test.txt, every character and each line's newline); neural LMs "
             f"trained on {budget:,} tokens each in {precision}; speed on "
             f"{next(iter(speed.values()))['threads'] if speed else '?'} thread(s)", "",
             "| lang | model | params | trained tokens | bpc | train tokens/s | ratio to GPT (alternated) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["model"] == "speed" or r["tokens_budget"] != budget:
            continue
        s = speed.get(r["lang"])
        ratio = ""
        if s and r["model"] in s["ratio_to_peer"]:
            lo, hi = s["ratio_spread"][r["model"]]
            ratio = f"{s['ratio_to_peer'][r['model']]:.2f} ({lo:.2f}..{hi:.2f})"
        lines.append(f"| {r['lang']} | {r['model']} | {r['params']:,}{' n-grams' if 'order' in r else ''} | "
                     f"{r['tokens']:,} | {r['bpc']:.3f} | {r.get('train_tokens_per_s', '')} | {ratio} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    d = BpcConfig()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--corpus", action="append", default=[], metavar="LANG=DIR",
                    help="a `deepspeech lm text` folder per language (default: the kit's text, no transcripts)")
    ap.add_argument("--langs", nargs="+", default=["en", "zh"], choices=["en", "zh"])
    ap.add_argument("--models", nargs="+", default=[*PRESETS_10M, "ngram"],
                    help="presets (lm.families) and/or 'ngram' (default: the five 10M families and the n-gram)")
    ap.add_argument("--tokens", type=int, default=d.tokens, help="training tokens per neural model")
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--order", type=int, default=d.ngram_order, help="character n-gram order")
    ap.add_argument("--speed-reps", type=int, default=d.speed_reps)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="training precision (auto: bf16 autocast where the CPU multiplies bf16 natively)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    unknown = [m for m in args.models if m != "ngram" and m not in PRESETS]
    if unknown:
        ap.error(f"unknown models {unknown}")
    cfg = BpcConfig(tokens=args.tokens, batch_size=args.batch_size, lr=args.lr, min_lr=min(d.min_lr, args.lr),
                    ngram_order=args.order, speed_reps=args.speed_reps,
                    bf16=args.precision == "bf16" or (args.precision == "auto" and cpu_has_fast_bf16()))
    folders = dict(c.split("=", 1) for c in args.corpus)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "lm_bpc.json"
    rows: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))["rows"] if path.is_file() else []
    done = {row_key(r) for r in rows}
    for lang in args.langs:
        train_lines, test_lines = load_corpus(lang, Path(folders[lang]) if lang in folders else None, args.out)
        presets = [m for m in args.models if m != "ngram"]
        names = [*args.models, *(["speed"] if presets and cfg.speed_reps else [])]
        for name in names:
            budget = 0 if name == "ngram" else cfg.tokens  # the n-gram takes the whole text whatever the budget
            model_name = f"kenlm-char-{cfg.ngram_order}gram" if name == "ngram" else name
            key = f"{lang}/{model_name}/{budget}" + ("" if name == "ngram" else f"/{cfg.precision}")
            if key in done:
                log.info("%s: done already, skipped", key)
                continue
            log.info("%s: running", key)
            if name == "ngram":
                row = ngram_row(lang, cfg, train_lines, test_lines, args.out)
            elif name == "speed":
                row = speed_row(lang, cfg, presets, train_lines)
            else:
                row = model_row(lang, name, cfg, train_lines, test_lines, args.out)
            rows.append({**row, "tokens_budget": budget})
            done.add(key)
            save_rows(path, rows)
    shown = [r for r in rows if r["lang"] in args.langs]
    print(table([{**r, "tokens_budget": cfg.tokens} if r["tokens_budget"] == 0 else r for r in shown], cfg.tokens,
                cfg.precision))
    print(f"\nrows: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
