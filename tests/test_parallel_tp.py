"""Tensor, sequence and data parallelism of the GPT LM on 2 gloo processes, checked against the one-rank model.

Every rank builds the unsplit reference from the same seed, then its shard, runs both on the same batch and returns
logits, loss and gradients; the test compares each rank's gradient shard with the matching slice of the reference.
One pool of 2 processes serves the whole module (starting processes costs seconds on 2 cores; the work takes less).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from deepspeech.parallel import ParallelDims, ParallelState, init_parallel
from deepspeech.parallel.mappings import (
    copy_to_tp,
    gather_from_sp,
    gather_from_tp,
    reduce_from_tp,
    reduce_scatter_to_sp,
    scatter_to_sp,
    scatter_to_tp,
)
from deepspeech.parallel.tensor_parallel import sync_sequence_parallel_grads, vocab_parallel_cross_entropy
from deepspeech.parallel.workers import GlooWorkers
from lm.gpt import GPT, GPTConfig
from lm.tokenizer import CharTokenizer
from lm.train import LMTrainConfig, train
from tests.conftest import REPO

# A few sentences are enough for a character LM to show learning in 20 steps; the tests never read ../shared.
TEXT = (
    "it is a truth universally acknowledged that a single man in possession of a good fortune must be in want of "
    "a wife\nhowever little known the feelings or views of such a man may be on his first entering a neighbourhood "
    "this truth is so well fixed in the minds of the surrounding families that he is considered the rightful "
    "property of some one or other of their daughters\nmy dear mr bennet said his lady to him one day have you "
    "heard that netherfield park is let at last\nmr bennet replied that he had not\nbut it is returned she for mrs "
    "long has just been here and she told me all about it\n"
) * 4

# Small enough that a forward and backward take milliseconds; s divisible by t = 2 for sequence parallelism.
SMALL = GPTConfig(vocab_size=32, layers=2, hidden=32, heads=4, seq_len=16, dropout=0.1)
SEED = 3


@pytest.fixture(scope="module")
def gloo2() -> Iterator[GlooWorkers]:
    with GlooWorkers(2) as pool:
        yield pool


def _batch(cfg: GPTConfig, b: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(0, cfg.vocab_size - 3, (b, cfg.seq_len + 1), generator=g)  # padded ids never targets
    return ids[:, :-1], ids[:, 1:]


def _run(cfg: GPTConfig, group: Any) -> dict[str, Any]:
    """One training-mode forward and backward; logits gathered to (s, b, v), gradients of this rank's shard."""
    model = GPT(cfg, group, seed=SEED).train()
    tokens, targets = _batch(cfg)
    torch.manual_seed(5)  # the dropout generator, the same on every rank and for every model
    logits, loss = model(tokens, targets)
    assert loss is not None
    loss.backward()
    sync_sequence_parallel_grads(model.parameters(), group)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    dims = {n: getattr(p, "tp_dim", None) for n, p in model.named_parameters()}
    return {"logits": gather_from_tp(logits.detach(), group), "loss": loss.detach(), "grads": grads, "dims": dims}


def _shard(full: torch.Tensor, dim: int | None, rank: int, t: int) -> torch.Tensor:
    return full if dim is None else full.chunk(t, dim=dim)[rank]


