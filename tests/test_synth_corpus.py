"""Offline corpus augmentation and synthetic sentence corpora: deterministic, independent of the worker count,
bad input skipped; the text and voice protocols keep test sentences and test voices out of training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_synthesis.corpus import CorpusConfig, pick, text_protocol, usable
from data_synthesis.offline import augment_corpus
from data_synthesis.tts import ENGLISH_TEST_VOICES, list_variants, split_variants, voice_split
from deepspeech.augment.noise import snr_db
from deepspeech.augment.perturb import AugmentConfig
from deepspeech.data.dataset import SpeechDataset
from deepspeech.data.manifest import Utterance, read_manifest
from deepspeech.frontend.audio import load_audio
from deepspeech.frontend.features import FeatureConfig
from deepspeech.text import english_tokenizer, normalize_en, normalize_zh
from tests.conftest import FSDD, REPO, cut_manifest, run_cli

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
NOISE = str(REPO / "data" / "noise" / "train.jsonl")


def test_offline_augmentation_is_deterministic_for_any_worker_count(tmp_path: Path) -> None:
    utts = read_manifest(cut_manifest(FSDD / "train.jsonl", tmp_path / "in.jsonl", 12))
    cfg = AugmentConfig(prob=1.0, noise_prob=1.0, noise_manifest=NOISE, reverb_prob=0.5, noise_tracks=(1, 3))
    a = augment_corpus(utts, tmp_path / "a", cfg, seed=4, copies=2, workers=1, progress=False)
    b = augment_corpus(utts, tmp_path / "b", cfg, seed=4, copies=2, workers=2, progress=False)
    assert len(a) == len(b) == 24
    assert [u.text for u in a] == [u.text for u in utts] * 2
    for ua, ub in zip(a, b, strict=True):
        assert np.array_equal(load_audio(ua.audio), load_audio(ub.audio))
    back = read_manifest(tmp_path / "a" / "manifest.jsonl")
    assert [Path(u.audio).name for u in back] == [Path(u.audio).name for u in a]
    # the two copies of an utterance differ, and differ from the clean input
    clean = load_audio(utts[0].audio)
    c0, c1 = load_audio(a[0].audio), load_audio(a[12].audio)
    assert not np.array_equal(c0, c1) and not np.array_equal(c0[: clean.size], clean)


def test_offline_noise_at_fixed_snr_and_bad_files_skipped(tmp_path: Path) -> None:
    utts = read_manifest(cut_manifest(FSDD / "dev.jsonl", tmp_path / "in.jsonl", 4))
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    utts.append(Utterance(str(bad), "five", 0.5))
    cfg = AugmentConfig(prob=1.0, speed=(1.0, 1.0), gain_db=(0.0, 0.0), noise_prob=1.0, noise_snr_db=(5.0, 5.0),
                        noise_tracks=(1, 1), noise_kinds=("real",), noise_manifest=NOISE)
    out = augment_corpus(utts, tmp_path / "noisy", cfg, seed=0, progress=False)
    assert len(out) == 4  # the unreadable file is reported and skipped
    for u_in, u_out in zip(utts, out, strict=False):
        clean, noisy = load_audio(u_in.audio), load_audio(u_out.audio)
        assert noisy.shape == clean.shape
        # FLAC stores 16-bit samples: quantisation noise (~-90 dBFS) is far below a 5 dB mixture
        assert abs(snr_db(clean, noisy - clean) - 5.0) < 0.1


def test_cli_synth_noise(tmp_path: Path) -> None:
    manifest = cut_manifest(FSDD / "dev.jsonl", tmp_path / "in.jsonl", 3)
    res = run_cli("synth", "noise", "--manifest", str(manifest), "--out", str(tmp_path / "o"), "--noise-manifest",
                  NOISE, "--snr-db", "0,10", "--tracks", "1,2", "--copies", "2", "--workers", "2", "--no-progress")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(x) for x in (tmp_path / "o" / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all((tmp_path / "o" / r["audio"]).is_file() for r in rows)
    res = run_cli("synth", "noise", "--manifest", str(manifest), "--out", str(tmp_path / "p"), "--kinds", "rain")
    assert res.returncode == 2 and "noise_kinds" in res.stderr


def test_training_loader_adds_noise_deterministically_per_epoch(tmp_path: Path) -> None:
    utts = read_manifest(cut_manifest(FSDD / "train.jsonl", tmp_path / "in.jsonl", 6))
    cfg = AugmentConfig(prob=1.0, noise_prob=1.0, noise_manifest=NOISE, noise_kinds=("real", "babble"))
    def feats(epoch: int) -> list:
        ds = SpeechDataset(utts, english_tokenizer(), FeatureConfig(), None, augment=cfg, seed=1)
        ds.set_epoch(epoch)
        return [ds.get(i)[0] for i in range(len(utts))]
    a, b, c = feats(0), feats(0), feats(1)
    assert all(x.equal(y) for x, y in zip(a, b, strict=True))
    assert not any(x.shape == y.shape and x.equal(y) for x, y in zip(a, c, strict=True))


def test_text_protocol_and_sentence_selection(tmp_path: Path) -> None:
    f = tmp_path / "s.txt"
    f.write_text("\n".join(f"SENTENCE NUMBER {i} IS HERE" for i in range(1100)) + "\n")
    train, test = text_protocol([f])
    assert len(train) == 100 and len(test) == 1000 and train[-1].startswith("SENTENCE NUMBER 99 ")
    cfg = CorpusConfig(min_len=3, max_len=6)
    assert usable("Hello, World!", cfg) is None  # two words: too short
    assert usable("Smith paid 3 dollars", cfg) == "smith paid three dollars"
    assert usable("Mr. Smith paid 3 dollars", cfg) is None  # espeak-ng would say "mister"
    zh = CorpusConfig(lang="zh", min_len=2, max_len=5)
    assert usable("你好。", zh) == "你好" and usable("1982年", zh) is None and usable("你好你好你好", zh) is None
    picked = pick(train, 50, cfg, np.random.default_rng(0))
    assert len(picked) == 50 and len(set(picked)) == 50
    short = tmp_path / "short.txt"
    short.write_text("a\n")
    with pytest.raises(ValueError, match="more than 1000"):
        text_protocol([short])


@needs_espeak
def test_voice_protocol_keeps_test_voices_out_of_training() -> None:
    train, test = voice_split("en", "train"), voice_split("en", "test")
    assert set(train.voices).isdisjoint(test.voices) and set(test.voices) == set(ENGLISH_TEST_VOICES)
    variants = list_variants()
    tv, sv = split_variants(variants, "train"), split_variants(variants, "test")
    assert set(tv).isdisjoint(sv) and len(tv) + len(sv) == len(variants) and len(sv) >= 10
    assert voice_split("zh", "test").voices == ("cmn-latn-pinyin",)


@needs_espeak
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_cli_synth_sentences_writes_three_protocol_splits(tmp_path: Path, lang: str) -> None:
    if lang == "zh":
        pytest.importorskip("pypinyin")
    f = tmp_path / "text.txt"
    if lang == "en":
        lines = [f"the {w} number {i} walked home" for i, w in enumerate(["red", "blue", "green"] * 367)]
    else:
        lines = [("你好我们走吧" if i % 2 else "今天天气很好") + "一二三四五六七八九十"[i % 10] for i in range(1100)]
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    res = run_cli("synth", "sentences", "--lang", lang, "--text", str(f), "--out", str(tmp_path / "c"),
                  "--train", "4", "--dev", "2", "--test", "3", "--min-len", "3", "--max-len", "12",
                  "--workers", "2", "--no-progress")
    assert res.returncode == 0, res.stderr
    parts = {n: read_manifest(tmp_path / "c" / n / "manifest.jsonl") for n in ("train", "dev", "test")}
    assert [len(parts[n]) for n in ("train", "dev", "test")] == [4, 2, 3]
    train_text = {u.text for u in parts["train"] + parts["dev"]}
    assert train_text.isdisjoint(u.text for u in parts["test"])
    norm = normalize_en if lang == "en" else normalize_zh
    test_lines = {norm(x) for x in lines[-1000:]}
    assert all(u.text in test_lines for u in parts["test"])
    if lang == "en":
        assert all(u.speaker.split("+")[0] in ENGLISH_TEST_VOICES for u in parts["test"])
        assert not any(u.speaker.split("+")[0] in ENGLISH_TEST_VOICES for u in parts["train"])
    sv = set(split_variants(list_variants(), "test"))
    assert all(u.speaker.split("+")[1].split("/")[0] in sv for u in parts["test"])
    assert not any(u.speaker.split("+")[1].split("/")[0] in sv for u in parts["train"] + parts["dev"])
    assert all(0.3 < u.duration_s < 15 for u in parts["train"])


def test_noise_protocol_holds_out_the_two_test_clips(tmp_path: Path, shared_data: Path) -> None:
    res = run_cli("data", "prepare", "noise", str(shared_data / "noise_real"), "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    test = [Path(u.audio).name for u in read_manifest(tmp_path / "test.jsonl")]
    train = [Path(u.audio).name for u in read_manifest(tmp_path / "train.jsonl")]
    assert sorted(test) == ["dude_miaowing.wav", "running_tap.wav"] and len(train) == 10
    shipped = {Path(u.audio).stem for u in read_manifest(REPO / "data" / "noise" / "train.jsonl")}
    assert shipped == {Path(n).stem for n in train}  # the shipped clips are exactly the training clips
