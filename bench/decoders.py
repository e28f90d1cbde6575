"""Decoder and transcription benchmarks (issue 4 rows D1-D3):

- D1 decoder speed: milliseconds per utterance of CTC beam search with the model's KenLM at beam 16, 64 and 256,
  for both backends (pyctcdecode, flashlight-text), English (word 3-gram) and Mandarin (character n-gram), with the
  WER/CER each reaches (the comparison is only fair at equal error rates). The acoustic model runs once; only
  decoding is timed, one utterance at a time, one thread.
- D2 transcription real-time factor and WER against pocketsphinx 5 (its own en-us acoustic model, LM and
  dictionary, shipped in its wheel) on the same audio, one thread each, the two alternating file by file: wall
  seconds / audio seconds of the whole file-to-text path (reading, features, network, greedy decoding), median and
  p10..p90 over the files, and WER against the references.
- D3 a long recording (the test audio concatenated to an hour) through ``deepspeech transcribe``: peak resident
  memory and real-time factor (2 threads).

    .venv/bin/python bench/decoders.py [--only d1|d2|d3] [--n 100]

Sets: dev splits for D1 (the decoders' weights are tuned on dev anyway), the unseen-voice test split for D2/D3
(no tuning happens there). Results: bench/results/decoders.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

log = logging.getLogger("bench.decoders")


def d1_decoders(model: str, manifest: str, n: int, beams: list[int]) -> list[dict[str, object]]:
    import torch

    from deepspeech.checkpoint import load_model_dir
    from deepspeech.data.manifest import read_manifest
    from deepspeech.decoding.beam import BACKENDS, build_decoder
    from deepspeech.decoding.greedy import greedy_decode_logp
    from deepspeech.inference.evaluate import collect_log_probs
    from deepspeech.metrics import ErrorCounts, error_rates
    from deepspeech.text import normalize_zh

    torch.set_num_threads(1)
    am = load_model_dir(model)
    utts = read_manifest(manifest)[:n]
    data = collect_log_probs(am, utts, progress=False)
    lang = am.tokenizer.lang
    metric = "wer" if am.text_lang == "en" else "cer"
    if am.hanzi is not None and len(data) != len(utts):
        raise SystemExit(f"{manifest}: unreadable utterances; a pinyin model's character references need them all")

    def errors(hyps: list[str]) -> dict[str, float]:
        """Error rate of the final text; a pinyin model's syllables are written in characters first (timed)."""
        if am.hanzi is None:
            counts = ErrorCounts()
            for (_, ref), hyp in zip(data, hyps, strict=True):
                counts.add(ref, hyp, am.tokenizer.metric_lang)
            return {metric: counts.summary()[metric]}
        t = time.perf_counter()
        chars = [am.hanzi.convert(h) for h in hyps]
        ms = 1000 * (time.perf_counter() - t) / len(hyps)
        return {metric: error_rates([normalize_zh(u.text) for u in utts], chars, "zh").cer,
                "pinyin_cer": error_rates([r for _, r in data], hyps, "en").cer, "hanzi_ms_per_utt": ms}

    t0 = time.perf_counter()
    greedy = [greedy_decode_logp(logp, am.tokenizer).text for logp, _ in data]
    greedy_ms = 1000 * (time.perf_counter() - t0) / len(data)  # before errors(), which converts (timed apart)
    rows: list[dict[str, object]] = [{"lang": lang, "backend": "greedy", "beam": 1, **errors(greedy),
                                      "ms_per_utt": greedy_ms}]
    for backend in BACKENDS:
        for beam in beams:
            dec = build_decoder(model, am.tokenizer, backend=backend, beam_width=beam)
            times, hyps = [], []
            for logp, _ in data:
                t = time.perf_counter()
                hyps.append(dec.decode(logp)[0].text)
                times.append(time.perf_counter() - t)
            rows.append({"lang": lang, "backend": backend, "beam": beam, **errors(hyps),
                         "ms_per_utt": 1000 * statistics.mean(times), "ms_median": 1000 * statistics.median(times),
                         "alpha": dec.cfg.alpha, "beta": dec.cfg.beta})
            log.info("%s", rows[-1])
    return rows


def d2_rtf(model: str, manifest: str, n: int) -> list[dict[str, object]]:
    """Per file, alternately: our whole path (read, features, network, greedy) and pocketsphinx's (read, decode);
    real-time factor per file (median and p10..p90 over the files) and WER over all of them."""
    import torch
    from pocketsphinx import Decoder

    from deepspeech.checkpoint import load_model_dir
    from deepspeech.data.manifest import read_manifest
    from deepspeech.frontend.audio import load_audio
    from deepspeech.inference.transcribe import transcribe_files
    from deepspeech.metrics import error_rates
    from deepspeech.text import normalize_en

    torch.set_num_threads(1)
    utts = read_manifest(manifest)[:n]
    refs = [normalize_en(u.text) for u in utts]
    am = load_model_dir(model)
    ps = Decoder()  # en-us acoustic model, LM and dictionary from the wheel
    transcribe_files(am, [utts[0].audio], progress=False)  # warm-up, both
    ours_rtf, ps_rtf, ours_hyp, ps_hyp = [], [], [], []
    for u in utts:
        t = time.perf_counter()
        ours_hyp.append(transcribe_files(am, [u.audio], progress=False)[0].text or "")
        ours_rtf.append((time.perf_counter() - t) / u.duration_s)
        t = time.perf_counter()
        pcm = (np.clip(load_audio(u.audio), -1, 1) * 32767).astype("<i2").tobytes()
        ps.start_utt()
        ps.process_raw(pcm, full_utt=True)
        ps.end_utt()
        ps_hyp.append(ps.hyp().hypstr if ps.hyp() else "")
        ps_rtf.append((time.perf_counter() - t) / u.duration_s)

    def row(name: str, rtf: list[float], hyps: list[str]) -> dict[str, object]:
        q = np.percentile(rtf, [10, 50, 90])
        return {"system": name, "rtf": float(q[1]), "rtf_p10": float(q[0]), "rtf_p90": float(q[2]),
                "wer": error_rates(refs, [normalize_en(h) for h in hyps]).wer, "utterances": len(utts),
                "audio_s": sum(u.duration_s for u in utts), "threads": 1}

    return [row(f"deepspeech greedy ({Path(model).name})", ours_rtf, ours_hyp),
            row("pocketsphinx 5 (en-us)", ps_rtf, ps_hyp)]


