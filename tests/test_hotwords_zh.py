"""Mandarin hotwords on pinyin models (:mod:`deepspeech.decoding.hotwords`, :mod:`deepspeech.decoding.hanzi`):
hotwords typed in characters are read with the model's own pinyin lexicon, biased in the syllable beam search as a
phrase (not syllable by syllable), and written in their own characters by the pinyin-to-character conversion;
hotwords in pinyin keep working; decoding without hotwords is unchanged. Real KenLM models (a character LM with its
pinyin lexicon, a syllable LM) of a small text where 章 (zhang1) and 为 (wei4) are common and the name 张伟 never
occurs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from deepspeech.decoding.beam import BeamConfig, BeamSearchDecoder
from deepspeech.decoding.hanzi import (
    HOTWORDS_KEY,
    LEXICON,
    LexiconCounter,
    PinyinToHanzi,
    hypothesis_to_characters,
    load_readings,
)
from deepspeech.decoding.hotwords import MAX_READINGS, PinyinHotword, pinyin_hotwords
from deepspeech.decoding.kenlm import NgramLM
from deepspeech.text import pinyin_tokenizer, to_pinyin
from tests.conftest import run_cli, tiny_pinyin_model
from tests.test_lm_decoding import emissions, kenlm_tools, spell  # noqa: F401  (kenlm_tools: a fixture)

pytest.importorskip("flashlight.lib.text")
pytest.importorskip("kenlm")
pytest.importorskip("pypinyin")
pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = ["我们找文章", "这篇文章很好", "委员会的文章", "因为他是委员", "我们因为文章去找委员", "他为我们写文章",
        "尾巴很长", "伟大的国家", "他长大了", "我们的国家很伟大", "我们为国家写文章", "这是我们的国家"]
RARE = ["浙江的文章"]  # once: 浙 (zhe4) is rarer than 这


@pytest.fixture(scope="module")
def lms(tmp_path_factory: pytest.TempPathFactory, kenlm_tools: None) -> Path:  # noqa: F811
    """A directory with ``hanzi/`` (character 3-gram + pinyin lexicon) and ``lm/`` (syllable 3-gram), as in a pinyin
    model's directory."""
    from lm.ngram import NgramConfig, build_ngram

    d = tmp_path_factory.mktemp("zh_lms")
    lines = TEXT * 3 + RARE
    counter = LexiconCounter()
    build_ngram(counter.wrap([" ".join(s) for s in lines]), d / "hanzi", NgramConfig(lang="zh", order=3))
    counter.save(d / "hanzi" / LEXICON)
    build_ngram([to_pinyin(s) for s in lines], d / "lm", NgramConfig(lang="zh-pinyin", order=3))
    return d


def test_character_hotwords_are_read_with_the_lexicon() -> None:
    readings = {"张": ["zhang1"], "伟": ["wei3"], "长": ["zhang3", "chang2"], "行": ["xing2", "hang2"]}
    assert pinyin_hotwords(["张伟", "zhang1  WEI3", "张 伟"], readings) == [
        PinyinHotword(("zhang1", "wei3"), "张伟"), PinyinHotword(("zhang1", "wei3"), None)]
    # A polyphone: every listed reading (most frequent first), one sequence per combination.
    assert [h.syllables for h in pinyin_hotwords(["行长"], readings)] == [
        ("xing2", "zhang3"), ("xing2", "chang2"), ("hang2", "zhang3"), ("hang2", "chang2")]
    # A character the lexicon lacks: pypinyin's reading. Mixed or unreadable input: dropped (with a warning).
    assert pinyin_hotwords(["鲁迅"], {}) == [PinyinHotword(("lu3", "xun4"), "鲁迅")]
    assert pinyin_hotwords(["张wei3", "zhang wei", "x1 7"], readings) == []
    many = {c: ["a1", "a2", "a3"] for c in "一二三四"}
    assert len(pinyin_hotwords(["一二三四"], many)) == MAX_READINGS


