"""The LM families (BLOOM, Nemotron-4, MT-NLG) as configurations of lm.gpt: tensor and pipeline parallelism against
one rank, checkpoints across layouts, ALiBi slopes, GQA vs MHA, parameter accounting, and CLI training.

The parallel checks reuse tests.test_parallel_tp's harness: every rank builds the one-rank reference from the same
seed, then its shard, and compares logits, loss and gradient shards.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from deepspeech.parallel import ParallelDims, ParallelState, init_parallel
from deepspeech.parallel.sharded_checkpoint import step_dir
from deepspeech.parallel.workers import GlooWorkers
from lm.families import (
    BYTES_PER_PARAM,
    MTNLG_LAYOUT,
    PRESETS,
    TINY_PRESETS,
    bloom_tiny,
    model_state_memory,
    mtnlg_530b,
    nemotron4_tiny,
    parameter_count,
    stage_parameters,
)
from lm.gpt import GPT, GPTConfig, alibi_bias, alibi_slopes
from lm.stages import GPTChunk
from lm.train import LMTrainConfig, train
from tests.test_parallel_tp import ATOL, RTOL, SEED, TEXT, _batch, _compare, _run

# The tiny presets shrunk to the parallel tests' size (s = 16 divisible by t = 2; vocabulary 32).
SHAPE = {"vocab_size": 32, "hidden": 32, "seq_len": 16}
BLOOM = replace(bloom_tiny(), **SHAPE, dropout=0.1)  # dropout on: the masks must be slices of the one-rank ones
NEMOTRON = replace(nemotron4_tiny(), **SHAPE)  # 4 query heads in 2 groups: one group per rank at TP=2
SHAPE_GPT = GPTConfig(**SHAPE, heads=4)
ONE = ParallelState(ParallelDims())


def _job_tp(cases: list[GPTConfig]) -> list[dict[str, Any]]:
    state = init_parallel(ParallelDims(tp=2))
    out = []
    for c in cases:
        res = {"ref": _run(c, None), "tp": _run(c, state.tp_group), "rank": state.tp_rank}
        if c.positions == "alibi":
            res["alibi"] = GPT(c, state.tp_group, seed=SEED).layers[0].attn.alibi
        out.append(res)
    return out


def test_bloom_and_nemotron_tensor_parallel_equal_one_rank(gloo2: GlooWorkers) -> None:
    """TP=2 vs TP=1 (and TP=2 with sequence parallelism vs TP=1): logits, loss and every gradient shard.

    Tolerances ATOL 1e-6 / RTOL 1e-5 (tests.test_parallel_tp): tensor parallelism only reorders sums (row-parallel
    matmuls and the vocabulary-parallel softmax add two halves), ~1e-7 relative per reordering; ALiBi adds the same
    fp32 bias on both layouts and GQA's key/value repetition is a copy, so neither adds error. A wrong slope slice or
    a key/value head given to the wrong query heads changes the logits by the order of the values themselves.
    Each rank's ALiBi bias must be the slice of the global heads' bias.
    """
    cases = [BLOOM, NEMOTRON, replace(BLOOM, sequence_parallel=True), replace(NEMOTRON, sequence_parallel=True)]
    results = [r for rank in gloo2.run(_job_tp, cases) for r in rank]
    _compare(results, ATOL, RTOL, shard_ref=True)
    full = alibi_bias(alibi_slopes(BLOOM.heads), BLOOM.seq_len)
    for res in (r for r in results if "alibi" in r):
        torch.testing.assert_close(res["alibi"], full.chunk(2, dim=0)[res["rank"]], atol=0, rtol=0)


def _job_train(cfgs: list[LMTrainConfig], dims: ParallelDims) -> list[list[float]]:
    state = init_parallel(dims)
    return [[r["loss"] for r in train(cfg, state, TEXT)[2]] for cfg in cfgs]


def test_bloom_and_nemotron_pipeline_equals_one_rank(gloo2: GlooWorkers) -> None:
    """PP=2 (1F1B, 2 micro-batches) vs one process: the same 5 losses to rel 2e-6 (tests.test_parallel_pp.REL: the
    pipeline reorders gradient sums over micro-batches and stages only; losses are rounded to 1e-6 in the records).
    Covers BLOOM's embedding LayerNorm on the first stage and its tied embedding copy on the last, and Nemotron-4's
    untied output layer. Dropout off: a pipeline draws its stages' masks in another order than one rank."""
    cfgs = [LMTrainConfig(model=replace(m, layers=4, dropout=0.0), steps=5, batch_size=4, microbatches=2)
            for m in (BLOOM, NEMOTRON)]
    results = gloo2.run(_job_train, cfgs, ParallelDims(pp=2))
    for i, cfg in enumerate(cfgs):
        ref = [r["loss"] for r in train(replace(cfg, microbatches=1), ONE, TEXT)[2]]
        for rank in results:
            assert rank[i] == pytest.approx(ref, rel=2e-6)


