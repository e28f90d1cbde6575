"""bench/lm_bpc.py's measurements: bits per character of a neural LM (a uniform model gives log2 V exactly, long
lines scored in windows included; padding and batching change nothing; the scoring itself is lm.scorer's, tested
in tests/test_rescore.py), of a KenLM character n-gram (the
ARPA back-off scorer agrees with KenLM's own query), and the ~10M presets' sizes."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench.lm_bpc import (
    EOS,
    BpcConfig,
    build_char_ngram,
    char_tokens,
    neural_bpc,
    ngram_bpc,
)
from lm.families import PRESETS, PRESETS_10M, parameter_count
from lm.gpt import GPT, gpt_tiny
from lm.tokenizer import CharTokenizer

LINES = ["the cat sat on the mat", "a dog", "", "an rather longer line that needs more than one window of context"]


def test_uniform_model_gives_log2_vocabulary() -> None:
    """A GPT whose final norm is zeroed outputs all-zero logits: p = 1/V for every character, so bpc = log2 V
    exactly (V = the padded vocabulary the softmax runs over), long lines (windows) included."""
    tok = CharTokenizer.train("\n".join(LINES) + "\n")
    model = GPT(replace(gpt_tiny(), vocab_size=32, seq_len=16))
    with torch.no_grad():
        model.final_norm.weight.zero_()
        model.final_norm.bias.zero_()
    bpc, n = neural_bpc(model, tok, LINES, batch=3)
    assert n == sum(len(line) + 1 for line in LINES)  # every character and each closing newline
    assert bpc == pytest.approx(math.log2(32), abs=1e-6)


@pytest.mark.parametrize("preset", ["gpt-tiny", "mamba2-tiny"])
def test_padding_and_batching_change_nothing(preset: str) -> None:
    """Scored one line at a time or batched with right padding, a causal model gives the same loss."""
    tok = CharTokenizer.train("\n".join(LINES) + "\n")
    model = GPT(replace(PRESETS[preset](), vocab_size=32)).eval()
    alone = sum(neural_bpc(model, tok, [line])[0] * (len(line) + 1) for line in LINES)
    batched, n = neural_bpc(model, tok, LINES, batch=4)
    assert batched * n == pytest.approx(alone, rel=1e-5)  # float32 logits, summed in float64


def test_char_ngram_bpc_matches_kenlm_query(tmp_path: Path) -> None:
    """lmplz over characters, then this module's ARPA scorer: the same log probability as KenLM's own query of
    the ARPA file (order 3, within KenLM's compiled maximum of 6), unseen characters (<unk>) included."""
    kenlm = pytest.importorskip("kenlm")
    from deepspeech.decoding.kenlm import KenLMError

    train = ["the cat sat", "the mat sat", "a cat on a mat", "the end"] * 3
    test = ["the cat sat on the mat", "a zebra", "the"]
    arpa = tmp_path / "c3.arpa"
    try:
        build_char_ngram(train, arpa, order=3)
    except KenLMError as e:
        pytest.skip(str(e))
    bpc, n = ngram_bpc(arpa, test, order=3)
    assert n == sum(len(t) + 1 for t in test)
    ref = kenlm.Model(str(arpa))
    log10 = sum(ref.score(" ".join(char_tokens(t)), bos=True, eos=True) for t in test)
    assert bpc == pytest.approx(-log10 / (n * math.log10(2)), rel=1e-5)
    assert 0 < bpc < math.log2(len({c for t in train for c in t}) + 2) + 10  # finite; <unk> scored, not skipped
    assert EOS in arpa.read_text(encoding="utf-8")


def test_10m_presets_within_5_percent() -> None:
    """Each family's ~10M preset has 10M +- 5% parameters at the English character vocabulary (30 symbols
    padded to 32), one body shape (h 384, s 256) for all."""
    for name in PRESETS_10M:
        cfg = replace(PRESETS[name](), vocab_size=32)
        assert abs(parameter_count(cfg) - 10e6) <= 0.05 * 10e6, (name, parameter_count(cfg))
        assert (cfg.hidden, cfg.seq_len) == (384, 256), name
    assert BpcConfig().train_config(PRESETS["gpt-10m"]()).steps == -(-2_000_000 // (8 * 256))


def test_rows_are_kept_per_precision_and_a_rerun_skips_them(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A float32 row and a bf16 row of the same model and budget are two rows (bf16 is the default where the CPU
    multiplies bf16 natively, so an older float32 table must not be taken for it); a rerun trains nothing."""
    import json

    from bench.lm_bpc import main
    from deepspeech.native import cpu_has_fast_bf16

    corpus = tmp_path / "text"
    corpus.mkdir()
    (corpus / "train.txt").write_text("\n".join(LINES * 40) + "\n")
    (corpus / "test.txt").write_text("the mat sat\na cat\n")
    precisions = ["fp32", "bf16"] if cpu_has_fast_bf16() else ["fp32"]
    common = ["--corpus", f"en={corpus}", "--langs", "en", "--models", "gpt-tiny", "--tokens", "1024",
              "--speed-reps", "0", "--out", str(tmp_path / "out")]
    for p in precisions:
        assert main([*common, "--precision", p]) == 0
    rows = json.loads((tmp_path / "out" / "lm_bpc.json").read_text())["rows"]
    assert [r["precision"] for r in rows] == precisions
    assert all(math.isfinite(r["bpc"]) and r["bpc"] > 0 for r in rows)
    if len(rows) == 2:  # the same seed and batches: bf16 products move the loss a little, not to another model
        assert rows[0]["bpc"] != rows[1]["bpc"] and abs(rows[0]["bpc"] - rows[1]["bpc"]) < 0.05 * rows[0]["bpc"]
    capsys.readouterr()
    assert main([*common, "--precision", precisions[-1]]) == 0
    assert len(json.loads((tmp_path / "out" / "lm_bpc.json").read_text())["rows"]) == len(rows)
    assert "| en | gpt-tiny |" in capsys.readouterr().out  # the rerun still prints the table of what is kept