def test_conversion_writes_the_hotword_for_its_syllables_only(lms: Path) -> None:
    conv = PinyinToHanzi.load(lms / "hanzi")
    hot = ((("zhang1", "wei3"), "张伟"),)
    assert conv.convert("wo3 men5 zhao3 zhang1 wei3") == "我们找章伟"
    assert conv.convert("wo3 men5 zhao3 zhang1 wei3", hot) == "我们找张伟"
    # Its syllables elsewhere, alone, or another tone: unchanged (a phrase, matched whole).
    for pinyin in ("wo3 men5 de5 guo2 jia1 hen3 wei3 da4", "ta1 wei4 wo3 men5 xie3 wen2 zhang1",
                   "wo3 men5 zhao3 zhang1 wei4"):
        assert conv.convert(pinyin, hot) == conv.convert(pinyin)
    # Without an LM too.
    bare = PinyinToHanzi(conv_lexicon(lms), None)
    assert bare.convert("zhang1 wei3", hot) == "张伟" and bare.convert("zhang1 wei3") == "章委"


def conv_lexicon(lms: Path) -> dict[str, list[tuple[str, int]]]:
    import json

    raw = json.loads((lms / "hanzi" / LEXICON).read_text(encoding="utf-8"))
    return {s: [(c, n) for c, n in v] for s, v in raw.items()}


def test_phrase_bias_in_the_syllable_beam(lms: Path) -> None:
    tok = pinyin_tokenizer()
    lm = NgramLM.load(lms / "lm")
    conv = PinyinToHanzi.load(lms / "hanzi")
    base = BeamSearchDecoder(tok, lm, BeamConfig(alpha=1.0, beta=0.5, beam_width=16, nbest=3),
                             load_readings(lms / "hanzi"))
    # "zhang1 wei3" with its tone heard as 4 (0.7): without hotwords the LM and the ear agree on "zhang1 wei4".
    spelt = "wo3 men5 zhao3 zhang1 wei3"
    name = emissions(spell(spelt, {spelt.index("wei3") + 3: ("4", 0.7)}), tok.symbols)
    plain = base.decode(name)[0]
    assert plain.text == "wo3 men5 zhao3 zhang1 wei4" and hypothesis_to_characters(plain, conv).text == "我们找章为"
    # Weights stay below 9 nats a syllable here: these emissions give every other symbol 1e-4 (-9.2).
    hot = base.with_hotwords(["张伟"], 8.0)
    best = hot.decode(name)[0]
    assert best.text == spelt and best.extra[HOTWORDS_KEY] == ((("zhang1", "wei3"), "张伟"),)
    out = hypothesis_to_characters(best, conv)
    assert out.text == "我们找张伟" and HOTWORDS_KEY not in out.extra and out.extra["pinyin"] == spelt
    assert [w.text for w in best.words] == spelt.split()  # the phrase is one lexicon entry, its syllables words
    # The same hotword in pinyin: the same syllables, the characters the LM likes (no character hint).
    by_pinyin = base.with_hotwords(["zhang1 wei3"], 8.0).decode(name)[0]
    assert by_pinyin.text == spelt and HOTWORDS_KEY not in by_pinyin.extra
    assert hypothesis_to_characters(by_pinyin, conv).text == "我们找章伟"
    # An utterance without the name whose "wei4" is heard as "wei3" (0.6): the phrase leaves it alone, while the
    # syllable alone as a hotword (what syllable-by-syllable biasing of the phrase would do) flips it.
    other = "wo3 men5 wei4 guo2 jia1 xie3 wen2 zhang1"
    unrelated = emissions(spell(other, {other.index("wei4") + 3: ("3", 0.6)}), tok.symbols)
    assert base.decode(unrelated)[0].text == other
    assert hot.decode(unrelated)[0].text == other
    assert hypothesis_to_characters(hot.decode(unrelated)[0], conv).text == "我们为国家写文章"
    assert base.with_hotwords(["wei3"], 8.0).decode(unrelated)[0].text == other.replace("wei4", "wei3")
    # pyctcdecode (open vocabulary, its own phrase biasing) gets the same syllable sequences.
    peer = BeamSearchDecoder(tok, lm, BeamConfig(backend="pyctcdecode", alpha=1.0, beta=0.5, beam_width=16),
                             load_readings(lms / "hanzi"))
    assert hypothesis_to_characters(peer.with_hotwords(["张伟"]).decode(name)[0], conv).text == "我们找张伟"


