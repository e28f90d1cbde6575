"""``deepspeech synth``: data synthesis. ``tts`` (espeak-ng, Festival, Flite, SVOX Pico voices), ``sentences``
(a train/dev/test sentence corpus), ``concat`` (connected speech), ``voices`` (WORLD voice conversion) and
``noise`` (a noisy / reverberant copy of a corpus)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from deepspeech.cli.common import Subparsers, add_command, add_common


def _range(text: str, kind: type = float) -> tuple:
    """'a,b' or 'a' -> (a, b) / (a, a)."""
    parts = [kind(x) for x in text.split(",")]
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected A or A,B, got {text!r}")
    return (parts[0], parts[-1])


def add_parser(subparsers: Subparsers, argv: Sequence[str] | None = None) -> None:
    p = add_command(subparsers, "synth", "data synthesis", argv)
    if p is None:
        return
    ssub = p.add_subparsers(dest="synth_command", required=True)
    _add_tts(ssub, argv)
    _add_sentences(ssub, argv)
    _add_concat(ssub, argv)
    _add_voices(ssub, argv)
    _add_noise(ssub, argv)


def _add_tts(ssub: Subparsers, argv: Sequence[str] | None) -> None:
    q = add_command(ssub, "tts", "a synthetic speech corpus from espeak-ng (many voices, pitches, rates)", argv,
                    run_tts)
    if q is None:
        return
    from data_synthesis.tts import TTSConfig

    d = TTSConfig()
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
    q.add_argument("--sample-rate", type=int, default=d.sample_rate)
    q.add_argument("--lang", default="en", choices=["en", "zh"])
    q.add_argument("--voice-split", choices=["all", "train", "test"], default=d.variant_split,
                   help="draw from the training or the held-out test voices (default: %(default)s)")
    q.add_argument("--workers", type=int, default=1, help="parallel processes")
    q.add_argument("--seed", type=int, default=0)
    add_common(q)


def _add_sentences(ssub: Subparsers, argv: Sequence[str] | None) -> None:
    q = add_command(ssub, "sentences", "a synthetic sentence corpus: train/dev/test with unseen test voices "
                    "and unseen test sentences (the last 1,000 lines of each text file)", argv, run_sentences)
    if q is None:
        return
    from data_synthesis.corpus import CorpusConfig

    d = CorpusConfig()
    q.add_argument("--text", required=True, help="comma-separated sentence files (one sentence a line)")
    q.add_argument("--out", required=True, help="output folder: train/, dev/, test/")
    q.add_argument("--lang", default=d.lang, choices=["en", "zh"])
    q.add_argument("--train", type=int, default=d.train_sentences, help="training sentences")
    q.add_argument("--dev", type=int, default=d.dev_sentences, help="dev sentences (training text and voices)")
    q.add_argument("--test", type=int, default=d.test_sentences, help="test sentences (test text, test voices)")
    q.add_argument("--min-len", type=int, default=d.min_len, help="shortest sentence: words (en) or characters (zh)")
    q.add_argument("--max-len", type=int, default=d.max_len, help="longest sentence: words (en) or characters (zh)")
    q.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    q.add_argument("--seed", type=int, default=0)
    add_common(q)


def _add_concat(ssub: Subparsers, argv: Sequence[str] | None) -> None:
    q = add_command(ssub, "concat", "connected speech: join 2-5 utterances of a speaker with pauses "
                    "(e.g. digit strings from isolated digits)", argv, run_concat)
    if q is None:
        return
    from data_synthesis.concat import ConcatConfig

    d = ConcatConfig()
    q.add_argument("--manifest", required=True, help="input manifest(s), comma-separated")
    q.add_argument("--out", required=True, help="output folder (audio/ and manifest.jsonl)")
    q.add_argument("--count", type=int, required=True, help="utterances to write")
    q.add_argument("--words", type=lambda t: _range(t, int), default=d.words, help="utterances joined, 'lo,hi'")
    q.add_argument("--pause-s", type=_range, default=d.pause_s, help="pause between them, 'lo,hi' seconds")
    q.add_argument("--edge-s", type=_range, default=d.edge_s, help="silence at both ends, 'lo,hi' seconds")
    q.add_argument("--seed", type=int, default=0)
    add_common(q)


def _add_voices(ssub: Subparsers, argv: Sequence[str] | None) -> None:
    q = add_command(ssub, "voices", "new voices from real speakers: WORLD vocoder re-synthesis with F0 and "
                    "formants scaled independently (pip install 'deepspeech[voice]')", argv, run_voices)
    if q is None:
        return
    from data_synthesis.voice import VoiceConfig

    d = VoiceConfig()
    q.add_argument("--manifest", required=True, help="input manifest(s), comma-separated")
    q.add_argument("--out", required=True, help="output folder (audio/ and manifest.jsonl)")
    q.add_argument("--copies", type=int, default=1, help="converted copies of each utterance")
    q.add_argument("--f0-scale", type=_range, default=d.f0_scale,
                   help="F0 scale range, 'lo,hi' (log-uniform)")
    q.add_argument("--vtl-scale", type=_range, default=d.vtl_scale,
                   help="formant scale range, 'lo,hi' (log-uniform; > 1 = shorter vocal tract)")
    q.add_argument("--sample-rate", type=int, default=d.sample_rate, help="input and output rate")
    q.add_argument("--seed", type=int, default=0)
    add_common(q)


def _add_noise(ssub: Subparsers, argv: Sequence[str] | None) -> None:
    q = add_command(ssub, "noise", "write a noisy / reverberant copy of a corpus (audio + manifest)", argv,
                    run_noise)
    if q is None:
        return
    from deepspeech.augment.perturb import AugmentConfig

    d = AugmentConfig()
    # Where these differ from AugmentConfig's (on-the-fly training) defaults, they are the offline copy's own:
    # every utterance noisy (--noise-prob 1), SNR down to 0 dB, no speed or gain change unless asked.
    q.add_argument("--manifest", required=True, help="input manifest (clean speech)")
    q.add_argument("--out", required=True, help="output folder (audio/ and manifest.jsonl)")
    q.add_argument("--noise-manifest", help="recorded noise clips for the 'real' kind (training clips only!)")
    q.add_argument("--kinds", default=",".join(d.noise_kinds), help="noise kinds to draw each track from")
    q.add_argument("--snr-db", type=_range, default=(0.0, 30.0), help="SNR range in dB, 'lo,hi' (default 0,30)")
    q.add_argument("--tracks", type=lambda t: _range(t, int), default=d.noise_tracks, help="noise tracks, 'lo,hi'")
    q.add_argument("--noise-prob", type=float, default=1.0, help="share of utterances that get noise")
    q.add_argument("--reverb-prob", type=float, default=d.reverb_prob,
                   help="share of utterances that get reverberation")
    q.add_argument("--speed", type=_range, default=(1.0, 1.0), help="speed factor range, e.g. 0.9,1.1")
    q.add_argument("--gain-db", type=_range, default=(0.0, 0.0), help="gain range in dB")
    q.add_argument("--copies", type=int, default=1, help="augmented copies of each utterance")
    q.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    q.add_argument("--seed", type=int, default=0)
    add_common(q)


def _summary(out: str, utts: Sequence) -> str:
    return f"{out}/manifest.jsonl: {len(utts)} utterances, {sum(u.duration_s for u in utts) / 60:.1f} min"


def run_tts(args: argparse.Namespace) -> int:
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
    print(_summary(args.out, utts))
    return 0


def run_sentences(args: argparse.Namespace) -> int:
    from data_synthesis.corpus import CorpusConfig, build_corpus

    cfg = CorpusConfig(lang=args.lang, train_sentences=args.train, dev_sentences=args.dev,
                       test_sentences=args.test, min_len=args.min_len, max_len=args.max_len)
    parts = build_corpus(args.text.split(","), args.out, cfg, seed=args.seed, workers=args.workers,
                         progress=not args.no_progress)
    for name, utts in parts.items():
        print(f"{args.out}/{name}/manifest.jsonl: {len(utts)} utterances, "
              f"{sum(u.duration_s for u in utts) / 3600:.2f} h")
    return 0


def run_concat(args: argparse.Namespace) -> int:
    from data_synthesis.concat import ConcatConfig, concat_corpus
    from deepspeech.data.manifest import read_manifest

    utts = [u for m in args.manifest.split(",") for u in read_manifest(m)]
    cfg = ConcatConfig(words=args.words, pause_s=args.pause_s, edge_s=args.edge_s)
    done = concat_corpus(utts, args.out, args.count, cfg, seed=args.seed, progress=not args.no_progress)
    print(_summary(args.out, done))
    return 0


def run_voices(args: argparse.Namespace) -> int:
    from data_synthesis.voice import VoiceConfig, VoiceError, convert_corpus
    from deepspeech.data.manifest import read_manifest

    utts = [u for m in args.manifest.split(",") for u in read_manifest(m)]
    cfg = VoiceConfig(f0_scale=args.f0_scale, vtl_scale=args.vtl_scale, sample_rate=args.sample_rate)
    try:
        done = convert_corpus(utts, args.out, cfg, copies=args.copies, seed=args.seed, progress=not args.no_progress)
    except VoiceError as e:
        raise SystemExit(str(e)) from None
    print(_summary(args.out, done))
    return 0


def run_noise(args: argparse.Namespace) -> int:
    from data_synthesis.offline import augment_corpus
    from deepspeech.augment.perturb import AugmentConfig
    from deepspeech.data.manifest import read_manifest

    cfg = AugmentConfig(prob=1.0, speed=args.speed, gain_db=args.gain_db, noise_prob=args.noise_prob,
                        noise_snr_db=args.snr_db, noise_tracks=args.tracks,
                        noise_kinds=tuple(k.strip() for k in args.kinds.split(",")),
                        noise_manifest=args.noise_manifest or "", reverb_prob=args.reverb_prob)
    utts = read_manifest(args.manifest)
    done = augment_corpus(utts, args.out, cfg, seed=args.seed, copies=args.copies, workers=args.workers,
                          progress=not args.no_progress)
    print(_summary(args.out, done))
    return 0
