"""``deepspeech lm``: build KenLM n-gram models (``ngram``), tune beam-search weights (``tune``; with ``--rescore``
the N-best rescoring weights of a neural LM) and a pinyin model's character conversion (``hanzi-tune``), train the
parallel GPT LM (``train``), export its checkpoint as an LM directory (``export``), count its activation memory
(``memory``)."""

from __future__ import annotations

import argparse
import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepspeech.cli.common import Subparsers, add_command, add_common, log


def add_parser(subparsers: Subparsers, argv: Sequence[str] | None = None) -> None:
    p = add_command(subparsers, "lm", "language models: build KenLM n-grams, tune beam-search weights, train a "
                    "GPT LM", argv)
    if p is None:
        return
    lsub = p.add_subparsers(dest="lm_command", required=True)
    _add_ngram(lsub, argv)
    _add_hanzi_tune(lsub, argv)
    _add_tune(lsub, argv)
    _add_train(lsub, argv)
    _add_export(lsub, argv)
    _add_params(lsub, argv)
    _add_memory(lsub, argv)
    _add_text(lsub, argv)


def _add_ngram(lsub: Subparsers, argv: Sequence[str] | None) -> None:
    q = add_command(lsub, "ngram", "build a KenLM n-gram LM (words for English, characters for Mandarin)", argv,
                    run_ngram)
    if q is None:
        return
    from lm.ngram import NgramConfig

    d = NgramConfig()
    q.add_argument("--text", action="append", help="text file(s), one sentence a line (repeatable, or "
                   "comma-separated)")
    q.add_argument("--manifest", action="append", help="also use the transcripts of this manifest (repeatable)")
    q.add_argument("--out", required=True, help="LM directory to write (e.g. MODEL/lm)")
    q.add_argument("--lang", choices=["en", "zh", "zh-pinyin"], default=d.lang,
                   help="en: words; zh: characters; zh-pinyin: pinyin syllables (for a pinyin model's beam search)")
    q.add_argument("--order", type=int, default=d.order)
    q.add_argument("--prune", type=int, nargs="+", metavar="N", help="lmplz --prune count thresholds, e.g. 0 1 1")
    q.add_argument("--test-lines", type=int, default=0,
                   help="hold out the last N lines of each file (the data kit's text test split: 1000)")
    q.add_argument("--exclude", action="append", metavar="MANIFEST",
                   help="leave out sentences that are transcripts of this manifest (e.g. the dev set used to tune)")
    q.add_argument("--binary-type", choices=["trie", "probing"], default=d.binary_type)
    q.add_argument("--quantize", type=int, default=d.quantize_bits, help="trie quantisation bits (0 = none)")
    q.add_argument("--memory", default=d.memory, help="lmplz sort memory (-S)")
    q.add_argument("--no-arpa", action="store_true", help="keep only the binary")
    q.add_argument("--pinyin-lexicon", action="store_true",
                   help="zh: also write lexicon.json, (syllable, character) counts of the same text; with the "
                        "LM it turns a pinyin model's output into characters (put it in MODEL/hanzi)")
    add_common(q)


def _add_hanzi_tune(lsub: Subparsers, argv: Sequence[str] | None) -> None:
    q = add_command(lsub, "hanzi-tune", "tune a pinyin model's pinyin-to-character conversion on a dev manifest; "
                    "writes MODEL/hanzi/hanzi.json", argv, run_hanzi_tune)
    if q is None:
        return
    q.add_argument("--model", required=True, help="model directory with hanzi/")
    q.add_argument("--manifest", required=True, help="dev manifest (never the test split)")
    q.add_argument("--tone-penalties", default="0:2:0.25", help="START:STOP:STEP or a,b,c (default %(default)s)")
    q.add_argument("--beams", default="16,32", help="character beam widths (default %(default)s)")
    q.add_argument("--dry-run", action="store_true", help="report only; do not write hanzi.json")
    q.add_argument("--device", default="cpu")
    add_common(q)


