"""KenLM n-gram building (real lmplz / build_binary) and CTC beam search with both backends."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepspeech.decoding.beam import (
    PRUNED_LOGP,
    BeamConfig,
    BeamSearchDecoder,
    DecoderError,
    build_decoder,
    log_softmax_np,
    prune_cumulative,
)
from deepspeech.decoding.greedy import greedy_decode_logp
from deepspeech.decoding.kenlm import KenLMError, NgramLM
from deepspeech.decoding.language_model import LanguageModel
from deepspeech.text import english_tokenizer, mandarin_tokenizer
from lm.ngram import NgramConfig, build_ngram, kenlm_binary
from tests.conftest import REPO, run_cli

TEXT_EN = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog", "the cat ate the rat",
           "on the mat sat the cat"] * 4
TEXT_ZH = ["我们今天去学校", "今天天气很好", "我们去公园", "学校很大", "天气很好我们去"] * 4


@pytest.fixture(scope="module")
def kenlm_tools() -> None:
    try:
        kenlm_binary("lmplz")
        kenlm_binary("build_binary")
    except KenLMError as e:
        if os.environ.get("DEEPSPEECH_REQUIRE_KENLM"):
            raise
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def en_lm(tmp_path_factory: pytest.TempPathFactory, kenlm_tools: None) -> NgramLM:
    out = build_ngram(TEXT_EN, tmp_path_factory.mktemp("lm_en"), NgramConfig(lang="en", order=3))
    return NgramLM.load(out)


@pytest.fixture(scope="module")
def zh_lm(tmp_path_factory: pytest.TempPathFactory, kenlm_tools: None) -> NgramLM:
    lines = [" ".join(t) for t in TEXT_ZH]
    out = build_ngram(lines, tmp_path_factory.mktemp("lm_zh"), NgramConfig(lang="zh", order=3))
    return NgramLM.load(out)


def emissions(tokens: list[list[tuple[str, float]]], symbols: list[str], blank_frames: int = 1) -> np.ndarray:
    """Per-character frames: each a distribution over a few symbols (the rest share 1e-4), blanks between."""
    index = {s: i for i, s in enumerate(symbols)}
    rows = []

    def frame(dist: dict[int, float]) -> np.ndarray:
        p = np.full(len(symbols), 1e-4)
        for i, v in dist.items():
            p[i] = v
        return np.log(p / p.sum())

    for options in tokens:
        rows.append(frame({index[s]: v for s, v in options}))
        rows += [frame({0: 0.99})] * blank_frames
    return np.stack(rows).astype(np.float32)


def spell(text: str, confusions: dict[int, tuple[str, float]]) -> list[list[tuple[str, float]]]:
    """Characters of ``text``; at position k, ``confusions[k] = (other, p_other)`` makes ``other`` the argmax."""
    out = []
    for k, c in enumerate(text):
        if k in confusions:
            other, p = confusions[k]
            out.append([(other, p), (c, 1.0 - p - 0.01)])
        else:
            out.append([(c, 0.97)])
    return out


def test_ngram_directory_and_scores(en_lm: NgramLM) -> None:
    meta = json.loads((en_lm.path / "lm.json").read_text())
    assert meta["order"] == 3 and meta["unit"] == "word" and meta["vocabulary"] == len(en_lm.unigrams)
    assert set(en_lm.unigrams) == set(" ".join(TEXT_EN).split())
    assert meta["ngrams"]["1"] == len(en_lm.unigrams) + 3  # + <s>, </s>, <unk>
    import kenlm

    model = kenlm.Model(str(en_lm.binary))
    assert model.order == 3
    # A seen sentence is far more probable than its scrambled words.
    assert model.score("the cat sat on the mat") > model.score("mat the on sat cat the") + 3


def test_beam_with_lm_fixes_what_greedy_gets_wrong(en_lm: NgramLM) -> None:
    tok = english_tokenizer()
    text = "the cat sat on the mat"
    # 'c' of cat heard as 'k', 'm' of mat as 'n': greedy spells "the kat sat on the nat".
    logp = emissions(spell(text, {4: ("k", 0.55), 19: ("n", 0.55)}), tok.symbols)
    assert greedy_decode_logp(logp, tok).text == "the kat sat on the nat"
    for backend in ("pyctcdecode", "flashlight"):
        dec = BeamSearchDecoder(tok, en_lm, BeamConfig(backend=backend, alpha=1.0, beta=0.5, beam_width=16, nbest=3))
        hyps = dec.decode(logp)
        assert hyps[0].text == text, backend
        assert [w.text for w in hyps[0].words] == text.split(), backend
        starts = [w.start for w in hyps[0].words]
        assert starts == sorted(starts) and all(w.end > w.start for w in hyps[0].words)
        # Word spans follow the characters: each character is 2 frames (symbol, blank).
        assert hyps[0].words[1].start == 2 * 4, backend
        assert hyps[0].lm_score == pytest.approx(dec._scorer.score(text) * math.log(10), rel=1e-6)
        # The acoustic score of the best path is its summed log-probability: two confusions cost about 2 x 0.8.
        assert -5 < hyps[0].am_score < 0, backend


def test_nbest_lists_carry_acoustic_and_lm_scores(en_lm: NgramLM) -> None:
    tok = english_tokenizer()
    # The last word is "rat" or "mat" to the ear (0.5 / 0.45); both are LM words.
    logp = emissions(spell("the cat ate the rat", {16: ("m", 0.45)}), tok.symbols)
    for backend in ("pyctcdecode", "flashlight"):
        dec = BeamSearchDecoder(tok, en_lm, BeamConfig(backend=backend, alpha=0.5, beta=0.5, beam_width=16, nbest=4))
        hyps = dec.decode(logp)
        texts = [h.text for h in hyps]
        assert {"the cat ate the rat", "the cat ate the mat"} <= set(texts), backend
        assert len(set(texts)) == len(texts), backend
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True), backend
        by_text = {h.text: h for h in hyps}
        rat, mat = by_text["the cat ate the rat"], by_text["the cat ate the mat"]
        assert rat.lm_score > mat.lm_score  # "the rat" is in the LM text, "ate the mat" is not
        assert mat.am_score < rat.am_score  # and the ear prefers "rat" too, by log(0.54 / 0.45)
        assert rat.am_score - mat.am_score == pytest.approx(math.log(0.54 / 0.45), abs=0.05), backend



def test_ngram_lm_is_the_decoders_language_model(en_lm: NgramLM, zh_lm: NgramLM) -> None:
    """NgramLM implements the core's LanguageModel protocol, and its log P_lm is the one the decoder reports."""
    cases = ((en_lm, english_tokenizer(), "the cat sat on the mat"),
             (zh_lm, mandarin_tokenizer(TEXT_ZH), "我们今天去学校"))
    for lm, tok, text in cases:
        assert isinstance(lm, LanguageModel)
        dec = BeamSearchDecoder(tok, lm, BeamConfig(backend="pyctcdecode"))
        assert lm.log_prob(text) == pytest.approx(dec.lm_logprob(text), abs=1e-9)  # the same KenLM query
    assert en_lm.log_prob("the cat sat on the mat") > en_lm.log_prob("mat the on sat cat the") + 3 * math.log(10)


