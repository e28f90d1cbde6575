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

``--lang zh``: the same with ``models/sentences-zh`` (a pinyin model: flashlight over syllables with its syllable LM,
then ``hanzi/`` to characters): Chinese names given in characters as the hotwords (read with the model's pinyin
lexicon, biased as phrases in the syllable beam and written in their characters by the conversion,
:mod:`deepspeech.decoding.hotwords`), carrier sentences of common words and the held-out Lu Xun / statute text
(``text_zh``'s last 1,000 lines), spoken by the Mandarin voice's test variants; CER in place of WER, and the names'
pinyin error (the name's reading missing from the recognised pinyin) beside their character error.

    .venv/bin/python bench/hotwords.py --lang zh [--n 24]

Results: bench/results/hotwords.json (``--lang zh``: hotwords_zh.json).
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


# Mandarin (--lang zh): carrier sentences of common words, {} a name; common two-character names (whose characters
# the lexicon mostly knows, but as other words: the conversion's LM has no reason to put them together).
ZH_CARRIERS = (
    "我昨天在学校见到了{}", "请告诉{}明天早上开会", "{}住在城市的北边", "我们给{}写了一封长信",
    "你知道{}去哪里了吗", "{}说这件事情很重要", "明天我和{}一起去公园", "这本书是{}送给我的",
    "{}在工厂里工作了十年", "大家都在等{}回来", "老师让{}回答问题", "{}的朋友来看他了",
)
ZH_TEST_NAMES = ("张伟", "王芳", "李娜", "刘洋", "陈静", "杨帆", "赵磊", "黄敏", "周杰", "吴霞", "徐涛", "孙丽",
                 "马超", "朱琳", "胡军", "郭鹏", "何平", "林峰", "罗斌", "高翔", "梁燕", "宋佳", "郑凯", "谢婷")
ZH_DEV_NAMES = ("韩梅", "唐宁", "冯雪", "董浩", "萧然", "程亮", "曹颖", "袁晨", "邓丽", "许诺", "傅强", "沈悦")


def name_sentences(names: list[str], rng: np.random.Generator, lang: str = "en") -> list[str]:
    carriers = CARRIERS if lang == "en" else ZH_CARRIERS
    return [carriers[int(rng.integers(len(carriers)))].format(n) for n in names]


def plain_sentences(kit: Path, n: int, rng: np.random.Generator, exclude: set[str], lang: str = "en") -> list[str]:
    from data_synthesis.corpus import CorpusConfig, pick, text_protocol

    if lang == "en":
        _, test = text_protocol([kit / "text_en_gutenberg" / "sentences_norm.txt"])
        return pick(test, n, CorpusConfig(lang="en", min_len=4, max_len=16), rng, exclude)
    _, test = text_protocol([kit / "text_zh" / "luxun_sentences.txt", kit / "text_zh" / "law_sentences.txt"])
    return pick(test, n, CorpusConfig(lang="zh", min_len=6, max_len=20), rng, exclude)


def synthesize(texts: list[str], out: Path, seed: int, lang: str = "en") -> list[Any]:
    from data_synthesis.tts import synthesize_corpus, voice_split

    return synthesize_corpus(texts, out, voice_split(lang, "test"), seed=seed, progress=False,
                             workers=min(2, os.cpu_count() or 1))


def occurrences(text: str, name: str, lang: str) -> int:
    """How often ``name`` occurs in ``text``: as a word (en), as a substring (zh: characters, or the name's pinyin
    syllables)."""
    if lang == "en":
        return text.split().count(name)
    return f" {text} ".count(f" {name} ") if " " in name else text.count(name)


def name_errors(refs: list[str], hyps: list[str], names: set[str], lang: str = "en") -> tuple[int, int]:
    """(name occurrences missed, name occurrences) over the utterances."""
    missed = total = 0
    for r, h in zip(refs, hyps, strict=True):
        want = {n: c for n in names if (c := occurrences(r, n, lang))}
        total += sum(want.values())
        missed += sum(max(0, c - occurrences(h, n, lang)) for n, c in want.items())
    return missed, total


def decode_all(dec: Any, data: list[tuple[np.ndarray, str]], hanzi: Any = None) -> list[str]:
    """Best hypotheses' texts; with ``hanzi`` (a pinyin model's conversion) "characters\tpinyin"."""
    if hanzi is None:
        return [dec.decode(logp)[0].text for logp, _ in data]
    from deepspeech.decoding.hanzi import hypothesis_to_characters

    out = []
    for logp, _ in data:
        hyp = dec.decode(logp)[0]
        out.append(f"{hypothesis_to_characters(hyp, hanzi).text}\t{hyp.text}")
    return out


def evaluate(base: Any, hot: Any, data_names: list[tuple[np.ndarray, str]], data_plain: list[tuple[np.ndarray, str]],
             names: set[str], hanzi: Any = None) -> dict[str, Any]:
    """Name error and WER (zh, with ``hanzi``: CER, and the names' pinyin error) without and with hotwords."""
    from deepspeech.metrics import error_rates
    from deepspeech.text import to_pinyin

    lang = "en" if hanzi is None else "zh"
    metric = "wer" if lang == "en" else "cer"
    out: dict[str, Any] = {}
    for label, dec in (("none", base), ("hotwords", hot)):
        t0 = time.perf_counter()
        hn, hp = decode_all(dec, data_names, hanzi), decode_all(dec, data_plain, hanzi)
        ms = (time.perf_counter() - t0) * 1e3 / (len(data_names) + len(data_plain))
        refs_n, refs_p = [r for _, r in data_names], [r for _, r in data_plain]
        row: dict[str, Any] = {}
        if lang == "zh":  # "characters\tpinyin": the pinyin's name error too (the reading pypinyin gives the name)
            missed, total = name_errors([to_pinyin(r) for r in refs_n], [h.split("\t")[1] for h in hn],
                                        {to_pinyin(n) for n in names}, lang)
            row["name_pinyin_error_rate"] = missed / max(total, 1)
            hn, hp = [h.split("\t")[0] for h in hn], [h.split("\t")[0] for h in hp]
        missed, total = name_errors(refs_n, hn, names, lang)
        out[label] = {"name_error_rate": missed / max(total, 1), "names": total, **row,
                      f"{metric}_name_sentences": getattr(error_rates(refs_n, hn, lang), metric),
                      f"{metric}_other": getattr(error_rates(refs_p, hp, lang), metric),
                      "false_names_in_other": sum(occurrences(h, n, lang) for h in hp for n in names),
                      "ms_per_utt_one_pass": ms}
    return out


def build_set(am: Any, names: list[str], n_plain: int, kit: Path, seed: int, tmp: Path, lang: str = "en",
              ) -> tuple[list[tuple[np.ndarray, str]], list[tuple[np.ndarray, str]]]:
    from deepspeech.inference.evaluate import collect_log_probs

    rng = np.random.default_rng(seed)
    with_names = name_sentences(names, rng, lang)
    plain = plain_sentences(kit, n_plain, rng, set(with_names), lang)
    utts = synthesize(with_names + plain, tmp / f"set{seed}", seed, lang)
    data = collect_log_probs(am, utts, progress=False)
    if lang == "zh":  # a pinyin model's references come back in pinyin: the character ones are wanted
        from deepspeech.text import normalize_zh

        assert len(data) == len(utts), "an utterance could not be read"
        data = [(logp, normalize_zh(u.text)) for (logp, _), u in zip(data, utts, strict=True)]
    named = [d for d in data if any(occurrences(d[1], n, lang) for n in names)]
    other = [d for d in data if not any(occurrences(d[1], n, lang) for n in names)]
    return named, other


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lang", choices=["en", "zh"], default="en")
    ap.add_argument("--model", help="default: models/sentences-en (--lang zh: models/sentences-zh)")
    ap.add_argument("--data-kit", default=os.environ.get("DATA_KIT", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--n", type=int, default=40, help="name sentences (and as many without) in the test set")
    ap.add_argument("--weights", help="hotword weights tried on the dev set (default 4,6,8,10,12; --lang zh: "
                    "1,2,3,4,6,8,12)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", help="default: bench/results/hotwords.json (--lang zh: hotwords_zh.json)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from deepspeech.checkpoint import load_model_dir
    from deepspeech.decoding.beam import build_decoder

    lang = args.lang
    model = args.model or str(REPO / "models" / ("sentences-en" if lang == "en" else "sentences-zh"))
    out_path = Path(args.out or REPO / "bench" / "results" / ("hotwords.json" if lang == "en" else "hotwords_zh.json"))
    torch.set_num_threads(1)
    am = load_model_dir(model)
    hanzi = am.hanzi if lang == "zh" else None
    if lang == "zh" and hanzi is None:
        raise SystemExit(f"{model}: --lang zh needs a pinyin model with hanzi/")
    base = build_decoder(model, am.tokenizer)
    metric = "wer" if lang == "en" else "cer"
    if lang == "en":
        known = set(base.lm.unigrams) if base.lm else set()
        test_names = [n for n in TEST_NAMES if n not in known][: args.n]
        dev_names = [n for n in DEV_NAMES if n not in known]
        dropped = [n for n in TEST_NAMES + DEV_NAMES if n in known]
        if dropped:
            log.info("names in the LM vocabulary, not used: %s", ", ".join(dropped))
    else:
        test_names, dev_names = list(ZH_TEST_NAMES[: args.n]), list(ZH_DEV_NAMES)
    kit = Path(args.data_kit)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        dev_named, dev_other = build_set(am, dev_names, len(dev_names), kit, 1, tmp, lang)
        test_named, test_other = build_set(am, test_names, len(test_names), kit, 2, tmp, lang)
    # The weight: the dev set's largest name-error cut whose other-sentence WER rises by at most 0.5 points.
    weights = [float(w) for w in (args.weights or ("4,6,8,10,12" if lang == "en" else "1,2,3,4,6,8,12")).split(",")]
    dev: dict[str, Any] = {}
    best_w, best_key = weights[0], (-1.0, 0.0)
    for w in weights:
        r = evaluate(base, base.with_hotwords(dev_names, w), dev_named, dev_other, set(dev_names), hanzi)
        dev[str(w)] = r
        cut = r["none"]["name_error_rate"] - r["hotwords"]["name_error_rate"]
        rise = r["hotwords"][f"{metric}_other"] - r["none"][f"{metric}_other"]
        log.info("dev weight %g: name error %.3f -> %.3f, other %s %.4f -> %.4f", w, r["none"]["name_error_rate"],
                 r["hotwords"]["name_error_rate"], metric.upper(), r["none"][f"{metric}_other"],
                 r["hotwords"][f"{metric}_other"])
        if rise <= 0.005 and (cut, -w) > best_key:
            best_w, best_key = w, (cut, -w)
    t0 = time.perf_counter()
    hot = base.with_hotwords(test_names, best_w)
    build_ms = (time.perf_counter() - t0) * 1e3
    result = evaluate(base, hot, test_named, test_other, set(test_names), hanzi)
    if lang == "zh":  # the same names as hotwords in pinyin: the syllable beam's bias alone, no character hint
        from deepspeech.text import to_pinyin

        result["pinyin_hotwords"] = evaluate(base, base.with_hotwords([to_pinyin(n) for n in test_names], best_w),
                                             test_named, test_other, set(test_names), hanzi)["hotwords"]
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

    peer = BeamSearchDecoder(am.tokenizer, base.lm, dataclasses.replace(base.cfg, backend="pyctcdecode"),
                             base.readings)
    result["pyctcdecode"] = evaluate(peer, peer.with_hotwords(test_names), test_named, test_other, set(test_names),
                                     hanzi)
    none, boosted = result["none"], result["hotwords"]
    passed = (boosted["name_error_rate"] <= none["name_error_rate"] / 2
              and boosted[f"{metric}_other"] - none[f"{metric}_other"] <= 0.01)
    report = {"model": str(Path(model).name), "backend": base.cfg.backend, "weight": best_w,
              "test_names": test_names, "dev_names": dev_names, "utterances": {"names": len(test_named),
                                                                                  "other": len(test_other)},
              "test": result, "dev": dev, "hotword_decoder_build_ms": build_ms,
              "ms_per_utt": {k: {"median": statistics.median(v), "min": min(v), "max": max(v)}
                             for k, v in times.items()},
              "accepted": passed}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    m = metric.upper()
    print(f"model {report['model']}, backend {report['backend']}, {len(test_names)} hotwords, weight {best_w:g} "
          f"(chosen on dev), {len(test_named)} name + {len(test_other)} other utterances")
    pinyin = lang == "zh"
    print(f"{'':12} {'name err':>9}" + (f" {'pinyin err':>10}" if pinyin else "")
          + f" {m + ' names':>10} {m + ' other':>10} {'ms/utt':>8}")
    rows = [(label, result[label], statistics.median(times[label])) for label in ("none", "hotwords")]
    if pinyin:
        rows.append(("in pinyin", result["pinyin_hotwords"], result["pinyin_hotwords"]["ms_per_utt_one_pass"]))
    rows += [("pyctc " + label, result["pyctcdecode"][label], result["pyctcdecode"][label]["ms_per_utt_one_pass"])
             for label in ("none", "hotwords")]
    for label, r, ms in rows:
        print(f"{label:12} {r['name_error_rate']:9.3f}" + (f" {r['name_pinyin_error_rate']:10.3f}" if pinyin else "")
              + f" {r[f'{metric}_name_sentences']:10.4f} {r[f'{metric}_other']:10.4f} {ms:8.1f}")
    print(f"hotword decoder build: {build_ms:.0f} ms; accepted: {passed} (ms/utt: flashlight median of {args.reps} "
          "alternating passes, pyctcdecode one pass)")


if __name__ == "__main__":
    main()
