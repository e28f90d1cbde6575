"""The neural LM's train/test text (lm.corpus, `deepspeech lm text`): the kit's text protocol (the last 1,000 lines
of each sentence file are test, never trained on), lm_exclude lines removed, train transcripts added, dev/test
manifests refused. Temp-file tests run anywhere; the data-kit tests skip without ../shared/data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepspeech.text import normalize_en, normalize_zh
from lm.corpus import (
    KIT_FILES,
    TEST_LINES,
    CorpusError,
    build_lm_text,
    held_out_name,
    kit_lm_text,
    split_text,
    train_transcripts,
    write_lm_text,
)
from tests.conftest import run_cli


def _manifest(path: Path, texts: list[str], split: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"audio": f"a{i}.wav", "text": t, "duration_s": 1.0, "speaker": None, "lang": "en",
             **({"split": split} if split else {})} for i, t in enumerate(texts)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _fake_kit(root: Path, n: int = 1005) -> Path:
    """The English kit files at their kit paths: n numbered sentences (the last 1,000 are test), the test split's
    first sentence also early in the file (a repeat), one line excluded."""
    lines = [f"SENTENCE NUMBER {i}, IT SAYS." for i in range(n)]
    lines[1] = lines[n - TEST_LINES]  # a training line equal to a test line
    (root / "text_en_gutenberg").mkdir(parents=True)
    (root / "en_minilibrispeech").mkdir(parents=True)
    (root / KIT_FILES["en"][0][0]).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / KIT_FILES["en"][1][0]).write_text("SENTENCE NUMBER 2, IT SAYS.\n", encoding="utf-8")
    return root


def test_protocol_on_temp_files(tmp_path: Path) -> None:
    """Test = the normalised last TEST_LINES lines; train = the rest, less excluded lines and less any line equal
    to a test line, plus the transcripts; every line normalised as the acoustic references are."""
    kit = _fake_kit(tmp_path / "kit")
    text = build_lm_text("en", [kit / KIT_FILES["en"][0][0]], [kit / KIT_FILES["en"][1][0]],
                         [("train.jsonl", ["Hello, World!", "  "])])
    said = [normalize_en(f"SENTENCE NUMBER {i}, IT SAYS.") for i in range(1005)]  # "sentence number five it says"
    assert text.test == said[5:]
    assert not set(text.test) & set(text.train)
    assert said[2] not in text.train  # lm_exclude
    assert text.train == [said[0], said[3], said[4], "hello world"]
    assert text.dropped == {"in an exclude file": 1, "equal to a test line": 1}
    assert text.test_chars == sum(len(t) + 1 for t in text.test)


def test_mandarin_normalised_as_references(tmp_path: Path) -> None:
    """Mandarin lines go through normalize_zh (NFKC, punctuation and spaces removed), as the acoustic tokenizer
    normalises references; each file holds out its own last block."""
    files = []
    for name in ("a.txt", "b.txt"):
        f = tmp_path / name
        f.write_text("".join(f"{name}第{i}句，好！\n" for i in range(TEST_LINES + 2)), encoding="utf-8")
        files.append(f)
    text = build_lm_text("zh", files, transcripts=[("m", ["你 好。"])])
    assert len(text.test) == 2 * TEST_LINES and len(text.train) == 5
    assert text.train[-1] == "你好" == normalize_zh("你 好。")
    assert text.test[0] == normalize_zh("a.txt第2句，好！") and "，" not in "".join(text.train)


def test_dev_and_test_manifests_refused(tmp_path: Path) -> None:
    for name in ("dev.jsonl", "en_dev.jsonl", "test.jsonl", "test-clean.jsonl", "valid.jsonl"):
        assert held_out_name(name), name
        with pytest.raises(CorpusError, match="dev/test"):
            train_transcripts(_manifest(tmp_path / name, ["a"]))
    assert not held_out_name("train.jsonl") and not held_out_name("an4_clstk.jsonl")
    with pytest.raises(CorpusError, match="split 'test'"):  # a whole-kit manifest: its records say so
        train_transcripts(_manifest(tmp_path / "all" / "manifest.jsonl", ["a"], split="test"))
    ok = _manifest(tmp_path / "k" / "train.jsonl", ["yes", "no"], split="train")
    assert train_transcripts(ok) == ["yes", "no"]  # audio files need not exist


def test_short_file_refused() -> None:
    with pytest.raises(CorpusError, match="holds out"):
        split_text(["x"] * TEST_LINES)


def test_written_atomically_with_counts(tmp_path: Path) -> None:
    text = build_lm_text("en", [_fake_kit(tmp_path / "kit") / KIT_FILES["en"][0][0]])
    meta = write_lm_text(text, tmp_path / "out")
    train = (tmp_path / "out" / "train.txt").read_text(encoding="utf-8")
    assert train.splitlines() == text.train and train.endswith("\n")
    assert meta["train_chars"] == len(train) and meta["test_lines"] == TEST_LINES
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_cli_writes_and_refuses(tmp_path: Path) -> None:
    """`deepspeech lm text` on a temp kit: train.txt/test.txt written; a dev manifest ends it with status 2."""
    kit = _fake_kit(tmp_path / "kit")
    train = _manifest(tmp_path / "m" / "train.jsonl", ["Yes please"])
    r = run_cli("lm", "text", "--lang", "en", "--kit", str(kit), "--out", str(tmp_path / "out"),
                "--manifest", str(train), timeout=120)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["test_lines"] == TEST_LINES and summary["train_lines"] == 4
    assert "yes please" in (tmp_path / "out" / "train.txt").read_text(encoding="utf-8").splitlines()
    dev = _manifest(tmp_path / "m" / "dev.jsonl", ["no"])
    r = run_cli("lm", "text", "--lang", "en", "--kit", str(kit), "--out", str(tmp_path / "out2"),
                "--manifest", str(dev), timeout=120)
    assert r.returncode == 2 and "dev/test split" in r.stderr and not (tmp_path / "out2" / "train.txt").exists()


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_kit_protocol(shared_data: Path, lang: str) -> None:
    """On the data kit: test = the normalised last 1,000 lines of each sentence file; no test line and no
    lm_exclude line in train."""
    text = kit_lm_text(lang, shared_data)
    norm = normalize_en if lang == "en" else normalize_zh
    texts, excludes = KIT_FILES[lang]
    expected = [t for f in texts for t in map(norm, (shared_data / f).read_text(encoding="utf-8").splitlines()
                                              [-TEST_LINES:]) if t]
    assert text.test == expected and len(expected) > 0.9 * TEST_LINES * len(texts)
    assert not set(text.test) & set(text.train)
    excluded = {norm(t) for f in excludes for t in (shared_data / f).read_text(encoding="utf-8").splitlines()}
    assert not excluded & set(text.train)
    assert len(text.train) > 40_000