def _add_tune(lsub: Subparsers, argv: Sequence[str] | None) -> None:
    q = add_command(lsub, "tune", "grid-search alpha/beta on a dev manifest; writes MODEL/decoder.json", argv,
                    run_tune)
    if q is None:
        return
    from deepspeech.decoding.rescore import RescoreConfig

    q.add_argument("--model", required=True, help="model directory")
    q.add_argument("--manifest", required=True, help="dev manifest (never the test split)")
    q.add_argument("--lm", help="LM directory (default: MODEL/lm)")
    q.add_argument("--alphas", default="0:3:0.25",
                   help="LM weights: START:STOP:STEP or a,b,c (default %(default)s)")
    q.add_argument("--betas", default="-1:4:0.5", help="insertion bonuses (default %(default)s)")
    q.add_argument("--backend", choices=["pyctcdecode", "flashlight"])
    q.add_argument("--beam-width", type=int)
    q.add_argument("--cutoff-prob", type=float)
    q.add_argument("--cutoff-top-n", type=int)
    q.add_argument("--rescore", metavar="LM_DIR", help="tune N-best rescoring with this neural LM (`lm export`) "
                   "instead: decode once at --nbest, grid over alpha/beta/gamma; writes MODEL/rescore.json")
    q.add_argument("--gammas", default="0:2:0.25", help="neural LM weights with --rescore (default %(default)s)")
    q.add_argument("--nbest", type=int, default=RescoreConfig().nbest,
                   help="hypotheses per utterance with --rescore (default %(default)s)")
    q.add_argument("--dry-run", action="store_true", help="report only; do not write decoder.json / rescore.json")
    q.add_argument("--device", default="cpu")
    add_common(q)


def _add_export(lsub: Subparsers, argv: Sequence[str] | None) -> None:
    q = add_command(lsub, "export", "consolidate a sharded LM checkpoint (any TP/PP layout) into an LM directory "
                    "(safetensors + JSON) for --rescore", argv, run_export)
    if q is None:
        return
    q.add_argument("--load", required=True, help="checkpoint directory (`lm train --save DIR`: the newest step-*)")
    q.add_argument("--tokenizer", help="the training tokenizer (JSON, or the --out folder of `lm train`; default: "
                   "the tokenizer.json that `lm train --save` keeps beside the checkpoints)")
    q.add_argument("--to", required=True, help="LM directory to write (replaced atomically)")
    add_common(q)


def _add_train(lsub: Subparsers, argv: Sequence[str] | None) -> None:
    q = add_command(lsub, "train", "train a character LM of a family preset (torchrun for tensor/pipeline/data "
                    "parallelism)", argv, run_train)
    if q is None:
        return
    from deepspeech.parallel import ParallelDims
    from lm.train import LMTrainConfig

    d, dims = LMTrainConfig(), ParallelDims()
    from lm.families import TINY_PRESETS

    q.add_argument("--preset", choices=list(TINY_PRESETS), default="gpt-tiny",
                   help="model family and size (the full-size presets are counted by `lm params`)")
    q.add_argument("--tp", type=int, default=dims.tp, help="tensor-parallel size (dp = world size / (tp * pp))")
    q.add_argument("--pp", type=int, default=dims.pp, help="pipeline-parallel size (layers split over pp stages)")
    q.add_argument("--vpp", type=int, default=d.vpp, help="model chunks per pipeline rank (interleaved 1F1B when > 1)")
    q.add_argument("--microbatches", type=int, help="micro-batches per step and data-parallel rank (default: pp; "
                   "the bubble is (pp - 1) / (vpp * microbatches))")
    q.add_argument("--layers", type=int, help="override the preset's layer count (divisible by pp * vpp)")
    q.add_argument("--bf16", action="store_true", help="bf16 compute (autocast), fp32 master weights and optimizer "
                   "state (for GPUs; runs on CPU too, slowly)")
    q.add_argument("--save", help="write sharded DCP checkpoints to DIR/step-NNNNNN (loadable at any layout)")
    q.add_argument("--save-every", type=int, default=d.save_every,
                   help="steps between checkpoints (0: after the last step)")
    q.add_argument("--load", help="resume from a checkpoint directory (or the newest step-* in it)")
    q.add_argument("--sp", action="store_true", help="sequence parallelism over the tensor-parallel group")
    q.add_argument("--recompute", choices=["none", "selective", "full"], help="activation recomputation")
    q.add_argument("--positions", choices=["learned", "rotary", "alibi", "none"])
    q.add_argument("--dropout", type=float)
    q.add_argument("--steps", type=int)  # None: LMTrainConfig's (see run_train)
    q.add_argument("--batch-size", type=int, help="global sequences per step")
    q.add_argument("--lr", type=float)
    q.add_argument("--seed", type=int)
    q.add_argument("--text", help="training text, one sentence a line, or a manifest (.jsonl) whose transcripts "
                   "to use (default: the data kit's Gutenberg sentences, else data/sentences_en transcripts)")
    q.add_argument("--out", help="write the tokenizer here")
    q.add_argument("--format", choices=["json", "text"], default="text", help="per-step lines on stdout")
    add_common(q)


