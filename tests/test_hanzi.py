"""deepspeech.decoding.hanzi: numbered pinyin -> characters with a real KenLM character n-gram and a pinyin lexicon, and
its wiring into evaluation and transcription of a pinyin-unit model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from deepspeech.decoding.beam import Hypothesis, Word
from deepspeech.decoding.hanzi import HanziConfig, HanziError, PinyinToHanzi, hypothesis_to_characters
from deepspeech.decoding.kenlm import KenLMError
from deepspeech.text import to_pinyin
from lm.ngram import kenlm_binary
from tests.conftest import run_cli

pytest.importorskip("pypinyin")

# Homophones the LM must tell apart: shi4 (是/事/市), zhi1 (知/之), li4 (力/立/利).
TEXT = ["我们知道这是一件大事", "城市的事情很多", "他是我们的朋友", "法律规定公民的权利",
        "我们要努力学习", "这件事是真的", "他知道城市很大", "学习法律知识"]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        kenlm_binary("lmplz")
    except KenLMError as e:
        if os.environ.get("DEEPSPEECH_REQUIRE_KENLM"):  # CI: the set-up built KenLM, so no skipping
            raise
        pytest.skip(str(e))
    d = tmp_path_factory.mktemp("hanzi")
    (d / "text.txt").write_text("\n".join(TEXT * 3) + "\n", encoding="utf-8")
    res = run_cli("lm", "ngram", "--text", str(d / "text.txt"), "--lang", "zh", "--order", "3",
                  "--out", str(d / "lm"), "--pinyin-lexicon", "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    return d / "lm"


def test_lexicon_counts_pairs(lm_dir: Path) -> None:
    lex = json.loads((lm_dir / "lexicon.json").read_text(encoding="utf-8"))
    assert dict(lex["shi4"])["是"] == 3 * 3 and dict(lex["shi4"])["事"] == 3 * 3  # each 3 times in TEXT, x3
    assert set(dict(lex["shi4"])) == {"是", "事", "市"}
    assert lex["lv4"] == [["律", 6]]


def test_language_model_picks_the_right_homophones(lm_dir: Path) -> None:
    conv = PinyinToHanzi.load(lm_dir)
    for sentence in TEXT:
        assert conv.convert(to_pinyin(sentence)) == sentence
    assert conv.convert("") == ""


def test_unknown_syllables_fall_back_to_other_tones_and_nearest_spellings(lm_dir: Path) -> None:
    conv = PinyinToHanzi.load(lm_dir)
    # "shi3" is not in the lexicon (a tone error): the candidates of the other tones stand in, at a penalty
    lex = json.loads((lm_dir / "lexicon.json").read_text(encoding="utf-8"))
    other_tones = {c for s, v in lex.items() if s.rstrip("12345") == "shi" for c, _ in v}
    assert "shi3" not in lex and {c for c, _ in conv.candidates("shi3")} == other_tones >= set("是事市")
    assert max(lp for _, lp in conv.candidates("shi3")) <= -HanziConfig().tone_penalty
    # a known syllable also offers its other tones, below its own characters
    shi4 = dict(conv.candidates("shi4"))
    assert shi4["是"] > -HanziConfig().tone_penalty >= shi4["识"]
    # "fa3 lx4" (a misspelt lv4) still gives one character per syllable, and the LM's pick
    assert conv.convert("xue2 xi2 fa3 lx4") == "学习法律"
    # without the LM the most frequent character of each syllable
    plain = PinyinToHanzi({s: [(c, n) for c, n in v] for s, v in lex.items()}, None)
    assert len(plain.convert("ta1 shi4 peng2 you5")) == 4
    with pytest.raises(HanziError):
        PinyinToHanzi({}, None)
    with pytest.raises(HanziError, match="lexicon"):
        PinyinToHanzi.load(lm_dir.parent)


def test_hypothesis_keeps_syllable_times(lm_dir: Path) -> None:
    conv = PinyinToHanzi.load(lm_dir)
    hyp = Hypothesis("fa3 lv4", (Word("fa3", 2, 5), Word("lv4", 7, 9)), score=-1.0)
    out = hypothesis_to_characters(hyp, conv)
    assert out.text == "法律" and out.words == (Word("法", 2, 5), Word("律", 7, 9))
    assert out.extra["pinyin"] == "fa3 lv4" and out.score == -1.0


def test_pinyin_model_is_scored_and_transcribed_in_characters(tmp_path: Path, lm_dir: Path) -> None:
    """Wiring, with an untrained pinyin model: eval scores characters against character references (and
    reports the pinyin rates), transcribe writes one character per recognised syllable."""
    import shutil

    from deepspeech.checkpoint import load_model_dir, save_model_dir
    from deepspeech.frontend.features import FeatureStats
    from deepspeech.inference.evaluate import evaluate_manifest
    from tests.conftest import tiny_pinyin_model

    model, tok, cfg = tiny_pinyin_model("tiny-zh")
    stats = FeatureStats((0.0,) * 161, (1.0,) * 161)
    save_model_dir(tmp_path / "m", model, tok, stats, cfg)
    shutil.copytree(lm_dir, tmp_path / "m" / "hanzi")
    rng = np.random.default_rng(0)
    rows = []
    for i, text in enumerate(TEXT[:3]):
        sf.write(tmp_path / f"{i}.wav", (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
        rows.append(json.dumps({"audio": f"{i}.wav", "text": text, "duration_s": 1.0}, ensure_ascii=False))
    (tmp_path / "m.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")

    am = load_model_dir(tmp_path / "m")
    assert am.hanzi is not None and am.text_lang == "zh"
    from deepspeech.data.manifest import read_manifest

    counts, records = evaluate_manifest(am, read_manifest(tmp_path / "m.jsonl"), progress=False)
    assert counts.n == 3 and counts.chars == sum(len(t) for t in TEXT[:3])  # character references
    for r, text in zip(records, TEXT[:3], strict=True):
        assert r["ref"] == text and r["ref_pinyin"] == to_pinyin(text)
        assert len(str(r["hyp"])) == len(str(r["hyp_pinyin"]).split())  # one character per syllable
    ev = run_cli("eval", "--model", str(tmp_path / "m"), "--manifest", str(tmp_path / "m.jsonl"),
                 "--format", "json", "--no-progress")
    assert ev.returncode == 0, ev.stderr[-2000:]
    summary = json.loads(ev.stdout)
    assert {"cer", "pinyin_wer", "pinyin_cer"} <= set(summary) and summary["n"] == 3
    tu = run_cli("lm", "hanzi-tune", "--model", str(tmp_path / "m"), "--manifest", str(tmp_path / "m.jsonl"),
                 "--tone-penalties", "0,1", "--beams", "4", "--no-progress")
    assert tu.returncode == 0, tu.stderr[-2000:]
    tuned = json.loads((tmp_path / "m" / "hanzi" / "hanzi.json").read_text())
    assert len(tuned["grid"]) == 2 and tuned["cer"] == min(r["cer"] for r in tuned["grid"])
    assert load_model_dir(tmp_path / "m").hanzi.cfg == HanziConfig(**tuned["config"])
    assert tuned["config"]["beam"] == 4
    tr = run_cli("transcribe", "--model", str(tmp_path / "m"), "--format", "jsonl", "--no-progress",
                 str(tmp_path / "0.wav"))
    assert tr.returncode == 0, tr.stderr[-2000:]
    out = json.loads(tr.stdout.splitlines()[0])
    assert all("\u4e00" <= c <= "\u9fff" for c in out["text"]) and len(out["words"]) == len(out["text"])


def test_syllable_lm_beam_search_then_characters(lm_dir: Path, tmp_path: Path) -> None:
    """The full Mandarin pinyin path on a constructed emission: beam search with a pinyin-syllable KenLM
    (``lm ngram --lang zh-pinyin``) fixes a misheard letter, then the character LM writes the sentence."""
    from deepspeech.decoding.beam import BeamConfig, BeamSearchDecoder
    from deepspeech.decoding.greedy import greedy_decode_logp
    from deepspeech.decoding.kenlm import NgramLM
    from deepspeech.text import pinyin_tokenizer
    from tests.test_lm_decoding import emissions, spell

    res = run_cli("lm", "ngram", "--text", str(lm_dir.parent / "text.txt"), "--lang", "zh-pinyin", "--order", "3",
                  "--out", str(tmp_path / "syl"), "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    lm = NgramLM.load(tmp_path / "syl")
    assert lm.unit == "word" and "lv4" in lm.unigrams and "fa3" in lm.unigrams
    tok = pinyin_tokenizer()
    sentence = "学习法律知识"
    spelt = to_pinyin(sentence)  # "xue2 xi2 fa3 lv4 zhi1 shi5"
    k = spelt.index("lv4")
    logp = emissions(spell(spelt, {k + 1: ("u", 0.55)}), tok.symbols)  # "lv4" heard as "lu4"
    assert greedy_decode_logp(logp, tok).text == spelt.replace("lv4", "lu4")
    for backend in ("pyctcdecode", "flashlight"):
        dec = BeamSearchDecoder(tok, lm, BeamConfig(backend=backend, alpha=1.0, beta=0.5, beam_width=16))
        hyp = dec.decode(logp)[0]
        assert hyp.text == spelt, backend
        assert hypothesis_to_characters(hyp, PinyinToHanzi.load(lm_dir)).text == sentence, backend
