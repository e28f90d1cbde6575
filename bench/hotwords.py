"""Hotword (contextual biasing) acceptance figure, issue 34: with the default beam-search backend (flashlight-text,
:mod:`deepspeech.decoding.hotwords`), boosting rare words (proper names absent from the LM) must cut their own error
rate at least in half without raising the WER of utterances without them by more than 1 point absolute.

The set is built here: sentences carrying a proper name that is not in the model's LM vocabulary (handwritten carrier
sentences of common words, names drawn per sentence), and as many sentences without names (the LM's held-out test
text: the data kit's last 1,000 Gutenberg lines, as the recipe keeps them), all spoken by the model's unseen test
voices (``voice_split("en", "test")``). Every utterance is decoded by beam search with the model's LM and tuned
settings, once without hotwords and once with the whole name list of the set as hotwords (a contact list: the same
list for every utterance, names or not). The hotword weight is chosen on a separate dev set (other names, other
sentences, other seed), never on the test set.

Reported: the names' error rate (an occurrence in the reference counts as recognised when the hypothesis has that
word as often), the WER of the name sentences and of the others, and the decoding cost (median ms per utterance
over repetitions, with and without hotwords alternating, one thread), and the cost of building the hotword decoder.

    .venv/bin/python bench/hotwords.py [--model models/sentences-en] [--n 40] [--weights 4,8,12]

Results: bench/results/hotwords.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

log = logging.getLogger("bench.hotwords")

# Carrier sentences of common words; {} is the name.
CARRIERS = (
    "i spoke to {} about the house yesterday", "{} will come to the meeting in the morning",
    "we sent the letter to {} last week", "please ask {} to call me back tonight",
    "the children went with {} to the river", "have you seen {} since the summer",
    "my old friend {} lives near the station", "tell {} that the dinner is ready",
    "she wrote a long letter to {} from london", "{} has a small farm in the north",
    "we met {} at the church on sunday", "do you know where {} put the keys",
)
# Proper names; those the LM happens to know are dropped at run time (logged).
TEST_NAMES = (
    "zelinski", "okonkwo", "nakamura", "kowalczyk", "delacroix", "abernathy", "thorvald", "haruto", "priya",
    "oduya", "siobhan", "dmitri", "anneliese", "lucinda", "persephone", "quentin", "rosalind", "yolanda",
    "zachariah", "ngozi", "takeshi", "bogdan", "svetlana", "imogen", "evander", "marisol", "jurgen", "katarina",
    "oluwaseun", "ravindra", "yusuf", "fenella", "casimir", "ottilie", "leopoldo", "anouk", "tamsin", "dorian",
    "magnus", "ignatius", "horatio", "esperanza", "wojciech", "kwame", "aurelio", "benedikt",
)
DEV_NAMES = ("fiorella", "radomir", "kenji", "saoirse", "augustin", "mireille", "thaddeus", "olamide",
             "gwendolyn", "stanislav", "ayodele", "cordelia", "lazarus", "hiroko", "petronella", "vasily")


def name_sentences(names: list[str], rng: np.random.Generator) -> list[str]:
    return [CARRIERS[int(rng.integers(len(CARRIERS)))].format(n) for n in names]


def plain_sentences(kit: Path, n: int, rng: np.random.Generator, exclude: set[str]) -> list[str]:
    from data_synthesis.corpus import CorpusConfig, pick, text_protocol

    _, test = text_protocol([kit / "text_en_gutenberg" / "sentences_norm.txt"])
    return pick(test, n, CorpusConfig(lang="en", min_len=4, max_len=16), rng, exclude)


def synthesize(texts: list[str], out: Path, seed: int) -> list[Any]:
    from data_synthesis.tts import synthesize_corpus, voice_split

    return synthesize_corpus(texts, out, voice_split("en", "test"), seed=seed, progress=False,
                             workers=min(2, os.cpu_count() or 1))


def name_errors(refs: list[str], hyps: list[str], names: set[str]) -> tuple[int, int]:
    """(name occurrences missed, name occurrences) over the utterances."""
    missed = total = 0
    for r, h in zip(refs, hyps, strict=True):
        want = Counter(w for w in r.split() if w in names)
        got = Counter(h.split())
        total += sum(want.values())
        missed += sum(max(0, c - got[w]) for w, c in want.items())
    return missed, total


def decode_all(dec: Any, data: list[tuple[np.ndarray, str]]) -> list[str]:
    return [dec.decode(logp)[0].text for logp, _ in data]


def evaluate(base: Any, hot: Any, data_names: list[tuple[np.ndarray, str]], data_plain: list[tuple[np.ndarray, str]],
             names: set[str]) -> dict[str, Any]:
    from deepspeech.metrics import error_rates

    out: dict[str, Any] = {}
    for label, dec in (("none", base), ("hotwords", hot)):
        t0 = time.perf_counter()
        hn, hp = decode_all(dec, data_names), decode_all(dec, data_plain)
        ms = (time.perf_counter() - t0) * 1e3 / (len(data_names) + len(data_plain))
        refs_n, refs_p = [r for _, r in data_names], [r for _, r in data_plain]
        missed, total = name_errors(refs_n, hn, names)
        out[label] = {"name_error_rate": missed / max(total, 1), "names": total,
                      "wer_name_sentences": error_rates(refs_n, hn).wer, "wer_other": error_rates(refs_p, hp).wer,
                      "false_names_in_other": sum(w in names for h in hp for w in h.split()),
                      "ms_per_utt_one_pass": ms}
    return out


def build_set(am: Any, names: list[str], n_plain: int, kit: Path, seed: int, tmp: Path,
              ) -> tuple[list[tuple[np.ndarray, str]], list[tuple[np.ndarray, str]]]:
    from deepspeech.inference.evaluate import collect_log_probs

    rng = np.random.default_rng(seed)
    with_names = name_sentences(names, rng)
    plain = plain_sentences(kit, n_plain, rng, set(with_names))
    utts = synthesize(with_names + plain, tmp / f"set{seed}", seed)
    data = collect_log_probs(am, utts, progress=False)
    named = [d for d in data if any(w in names for w in d[1].split())]
    other = [d for d in data if not any(w in names for w in d[1].split())]
    return named, other


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(REPO / "models" / "sentences-en"))
    ap.add_argument("--data-kit", default=os.environ.get("DATA_KIT", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--n", type=int, default=40, help="name sentences (and as many without) in the test set")
    ap.add_argument("--weights", default="4,6,8,10,12", help="hotword weights tried on the dev set")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "hotwords.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from deepspeech.checkpoint import load_model_dir
    from deepspeech.decoding.beam import build_decoder

    torch.set_num_threads(1)
    am = load_model_dir(args.model)
    base = build_decoder(args.model, am.tokenizer)
    known = set(base.lm.unigrams) if base.lm else set()
    test_names = [n for n in TEST_NAMES if n not in known][: args.n]
    dev_names = [n for n in DEV_NAMES if n not in known]
    dropped = [n for n in TEST_NAMES + DEV_NAMES if n in known]
    if dropped:
        log.info("names in the LM vocabulary, not used: %s", ", ".join(dropped))
    kit = Path(args.data_kit)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        dev_named, dev_other = build_set(am, dev_names, len(dev_names), kit, 1, tmp)
        test_named, test_other = build_set(am, test_names, len(test_names), kit, 2, tmp)
    # The weight: the dev set's largest name-error cut whose other-sentence WER rises by at most 0.5 points.
    weights = [float(w) for w in args.weights.split(",")]
    dev: dict[str, Any] = {}
    best_w, best_key = weights[0], (-1.0, 0.0)
    for w in weights:
        r = evaluate(base, base.with_hotwords(dev_names, w), dev_named, dev_other, set(dev_names))
        dev[str(w)] = r
        cut = r["none"]["name_error_rate"] - r["hotwords"]["name_error_rate"]
        rise = r["hotwords"]["wer_other"] - r["none"]["wer_other"]
        log.info("dev weight %g: name error %.3f -> %.3f, other WER %.4f -> %.4f", w, r["none"]["name_error_rate"],
                 r["hotwords"]["name_error_rate"], r["none"]["wer_other"], r["hotwords"]["wer_other"])
        if rise <= 0.005 and (cut, -w) > best_key:
            best_w, best_key = w, (cut, -w)
    t0 = time.perf_counter()
    hot = base.with_hotwords(test_names, best_w)
    build_ms = (time.perf_counter() - t0) * 1e3
    result = evaluate(base, hot, test_named, test_other, set(test_names))
    # Cost: all test utterances, with and without the hotword list, alternating.
    data = test_named + test_other
    times: dict[str, list[float]] = {"none": [], "hotwords": []}
    for _ in range(args.reps):
        for label, dec in (("none", base), ("hotwords", hot)):
            t0 = time.perf_counter()
            decode_all(dec, data)
            times[label].append((time.perf_counter() - t0) * 1e3 / len(data))
    # The peer: pyctcdecode with the same hotwords and its own hotword weight (one timed pass; weights tuned for
    # the default backend).
    from deepspeech.decoding.beam import BeamSearchDecoder

    peer = BeamSearchDecoder(am.tokenizer, base.lm, dataclasses.replace(base.cfg, backend="pyctcdecode"))
    result["pyctcdecode"] = evaluate(peer, peer.with_hotwords(test_names), test_named, test_other, set(test_names))
    none, boosted = result["none"], result["hotwords"]
    passed = (boosted["name_error_rate"] <= none["name_error_rate"] / 2
              and boosted["wer_other"] - none["wer_other"] <= 0.01)
    report = {"model": str(Path(args.model).name), "backend": base.cfg.backend, "weight": best_w,
              "test_names": test_names, "dev_names": dev_names, "utterances": {"names": len(test_named),
                                                                                  "other": len(test_other)},
              "test": result, "dev": dev, "hotword_decoder_build_ms": build_ms,
              "ms_per_utt": {k: {"median": statistics.median(v), "min": min(v), "max": max(v)}
                             for k, v in times.items()},
              "accepted": passed}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"model {report['model']}, backend {report['backend']}, {len(test_names)} hotwords, weight {best_w:g} "
          f"(chosen on dev), {len(test_named)} name + {len(test_other)} other utterances")
    print(f"{'':12} {'name err':>9} {'WER names':>10} {'WER other':>10} {'ms/utt':>8}")
    for label in ("none", "hotwords"):
        r = result[label]
        print(f"{label:12} {r['name_error_rate']:9.3f} {r['wer_name_sentences']:10.4f} {r['wer_other']:10.4f} "
              f"{statistics.median(times[label]):8.1f}")
    for label in ("none", "hotwords"):
        r = result["pyctcdecode"][label]
        print(f"{'pyctc ' + label:12} {r['name_error_rate']:9.3f} {r['wer_name_sentences']:10.4f} "
              f"{r['wer_other']:10.4f} {r['ms_per_utt_one_pass']:8.1f}")
    print(f"hotword decoder build: {build_ms:.0f} ms; accepted: {passed} (ms/utt: flashlight median of {args.reps} "
          "alternating passes, pyctcdecode one pass)")


if __name__ == "__main__":
    main()