def _add_params(lsub: Subparsers, argv: Sequence[str] | None) -> None:
    q = add_command(lsub, "params", "parameters of a preset, per GPU of a tp x pp layout, and the weights + gradients "
                    "+ Adam memory per GPU", argv, run_params)
    if q is None:
        return
    from lm.families import BYTES_PER_PARAM, MTNLG_LAYOUT, PRESETS

    q.add_argument("--preset", choices=list(PRESETS), default="mtnlg-530b")
    q.add_argument("--tp", type=int, default=MTNLG_LAYOUT.tp)
    q.add_argument("--pp", type=int, default=MTNLG_LAYOUT.pp)
    q.add_argument("--bytes-per-param", type=int, default=BYTES_PER_PARAM,
                   help="model-state bytes per parameter (default %(default)s: mixed-precision Adam, "
                   "2 + 2 + 4 + 4 + 4)")
    add_common(q)


def _add_memory(lsub: Subparsers, argv: Sequence[str] | None) -> None:
    q = add_command(lsub, "memory", "activation bytes per layer vs the formulas of arXiv 2205.05198 (Mamba-2 "
                    "layers: lm.mamba2)", argv,
                    run_memory)
    if q is None:
        return
    from lm.activation_memory import LayerShape

    d = LayerShape()  # the options default to None, which lm.activation_memory.run_memory reads as these
    q.add_argument("--s", type=int, help=f"sequence length (default {d.s})")
    q.add_argument("--b", type=int, help=f"micro-batch (default {d.b})")
    q.add_argument("--h", type=int, help=f"hidden size (default {d.h})")
    q.add_argument("--a", type=int, help=f"attention heads (default {d.a})")
    q.add_argument("--tp", type=int, default=2, help="tensor-parallel size of the t > 1 rows (gloo processes)")
    q.add_argument("--format", choices=["table", "json"], default="table")
    add_common(q)


