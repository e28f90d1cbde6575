"""The ``deepspeech`` command: train, eval, transcribe, export, synth, data."""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import select
import sys
from pathlib import Path

from deepspeech.cli_lm import add_decoder_args, add_lm_parser
from deepspeech.logs import setup_logging
from serving.cli import add_serve_parsers

log = logging.getLogger("deepspeech")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_segment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--segment-min-s", type=float, default=8.0,
                   help="files longer than this are segmented in pauses (bounded memory)")
    p.add_argument("--segment-max-s", type=float, default=20.0, help="longest segment")


def _cmd_train(args: argparse.Namespace) -> int:
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


def _cmd_eval(args: argparse.Namespace) -> int:
    from deepspeech.checkpoint import load_model_dir
    from deepspeech.cli_lm import decoder_from_args
    from deepspeech.data.manifest import read_manifest
    from deepspeech.inference import evaluate_manifest
    from deepspeech.longform import ChunkConfig

    chunk = ChunkConfig(min_segment_s=args.segment_min_s, max_segment_s=args.segment_max_s)
    am = load_model_dir(args.model, device=args.device)
    decoder = decoder_from_args(args, args.model, am.tokenizer)
    utts = read_manifest(args.manifest)
    with open(args.manifest, encoding="utf-8") as f:
        skipped = sum(1 for line in f if line.strip()) - len(utts)  # bad lines, missing audio: reported by the reader
    counts, records = evaluate_manifest(am, utts, args.device, progress=not args.no_progress, decoder=decoder,
                                        chunk=chunk)
    if args.hypotheses:
        with open(args.hypotheses, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    summary = {"manifest": args.manifest, "model": args.model, **counts.summary(),
               "failed": sum(1 for r in records if r["hyp"] is None), "skipped": skipped}
    if am.hanzi is not None:  # pinyin model: also its syllable (WER) and letter (CER) error rates
        from deepspeech.metrics import error_rates

        done = [r for r in records if r["hyp_pinyin"] is not None]
        py = error_rates([str(r["ref_pinyin"]) for r in done], [str(r["hyp_pinyin"]) for r in done], "en")
        summary.update({"pinyin_wer": py.wer, "pinyin_cer": py.cer})
    if args.format == "json":
        print(json.dumps(summary))
    else:
        print(f"WER {100 * counts.wer:.2f}%  CER {100 * counts.cer:.2f}%  on {counts.n} utterances"
              + (f"  (pinyin: syllables {100 * summary['pinyin_wer']:.2f}%, letters {100 * summary['pinyin_cer']:.2f}%)"
                 if "pinyin_wer" in summary else "")
              + f"; not scored: {summary['failed']} unreadable, {skipped} manifest lines skipped")
    return 0


def expand_inputs(items: list[str]) -> list[str]:
    """Files, folders (searched recursively for audio) and glob patterns -> a sorted, de-duplicated file list.
    A pattern that matches nothing is reported; a file that is missing or not a regular file is kept for
    :func:`deepspeech.transcribe.transcribe_files` to report in its place in the output."""
    from deepspeech.audio import AUDIO_SUFFIXES

    paths: list[str] = []
    for item in items:
        if os.path.isdir(item):
            paths += sorted(str(p) for p in Path(item).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        elif any(c in item for c in "*?[") and not os.path.lexists(item):
            found = sorted(glob.glob(item, recursive=True))
            if not found:
                log.error("no files match %s", item)
            paths += found
        else:
            paths.append(item)
    seen: set[str] = set()
    return [p for p in paths if not (p in seen or seen.add(p))]


def _cmd_transcribe(args: argparse.Namespace) -> int:
    from deepspeech.checkpoint import load_model_dir
    from deepspeech.cli_lm import decoder_from_args
    from deepspeech.data.manifest import read_manifest
    from deepspeech.longform import ChunkConfig
    from deepspeech.transcribe import Transcript, done_in_jsonl, output_path, render, transcribe_files

    fmt = {"text": "txt", "json": "jsonl"}.get(args.format, args.format)
    if args.output and args.output_dir:
        raise SystemExit("give --output FILE or --output-dir DIR, not both")
    if args.output and fmt not in ("txt", "jsonl"):
        raise SystemExit(f"--output FILE takes txt or jsonl; use --output-dir for {fmt}")
    paths = expand_inputs(args.inputs)
    if args.manifest:
        paths += [u.audio for u in read_manifest(args.manifest)]
    if not paths:
        raise SystemExit("no input files")
    am = load_model_dir(args.model, device=args.device)
    decoder = decoder_from_args(args, args.model, am.tokenizer)
    lang = am.text_lang
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]) if args.output_dir else None
    out_file = Path(args.output) if args.output else None
    if out_file is not None:  # resume: skip what an earlier run wrote
        done = done_in_jsonl(out_file) if fmt == "jsonl" else (
            {ln.split("\t", 1)[0] for ln in out_file.read_text(encoding="utf-8").splitlines()}
            if out_file.is_file() else set())
    elif args.output_dir:
        done = {p for p in paths if output_path(p, Path(args.output_dir), fmt, root).is_file()}
    else:
        done = set()
    todo = [p for p in paths if str(p) not in done]
    if done:
        log.info("%d of %d files already transcribed: skipped", len(paths) - len(todo), len(paths))
    sink = open(out_file, "a", encoding="utf-8") if out_file else None

    def write(t: Transcript) -> None:
        if args.output_dir:
            if t.error is None:
                dst = output_path(t.path, Path(args.output_dir), fmt, root)
                dst.parent.mkdir(parents=True, exist_ok=True)
                tmp = dst.with_suffix(dst.suffix + ".part")
                tmp.write_text(render(t, fmt, lang), encoding="utf-8")
                tmp.replace(dst)  # complete files only, so a rerun never skips a half-written one
            return
        if fmt == "jsonl":
            line = render(t, fmt, lang)
        elif t.error is not None:
            return
        elif fmt == "txt":
            line = f"{t.path}\t{t.text}\n"
        else:
            line = render(t, fmt, lang)
        if sink:
            sink.write(line)
            sink.flush()
        else:
            sys.stdout.write(line)

    chunk = ChunkConfig(min_segment_s=args.segment_min_s, max_segment_s=args.segment_max_s)
    try:
        results = transcribe_files(am, todo, args.device, max_batch=args.batch_size, progress=not args.no_progress,
                                   decoder=decoder, chunk=chunk, on_result=write)
    finally:
        if sink:
            sink.close()
    failed = sum(r.error is not None for r in results)
    if failed:
        log.error("%d of %d files could not be read", failed, len(results))
    return 1 if results and failed == len(results) else 0