def _compare(results: list[dict[str, Any]], atol: float, rtol: float, shard_ref: bool) -> None:
    for res in results:
        ref, tp, rank = res["ref"], res["tp"], res["rank"]
        torch.testing.assert_close(tp["loss"], ref["loss"], atol=atol, rtol=rtol)
        torch.testing.assert_close(tp["logits"], ref["logits"], atol=atol, rtol=rtol)
        assert tp["grads"].keys() == ref["grads"].keys()
        for name, grad in tp["grads"].items():
            want = _shard(ref["grads"][name], tp["dims"][name], rank, 2) if shard_ref else ref["grads"][name]
            assert want.abs().max() > 0, f"{name}: zero gradient, the comparison would prove nothing"
            torch.testing.assert_close(grad, want, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


# fp32 tolerances. Tensor and sequence parallelism change the order of summation only: the row-parallel matmuls add
# two half-length dot products through an all-reduce (or reduce-scatter) instead of one full one, and the
# vocabulary-parallel softmax sums exponentials in two parts. Each reordering changes a result by an ulp or so
# (~6e-8 relative); through two layers and backward the largest differences measured are 9e-8 absolute on logits
# and 7e-8 on gradients (values of order 1e-2..1), so 1e-6 leaves a margin of 10, while any real error (a wrong
# slice, a missing all-reduce, a different dropout mask) is of the order of the values themselves.
ATOL, RTOL = 1e-6, 1e-5


def test_tensor_parallel_equals_one_rank(gloo2: GlooWorkers) -> None:
    """TP=2 vs TP=1: logits, loss and every parameter's gradient shard, with dropout on (the masks are slices of
    the one-rank masks), learned and rotary positions, tied and untied output layers."""
    cases = [SMALL, replace(SMALL, positions="rotary", tie_embeddings=False, dropout=0.0)]
    results = gloo2.run(_job_tp_vs_one, cases)
    _compare([r for rank in results for r in rank], ATOL, RTOL, shard_ref=True)


def _job_tp_vs_one(cases: list[GPTConfig]) -> list[dict[str, Any]]:
    state = init_parallel(ParallelDims(tp=2))
    return [{"ref": _run(c, None), "tp": _run(c, state.tp_group), "rank": state.tp_rank} for c in cases]


def _job_pairs(pairs: list[tuple[GPTConfig, GPTConfig]]) -> list[dict[str, Any]]:
    """Both configurations on the 2-rank TP group (same shards): ``ref`` runs the first, ``tp`` the second."""
    state = init_parallel(ParallelDims(tp=2))
    return [{"ref": _run(a, state.tp_group), "tp": _run(b, state.tp_group), "rank": state.tp_rank} for a, b in pairs]


def test_sequence_parallel_equals_tensor_parallel_and_one_rank(gloo2: GlooWorkers) -> None:
    """TP=2 with sequence parallelism vs without (same shards), and vs the one-rank model, dropout on."""
    sp = replace(SMALL, sequence_parallel=True)
    results = gloo2.run(_job_pairs, [(SMALL, sp), (replace(SMALL, positions="rotary"),
                                                   replace(sp, positions="rotary"))])
    _compare([r for rank in results for r in rank], ATOL, RTOL, shard_ref=False)
    results = gloo2.run(_job_tp_vs_one, [sp])
    _compare([r for rank in results for r in rank], ATOL, RTOL, shard_ref=True)


def test_recomputation_equals_none(gloo2: GlooWorkers) -> None:
    """Selective (attention core) and full (whole layer) recomputation vs none, on TP=2 with sequence parallelism
    and dropout: the recomputed dropout masks must be the stored ones (the checkpoint restores the generator).

    Tolerance 0: the recomputed forward repeats the same operations on the same inputs in the same thread layout,
    and every parameter inside a checkpoint is used once (no reordered accumulation), so the results are bit-equal
    (as measured).
    """
    base = replace(SMALL, sequence_parallel=True)
    pairs = [(base, replace(base, recompute="selective")), (base, replace(base, recompute="full"))]
    results = gloo2.run(_job_pairs, pairs)
    _compare([r for rank in results for r in rank], 0.0, 0.0, shard_ref=False)


def _job_train(cfg: LMTrainConfig, dims: ParallelDims) -> dict[str, Any]:
    """cfg.steps AdamW steps (with gradient clipping) under ``dims`` and on one rank, same global batch."""
    state = init_parallel(dims)
    one, _, rec1 = train(cfg, ParallelState(ParallelDims()), TEXT)
    par, _, rec2 = train(cfg, state, TEXT)
    tp, rank = state.dims.tp, state.tp_rank
    ref = {n: _shard(p.detach(), getattr(p, "tp_dim", None) if tp > 1 else None, rank, tp)
           for n, p in one.named_parameters()}
    return {"ref": ref, "par": {n: p.detach() for n, p in par.named_parameters()},
            "init": {n: _shard(p.detach(), getattr(p, "tp_dim", None) if tp > 1 else None, rank, tp)
                     for n, p in GPT(one.cfg, seed=cfg.seed).named_parameters()},
            "loss1": [r["loss"] for r in rec1], "loss2": [r["loss"] for r in rec2]}


@pytest.mark.parametrize(("dims", "recompute"), [(ParallelDims(dp=2), "full"), (ParallelDims(tp=2), "none")],
                         ids=["dp2-full-recompute", "tp2"])
def test_training_steps_equal_one_rank(gloo2: GlooWorkers, dims: ParallelDims, recompute: str) -> None:
    """DP=2 (DDP, half the global batch each; with full recomputation, which DDP must tolerate) and TP=2 reach the
    one-rank parameters after 3 AdamW steps with gradient clipping (whose norm must be the unsharded model's).

    Tolerance 1e-5: the step-1 gradients differ by ~1e-7 relative (summation order, as above); Adam divides by
    sqrt(v), which magnifies relative gradient differences on tiny gradients, and three steps compound them:
    parameters agree to 7e-7 (measured). Every parameter moves by more than 4e-3 in these steps, so an error in
    averaging or clipping would show far above the tolerance.
    """
    model = replace(SMALL, dropout=0.0, recompute=recompute)  # dropout off: DP ranks draw different masks
    cfg = LMTrainConfig(model=model, steps=3, batch_size=4, grad_clip=0.5)
    for res in gloo2.run(_job_train, cfg, dims):
        assert res["loss2"] == pytest.approx(res["loss1"], rel=1e-5)
        moved = 0
        for name, want in res["ref"].items():
            torch.testing.assert_close(res["par"][name], want, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
            moved += int(not torch.equal(want, res["init"][name]))
        assert moved == len(res["ref"])  # every parameter trained: the comparison is not between initial weights


def _job_mappings() -> dict[str, Any]:
    """Each paired function's forward and backward on 2 ranks against what the pair is defined to do."""
    state = init_parallel(ParallelDims(tp=2))
    g, r = state.tp_group, state.tp_rank
    x = (torch.arange(8.0).view(4, 2) + 10 * r).requires_grad_()  # rank-dependent values
    out: dict[str, Any] = {}
    for name, fn in [("copy", copy_to_tp), ("reduce", reduce_from_tp), ("scatter_tp", scatter_to_tp),
                     ("gather_tp", gather_from_tp), ("scatter_sp", scatter_to_sp), ("gather_sp", gather_from_sp),
                     ("reduce_scatter_sp", reduce_scatter_to_sp)]:
        x.grad = None
        y = fn(x, g)
        (y * (1 + r)).sum().backward()  # rank-dependent upstream gradient 1 + r
        out[name] = (y.detach(), x.grad.clone())
    logits = torch.randn(5, 8, generator=torch.Generator().manual_seed(1)) * 30  # large: tests the max shift
    target = torch.tensor([0, 3, 4, 7, 5])
    full = logits.clone().requires_grad_()
    torch.nn.functional.cross_entropy(full, target, reduction="sum").backward()
    part = logits.chunk(2, dim=-1)[r].clone().requires_grad_()
    loss = vocab_parallel_cross_entropy(part, target, g)
    loss.sum().backward()
    out["ce"] = (loss.sum().detach(), torch.nn.functional.cross_entropy(logits, target, reduction="sum"),
                 part.grad, full.grad.chunk(2, dim=-1)[r])
    return out


def test_communication_pairs(gloo2: GlooWorkers) -> None:
    """Forward and backward of every mapping, and the vocabulary-parallel loss vs F.cross_entropy."""
    x = [torch.arange(8.0).view(4, 2) + 10 * r for r in range(2)]
    total = x[0] + x[1]
    for r, res in enumerate(gloo2.run(_job_mappings)):
        ones = torch.ones(4, 2)
        expect = {
            "copy": (x[r], 3 * ones),  # backward sums upstream gradients 1 + 2
            "reduce": (total, (1 + r) * ones),
            "scatter_tp": (x[r][:, r:r + 1], torch.cat([ones[:, :1], 2 * ones[:, 1:]], 1)),  # all-gather 1 | 2
            "gather_tp": (torch.cat(x, 1), (1 + r) * ones),
            "scatter_sp": (x[r][2 * r:2 * r + 2], torch.cat([ones[:2], 2 * ones[:2]])),
            "gather_sp": (torch.cat(x, 0), 3 * ones),  # reduce-scatter of 1 + 2
            "reduce_scatter_sp": (total[2 * r:2 * r + 2], torch.cat([ones[:2], 2 * ones[:2]])),
        }
        for name, (y, grad) in expect.items():
            torch.testing.assert_close(res[name][0], y, msg=name)
            torch.testing.assert_close(res[name][1], grad, msg=name)
        loss, want, grad, want_grad = res["ce"]
        torch.testing.assert_close(loss, want, atol=1e-4, rtol=1e-6)  # fp32 sums of 5 losses of order 30
        torch.testing.assert_close(grad, want_grad, atol=1e-6, rtol=1e-5)


def test_single_rank_mappings_are_identity_and_tokenizer_round_trips(tmp_path: Path) -> None:
    x = torch.randn(4, 3)
    for fn in (copy_to_tp, reduce_from_tp, scatter_to_tp, gather_from_tp, scatter_to_sp, gather_from_sp,
               reduce_scatter_to_sp):
        assert fn(x, None) is x
    tok = CharTokenizer.train(TEXT)
    tok.save(tmp_path / "tokenizer.json")
    again = CharTokenizer.load(tmp_path / "tokenizer.json")
    assert again.chars == tok.chars and again.decode(again.encode("a wife\n")) == "a wife\n"
    assert again.encode("a#")[1] == 0 and tok.padded_vocab_size() % 8 == 0


def test_cli_trains_with_torchrun_and_prints_json(tmp_path: Path) -> None:
    """`deepspeech lm train` under torchrun (TP=2, sequence parallel, selective recomputation): one JSON object per
    step on stdout (rank 0 only), and the loss falls over 20 steps."""
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    args = ["lm", "train", "--preset", "gpt-tiny", "--tp", "2", "--pp", "1", "--sp", "--recompute", "selective",
            "--steps", "20", "--batch-size", "8", "--format", "json", "--text", str(text), "--seed", "1"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "deepspeech.cli", *args], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 21))
    losses = [s["loss"] for s in steps]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.3, losses  # measured (seed 1): 3.30 over the first three steps, 2.71 over the last


