"""The README's command examples, run as written in a fresh-clone sandbox.

Every command of the README's ``bash`` blocks is either run (by the scenario that names it) or skipped with its
reason in :data:`SKIPPED`; :func:`test_every_readme_command_is_run_or_skipped_for_a_reason` keeps the two lists
and the README in step. The sandbox is a temporary folder holding links to the checkout's code, ``.venv`` and
shipped data and models, and no ``../shared`` beside it: what a fresh clone holds after ``make``. Names the README
leaves to the reader (``corpus.txt``, ``train.jsonl``, ``recordings/``, ``speech.wav``, ``models/mine``, the
corpus layouts of the importers) are made there from the shipped data, small; the commands themselves are the
README's text, run by bash. Two training commands get ``--set epochs=1`` appended, as the README's own text allows
("Any field can be overridden with --set section.field=value").
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import FSDD, REPO, cut_manifest

SKIPPED = {
    "make demo": "sets up the venv and trains digits-en (8-13 min on 2 cores); CI runs the set-up itself",
    "make test": "is the test suite this test belongs to",
    ".venv/bin/deepspeech eval --model models/digits-en --manifest data/fsdd/test.jsonl --format json":
        "the same eval (1,000 utterances, ~20 s) runs in tests/test_cli.py::"
        "test_shipped_digits_model_does_what_its_card_says, checked against the model card",
    ".venv/bin/deepspeech synth sentences --lang en --text ../shared/":
        "needs ../shared/data (the data kit), which a clone does not have, and synthesises 6,700 sentences",
    ".venv/bin/deepspeech synth sentences --lang zh":
        "needs 6,700+ lines of Mandarin text and synthesises 5,700 sentences by default (minutes on 2 cores); "
        "tests/test_synth_corpus.py runs the same builder on a small text",
    ".venv/bin/deepspeech synth voices":
        "WORLD re-synthesis of all 1,500 FSDD training recordings: about 100 s on 2 cores (measured 7 s per "
        "100), over half this file's budget; tests/test_voice.py runs it on a few",
    "recipes/aishell_sample_zh.sh": "needs the data kit's AISHELL-1 sample (../shared/data)",
    ".venv/bin/deepspeech lm text": "needs the data kit's text (../shared/data); tests/test_lm_corpus.py runs the same "
        "command on small texts, and on the kit where it is found",
}


def readme_commands() -> list[str]:
    """The logical command lines of the README's bash blocks (continuations joined, comment lines dropped)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S):
        text = re.sub(r"\\\n\s*", "", block)
        out += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return out


def command(prefix: str) -> str:
    """The one README command that starts with ``prefix``."""
    found = [c for c in readme_commands() if c.startswith(prefix)]
    assert len(found) == 1, (prefix, found)
    return found[0]


RUN: list[str] = []  # prefixes of the commands the scenarios run


def runs(*prefixes: str) -> list[str]:
    RUN.extend(prefixes)
    return list(prefixes)


def sh(clone: Path, cmd: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["bash", "-c", cmd], cwd=clone, capture_output=True, text=True, timeout=timeout)
    assert not check or res.returncode == 0, f"{cmd}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A fresh-clone stand-in: links to the code and .venv; data/ and models/ real folders of links to what ships."""
    root = tmp_path / "deepspeech"
    root.mkdir()
    ignored = {ln.strip().strip("/") for ln in (REPO / ".gitignore").read_text().splitlines()}
    for item in REPO.iterdir():
        if item.name in ("data", "models") or (item.name.startswith(".") and item.name != ".venv"):
            continue
        if item.name not in ignored or item.name == ".venv":
            (root / item.name).symlink_to(item)
    for sub in ("data", "models"):
        (root / sub).mkdir()
        for item in (REPO / sub).iterdir():
            if f"{sub}/{item.name}" not in ignored:
                (root / sub / item.name).symlink_to(item)
    return root