def _cmd_data_import(args: argparse.Namespace) -> int:
    from deepspeech.data.importers import run_import

    kind = args.kind
    for flag, kinds in (("an4_full_train", ("an4",)), ("raw_dir", ("an4",)), ("no_check_audio", ("kit",))):
        if getattr(args, flag) and kind not in kinds:
            raise ValueError(f"--{flag.replace('_', '-')} applies to kind {' or '.join(kinds)}, not {kind!r}")
    if args.split and kind in ("fsdd", "folder"):
        raise ValueError(f"kind {kind!r} has no --split (`data prepare fsdd` writes the FSDD protocol's splits)")
    kwargs: dict[str, object] = {"progress": not args.no_progress}
    if args.split:
        kwargs["split"] = args.split
    if args.lang and kind in ("librispeech", "commonvoice", "folder"):
        kwargs["lang"] = args.lang
    if args.an4_full_train:
        kwargs["dev_speakers"] = ()
    if args.raw_dir:
        kwargs["raw_dir"] = args.raw_dir
    if args.no_check_audio:
        kwargs["check_audio"] = False
    n = run_import(kind, args.root, args.out, normalize=not args.raw_text, **kwargs)
    print(f"{args.out}: {n} utterances")
    return 0


def _cmd_data_prepare(args: argparse.Namespace) -> int:
    from deepspeech.data.protocols import prepare

    counts = prepare(args.protocol, args.source, args.out, progress=not args.no_progress)
    print(json.dumps(counts))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from deepspeech.modelcard import export_model

    evals = dict(e.split("=", 1) for e in args.eval or [])
    notes = Path(args.notes).read_text() if args.notes else ""
    half = {"auto": None, "fp16": True, "fp32": False}[args.precision]
    metrics = export_model(args.model, args.to, args.command_line, evals, notes, progress=not args.no_progress,
                           half=half)
    print(json.dumps(metrics))
    return 0