def run_ngram(args: argparse.Namespace) -> int:
    from data_synthesis.corpus import TEST_LINES
    from deepspeech.data.manifest import read_manifest
    from lm.ngram import NgramConfig, build_ngram, iter_text, lm_units

    files = [f for item in args.text or [] for f in item.split(",") if f]
    if not files and not args.manifest:
        raise SystemExit("give --text FILE and/or --manifest MANIFEST")
    for f in files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"no such text file: {f}")
    exclude: set[str] = set()
    for m in args.exclude or []:
        exclude |= {lm_units(u.text, args.lang) for u in read_manifest(m)}
    if args.test_lines:
        log.info("holding out the last %d lines of each file (the data kit's text test split is the last %d)",
                 args.test_lines, TEST_LINES)
    cfg = NgramConfig(lang=args.lang, order=args.order, prune=tuple(args.prune or ()), memory=args.memory,
                      binary_type=args.binary_type, quantize_bits=args.quantize, keep_arpa=not args.no_arpa)
    lines = iter_text(files, args.lang, exclude, drop_last=args.test_lines)
    if args.manifest:
        transcripts = [lm_units(u.text, args.lang) for m in args.manifest for u in read_manifest(m)]
        lines = itertools.chain(lines, (t for t in transcripts if t and t not in exclude))
    sources = [*files, *(f"transcripts of {m}" for m in args.manifest or []),
               *(f"excluding {m}" for m in args.exclude or [])]
    if args.test_lines:
        sources.append(f"without the last {args.test_lines} lines of each text file")
    counter = None
    if args.pinyin_lexicon:
        if args.lang != "zh":
            raise SystemExit("--pinyin-lexicon goes with a Mandarin character LM (--lang zh)")
        from deepspeech.decoding.hanzi import LexiconCounter

        counter = LexiconCounter()
        lines = counter.wrap(lines)
    out = build_ngram(lines, args.out, cfg, sources=sources)
    if counter is not None:
        from deepspeech.decoding.hanzi import LEXICON

        pairs = counter.save(out / LEXICON)
        log.info("pinyin lexicon: %d syllables, %d (syllable, character) pairs", len(counter.counts), pairs)
    meta = json.loads((out / "lm.json").read_text(encoding="utf-8"))
    print(json.dumps({k: meta[k] for k in ("unit", "order", "lines", "tokens", "vocabulary", "ngrams",
                                          "binary_bytes")}))
    return 0


def run_hanzi_tune(args: argparse.Namespace) -> int:
    from deepspeech.checkpoint import HANZI, load_model_dir
    from deepspeech.data.manifest import read_manifest
    from deepspeech.decoding.hanzi import SETTINGS, tune_hanzi
    from deepspeech.decoding.tune import grid
    from deepspeech.inference.evaluate import evaluate_manifest

    am = load_model_dir(args.model, device=args.device)
    if am.hanzi is None:
        raise SystemExit(f"{args.model}: not a pinyin model with a {HANZI}/ folder (character LM + lexicon)")
    _, records = evaluate_manifest(am, read_manifest(args.manifest), args.device, progress=not args.no_progress)
    done = [r for r in records if r["hyp_pinyin"] is not None]
    cfg, table = tune_hanzi(Path(args.model) / HANZI, [str(r["hyp_pinyin"]) for r in done],
                            [str(r["ref"]) for r in done], grid(args.tone_penalties),
                            [int(b) for b in grid(args.beams)], progress=not args.no_progress)
    best = min(table, key=lambda r: r["cer"])
    log.info("hanzi: best CER %.2f%% at beam %d, tone_penalty %.2f", 100 * best["cer"], cfg.beam, cfg.tone_penalty)
    if not args.dry_run:
        record = {"config": cfg.__dict__, "tuned_on": args.manifest, "cer": best["cer"], "grid": table}
        (Path(args.model) / HANZI / SETTINGS).write_text(json.dumps(record, indent=1), encoding="utf-8")
    print(json.dumps({"beam": cfg.beam, "tone_penalty": cfg.tone_penalty, "cer": best["cer"]}))
    return 0


