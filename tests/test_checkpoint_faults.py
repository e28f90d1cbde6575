"""Fault injection into the checkpoint save-and-swap sequence: a crash after every filesystem step, and a second
crash during the recovery after it, must leave exactly the old or the new checkpoint (never a partial one, never a
silent restart from step 0), and a training run resumed after any of them ends bit-identical to an uninterrupted
one, with each record of metrics.jsonl once.

The steps are the filesystem functions of deepspeech.checkpoint (write a file, make a directory, rename, unlink,
remove a tree); a crash at step k leaves a write torn in half and a tree removal half done, and raises
:class:`Crash`, a BaseException that no handler in the library catches, so nothing after it runs. fsync is a no-op
here: these tests simulate the process dying, not the kernel losing its cache.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import deepspeech.checkpoint as ckpt
from deepspeech.checkpoint import CheckpointError, find_checkpoint, load_train_state, recover_checkpoint
from deepspeech.config import TrainConfig, apply_overrides
from deepspeech.frontend.features import FeatureStats
from deepspeech.model.config import ConvSpec, ModelConfig
from deepspeech.model.ds2 import DeepSpeech2
from deepspeech.presets import tiny
from deepspeech.text import english_tokenizer
from deepspeech.training import trainer
from deepspeech.training.trainer import train

STEPS = ("_write_file", "_make_dir", "_rename", "_unlink", "_rmtree")


class Crash(BaseException):
    """The process dies here."""


class Faults:
    """Counts deepspeech.checkpoint's filesystem steps (``calls``) and crashes at step ``crash_at`` (1-based)."""

    def __init__(self, mp: pytest.MonkeyPatch, crash_at: int | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.crash_at = crash_at
        mp.setattr(ckpt.os, "fsync", lambda fd: None)
        for name in STEPS:
            mp.setattr(ckpt, name, self._wrap(name, getattr(ckpt, name)))

    def _wrap(self, name: str, step: Callable[..., None]) -> Callable[..., None]:
        def faulty(*args: Any) -> None:
            self.calls.append((name, str(args[0])))
            if len(self.calls) == self.crash_at:
                if name == "_write_file":  # a torn write: half the bytes reached the disk
                    Path(args[0]).write_bytes(args[1][: len(args[1]) // 2])
                elif name == "_rmtree":  # a removal cut short: half the files are gone
                    files = sorted(p for p in Path(args[0]).rglob("*") if p.is_file())
                    for p in files[: len(files) // 2]:
                        p.unlink()
                raise Crash(f"crash at step {self.crash_at}: {name} {args[0]}")
            step(*args)
        return faulty


@contextmanager
def faults(crash_at: int | None = None) -> Iterator[Faults]:
    with pytest.MonkeyPatch.context() as mp:
        yield Faults(mp, crash_at)


def crashes(fn: Callable[[], Any], crash_at: int) -> bool:
    """Run ``fn`` with a crash at step ``crash_at``; True when the crash happened (the step exists)."""
    with faults(crash_at):
        try:
            fn()
        except Crash:
            return True
    return False


# --- the sequence itself, on a tiny network saved directly -----------------------------------------------------------

CFG = TrainConfig(model=ModelConfig(convs=(ConvSpec(2, (5, 3), (2, 2)),), rnn_layers=1, rnn_hidden=4,
                                    n_features=9))


@functools.cache
def _state(step: int) -> tuple[DeepSpeech2, dict[str, Any]]:
    torch.manual_seed(step)
    model = DeepSpeech2(CFG.model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(1, 20, 9), torch.tensor([20]))[0].sum().backward()
    opt.step()
    return model, {"optimizer": opt.state_dict(), "rng": {"torch": torch.get_rng_state()}, "trainer": {"step": step}}


def save(path: Path, step: int) -> None:
    """A training checkpoint whose every file depends on ``step``."""
    model, train_state = _state(step)
    ckpt.save_model_dir(path, model, english_tokenizer(), FeatureStats((0.0,) * 9, (1.0,) * 9), CFG,
                        train_state=train_state)


CHECKED = ("model.safetensors", "train_state/optimizer.pt", "train_state/rng.pt", "config.json")


@functools.cache
def _files(step: int) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as d:
        save(Path(d) / "x", step)
        return {name: (Path(d) / "x" / name).read_bytes() for name in CHECKED}


def step_of(d: Path) -> int:
    """The step of a checkpoint directory, after checking every file is exactly that step's save."""
    step = load_train_state(d)["trainer"]["step"]
    for name in CHECKED:
        assert (d / name).read_bytes() == _files(step)[name], (d, name)
    return step


def count_steps(fn: Callable[[], Any]) -> int:
    with faults() as f:
        fn()
    return len(f.calls)


def test_the_issue_double_fault_resumes_from_the_complete_tmp(tmp_path: Path) -> None:
    """No last/, a partial last.old, a complete last.tmp (issue 29): the old code restarted at step 0."""
    last = tmp_path / "last"
    save(last, 1)
    save(tmp_path / "staging", 2)
    (last / "train_state" / "optimizer.pt").unlink()  # last.old half deleted
    last.rename(tmp_path / "last.old")
    (tmp_path / "staging").rename(tmp_path / "last.tmp")
    found = find_checkpoint(last)
    assert found == tmp_path / "last.tmp" and step_of(found) == 2
    assert recover_checkpoint(last) == last and step_of(last) == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("last")) == ["last"]


def test_traces_without_a_complete_checkpoint_are_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    last = tmp_path / "last"
    save(last, 1)
    (last / "model.safetensors").write_bytes(b"torn")
    (last / ckpt.MARKER).unlink()  # no marker, and the files do not load
    with pytest.raises(CheckpointError, match="no complete checkpoint among last"):
        find_checkpoint(last)
    shutil.rmtree(last)
    save(tmp_path / "last.tmp", 1)
    (tmp_path / "last.tmp" / ckpt.MARKER).unlink()  # only an unfinished first save: a fresh start, said aloud
    with caplog.at_level(logging.WARNING):
        assert find_checkpoint(last) is None
    assert "only an unfinished first checkpoint" in caplog.text
    assert recover_checkpoint(last) is None and not (tmp_path / "last.tmp").exists()


@pytest.mark.parametrize("before", [0, 1], ids=["first-save", "replacing-a-checkpoint"])
def test_a_crash_at_every_step_leaves_the_old_or_the_new_checkpoint(tmp_path: Path, before: int) -> None:
    """Crash at each step k of saving step 2 (over nothing, or over step 1): exactly step 1 or step 2 is found
    (None only for a first save that never completed), and recovery plus the next save end at step 3, tidy."""
    def setup(d: Path) -> Path:
        if before:
            save(d / "last", 1)
        return d / "last"

    counted = setup(tmp_path / "count")
    n = count_steps(lambda: save(counted, 2))
    assert n >= 8
    for k in range(1, n + 1):
        last = setup(tmp_path / f"k{k}")
        assert crashes(lambda last=last: save(last, 2), k)
        found = find_checkpoint(last)
        if found is None:
            assert not before, k
        else:
            assert step_of(found) in {1, 2} if before else {2}, k
        recover_checkpoint(last)
        save(last, 3)
        assert step_of(find_checkpoint(last)) == 3
        assert sorted(p.name for p in last.parent.iterdir() if p.name.startswith("last")) == ["last"], k


def test_a_second_crash_during_recovery_or_the_next_save(tmp_path: Path) -> None:
    """Double faults: crash at step k1 of saving step 2 over step 1, then at step k2 of the recovery and the save
    of step 3. The checkpoint found is never older than the one found after the first crash, never partial."""
    def resume_and_save(last: Path) -> None:
        recover_checkpoint(last)
        save(last, 3)

    base = tmp_path / "count" / "last"
    save(base, 1)
    n1 = count_steps(lambda: save(base, 2))
    n2 = count_steps(lambda: resume_and_save(base))
    checked = 0
    for k1 in range(1, n1 + 1):
        crashed = tmp_path / f"k{k1}"
        save(crashed / "last", 1)
        assert crashes(lambda last=crashed / "last": save(last, 2), k1)
        first = step_of(find_checkpoint(crashed / "last"))
        for k2 in range(1, n2 + 1):
            last = Path(shutil.copytree(crashed, tmp_path / f"k{k1}-{k2}")) / "last"
            if not crashes(lambda last=last: resume_and_save(last), k2):
                continue
            assert step_of(find_checkpoint(last)) in {first, 3}, (k1, k2)
            resume_and_save(last)
            assert step_of(find_checkpoint(last)) == 3
            checked += 1
            shutil.rmtree(last.parent)
    assert checked > n1 * 5


# --- the trainer: a crash at every step of a save, then the same command again ---------------------------------------

@pytest.fixture(scope="module")
def run_cfg(tmp_path_factory: pytest.TempPathFactory) -> TrainConfig:
    """One epoch of 3 batches of a 1-layer GRU of 8 units, a checkpoint after every step, averaged weights."""
    from tests.conftest import FSDD, cut_manifest

    d = tmp_path_factory.mktemp("data")
    train_m = cut_manifest(FSDD / "train.jsonl", d / "train.jsonl", 10_000)
    train_m.write_text("\n".join(train_m.read_text().splitlines()[::31][:12]) + "\n")
    dev = cut_manifest(FSDD / "dev.jsonl", d / "dev.jsonl", 10_000)
    dev.write_text("\n".join(dev.read_text().splitlines()[::31][:4]) + "\n")
    return apply_overrides(tiny(), [f"data.train={train_m}", f"data.dev={dev}", "model.rnn_hidden=8",
                                    "model.rnn_layers=1", "data.max_batch=4", "data.max_frames=100000",
                                    "log_every_steps=1", "threads=1", "epochs=1", "save_every_steps=1",
                                    "optim.ema_decay=0.9", "optim.warmup_steps=0"])


def outcome(run: Path) -> dict[str, Any]:
    """Everything a finished run leaves that must not depend on where it was interrupted."""
    out: dict[str, Any] = {}
    for name in ("last/model.safetensors", "last/train_state/ema.safetensors", "best/model.safetensors"):
        out[name] = load_file(str(run / name))
    out["trainer"] = json.loads((run / "last/train_state/trainer.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    out["records"] = [(r["step"], "loss" in r, r.get("dev_wer")) for r in records]
    out["files"] = sorted(p.name for p in run.iterdir())
    return out


def assert_same(a: dict[str, Any], b: dict[str, Any], what: str) -> None:
    for name in ("last/model.safetensors", "last/train_state/ema.safetensors", "best/model.safetensors"):
        assert a[name].keys() == b[name].keys()
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), (what, name, k)
    for key in ("trainer", "records", "files"):
        assert a[key] == b[key], (what, key)


def reference_run(run_cfg: TrainConfig, run: Path, count: bool = True) -> tuple[list[tuple[str, int]], int]:
    """The uninterrupted run: which directory each save wrote, the filesystem step it started after (when
    counting), the total; a copy of last/ after each of its saves is kept in ``run/../saved-N``."""
    starts: list[tuple[str, int]] = []
    real_save = trainer.save_model_dir
    with ExitStack() as stack:
        calls = stack.enter_context(faults()).calls if count else []
        mp = stack.enter_context(pytest.MonkeyPatch.context())

        def spy(path: Path, *args: Any, **kwargs: Any) -> None:
            starts.append((Path(path).name, len(calls)))
            real_save(path, *args, **kwargs)
            if Path(path).name == "last":
                shutil.copytree(path, run.parent / f"saved-{len(starts)}")
        mp.setattr(trainer, "save_model_dir", spy)
        train(run_cfg, run, progress=False)
        return starts, len(calls)


def test_training_resumed_after_a_crash_at_every_save_step_equals_uninterrupted(
        tmp_path: Path, run_cfg: TrainConfig, caplog: pytest.LogCaptureFixture) -> None:
    """Crash at every step of the first checkpoint, of one that replaces another, and of best/; rerun: the same
    final weights, averaged weights, best model, trainer position and metrics records (each once) as without.
    A run whose first checkpoint never completed starts again from step 0 (there is nothing else to resume)."""
    starts, total = reference_run(run_cfg, tmp_path / "ref")
    ref = outcome(tmp_path / "ref")
    assert [s[0] for s in starts] == ["last", "last", "best", "last"]
    ends = [s[1] for s in starts[1:]] + [total]
    # steps of the first save of last/ (nothing to replace), the second (replaces one) and of best/
    points = [k + 1 for i in (0, 1, 2) for k in range(starts[i][1], ends[i])]
    assert len(points) > 30
    for k in points:
        run = tmp_path / f"k{k}"
        assert crashes(lambda run=run: train(run_cfg, run, progress=False), k)
        resumable = find_checkpoint(run / "last")
        if resumable is None:  # the first save never completed: at most its partial last.tmp is there
            assert k <= ends[0] and not (run / "last").exists() and not (run / "last.old").exists(), k
        caplog.clear()
        with caplog.at_level(logging.INFO):
            train(run_cfg, run, progress=False)
        assert ("resumed from" in caplog.text) == (resumable is not None), k
        assert_same(outcome(run), ref, f"crash at step {k}")
        shutil.rmtree(run)


def test_resume_after_the_issue_double_fault_continues_from_the_complete_tmp(
        tmp_path: Path, run_cfg: TrainConfig, caplog: pytest.LogCaptureFixture) -> None:
    """The state the issue found (no last/, a partial last.old, a complete last.tmp after step 2) resumes at step 2
    (the old code restarted from step 0 without a word) and ends as the uninterrupted run; metrics.jsonl, written
    up to the end before the crash, keeps each record once."""
    starts, _ = reference_run(run_cfg, tmp_path / "ref", count=False)
    assert [s[0] for s in starts[:2]] == ["last", "last"]
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(tmp_path / "saved-1", run / "last.old")
    (run / "last.old" / "model.safetensors").unlink()  # its deletion was cut short
    shutil.copytree(tmp_path / "saved-2", run / "last.tmp")
    shutil.copy(tmp_path / "ref" / "metrics.jsonl", run / "metrics.jsonl")  # records past step 2: dropped
    with caplog.at_level(logging.INFO):
        result = train(run_cfg, run, progress=False)
    assert "resumed from" in caplog.text and "step 2" in caplog.text
    assert result.step == 3 and json.loads((tmp_path / "saved-2/train_state/trainer.json").read_text())["step"] == 2
    assert_same(outcome(run), outcome(tmp_path / "ref"), "double fault")


def test_metrics_keep_each_record_once_after_a_resume(tmp_path: Path) -> None:
    """Records past the checkpoint's step (written before the crash) and a torn last line are dropped."""
    log_ = trainer._MetricsLog(tmp_path, enabled=True)
    for step in (1, 2, 3):
        log_.write({"step": step, "epoch": 0, "loss": 1.0})
    log_.write({"epoch": 1, "step": 3, "dev_wer": 0.5})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')
    log_.keep_until(2)
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_resuming_with_another_model_config_is_refused(tmp_path: Path, run_cfg: TrainConfig) -> None:
    cfg = apply_overrides(run_cfg, ["max_steps=1"])
    train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match="rnn_hidden=8 in the checkpoint, 16 now"):
        train(apply_overrides(cfg, ["model.rnn_hidden=16"]), tmp_path / "run", progress=False)