def test_a_family_checkpoint_is_refused_by_another_family(tmp_path: Path) -> None:
    """The family fields are part of the checkpoint's model check: a squared-ReLU checkpoint does not load as GeLU
    (same shapes, different meaning)."""
    model = replace(NEMOTRON, layers=1)
    train(LMTrainConfig(model=model, steps=1, batch_size=2, save_dir=str(tmp_path)), ONE, TEXT)
    with pytest.raises(ValueError, match="checkpoint has activation='squared_relu'"):
        train(LMTrainConfig(model=replace(model, activation="gelu"), steps=2, batch_size=2,
                            load_dir=str(step_dir(tmp_path, 1))), ONE, TEXT)


def test_a_gpt_checkpoint_without_the_family_fields_still_loads(tmp_path: Path) -> None:
    """A GPT checkpoint written before the family fields existed (config.json lacks them) resumes: those fields are
    checked only where the checkpoint has them or the model departs from GPT's defaults."""
    model = replace(SHAPE_GPT, layers=1)
    train(LMTrainConfig(model=model, steps=1, batch_size=2, save_dir=str(tmp_path)), ONE, TEXT)
    config = step_dir(tmp_path, 1) / "config.json"
    record = json.loads(config.read_text(encoding="utf-8"))
    for key in ("kv_heads", "ffn_hidden", "activation", "bias", "embedding_norm", "hybrid_override_pattern", "mamba"):
        del record["config"]["model"][key]
    config.write_text(json.dumps(record), encoding="utf-8")
    rec = train(LMTrainConfig(model=model, steps=2, batch_size=2, load_dir=str(tmp_path)), ONE, TEXT)[2]
    assert [r["step"] for r in rec] == [2]


def test_alibi_slopes_follow_the_paper() -> None:
    """Press et al. (2108.12409) section 3: 8 heads give 1/2, 1/4, ..., 1/256; n heads (a power of two) the geometric
    sequence from 2^(-8/n). Otherwise (their reference code, used by BLOOM with 112 heads): the slopes of
    m = 2^floor(log2 n) heads, then every other slope of 2m heads (indices 0, 2, ...), n - m of them."""
    assert alibi_slopes(8).tolist() == [2.0 ** -i for i in range(1, 9)]
    assert alibi_slopes(4).tolist() == [2.0 ** -i for i in (2, 4, 6, 8)]
    assert alibi_slopes(6).tolist() == [2.0 ** -i for i in (2, 4, 6, 8, 1, 3)]
    twelve = alibi_slopes(12)
    torch.testing.assert_close(twelve[:8], alibi_slopes(8))
    torch.testing.assert_close(twelve[8:], alibi_slopes(16)[0::2][:4])
    bias = alibi_bias(alibi_slopes(2), 3)  # (a, s, s): -slope * distance to the query, 0 on the diagonal
    assert bias[0].tolist() == [[0.0, 0.0, 0.0], [-0.0625, 0.0, 0.0], [-0.125, -0.0625, 0.0]]


def test_gqa_reduces_to_multi_head_attention() -> None:
    """kv_heads == heads is multi-head attention: the same parameters and bit-equal outputs as kv_heads unset. And a
    GQA model equals the MHA model whose key/value heads are its group heads repeated (loaded into the MHA layout
    (head, q|k|v, d)): tolerance 1e-6, the QKV matmuls differ in output width only (blocking may reorder sums)."""
    base = replace(NEMOTRON, kv_heads=None)
    tokens, targets = _batch(base)
    mha, same = GPT(base, seed=SEED), GPT(replace(base, kv_heads=base.heads), seed=SEED)
    assert [n for n, _ in mha.named_parameters()] == [n for n, _ in same.named_parameters()]
    assert torch.equal(mha(tokens, targets)[0], same(tokens, targets)[0])

    gqa = GPT(NEMOTRON, seed=SEED)
    a, g, d = NEMOTRON.heads, NEMOTRON.groups, NEMOTRON.head_dim
    r = a // g
    state = dict(gqa.state_dict())
    for name, w in gqa.state_dict().items():
        if name.endswith("qkv.weight"):
            blocks = w.view(g, r + 2, d, -1)  # (group, [r queries | key | value], d, h)
            heads = [torch.stack([blocks[j, i], blocks[j, r], blocks[j, r + 1]]) for j in range(g) for i in range(r)]
            state[name] = torch.stack(heads).reshape(3 * a * d, -1)
    mha.load_state_dict(state)
    torch.testing.assert_close(mha(tokens, targets)[0], gqa(tokens, targets)[0], atol=1e-6, rtol=1e-6)