def test_cli_rejects_a_layout_that_does_not_divide_the_world() -> None:
    from deepspeech.cli import main

    assert main(["lm", "train", "--preset", "gpt-tiny", "--pp", "2", "--steps", "1"]) == 2  # world 1


def _job_resume(cfgs: list[LMTrainConfig]) -> list[Any]:
    """Each config resumed at TP=2 on this rank: its losses, or the error it was refused with."""
    state = init_parallel(ParallelDims(tp=2))
    out: list[Any] = []
    for cfg in cfgs:
        try:
            out.append([r["loss"] for r in train(cfg, state, TEXT)[2]])
        except ValueError as e:
            out.append(f"{type(e).__name__}: {e}")
    return out


def test_one_rank_checkpoint_resumes_at_tp2_and_a_mismatch_is_refused_on_every_rank(gloo2: GlooWorkers,
                                                                                    tmp_path: Path) -> None:
    """A checkpoint written at TP=1 after step 2 loads at TP=2 through the safe metadata reader, and steps 3-4
    have the uninterrupted one-rank run's losses (1e-5 relative: tensor-parallel summation order, see
    test_training_steps_equal_one_rank). A checkpoint of another model is refused with the same error on both
    ranks, before any collective read (no rank is left waiting)."""
    model = replace(SMALL, dropout=0.0)
    one = ParallelState(ParallelDims())
    _, _, ref = train(LMTrainConfig(model=model, steps=4, batch_size=4, save_dir=str(tmp_path), save_every=2), one,
                      TEXT)
    src = str(tmp_path / "step-000002")
    cases = [LMTrainConfig(model=model, steps=4, batch_size=4, load_dir=src),
             LMTrainConfig(model=replace(model, layers=4), steps=4, batch_size=4, load_dir=src)]
    for rank in gloo2.run(_job_resume, cases):
        assert rank[0] == pytest.approx([r["loss"] for r in ref[2:]], rel=1e-5)
        assert rank[1].startswith("ShardedCheckpointError"), rank[1]
        assert "checkpoint has layers=2, this model has layers=4" in rank[1]


def test_gpt_shape_errors_name_what_does_not_divide() -> None:
    with pytest.raises(ValueError, match="hidden 64 is not divisible by heads = 3"):
        GPTConfig(hidden=64, heads=3)
