"""The trainer end to end on real audio: data-parallel parity over gloo, SIGKILL + resume, checkpoints."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deepspeech.checkpoint import load_model_dir
from deepspeech.config import OptimConfig
from deepspeech.training.trainer import lr_at
from tests.conftest import REPO, run_cli

# A small model so that each run takes seconds: 2 GRU layers of 32 units over the tiny preset's front end.
SMALL = ["model.rnn_hidden=32", "model.rnn_layers=2", "data.max_batch=8", "data.max_frames=100000",
         "log_every_steps=1", "threads=1"]


def train_args(train: Path, dev: Path, out: Path, *extra: str) -> list[str]:
    args = ["--preset", "tiny", "--out", str(out), "--no-progress", "--set", f"data.train={train}",
            "--set", f"data.dev={dev}"]
    for s in [*SMALL, *extra]:
        args += ["--set", s]
    return args


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "last" / "model.safetensors"))


def test_data_parallel_two_processes_equal_one(tmp_path: Path, fsdd_small: tuple[Path, Path]) -> None:
    """2 gloo processes with the same global batch reach the same parameters as 1 process.

    Tolerance: the all-reduce adds the two half-batch gradients (and batch-norm statistics) in a different order
    than the single process sums the whole batch; fp32 rounding (~1e-7 relative per operation) compounds over
    6 SGD steps through a recurrent network, so parameters agree to ~1e-6, checked at 1e-5.
    """
    train, dev = fsdd_small
    extra = ["optim.name=sgd", "optim.lr=0.05", "optim.schedule=constant", "max_steps=6", "epochs=1"]
    one = run_cli("train", *train_args(train, dev, tmp_path / "one", *extra))
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(REPO / "train.py"),
         *train_args(train, dev, tmp_path / "two", *extra)],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert two.returncode == 0, two.stderr[-3000:]
    w1, w2 = weights(tmp_path / "one"), weights(tmp_path / "two")
    moved = 0
    init = DeepSpeechInit.state(tmp_path / "one")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=1e-5, rtol=1e-5, msg=k)
        moved += int(not torch.equal(w1[k], init[k]))
    assert moved > len(w1) // 2  # the comparison is not between two untrained models
    steps = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if "loss" in s] == [1, 2, 3, 4, 5, 6]


class DeepSpeechInit:
    """The initial weights a run starts from (same seed -> same init), to show that training moved them."""

    @staticmethod
    def state(run: Path) -> dict[str, torch.Tensor]:
        from deepspeech.checkpoint import load_config
        from deepspeech.model.ds2 import DeepSpeech2

        cfg = load_config(run / "last")
        torch.manual_seed(cfg.seed)
        return {k: v.clone() for k, v in DeepSpeech2(cfg.model).state_dict().items()}


def test_sigkill_and_resume_equals_uninterrupted(tmp_path: Path, fsdd_small: tuple[Path, Path]) -> None:
    """Kill a run with SIGKILL after a mid-epoch checkpoint, rerun the same command: bit-identical final weights,
    averaged weights (EMA, saved in the resumable state) and shipped best model."""
    train, dev = fsdd_small
    extra = ["epochs=2", "save_every_steps=2", "optim.ema_decay=0.9"]
    ref = run_cli("train", *train_args(train, dev, tmp_path / "ref", *extra))
    assert ref.returncode == 0, ref.stderr

    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "deepspeech.cli", "train", *train_args(train, dev, run, *extra)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_file = run / "last" / "train_state" / "trainer.json"
    deadline = time.time() + 300
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if state_file.is_file():
            try:
                st = json.loads(state_file.read_text())
            except (json.JSONDecodeError, FileNotFoundError):
                st = {}
            if st.get("step", 0) >= 3:  # past the first epoch's first checkpoints, before the end
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = st
                break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert killed_at is not None, "the run ended before it could be killed; make it longer"
    assert proc.returncode == -signal.SIGKILL

    resumed = run_cli("train", *train_args(train, dev, run, *extra))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr
    w_ref, w_res = weights(tmp_path / "ref"), weights(run)
    assert w_ref.keys() == w_res.keys()
    for k in w_ref:
        assert torch.equal(w_ref[k], w_res[k]), k
    for name in ("last/train_state/ema.safetensors", "best/model.safetensors"):
        a, b = load_file(str(tmp_path / "ref" / name)), load_file(str(run / name))
        assert a.keys() == w_ref.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    ema = load_file(str(run / "last/train_state/ema.safetensors"))
    assert any(not torch.equal(ema[k], w_res[k]) for k in ema)  # the average is not the last iterate
    ref_state = json.loads((tmp_path / "ref" / "last" / "train_state" / "trainer.json").read_text())
    res_state = json.loads(state_file.read_text())
    assert ref_state == res_state
    # metrics.jsonl: the records written after the checkpoint, before the kill, are not repeated by the resumed run
    def records(r: Path) -> list[tuple[int, int, bool]]:
        lines = (r / "metrics.jsonl").read_text().splitlines()
        return [(d["step"], d["epoch"], "loss" in d) for d in map(json.loads, lines)]
    assert records(run) == records(tmp_path / "ref")


def test_checkpoint_directory_is_complete_and_loads_safely(tmp_path: Path, fsdd_small: tuple[Path, Path]) -> None:
    train, dev = fsdd_small
    res = run_cli("train", *train_args(train, dev, tmp_path / "r", "max_steps=2"), "--format", "json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["step"] == 2
    last = tmp_path / "r" / "last"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "feature_stats.json",
                 "train_state/optimizer.pt", "train_state/rng.pt", "train_state/trainer.json"):
        assert (last / name).is_file(), name
    am = load_model_dir(last)
    assert not am.model.training and len(am.tokenizer) == 29
    # the optimizer state loads with weights_only=True (no arbitrary unpickling)
    torch.load(last / "train_state" / "optimizer.pt", weights_only=True)
    # a model directory without its tokenizer is refused with a clear error
    broken = tmp_path / "broken"
    shutil.copytree(last, broken)
    (broken / "tokenizer.json").unlink()
    bad = run_cli("eval", "--model", str(broken), "--manifest", str(dev))
    assert bad.returncode == 2 and "missing tokenizer.json" in bad.stderr


def test_best_model_selection_best_or_last(tmp_path: Path, fsdd_small: tuple[Path, Path]) -> None:
    """select=best keeps the epoch with the lowest dev WER; select=last keeps the final epoch's weights."""
    train, dev = fsdd_small
    for select in ("best", "last"):
        run = tmp_path / select
        res = run_cli("train", *train_args(train, dev, run, "epochs=3", "optim.lr=1e-2", f"select={select}"))
        assert res.returncode == 0, res.stderr
        epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "dev_wer" in line]
        assert [e["epoch"] for e in epochs] == [1, 2, 3]
        hours = [e["audio_h"] for e in epochs]  # the learning curve's x axis: audio seen grows every epoch
        assert 0 < hours[0] < hours[1] < hours[2]
        kept = json.loads((run / "best" / "metrics.json").read_text())
        if select == "best":
            assert kept["dev_wer"] == min(e["dev_wer"] for e in epochs)
            assert kept["epoch"] == min(epochs, key=lambda e: e["dev_wer"])["epoch"]  # the first of equals
        else:
            assert kept["epoch"] == 3
            best, last = load_file(str(run / "best" / "model.safetensors")), weights(run)
            for k in last:  # best/ stores float16 weights: the final epoch's, to that precision
                torch.testing.assert_close(best[k].float(), last[k].float(), atol=1e-2, rtol=1e-3, msg=k)
    bad = run_cli("train", *train_args(train, dev, tmp_path / "bad", "select=worst"))
    assert bad.returncode != 0 and "select must be best or last" in bad.stderr