def run_tune(args: argparse.Namespace) -> int:
    from deepspeech.checkpoint import load_model_dir
    from deepspeech.data.manifest import read_manifest
    from deepspeech.decoding.beam import BeamConfig, build_decoder
    from deepspeech.decoding.tune import grid, tune
    from deepspeech.inference.evaluate import collect_log_probs

    if args.rescore:
        return run_tune_rescore(args)
    am = load_model_dir(args.model, device=args.device)
    base = build_decoder(args.model, am.tokenizer, lm_dir=args.lm, backend=args.backend, beam_width=args.beam_width,
                         cutoff_prob=args.cutoff_prob, cutoff_top_n=args.cutoff_top_n)
    if base.lm is None:
        raise SystemExit(f"{args.model}: no LM to tune (give --lm DIR)")
    data = collect_log_probs(am, read_manifest(args.manifest), args.device, progress=not args.no_progress)
    result = tune(data, am.tokenizer, base.lm, base.cfg, grid(args.alphas), grid(args.betas),
                  progress=not args.no_progress)
    if not args.dry_run:
        best: BeamConfig = result["config"]
        settings = {k: v for k, v in best.__dict__.items() if k not in ("hotwords", "hotword_weight", "nbest")}
        record = {"config": settings, "tuned_on": args.manifest, "metric": result["metric"],
                  "dev": result["best"], "greedy": result["greedy"], "lm": str(base.lm.path)}
        (Path(args.model) / "decoder.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    summary = {"alpha": result["config"].alpha, "beta": result["config"].beta, "metric": result["metric"],
               "best": result["best"], "greedy": result["greedy"], "written": not args.dry_run}
    print(json.dumps(summary))
    return 0


def run_tune_rescore(args: argparse.Namespace) -> int:
    """Decode the dev set once at N, score every hypothesis once with the neural LM, grid over the cached lists."""
    from tqdm import tqdm

    from deepspeech.checkpoint import load_model_dir
    from deepspeech.data.manifest import read_manifest
    from deepspeech.decoding.rescore import RESCORE_JSON, NBest, tune_rescore
    from deepspeech.decoding.tune import grid
    from deepspeech.inference.evaluate import collect_log_probs
    from deepspeech.inference.recognizer import PostProcessing
    from deepspeech.text import normalize_zh
    from lm.scorer import rescoring_decoder

    am = load_model_dir(args.model, device=args.device)
    dec = rescoring_decoder(args.model, am, args.rescore, args.device, args.nbest, lm_dir=args.lm,
                            backend=args.backend, beam_width=args.beam_width, cutoff_prob=args.cutoff_prob,
                            cutoff_top_n=args.cutoff_top_n)
    utts = read_manifest(args.manifest)
    data = collect_log_probs(am, utts, args.device, progress=not args.no_progress)
    refs = [ref for _, ref in data]
    if am.hanzi is not None:  # the references of a pinyin model's character output
        if len(data) != len(utts):
            raise ValueError(f"{args.manifest}: {len(utts) - len(data)} unreadable utterances (a pinyin model's "
                             "rescoring tune needs every one)")
        refs = [normalize_zh(u.text) for u in utts]
    post, lang, lm = PostProcessing(am.hanzi), am.text_lang, dec.rescorer.scorer
    lists = []
    for (logp, _), ref in tqdm(list(zip(data, refs, strict=True)), desc=f"{args.nbest}-best + neural LM",
                               disable=args.no_progress):
        hyps = post(dec.decode(logp))
        lists.append(NBest.build(hyps, lm.log_probs([h.text for h in hyps]), ref, lang))
    result = tune_rescore(lists, lang, grid(args.alphas), grid(args.betas), grid(args.gammas), args.nbest)
    best = result["config"]
    if not args.dry_run:
        record = {"config": best.__dict__, "lm": {"sha256": lm.sha256, "path": str(args.rescore)},
                  "tuned_on": args.manifest, "metric": result["metric"], "before": result["before"],
                  "after": result["after"]}
        out = Path(args.model) / RESCORE_JSON
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, out)
    print(json.dumps({"alpha": best.alpha, "beta": best.beta, "gamma": best.gamma, "nbest": best.nbest,
                      "metric": result["metric"], "before": result["before"], "after": result["after"],
                      "written": not args.dry_run}))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from lm.export import export_lm

    out = export_lm(args.load, args.to, args.tokenizer)
    print(json.dumps({"lm": str(out)}))
    return 0