def _cmd_synth_tts(args: argparse.Namespace) -> int:
    import dataclasses

    from data_synthesis.corpus import to_pinyin
    from data_synthesis.tts import ACCENTED_VOICES, PICO_VOICES, synthesize_corpus, voice_split

    if args.text:
        texts = [t.strip() for t in Path(args.text).read_text(encoding="utf-8").splitlines() if t.strip()]
    else:
        texts = [w.strip() for w in (args.words or "").split(",") if w.strip()]
    if not texts:
        raise SystemExit("nothing to say: give --text FILE or --words a,b,c")
    texts = [t for _ in range(args.repeat) for t in texts]
    cfg = dataclasses.replace(voice_split(args.lang, args.voice_split), sample_rate=args.sample_rate)
    if args.voices:
        voices = [v.strip() for v in args.voices.split(",") if v.strip()]
        aliases = {"accented": ACCENTED_VOICES, "pico": tuple(PICO_VOICES)}
        voices = [a for v in voices for a in aliases.get(v, (v,))]
        cfg = dataclasses.replace(cfg, voices=tuple(voices))
    utts = synthesize_corpus(texts, args.out, cfg, seed=args.seed, lang=args.lang, progress=not args.no_progress,
                             workers=args.workers, spoken=to_pinyin if args.lang == "zh" else None)
    print(f"{args.out}/manifest.jsonl: {len(utts)} utterances, {sum(u.duration_s for u in utts) / 60:.1f} min")
    return 0


def _range(text: str, kind: type = float) -> tuple:
    """'a,b' or 'a' -> (a, b) / (a, a)."""
    parts = [kind(x) for x in text.split(",")]
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected A or A,B, got {text!r}")
    return (parts[0], parts[-1])


def _cmd_synth_noise(args: argparse.Namespace) -> int:
    from data_synthesis.offline import augment_corpus
    from deepspeech.augment import AugmentConfig
    from deepspeech.data.manifest import read_manifest

    cfg = AugmentConfig(prob=1.0, speed=args.speed, gain_db=args.gain_db, noise_prob=args.noise_prob,
                        noise_snr_db=args.snr_db, noise_tracks=args.tracks,
                        noise_kinds=tuple(k.strip() for k in args.kinds.split(",")),
                        noise_manifest=args.noise_manifest or "", reverb_prob=args.reverb_prob)
    utts = read_manifest(args.manifest)
    done = augment_corpus(utts, args.out, cfg, seed=args.seed, copies=args.copies, workers=args.workers,
                          progress=not args.no_progress)
    print(f"{args.out}/manifest.jsonl: {len(done)} utterances, {sum(u.duration_s for u in done) / 60:.1f} min")
    return 0


def _cmd_synth_concat(args: argparse.Namespace) -> int:
    from data_synthesis.concat import ConcatConfig, concat_corpus
    from deepspeech.data.manifest import read_manifest

    utts = [u for m in args.manifest.split(",") for u in read_manifest(m)]
    cfg = ConcatConfig(words=args.words, pause_s=args.pause_s, edge_s=args.edge_s)
    done = concat_corpus(utts, args.out, args.count, cfg, seed=args.seed, progress=not args.no_progress)
    print(f"{args.out}/manifest.jsonl: {len(done)} utterances, {sum(u.duration_s for u in done) / 60:.1f} min")
    return 0


def _cmd_synth_voices(args: argparse.Namespace) -> int:
    from data_synthesis.voice import VoiceConfig, VoiceError, convert_corpus
    from deepspeech.data.manifest import read_manifest

    utts = [u for m in args.manifest.split(",") for u in read_manifest(m)]
    cfg = VoiceConfig(f0_scale=args.f0_scale, vtl_scale=args.vtl_scale, sample_rate=args.sample_rate)
    try:
        done = convert_corpus(utts, args.out, cfg, copies=args.copies, seed=args.seed, progress=not args.no_progress)
    except VoiceError as e:
        raise SystemExit(str(e)) from None
    print(f"{args.out}/manifest.jsonl: {len(done)} utterances, {sum(u.duration_s for u in done) / 60:.1f} min")
    return 0