def test_cosine_schedule_warms_up_then_decays_to_its_floor() -> None:
    """The cosine schedule: warm-up over the first steps only, the full rate halfway down at the middle of the
    run, the floor at its end and after it."""
    o = OptimConfig(name="adamw", lr=1.0, schedule="cosine", warmup_steps=5, min_lr_ratio=0.0)
    lrs = [lr_at(o, step, 0, 30) for step in range(30)]
    cold = [lr_at(dataclasses.replace(o, warmup_steps=0), step, 0, 30) for step in range(30)]
    assert lrs[:5] == pytest.approx([(k + 1) / 5 * cold[k] for k in range(5)])  # warm-up: the first steps only
    assert lrs[5:] == cold[5:]
    assert cold[0] == 1.0 and lrs[15] == pytest.approx(0.5)
    assert all(a > b for a, b in zip(cold, cold[1:], strict=False))  # decreasing, no restart
    assert lr_at(o, 30, 0, 30) == lr_at(o, 99, 0, 30) == 0.0  # at and past the end: the floor
    floor = dataclasses.replace(o, min_lr_ratio=0.05)
    assert lr_at(floor, 30, 0, 30) == pytest.approx(0.05)


def test_fine_tuning_starts_from_a_model_directory(tmp_path: Path, fsdd_small: tuple[Path, Path]) -> None:
    """init_from: a fresh run starts from another model's weights and refuses a model whose config differs.

    At a learning rate of 1e-30 one AdamW step moves a weight by about 1e-30 (the normalised update is ~1), so the
    fine-tuned weights equal the initial ones to 1e-20 while the seed's random init is far away.
    """
    train, dev = fsdd_small
    base = run_cli("train", *train_args(train, dev, tmp_path / "base", "max_steps=3"))
    assert base.returncode == 0, base.stderr
    frozen = ["optim.lr=1e-30", "optim.schedule=constant", "optim.warmup_steps=0", "max_steps=1"]
    init = f"init_from={tmp_path / 'base' / 'last'}"
    ft = run_cli("train", *train_args(train, dev, tmp_path / "ft", init, *frozen))
    assert ft.returncode == 0, ft.stderr
    start, after = weights(tmp_path / "base"), weights(tmp_path / "ft")
    params = [k for k in start if "running_" not in k and "num_batches" not in k]  # batch-norm statistics move
    assert params
    for k in params:
        torch.testing.assert_close(after[k], start[k].float(), atol=1e-20, rtol=0, msg=k)
    fresh = DeepSpeechInit.state(tmp_path / "ft")
    assert not all(torch.equal(after[k], fresh[k]) for k in params)  # not the seed's random init
    bad = run_cli("train", *train_args(train, dev, tmp_path / "bad", init, "model.rnn_hidden=48", "max_steps=1"))
    assert bad.returncode != 0 and "model config differs" in bad.stderr


