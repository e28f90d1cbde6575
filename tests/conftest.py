"""Shared fixtures: the shipped FSDD data, small manifests cut from it, the shared data kit when present."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FSDD = REPO / "data" / "fsdd"
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Torch on one thread for a module of small computations: with another process busy on the CPU, torch's
    thread pool costs ~100x more than it saves. Use as ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def cut_manifest(src: Path, dst: Path, n: int, speakers: tuple[str, ...] | None = None) -> Path:
    """The first ``n`` lines of ``src`` (optionally of some speakers), rewritten with absolute audio paths."""
    lines = []
    for line in src.read_text().splitlines():
        d = json.loads(line)
        if speakers and d.get("speaker") not in speakers:
            continue
        d["audio"] = str((src.parent / d["audio"]).resolve())
        lines.append(json.dumps(d, ensure_ascii=False))
        if len(lines) == n:
            break
    dst.write_text("\n".join(lines) + "\n")
    return dst


@pytest.fixture
def fsdd_small(tmp_path: Path) -> tuple[Path, Path]:
    """48 training and 16 dev utterances of the shipped FSDD copy (digits 0-9 interleaved by speaker)."""
    train = cut_manifest(FSDD / "train.jsonl", tmp_path / "train.jsonl", 10_000)
    rows = train.read_text().splitlines()
    train.write_text("\n".join(rows[::31][:48]) + "\n")
    dev = cut_manifest(FSDD / "dev.jsonl", tmp_path / "dev.jsonl", 10_000)
    dev.write_text("\n".join(dev.read_text().splitlines()[::31][:16]) + "\n")
    return train, dev


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "deepspeech.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=REPO)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present (a user's clone has none)")
    return SHARED_DATA


def tiny_pinyin_model(preset: str):  # type: ignore[no-untyped-def]
    """An untrained pinyin model of ``preset`` (``tiny-zh``-shaped, 32 hidden units) whose output bias makes it emit
    letters, not only blanks -> (DeepSpeech2 in eval mode, its pinyin tokenizer, its TrainConfig): wiring tests of
    the pinyin -> characters path need text, not skill."""
    import dataclasses

    from deepspeech.model.ds2 import DeepSpeech2
    from deepspeech.presets import get_preset
    from deepspeech.text import pinyin_tokenizer

    tok = pinyin_tokenizer()
    base = get_preset(preset)
    cfg = dataclasses.replace(base, data=dataclasses.replace(base.data, units="pinyin"),
                              model=dataclasses.replace(base.model, vocab_size=len(tok), rnn_hidden=32))
    torch.manual_seed(0)
    model = DeepSpeech2(cfg.model)
    with torch.no_grad():
        model.fc.bias.copy_(torch.linspace(-1.0, 1.0, len(tok)))
    return model.eval(), tok, cfg


@pytest.fixture(scope="module")
def gloo2():  # type: ignore[no-untyped-def]
    """Two gloo worker processes for one test module's parallel jobs (deepspeech.parallel.workers)."""
    from deepspeech.parallel.workers import GlooWorkers

    with GlooWorkers(2, timeout_s=120) as pool:
        yield pool