def d3_long(model: str, manifest: str, hours: float) -> dict[str, object]:
    import soundfile as sf

    from deepspeech.data.manifest import read_manifest
    from deepspeech.frontend.audio import load_audio

    utts = read_manifest(manifest)
    with tempfile.TemporaryDirectory() as tmp:
        long_path = Path(tmp) / "long.flac"
        total = 0.0
        with sf.SoundFile(long_path, "w", samplerate=16000, channels=1, subtype="PCM_16") as f:
            k = 0
            while total < hours * 3600:
                wav = load_audio(utts[k % len(utts)].audio)
                f.write(np.concatenate([wav, np.zeros(8000, np.float32)]))
                total += wav.size / 16000 + 0.5
                k += 1
        out = Path(tmp) / "out.jsonl"
        cmd = [sys.executable, "-m", "deepspeech.cli", "transcribe", str(long_path), "--model", model,
               "--format", "jsonl", "--output", str(out), "--no-progress"]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            raise RuntimeError(res.stderr[-2000:])
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        row = json.loads(out.read_text().splitlines()[0])
    return {"audio_s": total, "utterances": k, "wall_s": wall, "rtf": wall / total, "peak_rss_mb": peak_kb / 1024,
            "words": len(row["words"]), "threads": int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["all", "d1", "d2", "d3"], default="all")
    ap.add_argument("--n", type=int, default=100, help="utterances for D1 and D2")
    ap.add_argument("--beams", default="16,64,256")
    ap.add_argument("--en-model", default="models/sentences-en")
    ap.add_argument("--zh-model", default="models/sentences-zh")
    ap.add_argument("--en-dev", default="data/sentences_en/dev/manifest.jsonl")
    ap.add_argument("--zh-dev", default="data/sentences_zh/dev/manifest.jsonl")
    ap.add_argument("--en-test", default="data/sentences_en/test/manifest.jsonl")
    ap.add_argument("--hours", type=float, default=1.0, help="D3 recording length")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.chdir(REPO)
    results: dict[str, object] = {}
    beams = [int(b) for b in args.beams.split(",")]
    if args.only in ("all", "d1"):
        rows = []
        for model, man in ((args.en_model, args.en_dev), (args.zh_model, args.zh_dev)):
            if Path(model).is_dir() and Path(man).is_file():
                rows += d1_decoders(model, man, args.n, beams)
            else:
                log.warning("D1: skipping %s (model or %s missing)", model, man)
        results["d1_decoders"] = rows
        print("\nD1 decoder speed (ms per utterance, 1 thread) and error rate")
        for r in rows:
            err = r.get("wer", r.get("cer"))
            print(f"  {r['lang']}  {r['backend']:<12} beam {r['beam']:>4}: {r['ms_per_utt']:8.1f} ms   "
                  f"{'WER' if 'wer' in r else 'CER'} {100 * float(err):5.2f}%")  # type: ignore[arg-type]
    if args.only in ("all", "d2"):
        rows = d2_rtf(args.en_model, args.en_test, args.n)
        results["d2_rtf"] = rows
        print("\nD2 transcription real-time factor (1 thread), same audio")
        for r in rows:
            print(f"  {r['system']:<40} RTF {r['rtf']:.4f} ({r['rtf_p10']:.4f}..{r['rtf_p90']:.4f})   "
                  f"WER {100 * float(r['wer']):.2f}%")  # type: ignore[arg-type]
        print(f"  ratio pocketsphinx RTF / ours: {float(rows[1]['rtf']) / float(rows[0]['rtf']):.1f}x")  # type: ignore[arg-type]
    if args.only in ("all", "d3"):
        r = d3_long(args.en_model, args.en_test, args.hours)
        results["d3_long"] = r
        print(f"\nD3 {r['audio_s'] / 3600:.2f} h recording: peak RSS {r['peak_rss_mb']:.0f} MB, "
              f"RTF {r['rtf']:.4f}, {r['words']} words")
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    path = out / "decoders.json"
    merged = json.loads(path.read_text()) if path.is_file() else {}  # rows not rerun stay (D1: per language)
    if "d1_decoders" in results and "d1_decoders" in merged:
        rerun = {r["lang"] for r in results["d1_decoders"]}  # type: ignore[attr-defined]
        results["d1_decoders"] = [r for r in merged["d1_decoders"] if r["lang"] not in rerun] + results["d1_decoders"]
    path.write_text(json.dumps({**merged, **results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
