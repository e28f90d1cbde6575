"""``deepspeech plan`` and its DS2 cost model (deepspeech.model.cost): the activation formula against the bytes autograd
really saves (saved-tensor hooks, as lm.activation_memory measures the LM layers), the FLOP formula against torch's
FLOP counter (6H(I + H) per frame and direction for a GRU), and the command's figures against the models' own
parameter counts."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from deepspeech.cli import main
from deepspeech.model.cost import (
    PlanConfig,
    activation_bytes,
    forward_flops,
    gru_layer_flops,
    parameter_count,
    training_flops,
)
from deepspeech.model.ds2 import DeepSpeech2, ctc_loss
from deepspeech.native.build import load_extension
from deepspeech.presets import get_preset
from lm.activation_memory import saved_bytes


def _models() -> dict[str, object]:
    tiny = get_preset("tiny").model
    return {"tiny": tiny, "tiny-streaming": get_preset("tiny-streaming").model,
            "tiny dropout 0.2": dataclasses.replace(tiny, dropout=0.2)}


@pytest.mark.skipif(load_extension("gru") is None or load_extension("ctc_loss") is None,
                    reason="the formula counts the fused CPU kernels' saved tensors; they did not build")
@pytest.mark.parametrize("name", ["tiny", "tiny-streaming", "tiny dropout 0.2"])
def test_activation_formula_matches_saved_tensors(name: str) -> None:
    """Bytes saved for backward by a training forward + CTC loss of 3 utterances of 2 s: the formula within 10%
    (measured 0.4% under for tiny: it leaves out per-channel statistics, weight copies and the shared bool mask)."""
    cfg = _models()[name]
    torch.manual_seed(0)
    model = DeepSpeech2(cfg).train()  # type: ignore[arg-type]
    B, T = 3, 200
    feats, lengths = torch.randn(B, T, cfg.n_features), torch.full((B,), T)  # type: ignore[attr-defined]
    targets = [torch.randint(1, cfg.vocab_size, (20,)) for _ in range(B)]  # type: ignore[attr-defined]

    def step() -> torch.Tensor:
        logits, out_lengths = model(feats, lengths)
        return ctc_loss(logits, out_lengths, targets).sum()

    measured, loss = saved_bytes(step, model)
    formula = activation_bytes(cfg, B, T).total  # type: ignore[arg-type]
    assert abs(formula / measured - 1) <= 0.10, (name, measured, formula)
    loss.backward()  # the graph the hooks saw is a real training graph
    assert all(p.grad is not None for p in model.parameters())


def test_gru_flops_are_6h_i_plus_h_per_frame_and_direction() -> None:
    """torch's FLOP counter (2 per multiply-add of the GEMMs) on nn.GRU equals 6H(I + H) a frame; on the whole model
    (the PyTorch GRU path, so the counter sees its GEMMs) it equals forward_flops: convolutions, GRUs, lookahead
    and output layer; batch norm and element-wise work are in neither."""
    gru = torch.nn.GRU(40, 32, batch_first=True)
    with FlopCounterMode(display=False) as counter:
        gru(torch.randn(2, 5, 40))
    assert counter.get_total_flops() == 2 * 5 * gru_layer_flops(40, 32) == 2 * 5 * 6 * 32 * (40 + 32)
    for name, cfg in _models().items():
        model = DeepSpeech2(cfg).train()  # type: ignore[arg-type]
        for rnn in model.rnns:
            for m in (rnn.rnn, rnn.rnn_reverse):
                if m is not None:
                    m.native = False
        B, T = 2, 100
        with FlopCounterMode(display=False) as counter:
            model(torch.randn(B, T, cfg.n_features), torch.full((B,), T))  # type: ignore[attr-defined]
        assert counter.get_total_flops() == forward_flops(cfg, B, T), name  # type: ignore[arg-type]
        assert training_flops(cfg, B, T) == 3 * forward_flops(cfg, B, T)  # type: ignore[arg-type]


@pytest.mark.parametrize("preset", ["tiny", "en", "ds2-en", "ds2-streaming"])
def test_parameter_count_is_the_models(preset: str) -> None:
    cfg = get_preset(preset).model
    assert parameter_count(cfg) == DeepSpeech2(cfg).num_parameters()


def _plan(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert main(["plan", *args, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_en(capsys: pytest.CaptureFixture[str]) -> None:
    """The en preset on 8 GPUs: its own parameter count, AdamW's 16 bytes a parameter, activations linear in the
    batch, the step time FLOPs / throughput and the audio rate of all 8 GPUs."""
    r = _plan(capsys, "--preset", "en", "--gpus", "8", "--batch", "16", "--seconds", "10")
    cfg = get_preset("en")
    assert r["parameters"] == DeepSpeech2(cfg.model).num_parameters() == 7_803_661
    assert r["state_bytes_per_gpu"] == 16 * r["parameters"] and r["frames"] == 1000
    act = activation_bytes(cfg.model, 16, 1000)
    assert r["activation_bytes_per_gpu"] == act.total and 0.5 * 2**30 < act.total < 4 * 2**30
    assert act.rnns > act.convs > act.head > act.ctc > 0
    assert r["flops_per_gpu"] == training_flops(cfg.model, 16, 1000)
    assert r["step_s"] == pytest.approx(r["flops_per_gpu"] / (PlanConfig().tflops * 1e12))
    assert r["audio_s_per_s"] == pytest.approx(8 * 16 * 10 / r["step_s"])
    double = _plan(capsys, "--preset", "en", "--gpus", "8", "--batch", "32", "--seconds", "10")
    assert double["flops_per_gpu"] == 2 * r["flops_per_gpu"]
    assert double["activation_bytes_per_gpu"] == pytest.approx(2 * r["activation_bytes_per_gpu"], rel=1e-6)
    assert main(["plan", "--preset", "en"]) == 0  # the text form
    out = capsys.readouterr().out
    assert "7,803,661 parameters" in out and "expected step time" in out
    assert _plan(capsys, "--preset", "ds2-en")["state_bytes_per_param"] == 12  # SGD with momentum
    assert main(["plan", "--preset", "en", "--tp", "2", "--gpus", "2"]) == 2  # DS2 is data parallel only
    assert "data parallel only" in capsys.readouterr().err


def test_plan_lm_presets(capsys: pytest.CaptureFixture[str]) -> None:
    """gpt-10m: the built model's parameters, 6N + 12sh FLOPs a token; mamba2-hybrid-8b: lm.families' count, its
    model state per GPU falling with tp x pp, activations with sequence parallelism divided by tp."""
    from lm.families import PRESETS, model_state_memory
    from lm.families import parameter_count as lm_parameter_count
    from lm.gpt import GPT

    r = _plan(capsys, "--preset", "gpt-10m")
    cfg = PRESETS["gpt-10m"]()
    assert r["parameters"] == sum(p.numel() for p in GPT(cfg).parameters())
    n_matmul = r["parameters"] - cfg.vocab_size * cfg.hidden - cfg.seq_len * cfg.hidden - 2 * cfg.hidden \
        + cfg.vocab_size * cfg.hidden  # less the embedding table, positions and final LayerNorm; plus the logits
    assert r["flops_per_gpu"] == (6 * n_matmul + 12 * cfg.layers * cfg.seq_len * cfg.hidden) * cfg.seq_len
    one = _plan(capsys, "--preset", "mamba2-hybrid-8b")
    big = PRESETS["mamba2-hybrid-8b"]()
    assert one["parameters"] == lm_parameter_count(big) and 8e9 < one["parameters"] < 9e9
    sharded = _plan(capsys, "--preset", "mamba2-hybrid-8b", "--gpus", "16", "--tp", "4", "--pp", "2", "--sp")
    assert sharded["state_bytes_per_gpu"] == model_state_memory(big, 4, 2).bytes_per_gpu_max
    assert sharded["state_bytes_per_gpu"] < one["state_bytes_per_gpu"] / 6
    assert sharded["activation_parts"]["layers"] == pytest.approx(one["activation_parts"]["layers"] / 4, rel=0.01)
    assert sharded["dp"] == 2 and sharded["tokens_per_s"] > one["tokens_per_s"]
    assert main(["plan", "--preset", "no-such-preset"]) == 2