def _cmd_synth_sentences(args: argparse.Namespace) -> int:
    from data_synthesis.corpus import CorpusConfig, build_corpus

    cfg = CorpusConfig(lang=args.lang, train_sentences=args.train, dev_sentences=args.dev,
                       test_sentences=args.test, min_len=args.min_len, max_len=args.max_len)
    parts = build_corpus(args.text.split(","), args.out, cfg, seed=args.seed, workers=args.workers,
                         progress=not args.no_progress)
    for name, utts in parts.items():
        print(f"{args.out}/{name}/manifest.jsonl: {len(utts)} utterances, "
              f"{sum(u.duration_s for u in utts) / 3600:.2f} h")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepspeech", description="Deep Speech 2 speech recognition")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train an acoustic model (torchrun for data parallel)")
    p.add_argument("--preset", default="digits-en", help="preset or recipe name (default: digits-en)")
    p.add_argument("--config", help="a config.json (from a model directory) instead of a preset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. optim.lr=1e-3")
    p.add_argument("--out", help="run directory (default: runs/<name>)")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if the run directory has a checkpoint")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--format", choices=["text", "json"], default="text")
    _add_common(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="WER/CER of a model on a manifest")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--manifest", required=True)
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument("--hypotheses", help="write per-utterance references and hypotheses (JSON Lines) here")
    _add_segment_args(p)
    p.add_argument("--device", default="cpu")
    add_decoder_args(p)
    _add_common(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("transcribe", help="transcribe audio files, folders or globs (long recordings too)")
    p.add_argument("inputs", nargs="*", help="audio files, folders or glob patterns")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--manifest", help="also transcribe the audio of this manifest")
    p.add_argument("--format", choices=["txt", "jsonl", "srt", "vtt", "text", "json"], default="txt",
                   help="txt (path<TAB>text on stdout), jsonl (text, words with times, confidence), srt, vtt")
    p.add_argument("--output", help="one output file (txt or jsonl), appended to; files already in it are skipped")
    p.add_argument("--output-dir", help="one output file per audio file; existing ones are skipped")
    p.add_argument("--batch-size", type=int, default=16, help="short files per forward pass")
    _add_segment_args(p)
    p.add_argument("--device", default="cpu")
    add_decoder_args(p)
    _add_common(p)
    p.set_defaults(func=_cmd_transcribe)

    p = sub.add_parser("export", help="copy a trained model with a model card (command, config, WER/CER)")
    p.add_argument("--model", required=True, help="trained model directory, e.g. runs/NAME/best")
    p.add_argument("--to", required=True, help="destination model directory")
    p.add_argument("--command-line", required=True, help="the command that produced the model (for the card)")
    p.add_argument("--eval", action="append", metavar="NAME=MANIFEST", help="evaluation set for the card")
    p.add_argument("--notes", help="a Markdown file appended to the card")
    p.add_argument("--precision", choices=["auto", "fp16", "fp32"], default="auto",
                   help="stored weights (auto: float16 if the float32 weights exceed 20 MB)")
    _add_common(p)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("synth", help="data synthesis")
    ssub = p.add_subparsers(dest="synth_command", required=True)
    q = ssub.add_parser("tts", help="a synthetic speech corpus from espeak-ng (many voices, pitches, rates)")
    q.add_argument("--text", help="a file with one sentence per line")
    q.add_argument("--words", help="comma-separated texts instead of a file, e.g. zero,one,two")
    q.add_argument("--repeat", type=int, default=1, help="speak every text this many times (new voice each time)")
    q.add_argument("--out", required=True, help="output folder (audio/ and manifest.jsonl)")
    q.add_argument("--voices", help="comma-separated voices: espeak-ng names, the CMU voices flite:kal16, "
                   "flite:awb, flite:rms, flite:slt, festival:ked, festival:kal, festival:slt_hts, or Festival's "
                   "voices of other languages speaking accented English digits (festival:czech_ph, festival:fi_lj, "
                   "festival:it_pc, ...; 'accented' = all of them), or SVOX Pico's (pico:en-US, pico:en-GB, "
                   "pico:de-DE, pico:es-ES, pico:fr-FR, pico:it-IT; 'pico' = all six) (default: espeak-ng's English "
                   "voices)")
    q.add_argument("--sample-rate", type=int, default=16000)
    q.add_argument("--lang", default="en", choices=["en", "zh"])
    q.add_argument("--voice-split", choices=["all", "train", "test"], default="all",
                   help="draw from the training or the held-out test voices (default: all)")
    q.add_argument("--workers", type=int, default=1, help="parallel processes")
    q.add_argument("--seed", type=int, default=0)
    _add_common(q)
    q.set_defaults(func=_cmd_synth_tts)

    q = ssub.add_parser("sentences", help="a synthetic sentence corpus: train/dev/test with unseen test voices "
                        "and unseen test sentences (the last 1,000 lines of each text file)")
    q.add_argument("--text", required=True, help="comma-separated sentence files (one sentence a line)")
    q.add_argument("--out", required=True, help="output folder: train/, dev/, test/")
    q.add_argument("--lang", default="en", choices=["en", "zh"])
    q.add_argument("--train", type=int, default=5000, help="training sentences")
    q.add_argument("--dev", type=int, default=200, help="dev sentences (training text and voices)")
    q.add_argument("--test", type=int, default=500, help="test sentences (test text, test voices)")
    q.add_argument("--min-len", type=int, default=4, help="shortest sentence: words (en) or characters (zh)")
    q.add_argument("--max-len", type=int, default=20, help="longest sentence: words (en) or characters (zh)")
    q.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    q.add_argument("--seed", type=int, default=0)
    _add_common(q)
    q.set_defaults(func=_cmd_synth_sentences)

    q = ssub.add_parser("concat", help="connected speech: join 2-5 utterances of a speaker with pauses "
                        "(e.g. digit strings from isolated digits)")
    q.add_argument("--manifest", required=True, help="input manifest(s), comma-separated")
    q.add_argument("--out", required=True, help="output folder (audio/ and manifest.jsonl)")
    q.add_argument("--count", type=int, required=True, help="utterances to write")
    q.add_argument("--words", type=lambda t: _range(t, int), default=(2, 5), help="utterances joined, 'lo,hi'")
    q.add_argument("--pause-s", type=_range, default=(0.05, 0.5), help="pause between them, 'lo,hi' seconds")
    q.add_argument("--edge-s", type=_range, default=(0.0, 0.3), help="silence at both ends, 'lo,hi' seconds")
    q.add_argument("--seed", type=int, default=0)
    _add_common(q)
    q.set_defaults(func=_cmd_synth_concat)

    q = ssub.add_parser("voices", help="new voices from real speakers: WORLD vocoder re-synthesis with F0 and "
                        "formants scaled independently (pip install 'deepspeech[voice]')")
    q.add_argument("--manifest", required=True, help="input manifest(s), comma-separated")
    q.add_argument("--out", required=True, help="output folder (audio/ and manifest.jsonl)")
    q.add_argument("--copies", type=int, default=1, help="converted copies of each utterance")
    q.add_argument("--f0-scale", type=_range, default=(0.7, 1.45), help="F0 scale range, 'lo,hi' (log-uniform)")
    q.add_argument("--vtl-scale", type=_range, default=(0.87, 1.15),
                   help="formant scale range, 'lo,hi' (log-uniform; > 1 = shorter vocal tract)")
    q.add_argument("--sample-rate", type=int, default=16000, help="input and output rate")
    q.add_argument("--seed", type=int, default=0)
    _add_common(q)
    q.set_defaults(func=_cmd_synth_voices)

    q = ssub.add_parser("noise", help="write a noisy / reverberant copy of a corpus (audio + manifest)")
    q.add_argument("--manifest", required=True, help="input manifest (clean speech)")
    q.add_argument("--out", required=True, help="output folder (audio/ and manifest.jsonl)")
    q.add_argument("--noise-manifest", help="recorded noise clips for the 'real' kind (training clips only!)")
    q.add_argument("--kinds", default="real,coloured,babble", help="noise kinds to draw each track from")
    q.add_argument("--snr-db", type=_range, default=(0.0, 30.0), help="SNR range in dB, 'lo,hi' (default 0,30)")
    q.add_argument("--tracks", type=lambda t: _range(t, int), default=(1, 3), help="noise tracks, 'lo,hi'")
    q.add_argument("--noise-prob", type=float, default=1.0, help="share of utterances that get noise")
    q.add_argument("--reverb-prob", type=float, default=0.0, help="share of utterances that get reverberation")
    q.add_argument("--speed", type=_range, default=(1.0, 1.0), help="speed factor range, e.g. 0.9,1.1")
    q.add_argument("--gain-db", type=_range, default=(0.0, 0.0), help="gain range in dB")
    q.add_argument("--copies", type=int, default=1, help="augmented copies of each utterance")
    q.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    q.add_argument("--seed", type=int, default=0)
    _add_common(q)
    q.set_defaults(func=_cmd_synth_noise)

    add_lm_parser(sub, _add_common)
    add_serve_parsers(sub, _add_common)

    from deepspeech.data.importers import importer_kinds  # numpy and soundfile, no torch: ~0.1 s

    p = sub.add_parser("data", help="data preparation")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser("import", help="write a manifest from a corpus layout")
    q.add_argument("kind", choices=sorted(importer_kinds()),
                   help="corpus layout; kit = a data kit set with a split key (../shared/data/en_an4, ...)")
    q.add_argument("root", help="corpus folder (kit: the set's folder or its manifest.jsonl)")
    q.add_argument("--out", required=True, help="manifest to write")
    q.add_argument("--split", help="train|dev|test for aishell, an4 (default train; dev = 6 held-out train "
                   "speakers), kit and speechcommands (default: all); librispeech: the data kit's Mini "
                   "LibriSpeech speaker protocol (default: all); commonvoice: tsv or csv name (train, dev, test, ...)")
    q.add_argument("--lang", help="en or zh (librispeech, commonvoice, folder)")
    q.add_argument("--an4-full-train", action="store_true",
                   help="an4: no dev speakers, --split train is AN4's whole 948-utterance training set")
    q.add_argument("--raw-dir", metavar="DIR", help="an4: write the FLAC converted from .raw files under DIR "
                   "(default: beside each .raw)")
    q.add_argument("--raw-text", action="store_true", help="keep the transcripts as the corpus gives them (kit: "
                   "its 'text'), not normalised to lower-case words")
    q.add_argument("--no-check-audio", action="store_true",
                   help="kit: check only that each audio file exists and keep the manifest's durations (fast)")
    _add_common(q)
    q.set_defaults(func=_cmd_data_import)
    q = dsub.add_parser("prepare", help="write train/dev/test manifests of a fixed evaluation protocol")
    q.add_argument("protocol", choices=["fsdd", "aishell-sample", "noise"])
    q.add_argument("source", help="FSDD audio folder, or the AISHELL sample or noise kit folder (with manifest.jsonl)")
    q.add_argument("--out", required=True, help="folder for train.jsonl, dev.jsonl, test.jsonl")
    _add_common(q)
    q.set_defaults(func=_cmd_data_prepare)
    return parser


def _stdout_closed() -> bool:
    """True when standard output is a pipe whose reader has gone (``deepspeech ... | head``): the write end then
    polls as an error (or hang-up). Where poll is unavailable, a broken pipe is taken to be standard output."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return True


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. The project's errors (and OS errors such as a missing or unwritable file) end it with
    one line on stderr and exit status 2 (the traceback at -v); a closed output pipe ends it quietly with 141,
    the status of a process killed by SIGPIPE. SIGPIPE itself stays ignored, as Python sets it, so that a
    server's or trainer's broken socket stays an exception and never kills the process."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    from data_synthesis.tts import SynthesisError
    from data_synthesis.voice import VoiceError
    from deepspeech.audio import AudioError
    from deepspeech.beam import DecoderError
    from deepspeech.checkpoint import CheckpointError
    from deepspeech.data.manifest import ManifestError
    from deepspeech.hanzi import HanziError
    from deepspeech.kenlm import KenLMError

    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # here, not at exit, so that a reader gone by now is handled below
        return status
    except BrokenPipeError as e:
        if not _stdout_closed():
            log.error("%s", e)
            return 2
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's own flush stays quiet
        return 141
    except (AudioError, CheckpointError, ManifestError, DecoderError, KenLMError, HanziError, SynthesisError,
            VoiceError, ValueError, OSError) as e:  # AudioError, CheckpointError, ManifestError are ValueErrors
        log.debug("traceback", exc_info=True)
        log.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