def copy_audio(src: str, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(FSDD / "audio" / src, dst)
    return dst


def json_lines(text: str) -> list[dict]:
    return [json.loads(x) for x in text.splitlines() if x.startswith("{")]


def test_readme_is_a_manual_of_at_most_300_lines() -> None:
    """House rule 8: the README is a user's manual of at most 300 lines; experiment narratives, cross-validation
    tables and design discussions live in the model cards and docs/, linked from it."""
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines (at most 300): move detail to docs/ or a model card"


def test_every_readme_command_is_run_or_skipped_for_a_reason() -> None:
    cmds = readme_commands()
    assert len(cmds) >= 30
    for c in cmds:
        hits = [p for p in [*RUN, *SKIPPED] if c.startswith(p)]
        assert len(hits) == 1, f"README command not run or skipped (or claimed twice): {c!r} {hits}"
    for p in [*RUN, *SKIPPED]:
        assert any(c.startswith(p) for c in cmds), f"no README command starts with {p!r} any more"


USING = runs(".venv/bin/deepspeech transcribe data/fsdd/audio/7_theo_3.flac",
             ".venv/bin/deepspeech transcribe 'recordings/", ".venv/bin/deepspeech transcribe talks/")


def test_using_it(clone: Path) -> None:
    assert sh(clone, command(USING[0])).stdout.split("\t")[1].strip() == "seven"
    copy_audio("4_theo_0.flac", clone / "recordings" / "day1" / "a.flac")
    copy_audio("2_theo_0.flac", clone / "some_folder" / "b.flac")
    first = sh(clone, command(USING[1]))
    rows = json_lines((clone / "transcripts.jsonl").read_text())
    assert [Path(r["path"]).name for r in rows] == ["a.flac", "b.flac"] and all(r["text"] for r in rows), first
    again = sh(clone, command(USING[1]))  # "rerun: files already in transcripts.jsonl are skipped"
    assert "2 of 2 files already transcribed" in again.stderr and len(json_lines(
        (clone / "transcripts.jsonl").read_text())) == 2
    copy_audio("9_theo_0.flac", clone / "talks" / "t.flac")
    sh(clone, command(USING[2]))
    assert (clone / "subtitles" / "t.srt").is_file()


DECODING = runs(".venv/bin/deepspeech lm ngram --text corpus.txt",
                ".venv/bin/deepspeech lm ngram --manifest train.jsonl", ".venv/bin/deepspeech lm tune",
                ".venv/bin/deepspeech eval --model models/mine")


def test_decoding_with_a_language_model(clone: Path) -> None:
    """models/mine: the digits model without its LM and decoder.json; corpus.txt: 300 random digit strings;
    train.jsonl: 40 FSDD recordings with Mandarin texts (the Mandarin LM reads only the transcripts)."""
    rng = np.random.default_rng(0)
    digits = "zero one two three four five six seven eight nine".split()
    (clone / "corpus.txt").write_text("".join(" ".join(rng.choice(digits, rng.integers(1, 6))) + "\n"
                                              for _ in range(300)))
    mine = clone / "models" / "mine"
    mine.mkdir()
    for name in ("model.safetensors", "config.json", "tokenizer.json", "feature_stats.json"):
        shutil.copyfile(REPO / "models" / "digits-en" / name, mine / name)
    words = "我们 今天 去 北京 看 天安门 他 喜欢 读书 学习 中文 很 有意思 明天 下雨 了".split()
    rows = [json.loads(x) for x in cut_manifest(FSDD / "train.jsonl", clone / "train.jsonl", 40).read_text()
            .splitlines()]
    (clone / "train.jsonl").write_text("".join(json.dumps({**r, "text": "".join(rng.choice(words, 4)), "lang": "zh"},
                                                          ensure_ascii=False) + "\n" for r in rows))
    cut_manifest(FSDD / "dev.jsonl", clone / "dev.jsonl", 20)
    cut_manifest(FSDD / "test.jsonl", clone / "test.jsonl", 20)
    for prefix in DECODING:
        sh(clone, command(prefix))
    assert (mine / "lm" / "lm.binary").is_file() and (clone / "models" / "mine-zh" / "lm" / "lm.binary").is_file()
    assert json.loads((mine / "decoder.json").read_text())["tuned_on"] == "dev.jsonl"


SERVER = runs(".venv/bin/deepspeech serve", ".venv/bin/deepspeech stream speech.wav", "curl --data-binary")


def test_streaming_server_and_its_clients(clone: Path) -> None:
    """serve, then stream, curl and the README's Python client against it: the same final text."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", 8000))
        except OSError:
            pytest.skip("port 8000, which the README's commands name, is in use (another server or test)")
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    copy_audio("5_theo_0.flac", clone / "speech.flac")
    sf.write(clone / "speech.wav", sf.read(clone / "speech.flac", dtype="int16")[0], 8000, subtype="PCM_16")
    client = re.search(r"```python\n(.*?websockets.*?)```", (REPO / "README.md").read_text(), re.S)
    assert client is not None
    (clone / "client.py").write_text(client.group(1))
    server = subprocess.Popen(["bash", "-c", "exec " + command(SERVER[0]).split("#")[0]], cwd=clone,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while sh(clone, "curl -sf http://127.0.0.1:8000/healthz", check=False).returncode != 0:
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()  # type: ignore[union-attr]
            time.sleep(0.5)
        streamed = sh(clone, command(SERVER[1])).stdout.strip()
        posted = json.loads(sh(clone, command(SERVER[2])).stdout)["text"]
        printed = sh(clone, ".venv/bin/python client.py").stdout.splitlines()[-1]
        assert streamed == posted == printed and streamed
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


NEURAL_LM = runs(".venv/bin/torchrun --standalone --nproc_per_node=4 -m deepspeech.cli lm train",
                 ".venv/bin/deepspeech lm train", ".venv/bin/deepspeech lm params", ".venv/bin/deepspeech lm memory",
                 ".venv/bin/deepspeech lm export", ".venv/bin/deepspeech transcribe --model models/digits-en --rescore")


def test_neural_lm_train_resume_and_memory(clone: Path) -> None:
    """The 4-process tensor x pipeline run, then its resume in one process (in this order), MT-NLG's count at its
    published layout, the table, then the resumed LM exported and rescoring digits-en's N-best list."""
    steps = json_lines(sh(clone, command(NEURAL_LM[0])).stdout)
    assert [s["step"] for s in steps] == list(range(1, 51))
    resumed = json_lines(sh(clone, command(NEURAL_LM[1])).stdout)
    assert [s["step"] for s in resumed] == list(range(51, 61))
    count = json.loads(sh(clone, command(NEURAL_LM[2])).stdout)
    assert abs(count["parameters"] / 530e9 - 1) < 0.01 and count["bytes_per_param"] == 16  # arXiv 2201.11990: 530B
    assert "selective" in sh(clone, command(NEURAL_LM[3])).stdout
    sh(clone, command(NEURAL_LM[4]))
    assert json.loads((clone / "runs" / "gpt-lm" / "lm.json").read_text())  # safetensors + JSON
    assert (clone / "runs" / "gpt-lm" / "model.safetensors").is_file()
    assert sh(clone, command(NEURAL_LM[5])).stdout.split("\t")[1].strip() == "zero"


TRAINING = runs(".venv/bin/deepspeech train --preset small", ".venv/bin/torchrun --standalone --nproc_per_node=2 "
                "train.py", ".venv/bin/deepspeech train --preset ds2-en --print-config")


def test_training(clone: Path) -> None:
    """train.jsonl / dev.jsonl: 8 FSDD recordings each; one epoch each (``--set epochs=1``)."""
    cut_manifest(FSDD / "train.jsonl", clone / "train.jsonl", 8)
    cut_manifest(FSDD / "dev.jsonl", clone / "dev.jsonl", 8)
    sh(clone, command(TRAINING[0]).split("#")[0] + " --set epochs=1")
    assert (clone / "runs" / "small" / "best" / "model.safetensors").is_file()
    sh(clone, command(TRAINING[1]).split("#")[0] + " --set epochs=1")
    assert (clone / "runs" / "tiny-en" / "last" / "model.safetensors").is_file()
    assert json.loads(sh(clone, command(TRAINING[2])).stdout)["model"]["rnn_layers"] == 7


DATA = runs(".venv/bin/deepspeech data import librispeech", ".venv/bin/deepspeech data import aishell",
            ".venv/bin/deepspeech data import commonvoice", ".venv/bin/deepspeech data import folder",
            ".venv/bin/deepspeech data prepare fsdd")


def test_data_importers_and_the_fsdd_protocol(clone: Path) -> None:
    """One-recording corpus layouts of each kind; ``data prepare fsdd`` rewrites the shipped manifests."""
    chapter = clone / "LibriSpeech" / "train-clean-100" / "19" / "198"
    copy_audio("3_theo_0.flac", chapter / "19-198-0000.flac")
    (chapter / "19-198.trans.txt").write_text("19-198-0000 THREE\n")
    wav = clone / "data_aishell" / "wav" / "train" / "S0002" / "BAC009S0002W0122.wav"
    wav.parent.mkdir(parents=True)
    sf.write(wav, sf.read(FSDD / "audio" / "3_theo_0.flac")[0], 8000)
    (clone / "data_aishell" / "transcript").mkdir()
    (clone / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt").write_text("BAC009S0002W0122 三\n")
    cv = clone / "cv-corpus" / "en"
    (cv / "clips").mkdir(parents=True)
    sf.write(cv / "clips" / "a.mp3", sf.read(FSDD / "audio" / "3_theo_0.flac")[0], 8000)  # libsndfile >= 1.1
    (cv / "train.tsv").write_text("client_id\tpath\tsentence\nspk\ta.mp3\tThree.\n")
    copy_audio("3_theo_0.flac", clone / "my_recordings" / "x.flac")
    (clone / "my_recordings" / "x.txt").write_text("three\n")
    (clone / "data" / "fsdd").unlink()  # written to below: a real folder here, never the checkout's
    (clone / "data" / "fsdd").mkdir()
    (clone / "data" / "fsdd" / "audio").symlink_to(FSDD / "audio")
    for prefix, out in zip(DATA, ["train.jsonl", "aishell_train.jsonl", "cv_train.jsonl", "mine.jsonl"],
                           strict=False):
        sh(clone, command(prefix).split("#")[0])
        assert len(json_lines((clone / out).read_text())) == 1, prefix
    sh(clone, command(DATA[4]).split("#")[0])
    for split in ("train", "dev", "test"):
        def rows(path: Path) -> list[dict]:
            return [{**r, "audio": Path(r["audio"]).name} for r in json_lines(path.read_text())]
        assert rows(clone / "data" / "fsdd" / f"{split}.jsonl") == rows(FSDD / f"{split}.jsonl")


SYNTH = runs(".venv/bin/deepspeech synth noise", ".venv/bin/deepspeech synth tts --text sentences.txt")


def test_data_synthesis(clone: Path) -> None:
    """The noisy copy of the FSDD training set as written (3,000 files); sentences.txt: three sentences."""
    sh(clone, command(SYNTH[0]))
    assert len(json_lines((clone / "noisy_fsdd" / "manifest.jsonl").read_text())) == 3000
    (clone / "sentences.txt").write_text("the cat sat on the mat\nopen the door\nseven green apples\n")
    sh(clone, command(SYNTH[1]))
    assert len(json_lines((clone / "synth_corpus" / "manifest.jsonl").read_text())) == 6


MANDARIN = runs('src="--text zh_sentences.txt', ".venv/bin/deepspeech lm ngram $src --lang zh --pinyin-lexicon",
                ".venv/bin/deepspeech lm ngram $src --lang zh-pinyin")


def test_mandarin_character_and_syllable_lms(clone: Path) -> None:
    """zh_sentences.txt and train.jsonl: 200 lines and 20 FSDD recordings with Mandarin texts."""
    pytest.importorskip("pypinyin", reason="the pinyin lexicon needs pypinyin (the synth extra)")
    rng = np.random.default_rng(1)
    words = "我们 今天 去 北京 看 天安门 他 喜欢 读书 学习 中文 很 有意思 明天 下雨 了".split()
    (clone / "zh_sentences.txt").write_text("".join("".join(rng.choice(words, 4)) + "\n" for _ in range(200)))
    rows = json_lines(cut_manifest(FSDD / "train.jsonl", clone / "train.jsonl", 20).read_text())
    (clone / "train.jsonl").write_text("".join(json.dumps({**r, "text": "".join(rng.choice(words, 3)), "lang": "zh"},
                                                          ensure_ascii=False) + "\n" for r in rows))
    sh(clone, "\n".join(command(p) for p in MANDARIN))
    best = clone / "runs" / "mine-zh" / "best"
    assert (best / "hanzi" / "lexicon.json").is_file() and (best / "lm" / "lm.binary").is_file()