def test_parameter_count_matches_the_built_models_and_stages() -> None:
    """The analytic count equals the built model's numel for every tiny preset, and the per-stage count (PP=2) the
    numel of each GPTChunk (the last stage's tied embedding copy included)."""
    for name in TINY_PRESETS:
        cfg = PRESETS[name]()
        assert parameter_count(cfg) == sum(p.numel() for p in GPT(cfg).parameters()), name
        if cfg.hybrid_override_pattern is None:  # a pattern fixes the depth (4 or 8 layers already)
            cfg = replace(cfg, layers=4)
        half = cfg.layers // 2
        chunks = [GPTChunk(cfg, None, 0, range(0, half), True, False),
                  GPTChunk(cfg, None, 0, range(half, cfg.layers), False, True)]
        assert stage_parameters(cfg, 1, 2) == [sum(p.numel() for p in c.parameters()) for c in chunks], name


def _job_numel(cfgs: list[GPTConfig]) -> list[int]:
    state = init_parallel(ParallelDims(tp=2))
    return [sum(p.numel() for p in GPT(c, state.tp_group).parameters()) for c in cfgs]


def test_per_rank_parameter_count_under_tp(gloo2: GlooWorkers) -> None:
    """stage_parameters(tp=2) is each TP rank's numel (replicated LayerNorms and row-parallel biases counted whole)."""
    cfgs = [BLOOM, NEMOTRON]
    for rank in gloo2.run(_job_numel, cfgs):
        assert rank == [stage_parameters(c, 2, 1)[0] for c in cfgs]


def test_mtnlg_530b_parameters_and_memory_per_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    """MT-NLG (2201.11990): 105 x (12h^2 + 13h) + the embeddings = 529.6B, within 1% of the published 530B. On its
    layout (TP 8 x PP 35 x DP 8 = 2240 GPUs) a GPU holds 3 layers' eighth (1.89B) plus, on the first stage, an
    eighth of the embedding: 2.06B parameters, 16 bytes each (mixed-precision Adam) = 33.0 GB, within an 80 GB A100
    with room for activations."""
    cfg = mtnlg_530b()
    n = parameter_count(cfg)
    assert abs(n - 530e9) / 530e9 < 0.01, n
    assert MTNLG_LAYOUT.gpus == 2240
    mem = model_state_memory(cfg, MTNLG_LAYOUT.tp, MTNLG_LAYOUT.pp)
    assert mem.bytes_per_param == BYTES_PER_PARAM == 16
    h = cfg.hidden  # a middle stage: 3 layers, sharded 12h^2 + 7h, replicated 6h (LayerNorms, row-parallel biases)
    assert mem.per_gpu_min == 3 * ((12 * h**2 + 7 * h) // 8 + 6 * h)
    assert 30e9 < mem.bytes_per_gpu_max < 34e9 and mem.total_bytes == 16 * n
    from deepspeech.cli import main

    assert main(["lm", "params", "--preset", "mtnlg-530b"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["parameters"] == n and out["bytes_per_gpu_max"] == mem.bytes_per_gpu_max
    print(f"MT-NLG 530B: {n / 1e9:.1f}B parameters; {mem.per_gpu_max / 1e9:.2f}B per GPU at TP 8 x PP 35, "
          f"{mem.bytes_per_gpu_max / 1e9:.1f} GB of weights + gradients + Adam states")


@pytest.mark.parametrize("preset", ["bloom-tiny", "nemotron4-tiny", "mamba2-tiny", "mamba2-hybrid-tiny"])
def test_cli_trains_a_tiny_preset(preset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`deepspeech lm train --preset ...` (one process) on a small text: the loss falls over 20 steps."""
    from deepspeech.cli import main

    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    assert main(["lm", "train", "--preset", preset, "--steps", "20", "--batch-size", "8", "--format", "json",
                 "--text", str(text), "--seed", "1"]) == 0
    losses = [json.loads(line)["loss"] for line in capsys.readouterr().out.splitlines()]
    assert len(losses) == 20
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.3, losses