@pytest.mark.slow
def test_mandarin_path_overfits_ten_utterances(tmp_path: Path, shared_data: Path) -> None:
    """Proves the Mandarin path learns: a narrowed tiny-zh (2 GRU layers of 128) memorises the 10 shortest
    S0150 AISHELL utterances to CER < 5% (chance is ~100% CER over a vocabulary of ~150 characters)."""
    from tests.conftest import cut_manifest

    src = shared_data / "zh_aishell1_sample" / "manifest.jsonl"
    rows = [json.loads(x) for x in src.read_text().splitlines()]
    rows = sorted((r for r in rows if r["speaker"] == "S0150"), key=lambda r: r["duration_s"])[:10]
    allm = cut_manifest(src, tmp_path / "all.jsonl", 10_000)
    keep = {r["audio"].split("/")[-1] for r in rows}
    lines = [x for x in allm.read_text().splitlines() if json.loads(x)["audio"].split("/")[-1] in keep]
    man = tmp_path / "ten.jsonl"
    man.write_text("\n".join(lines) + "\n")
    args = ["--preset", "tiny-zh", "--out", str(tmp_path / "zh"), "--no-progress",
            "--set", f"data.train={man}", "--set", "data.dev=", "--set", "epochs=150",
            "--set", "data.max_batch=10", "--set", "data.max_frames=100000", "--set", "optim.lr=3e-3",
            "--set", "model.rnn_layers=2", "--set", "model.rnn_hidden=128",
            "--set", "optim.warmup_steps=10", "--set", "save_every_steps=0"]
    res = run_cli("train", *args, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    ev = run_cli("eval", "--model", str(tmp_path / "zh" / "last"), "--manifest", str(man), "--format", "json")
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert result["n"] == 10 and result["cer"] < 0.05, result
