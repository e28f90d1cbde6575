"""``deepspeech plan``: size a training job before submitting it. For an acoustic preset (``deepspeech.presets``) or
an LM preset (``lm.families``) at a layout of GPUs, it prints the parameters, the memory per GPU (model state and
activations) and the expected step time from the step's FLOPs and an assumed achieved throughput (``--tflops``).

* DS2 presets: :mod:`deepspeech.model.cost` (parameters, saved-activation bytes, 3 x forward FLOPs), pure data
  parallelism (``--tp`` and ``--pp`` must be 1); ``--batch`` utterances of ``--seconds`` each per GPU.
* LM presets: parameters and model state per GPU from :func:`lm.families.model_state_memory` (mixed-precision Adam,
  16 bytes a parameter); activations per GPU from the per-layer formulas of arXiv 2205.05198
  (:data:`lm.activation_memory.CASES`; Mamba-2 layers :func:`lm.mamba2.activation_bytes`) times the layers, which
  is what the first pipeline stage holds under 1F1B (pp micro-batches of L/pp layers, section 4.2.3); FLOPs
  6 N per token for the matrix products plus 12 s h per token and attention layer (arXiv 2104.04473 eq. 3's
  s/6h term, without recomputation; full recomputation adds a forward: 8 N instead of 6 N); the pipeline bubble
  (pp - 1)/m added to the step time (2104.04473 section 2.2.1).

The step time is FLOPs per GPU / (``--tflops`` x 10^12): a planning figure, not a measurement. The default,
:data:`deepspeech.model.cost.DEFAULT_TFLOPS`, is 40% of an H100's dense bf16 peak; for a CPU give its measured rate.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from deepspeech.cli.common import Subparsers, add_command, add_common

GIB = 2**30


def add_parser(subparsers: Subparsers, argv: Sequence[str] | None = None) -> None:
    p = add_command(subparsers, "plan", "memory per GPU and expected step time of a DS2 or LM preset at a GPU layout",
                    argv, run)
    if p is None:
        return
    from deepspeech.model.cost import PlanConfig

    d = PlanConfig()
    p.add_argument("--preset", required=True, help="a DS2 preset (`deepspeech train --preset`) or an LM preset "
                   "(`deepspeech lm params --preset`)")
    p.add_argument("--gpus", type=int, default=d.gpus, help="GPUs in the job (data parallel = gpus / (tp * pp))")
    p.add_argument("--tp", type=int, default=d.tp, help="tensor-parallel size (LMs)")
    p.add_argument("--pp", type=int, default=d.pp, help="pipeline-parallel size (LMs)")
    p.add_argument("--microbatches", type=int, default=d.microbatches,
                   help="micro-batches per step and data-parallel rank (LMs; 0: pp)")
    p.add_argument("--batch", type=int, default=d.batch, help="utterances per GPU (DS2; 0: the preset's "
                   "data.max_batch) or sequences per micro-batch (LMs; 0: 1)")
    p.add_argument("--seconds", type=float, default=d.seconds, help="duration of every utterance (DS2)")
    p.add_argument("--seq", type=int, default=d.seq, help="sequence length (LMs; 0: the preset's)")
    p.add_argument("--sp", action="store_true", help="sequence parallelism (LMs)")
    p.add_argument("--recompute", choices=["none", "selective", "full"], default=d.recompute,
                   help="activation recomputation (LMs)")
    p.add_argument("--tflops", type=float, default=d.tflops, help="achieved TFLOP/s per GPU (default %(default)s: "
                   "40%% of an H100's 989 dense bf16 TFLOP/s)")
    p.add_argument("--format", choices=["text", "json"], default="text")
    add_common(p)


def _config(args: argparse.Namespace) -> Any:
    from deepspeech.model.cost import PlanConfig

    return PlanConfig(gpus=args.gpus, tp=args.tp, pp=args.pp, microbatches=args.microbatches, batch=args.batch,
                      seconds=args.seconds, seq=args.seq, sp=args.sp, recompute=args.recompute, tflops=args.tflops)


def ds2_plan(preset: str, plan: Any) -> dict[str, Any]:
    """The plan of a DS2 preset: one record of parameters, bytes per GPU, FLOPs and the expected step time."""
    from deepspeech.model.cost import activation_bytes, parameter_count, state_bytes_per_param, training_flops
    from deepspeech.presets import get_preset

    if plan.tp != 1 or plan.pp != 1:
        raise ValueError("DS2 presets train data parallel only: --tp 1 --pp 1")
    cfg = get_preset(preset)
    batch = plan.batch or cfg.data.max_batch
    frames = round(plan.seconds * 1000 / cfg.features.hop_ms)
    params = parameter_count(cfg.model)
    per_param = state_bytes_per_param(cfg.optim.name, cfg.optim.momentum)
    act = activation_bytes(cfg.model, batch, frames)
    flops = training_flops(cfg.model, batch, frames)
    step_s = flops / (plan.tflops * 1e12)
    return {"preset": preset, "kind": "ds2", "parameters": params, "gpus": plan.gpus, "dp": plan.gpus,
            "batch_per_gpu": batch, "seconds": plan.seconds, "frames": frames, "optimizer": cfg.optim.name,
            "state_bytes_per_param": per_param, "state_bytes_per_gpu": params * per_param,
            "activation_bytes_per_gpu": act.total,
            "activation_parts": {"convs": act.convs, "rnns": act.rnns, "head": act.head, "ctc": act.ctc},
            "bytes_per_gpu": params * per_param + act.total, "flops_per_gpu": flops, "tflops": plan.tflops,
            "step_s": step_s, "audio_s_per_s": plan.gpus * batch * plan.seconds / step_s}


def _attention_layers(cfg: Any) -> int:
    return sum(cfg.kind(i) in ("transformer", "attention") for i in range(cfg.layers))


def _layer_bytes(cfg: Any, index: int, s: int, b: int, t: int, sp: bool, recompute: str) -> float:
    """Activation bytes of layer ``index`` (bf16): a transformer layer by lm.activation_memory's case of this
    layout; a Mamba-2 layer by lm.mamba2.activation_bytes plus its RMSNorm's (8h + 4) bytes a token; a hybrid
    pattern's attention-only and MLP-only layers by the paper's split of the 34sbh (section 4.1: attention block
    11sbh + 5as^2b with its LayerNorm 2sbh, MLP block 19sbh with its LayerNorm 2sbh; under TP without SP, 3sbh of
    each block stays replicated)."""
    from lm.activation_memory import CASES, LayerShape
    from lm.mamba2 import activation_bytes

    h, a = cfg.hidden, cfg.heads
    kind = cfg.kind(index)
    tokens = s * b // (t if sp else 1)
    if recompute == "full":  # the layer input only
        return 2.0 * tokens * h
    if kind == "mamba":
        mixer = replace(cfg.mamba_config, sequence_parallel=sp and t > 1)
        return float(activation_bytes(mixer, s, b, t, element_bytes=2) + (8 * h + 4) * tokens)
    shape = LayerShape(s=s, b=b, h=h, a=a)
    if kind == "transformer":
        name = {(False, "none"): "tensor parallel", (True, "none"): "tensor + sequence parallel",
                (False, "selective"): "tensor parallel + selective recompute",
                (True, "selective"): "tensor + sequence parallel + selective recompute"}[(sp, recompute)]
        case = next(c for c in CASES if c.name == name)
        return case.formula(shape, t)
    sbh = float(s * b * h)
    core = 0.0 if recompute == "selective" else 5 * a * s / h
    if kind == "attention":
        return sbh * ((13 + core) / t if sp else 5 + (8 + core) / t)
    return sbh * (21 / t if sp else 5 + 16 / t)  # mlp


def lm_plan(preset: str, plan: Any) -> dict[str, Any]:
    """The plan of an LM preset (see the module docstring)."""
    from lm.families import PRESETS, embedding_parameters, head_parameters, model_state_memory, parameter_count

    cfg = PRESETS[preset]()
    s, b, t, pp = plan.seq or cfg.seq_len, plan.batch or 1, plan.tp, plan.pp
    m = plan.microbatches or pp
    dp = plan.gpus // (t * pp)
    state = model_state_memory(cfg, t, pp)
    layers = sum(_layer_bytes(cfg, i, s, b, t, plan.sp, plan.recompute) for i in range(cfg.layers))
    logits = 4 * s * b * cfg.vocab_size // t  # float32 logits of the cross-entropy, last stage
    n = parameter_count(cfg)
    n_matmul = n - embedding_parameters(cfg) - head_parameters(cfg) + cfg.vocab_size * cfg.hidden
    tokens = s * b * m * dp
    flops = ((8 if plan.recompute == "full" else 6) * n_matmul + 12 * _attention_layers(cfg) * s * cfg.hidden) * tokens
    per_gpu = flops / plan.gpus
    step_s = per_gpu / (plan.tflops * 1e12) * (1 + (pp - 1) / m)
    return {"preset": preset, "kind": "lm", "parameters": n, "gpus": plan.gpus, "tp": t, "pp": pp, "dp": dp,
            "microbatches": m, "batch_per_microbatch": b, "seq": s, "sp": plan.sp, "recompute": plan.recompute,
            "parameters_per_gpu_max": state.per_gpu_max, "state_bytes_per_param": state.bytes_per_param,
            "state_bytes_per_gpu": state.bytes_per_gpu_max, "activation_bytes_per_gpu": round(layers) + logits,
            "activation_parts": {"layers": round(layers), "logits": logits},
            "bytes_per_gpu": state.bytes_per_gpu_max + round(layers) + logits, "flops_per_gpu": per_gpu,
            "tflops": plan.tflops, "step_s": step_s, "tokens_per_s": tokens / step_s}


def _text(r: dict[str, Any]) -> str:
    gib = {k: r[k] / GIB for k in ("state_bytes_per_gpu", "activation_bytes_per_gpu", "bytes_per_gpu")}
    parts = ", ".join(f"{k} {v / GIB:.2f}" for k, v in r["activation_parts"].items())
    if r["kind"] == "ds2":
        layout = (f"{r['gpus']} GPU(s), data parallel; {r['batch_per_gpu']} utterances of {r['seconds']:g} s "
                  f"({r['frames']} frames) per GPU")
        rate = f"{r['audio_s_per_s']:,.0f} audio s/s over {r['gpus']} GPU(s)"
        state = f"{r['state_bytes_per_param']} B/param ({r['optimizer']})"
    else:
        layout = (f"{r['gpus']} GPU(s) = tp {r['tp']} x pp {r['pp']} x dp {r['dp']}; {r['microbatches']} "
                  f"micro-batch(es) of {r['batch_per_microbatch']} x {r['seq']} tokens per step and dp rank"
                  f"{'; sp' if r['sp'] else ''}; recompute {r['recompute']}")
        rate = f"{r['tokens_per_s']:,.0f} tokens/s over {r['gpus']} GPU(s)"
        state = f"{r['state_bytes_per_param']} B/param x {r['parameters_per_gpu_max']:,} on the fullest GPU"
    return "\n".join([
        f"preset {r['preset']}: {r['parameters']:,} parameters",
        f"layout: {layout}",
        f"model state per GPU:  {gib['state_bytes_per_gpu']:8.2f} GiB  ({state})",
        f"activations per GPU:  {gib['activation_bytes_per_gpu']:8.2f} GiB  ({parts})",
        f"total per GPU:        {gib['bytes_per_gpu']:8.2f} GiB",
        f"FLOPs per GPU a step: {r['flops_per_gpu'] / 1e12:8.3f} TFLOP",
        f"expected step time:   {r['step_s'] * 1000:8.4g} ms at {r['tflops']:g} TFLOP/s achieved per GPU -> {rate}",
    ])


def run(args: argparse.Namespace) -> int:
    from deepspeech.presets import PRESETS as DS2_PRESETS

    plan = _config(args)
    if args.preset in DS2_PRESETS:
        record = ds2_plan(args.preset, plan)
    else:
        from lm.families import PRESETS as LM_PRESETS

        if args.preset not in LM_PRESETS:
            raise ValueError(f"unknown preset {args.preset!r}; DS2: {', '.join(DS2_PRESETS)}; "
                             f"LM: {', '.join(LM_PRESETS)}")
        record = lm_plan(args.preset, plan)
    print(json.dumps(record) if args.format == "json" else _text(record))
    return 0
