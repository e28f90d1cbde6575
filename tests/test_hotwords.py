"""Hotwords (contextual biasing) through the default beam-search backend, flashlight-text's lexicon decoder
(:mod:`deepspeech.decoding.hotwords`): a word outside the LM vocabulary becomes possible and wins with its hotword,
a vocabulary word is boosted, and decoding without hotwords is unchanged."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from deepspeech.decoding.beam import DEFAULT_BACKEND, BeamConfig, BeamSearchDecoder, DecoderError, build_decoder
from deepspeech.decoding.hotwords import hotword_words
from deepspeech.decoding.kenlm import NgramLM
from deepspeech.text import english_tokenizer, mandarin_tokenizer
from lm.ngram import NgramConfig, build_ngram
from tests.conftest import REPO, run_cli
from tests.test_lm_decoding import TEXT_EN, TEXT_ZH, emissions, spell

pytest.importorskip("flashlight.lib.text")
pytest.importorskip("kenlm")


@pytest.fixture(scope="module")
def en_lm(tmp_path_factory: pytest.TempPathFactory) -> NgramLM:
    return NgramLM.load(build_ngram(TEXT_EN, tmp_path_factory.mktemp("lm_en"), NgramConfig(lang="en", order=3)))


def texts(dec: BeamSearchDecoder, logp: np.ndarray) -> list[tuple[str, float, float]]:
    return [(h.text, h.score, h.am_score) for h in dec.decode(logp)]


def test_default_backend_is_the_one_with_hotwords_here() -> None:
    assert DEFAULT_BACKEND == "flashlight"
    assert hotword_words(["Kat", "the KAT  mat", "été"], "abcdefghijklmnopqrstuvwxyz'") == ["kat", "the", "mat"]


def test_out_of_vocabulary_hotword_is_recognised_only_with_it(en_lm: NgramLM) -> None:
    tok = english_tokenizer()
    # "kat" is what the audio says most; "kat" is not an LM word, so without the hotword the lexicon says "cat".
    logp = emissions(spell("the cat sat", {4: ("k", 0.55)}), tok.symbols)
    cfg = BeamConfig(alpha=1.0, beta=0.5, beam_width=16, nbest=3)
    base = BeamSearchDecoder(tok, en_lm, cfg)
    assert base.cfg.backend == "flashlight" and "kat" not in en_lm.unigrams
    assert base.decode(logp)[0].text == "the cat sat"
    # Weights here stay below 9 nats: these emissions give every other symbol 1e-4 (-9.2), a larger bonus would
    # outweigh any single letter.
    hot = base.with_hotwords(["Kat"], 6.0)
    best = hot.decode(logp)[0]
    assert best.text == "the kat sat"
    assert [w.text for w in best.words] == ["the", "kat", "sat"]
    # The same through build_decoder's overrides (how the CLI, streaming and the server ask for them).
    built = BeamSearchDecoder(tok, en_lm, BeamConfig(alpha=1.0, beta=0.5, beam_width=16, nbest=3, hotwords=("kat",),
                                                    hotword_weight=6.0))
    assert texts(built, logp) == texts(hot, logp)
    # A weight of 0 only makes the word possible: the LM's "cat" still wins over the unknown "kat".
    assert base.with_hotwords(["kat"], 0.0).decode(logp)[0].text == "the cat sat"


def test_vocabulary_hotword_is_boosted(en_lm: NgramLM) -> None:
    tok = english_tokenizer()
    # "rat" (0.5) or "mat" (0.45) to the ear; the LM prefers "the rat" too. Boosting "mat" turns it around.
    logp = emissions(spell("the cat ate the rat", {16: ("m", 0.45)}), tok.symbols)
    base = BeamSearchDecoder(tok, en_lm, BeamConfig(alpha=0.5, beta=0.5, beam_width=16))
    assert base.decode(logp)[0].text == "the cat ate the rat"
    assert base.with_hotwords(["mat"], 6.0).decode(logp)[0].text == "the cat ate the mat"
    # A phrase is boosted word by word.
    assert base.with_hotwords(["the mat"], 6.0).decode(logp)[0].text == "the cat ate the mat"


def test_no_hotword_output_is_unchanged(en_lm: NgramLM) -> None:
    tok = english_tokenizer()
    cases = [emissions(spell("the cat sat on the mat", {4: ("k", 0.55), 19: ("n", 0.55)}), tok.symbols),
             emissions(spell("the cat ate the rat", {16: ("m", 0.45)}), tok.symbols),
             emissions(spell("a dog and a cat", {2: ("b", 0.4)}), tok.symbols)]
    cfg = BeamConfig(alpha=0.7, beta=0.5, beam_width=16, nbest=4)
    base = BeamSearchDecoder(tok, en_lm, cfg)
    before = [texts(base, x) for x in cases]
    for hot in (base.with_hotwords(["kat", "mat"]), base.with_hotwords(["zelda"], 20.0)):
        [hot.decode(x) for x in cases]
    # Building and using hotword decoders (which share base's LM) leaves base as it was, and so does an empty list.
    assert [texts(base, x) for x in cases] == before
    assert [texts(base.with_hotwords([]), x) for x in cases] == before
    assert [texts(BeamSearchDecoder(tok, en_lm, cfg), x) for x in cases] == before


def test_hotword_errors(en_lm: NgramLM, tmp_path: Path) -> None:
    tok = english_tokenizer()
    with pytest.raises(DecoderError, match="alpha"):
        BeamSearchDecoder(tok, en_lm, BeamConfig(alpha=0.0, hotwords=("kat",)))
    with pytest.raises(ValueError, match="hotword_weight"):
        BeamConfig(hotwords=("kat",), hotword_weight=-1.0)
    zh_lm = NgramLM.load(build_ngram([" ".join(t) for t in TEXT_ZH], tmp_path / "zh", NgramConfig(lang="zh", order=2)))
    with pytest.raises(DecoderError, match="pyctcdecode backend for Mandarin characters"):
        BeamSearchDecoder(mandarin_tokenizer(TEXT_ZH), zh_lm, BeamConfig(hotwords=("我们",)))


NAMES = ("zelinski", "nakamura", "abernathy", "haruto", "priya")
CONTACTS = (*NAMES, "okonkwo", "kowalczyk", "delacroix")  # the hotword list: a contact list, not only these names


def test_names_outside_the_lm_on_synthetic_speech(tmp_path: Path) -> None:
    """The shipped sentences-en model and its LM on espeak-ng sentences with names its LM has never seen: no name
    without hotwords, every name with the contact list as hotwords; also through `deepspeech transcribe`."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    import torch

    from data_synthesis.tts import TTSConfig, synthesize_corpus
    from deepspeech.checkpoint import load_model_dir
    from deepspeech.inference.evaluate import collect_log_probs

    torch.set_num_threads(1)
    model = REPO / "models" / "sentences-en"
    am = load_model_dir(model)
    base = build_decoder(model, am.tokenizer)
    assert base.cfg.backend == "flashlight" and base.lm is not None
    assert not set(CONTACTS) & set(base.lm.unigrams)
    sentences = [f"please ask {n} to call me back tonight" for n in NAMES[:2]]
    sentences += [f"we sent the letter to {n} last week" for n in NAMES[2:]]
    utts = synthesize_corpus(sentences, tmp_path / "tts", TTSConfig(voices=("en-us",), use_variants=False,
                             pitch=(50, 50), rate=(150, 150)), progress=False)
    data = collect_log_probs(am, utts, progress=False)
    assert len(data) == len(NAMES)
    hot = base.with_hotwords(CONTACTS)
    for (logp, ref), name in zip(data, NAMES, strict=True):
        plain, boosted = base.decode(logp)[0].text, hot.decode(logp)[0].text
        assert name not in plain.split(), ref
        assert name in boosted.split(), (ref, boosted)
        # Outside the name, the boosted output keeps the words of the plain one (no name spread elsewhere).
        assert boosted.split()[-2:] == plain.split()[-2:], (plain, boosted)
    audio = utts[0].audio
    for extra, want in (((), False), (tuple(a for n in CONTACTS for a in ("--hotword", n)), True)):
        r = run_cli("transcribe", "--model", str(model), "--decoder", "beam", *extra, str(audio))
        assert r.returncode == 0, r.stderr
        assert ("zelinski" in r.stdout) == want, r.stdout