def test_alpha_zero_keeps_acoustic_choice(en_lm: NgramLM) -> None:
    tok = english_tokenizer()
    logp = emissions(spell("the cat sat on the mat", {4: ("k", 0.55)}), tok.symbols)
    dec = BeamSearchDecoder(tok, en_lm, BeamConfig(backend="pyctcdecode", alpha=0.0, beta=0.0, unk_score=0.0))
    assert dec.decode(logp)[0].text == "the kat sat on the mat"


def test_mandarin_character_lm_both_backends(zh_lm: NgramLM) -> None:
    tok = mandarin_tokenizer(TEXT_ZH)
    text = "我们今天去学校"
    # "天" confused with "大" (both in the vocabulary): greedy says 今大.
    logp = emissions(spell(text, {3: ("大", 0.55)}), tok.symbols)
    assert greedy_decode_logp(logp, tok).text == "我们今大去学校"
    for backend in ("pyctcdecode", "flashlight"):
        dec = BeamSearchDecoder(tok, zh_lm, BeamConfig(backend=backend, alpha=1.0, beta=0.0, beam_width=16))
        hyp = dec.decode(logp)[0]
        assert hyp.text == text, backend
        assert "".join(w.text for w in hyp.words) == text, backend


def test_beam_without_lm_matches_greedy_on_peaked_input() -> None:
    tok = english_tokenizer()
    logp = emissions(spell("hello world", {}), tok.symbols)
    dec = BeamSearchDecoder(tok, None, BeamConfig(backend="pyctcdecode", beam_width=8))
    assert dec.decode(logp)[0].text == greedy_decode_logp(logp, tok).text == "hello world"
    assert dec.decode(np.zeros((0, len(tok)), np.float32))[0].text == ""