def run_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from deepspeech.parallel import ParallelDims, destroy_parallel, init_parallel
    from lm.families import PRESETS
    from lm.tokenizer import default_text_path, read_text
    from lm.train import LMTrainConfig, train

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.tp < 1 or world % (args.tp * args.pp):
        raise ValueError(f"world size {world} is not divisible by tp*pp = {args.tp * args.pp}")
    model = PRESETS[args.preset]()
    model = replace(model, sequence_parallel=args.sp, recompute=args.recompute or model.recompute,
                    **({"positions": args.positions} if args.positions else {}),
                    **({"dropout": args.dropout} if args.dropout is not None else {}))
    overrides = {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "seed") if getattr(args, k) is not None}
    cfg = LMTrainConfig(model=model, vpp=args.vpp, microbatches=args.microbatches or args.pp,
                        bf16=args.bf16, save_dir=args.save, save_every=args.save_every, load_dir=args.load,
                        **overrides)
    if args.layers:
        cfg = replace(cfg, model=replace(cfg.model, layers=args.layers))
    path = Path(args.text) if args.text else default_text_path()
    if not path.is_file():
        raise FileNotFoundError(f"no such text file: {path}" + ("" if args.text else (
            " (the default training text: the data kit's sentences, else recipes/sentences_en.sh's corpus; "
            "give --text FILE, e.g. --text data/fsdd/train.jsonl, the shipped digit transcripts)")))
    log.info("training text: %s", path)
    state = init_parallel(ParallelDims(dp=world // (args.tp * args.pp), tp=args.tp, pp=args.pp))

    def emit(record: dict[str, Any]) -> None:
        if args.format == "json":
            print(json.dumps(record), flush=True)
        else:
            print(f"step {record['step']:>5}  loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
                  f"grad-norm {record['grad_norm']:.3f}  {record['tokens_per_s']:.0f} tokens/s", flush=True)

    try:
        _, tokenizer, _ = train(cfg, state, read_text(path), emit)
        for folder in (args.out, args.save):  # beside the checkpoints too, for `lm export`
            if folder and state.is_main:
                out = Path(folder)
                out.mkdir(parents=True, exist_ok=True)
                tokenizer.save(out / "tokenizer.json")
    finally:
        destroy_parallel()
    return 0


def run_params(args: argparse.Namespace) -> int:
    from lm.families import PRESETS, model_state_memory

    report = model_state_memory(PRESETS[args.preset](), args.tp, args.pp, args.bytes_per_param)
    print(json.dumps({"preset": args.preset, "tp": args.tp, "pp": args.pp, **report.__dict__,
                      "gib_per_gpu_max": round(report.bytes_per_gpu_max / 2**30, 2)}))
    return 0


def run_memory(args: argparse.Namespace) -> int:
    from lm.activation_memory import run_memory as memory_table

    return memory_table(args)


# --- `lm text`: the neural LM's train/test text from the data kit (lm.corpus) ---
def _add_text(lsub: Subparsers, argv: Sequence[str] | None) -> None:
    q = add_command(lsub, "text", "write the LM training text and the held-out test text of a language from the data "
                    "kit (test: the last 1,000 lines of each sentence file) plus train transcripts", argv, run_text)
    if q is None:
        return
    q.add_argument("--lang", choices=["en", "zh"], required=True)
    q.add_argument("--out", required=True, help="directory for train.txt, test.txt and corpus.json")
    q.add_argument("--manifest", action="append", default=[],
                   help="add the transcripts of this acoustic TRAIN manifest (repeatable; dev/test ones are refused)")
    q.add_argument("--kit", help="the data kit folder (default: $DATA_KIT, else ../shared/data)")
    add_common(q)


def run_text(args: argparse.Namespace) -> int:
    from lm.corpus import kit_lm_text, write_lm_text

    # a dev/test manifest or a missing kit file raises lm.corpus.CorpusError (a ValueError): one line, status 2
    meta = write_lm_text(kit_lm_text(args.lang, args.kit, args.manifest), args.out)
    print(json.dumps({k: meta[k] for k in ("lang", "train_lines", "train_chars", "test_lines", "test_chars",
                                          "train_vocabulary", "test_chars_unseen_in_train")}))
    return 0