def test_no_hotwords_leave_decoding_unchanged(lms: Path) -> None:
    tok = pinyin_tokenizer()
    lm = NgramLM.load(lms / "lm")
    cases = [emissions(spell(s, {s.index(a) + 3: (b, p)}), tok.symbols) for s, a, b, p in (
        ("wo3 men5 zhao3 zhang1 wei3", "wei3", "4", 0.7), ("ta1 wei4 wo3 men5 xie3 wen2 zhang1", "wei4", "3", 0.55),
        ("zhe4 shi4 wo3 men5 de5 guo2 jia1", "shi4", "3", 0.5))]
    cfg = BeamConfig(alpha=1.0, beta=0.5, beam_width=16, nbest=4)

    def run(dec: BeamSearchDecoder) -> list[list[tuple[str, float, float, tuple]]]:
        return [[(h.text, h.score, h.am_score, tuple(h.extra.items())) for h in dec.decode(x)] for x in cases]

    base = BeamSearchDecoder(tok, lm, cfg, load_readings(lms / "hanzi"))
    before = run(base)
    for hot in (base.with_hotwords(["张伟", "鲁迅"]), base.with_hotwords(["zhang1 wei3"], 20.0)):
        run(hot)
    assert run(base) == before and run(base.with_hotwords([])) == before
    assert run(BeamSearchDecoder(tok, lm, cfg)) == before  # the lexicon is only read for hotwords


def test_tiny_pinyin_model_through_transcribe(lms: Path, tmp_path: Path) -> None:
    """Real decoding of a (tiny, untrained) pinyin model with ``lm/`` and ``hanzi/``: a hotword in characters,
    read with the model's lexicon, is written where its syllable is recognised (the "zhe4" utterance: 浙, not the
    LM's 这), other utterances are left as they were; also through `deepspeech transcribe --hotword`."""
    from deepspeech.checkpoint import load_model_dir, save_model_dir
    from deepspeech.decoding.beam import build_decoder
    from deepspeech.frontend.features import FeatureStats
    from deepspeech.inference.transcribe import transcribe_files

    model, tok, cfg = tiny_pinyin_model("tiny-zh")
    save_model_dir(tmp_path / "m", model, tok, FeatureStats((0.0,) * 161, (1.0,) * 161), cfg)
    shutil.copytree(lms / "hanzi", tmp_path / "m" / "hanzi")
    shutil.copytree(lms / "lm", tmp_path / "m" / "lm")
    rng = np.random.default_rng(1)
    files = []
    for i, (dur, amp) in enumerate([(3, 0.1), (3, 0.5), (4, 0.02), (2, 0.3)]):
        t = np.arange(int(16000 * dur)) / 16000  # noise and a chopped tone: the untrained model's text differs
        sig = amp * rng.standard_normal(t.size) + amp * np.sin(2 * np.pi * (200 + 300 * i) * t) * (
            np.sin(2 * np.pi * 2 * t) > 0)
        files.append(tmp_path / f"{i}.wav")
        sf.write(files[-1], sig.astype(np.float32), 16000)
    am = load_model_dir(tmp_path / "m")

    def texts(**kw: object) -> list[tuple[str, str | None]]:
        dec = build_decoder(tmp_path / "m", am.tokenizer, **kw)
        return [(t.text, t.pinyin) for t in transcribe_files(am, files, progress=False, decoder=dec)]

    plain = texts()
    assert ("这", "zhe4") in plain and ("我", "wo3") in plain, plain
    boosted = texts(hotwords=("浙",), hotword_weight=4.0)
    for (a, pa), (b, pb) in zip(plain, boosted, strict=True):
        assert pb == pa and b == ("浙" if pa == "zhe4" else a), (plain, boosted)
    k = plain.index(("这", "zhe4"))
    for extra, want in (((), "这"), (("--hotword", "浙", "--hotword-weight", "4"), "浙")):
        r = run_cli("transcribe", "--model", str(tmp_path / "m"), "--decoder", "beam", *extra, str(files[k]))
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.strip().split("\t")[-1] == want, r.stdout
