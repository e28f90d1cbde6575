"""The real-data recipes (recipes/en.sh, en_streaming.sh, zh.sh) and their presets: each preset builds and fits its
size budget; each script parses, stops with one line when the data kit is missing, and en.sh's LM text leaves out
the kit's text test split (the last 1,000 lines) and lm_exclude.txt. No training runs here."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest

from deepspeech.model.ds2 import DeepSpeech2
from deepspeech.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["en.sh", "en_streaming.sh", "zh.sh"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.mark.parametrize(("name", "vocab", "bidirectional"), [("en", 29, True), ("en-streaming", 29, False),
                                                              ("zh", 45, True)])
def test_preset_builds_within_budget(name: str, vocab: int, bidirectional: bool) -> None:
    cfg = get_preset(name)
    assert cfg.name == name and cfg.model.bidirectional is bidirectional
    assert cfg.data.train and cfg.data.dev and cfg.augment.prob > 0 and cfg.augment.noise_prob > 0
    params = sum(p.numel() for p in DeepSpeech2(dataclasses.replace(cfg.model, vocab_size=vocab)).parameters())
    assert params * 2 < 25e6  # the brief's size budget: under ~25 MB in float16
    if name == "en-streaming":  # the server streams: lookahead, no per-utterance statistics
        assert cfg.model.lookahead > 0 and cfg.features.utterance_norm == "none"
    if name == "zh":
        assert cfg.data.units == "pinyin"


@pytest.mark.parametrize("script", RECIPES)
def test_recipe_parses(script: str) -> None:
    subprocess.run(["bash", "-n", str(ROOT / "recipes" / script)], check=True)


@pytest.mark.parametrize("script", RECIPES)
def test_recipe_stops_without_data_kit(script: str, tmp_path: Path) -> None:
    (tmp_path / "kit").mkdir()
    r = subprocess.run(["bash", str(ROOT / "recipes" / script)], capture_output=True, text=True, timeout=30,
                       env={**ENV, "DATA_KIT": str(tmp_path / "kit"), "OUT": str(tmp_path / "out")})
    assert r.returncode != 0
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1 and "data kit not found" in r.stderr
    assert not (tmp_path / "out").exists()


def test_en_lm_text_leaves_out_test_lines_and_lm_exclude(tmp_path: Path) -> None:
    kit = tmp_path / "kit"
    for s in ("en_an4", "en_minilibrispeech", "en_commonvoice", "en_speech_commands"):
        (kit / s).mkdir(parents=True)
        (kit / s / "manifest.jsonl").write_text("")
    (kit / "text_en_gutenberg").mkdir()
    train = [f"train sentence {i}" for i in range(5)]
    test = [f"test sentence {i}" for i in range(1000)]
    (kit / "text_en_gutenberg" / "sentences_norm.txt").write_text("\n".join(train + test) + "\n")
    (kit / "en_minilibrispeech" / "lm_exclude.txt").write_text("train sentence 1\ntrain sentence 3\n")
    out = tmp_path / "out"
    r = subprocess.run(["bash", str(ROOT / "recipes" / "en.sh"), "lm-text"], capture_output=True, text=True,
                       timeout=60, env={**ENV, "DATA_KIT": str(kit), "OUT": str(out)})
    assert r.returncode == 0, r.stderr
    # normalised as the references are (digits spelt out); the test lines go to test.txt, never to train.txt
    assert (out / "lm_text" / "train.txt").read_text().splitlines() == ["train sentence zero", "train sentence two",
                                                                       "train sentence four"]
    assert len((out / "lm_text" / "test.txt").read_text().splitlines()) == 1000