def test_decoder_errors(en_lm: NgramLM, zh_lm: NgramLM) -> None:
    with pytest.raises(DecoderError, match="word-level LM does not fit a zh"):
        BeamSearchDecoder(mandarin_tokenizer(TEXT_ZH), en_lm, BeamConfig())
    with pytest.raises(DecoderError, match="use the pyctcdecode backend for Mandarin characters"):
        BeamSearchDecoder(mandarin_tokenizer(TEXT_ZH), zh_lm, BeamConfig(backend="flashlight", hotwords=("我们",)))
    with pytest.raises(ValueError, match="cutoff_prob"):
        BeamConfig(cutoff_prob=0.0)
    dec = BeamSearchDecoder(english_tokenizer(), en_lm, BeamConfig(backend="pyctcdecode"))
    with pytest.raises(DecoderError, match="expected"):
        dec.decode(np.zeros((5, 7), np.float32))


def test_hotword_boost(en_lm: NgramLM) -> None:
    tok = english_tokenizer()
    # "kat" is what the audio says most; the hotword "kat" (not in the LM) must win over the LM's "cat".
    logp = emissions(spell("the cat sat", {4: ("k", 0.55)}), tok.symbols)
    base = BeamConfig(backend="pyctcdecode", alpha=1.0, beta=0.5)
    assert BeamSearchDecoder(tok, en_lm, base).decode(logp)[0].text == "the cat sat"
    boosted = BeamConfig(backend="pyctcdecode", alpha=1.0, beta=0.5, hotwords=("kat",), hotword_weight=30.0)
    assert BeamSearchDecoder(tok, en_lm, boosted).decode(logp)[0].text == "the kat sat"


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 20), st.integers(2, 40), st.floats(0.05, 1.0), st.integers(1, 40), st.integers(0, 10_000))
def test_prune_cumulative_keeps_the_smallest_covering_set(T: int, V: int, cutoff: float, top_n: int,
                                                          seed: int) -> None:
    rng = np.random.default_rng(seed)
    logp = log_softmax_np(rng.normal(size=(T, V)) * 3)
    out = prune_cumulative(logp, cutoff, top_n)
    for t in range(T):
        kept = np.flatnonzero(out[t] > PRUNED_LOGP)
        assert np.array_equal(out[t, kept], logp[t, kept])  # kept symbols unchanged
        assert logp[t].argmax() in kept
        p = np.exp(logp[t])
        order = np.argsort(-p, kind="stable")
        k = len(kept)
        assert set(kept) == set(order[:k])  # the most probable ones
        assert k <= max(1, min(top_n, V))
        if k < min(top_n, V):  # not capped: covers the cut-off, and one fewer would not
            assert p[order[:k]].sum() >= cutoff - 1e-6
            assert k == 1 or p[order[: k - 1]].sum() < cutoff + 1e-6


def test_lm_ngram_cli_tune_and_beam_eval_on_digits(tmp_path: Path, kenlm_tools: None) -> None:
    """The digits model, an LM built by the CLI from training transcripts, alpha/beta tuned on 20 dev (george)
    utterances, then 60 test-speaker utterances: beam search with the LM is no worse than greedy."""
    from tests.conftest import FSDD, cut_manifest

    text = tmp_path / "digits.txt"
    text.write_text("\n".join(json.loads(x)["text"] for x in (FSDD / "train.jsonl").read_text().splitlines()) + "\n")
    model = tmp_path / "digits-en"
    shutil.copytree(REPO / "models" / "digits-en", model, ignore=shutil.ignore_patterns("lm", "decoder.json"))
    r = run_cli("lm", "ngram", "--text", str(text), "--order", "2", "--out", str(model / "lm"), "--no-arpa")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["vocabulary"] == 10 and info["unit"] == "word" and not (model / "lm" / "lm.arpa").exists()
    dev = cut_manifest(FSDD / "dev.jsonl", tmp_path / "dev.jsonl", 500)
    dev.write_text("\n".join(dev.read_text().splitlines()[::25]) + "\n")
    r = run_cli("lm", "tune", "--model", str(model), "--manifest", str(dev), "--alphas", "0,1", "--betas", "0,1",
                "--no-progress")
    assert r.returncode == 0, r.stderr
    tuned = json.loads((model / "decoder.json").read_text())
    assert tuned["metric"] == "wer" and tuned["dev"]["wer"] <= tuned["greedy"]["wer"]
    test = cut_manifest(FSDD / "test.jsonl", tmp_path / "test.jsonl", 1000)
    test.write_text("\n".join(test.read_text().splitlines()[::17]) + "\n")
    wer = {}
    for dec in ("greedy", "beam"):
        r = run_cli("eval", "--model", str(model), "--manifest", str(test), "--decoder", dec, "--format", "json",
                    "--no-progress")
        assert r.returncode == 0, r.stderr
        wer[dec] = json.loads(r.stdout)["wer"]
    assert wer["beam"] <= wer["greedy"]
    # The tuned settings are what build_decoder picks up.
    from deepspeech.text import english_tokenizer as en

    d = build_decoder(model, en())
    assert (d.cfg.alpha, d.cfg.beta) == (tuned["config"]["alpha"], tuned["config"]["beta"])
    assert d.lm is not None and d.lm.path == model / "lm"


def test_lm_ngram_cli_errors(tmp_path: Path) -> None:
    r = run_cli("lm", "ngram", "--text", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "lm"))
    assert r.returncode == 2 and "no such text file" in r.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    r = run_cli("lm", "ngram", "--text", str(empty), "--out", str(tmp_path / "lm"))
    assert r.returncode == 2 and ("no text" in r.stderr or "not found" in r.stderr)
    r = run_cli("lm", "ngram", "--text", str(empty), "--out", str(tmp_path / "lm"), "--test-lines", "5")
    assert r.returncode == 2 and "cannot hold out" in r.stderr


@pytest.mark.parametrize("damage", ["truncated", "garbage", "text", "empty", "body"])
def test_a_damaged_lm_binary_is_a_one_line_error(tmp_path: Path, damage: str) -> None:
    """A model directory's lm/lm.binary cut short, overwritten or emptied: one KenLMError line (the CLI prints it
    and exits 2), not KenLM's OSError or UnicodeDecodeError traceback. "body" keeps the header, scrambles the rest."""
    pytest.importorskip("kenlm")
    model = Path(shutil.copytree(REPO / "models" / "digits-en", tmp_path / "m"))
    binary = model / "lm" / "lm.binary"
    data = binary.read_bytes()
    binary.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(2000),
                        "text": b"the cat sat\n", "empty": b"",
                        "body": data[:64] + bytes(reversed(data[64:]))}[damage])
    with pytest.raises(KenLMError, match="lm.binary: (damaged KenLM model|not a KenLM model)") as e:
        build_decoder(model, english_tokenizer())
    assert "\n" not in str(e.value)
    (model / "lm" / "lm.json").write_text("{not json")
    with pytest.raises(KenLMError, match="malformed lm.json"):
        build_decoder(model, english_tokenizer())
    (model / "decoder.json").write_text("[1, 2]")
    with pytest.raises(DecoderError, match="decoder.json: malformed"):
        build_decoder(model, english_tokenizer())
    audio = REPO / "data" / "fsdd" / "audio" / "0_theo_0.flac"
    if damage == "garbage":
        (model / "decoder.json").unlink()
        shutil.copy(REPO / "models" / "digits-en" / "lm" / "lm.json", model / "lm" / "lm.json")
        r = run_cli("transcribe", "--model", str(model), "--decoder", "beam", str(audio))
        assert r.returncode == 2 and "Traceback" not in r.stderr and "not a KenLM model" in r.stderr, r.stderr
