"""Train the character LM (GPT or another family of lm.gpt's configuration, presets in lm.families), single process
or under ``torchrun`` with tensor, pipeline and data parallelism.

Layout: world = dp * tp * pp (deepspeech.parallel.dims). With pp > 1, vpp > 1 or more than one micro-batch the
step runs the GPT's stages (lm.stages) through deepspeech.parallel.pipeline (1F1B or interleaved 1F1B, arXiv
2104.04473 section 2.2) and gradients are averaged over the data-parallel group by one all-reduce after the pipeline
flush; otherwise the model is one GPT under DDP. Checkpoints are deepspeech.parallel.sharded_checkpoint's.
Every rank draws the same global batch from one seeded generator and keeps its data-parallel rows, so runs with
different dp at the same global batch follow the same trajectory. Data parallelism is DDP over the dp group
(gradients averaged; each rank's loss is the mean over an equal share of the batch, so that average is the gradient
of the global-batch mean). Tensor-parallel peers see the same rows and the same dropout generator.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from deepspeech.native import cpu_has_fast_bf16
from deepspeech.parallel import ParallelState, all_reduce_sum, peer_failures_as_errors, wrap_data_parallel
from deepspeech.parallel.mappings import divide, group_size
from deepspeech.parallel.pipeline import (
    CommCounter,
    all_reduce_dp_grads,
    forward_backward,
    split_microbatches,
    unique_parameters,
)
from deepspeech.parallel.sharded_checkpoint import CONFIG, latest_checkpoint, load_checkpoint, save_checkpoint
from deepspeech.parallel.tensor_parallel import clip_grad_norm, sync_sequence_parallel_grads
from lm.gpt import FAMILY_FIELDS, GPT, SHAPE_FIELDS, GPTConfig, gpt_tiny
from lm.stages import build_chunks, sync_tied_embedding_grads
from lm.tokenizer import CharTokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LMTrainConfig:
    model: GPTConfig = field(default_factory=gpt_tiny)
    steps: int = 20
    batch_size: int = 8  # global sequences per step, split evenly over the data-parallel ranks
    lr: float = 3e-3  # AdamW peak learning rate
    min_lr: float = 3e-4  # cosine decay ends here at the last step
    warmup_steps: int = 2  # linear warm-up from lr / warmup_steps
    weight_decay: float = 0.1  # on matrices only (not LayerNorm or biases)
    grad_clip: float = 1.0  # global norm of the unsharded model; 0 = off
    seed: int = 0  # weights, batches and dropout
    vpp: int = 1  # model chunks per pipeline rank (interleaved 1F1B when > 1)
    microbatches: int = 1  # per step and data-parallel rank; the local batch is split into this many
    bf16: bool = False  # bf16 autocast compute (pipeline sends in bf16), fp32 parameters, gradients and AdamW state
    save_dir: str | None = None  # write DCP checkpoints to save_dir/step-NNNNNN
    save_every: int = 0  # steps between checkpoints (0: only after the last step, when save_dir is set)
    load_dir: str | None = None  # resume from this checkpoint (or the newest step-* in it), any layout

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.vpp < 1 or self.microbatches < 1 or self.save_every < 0:
            raise ValueError("vpp and microbatches must be >= 1, save_every >= 0")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError("need 0 <= min_lr <= lr")


def shape_fields(model: GPTConfig, saved: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model fields a checkpoint must agree on: SHAPE_FIELDS always; each family field where the checkpoint's
    saved model config has it (``saved``) or this model differs from GPT's default, so that a GPT checkpoint written
    before those fields existed keeps loading."""
    default = GPTConfig()
    fields = {k: getattr(model, k) for k in SHAPE_FIELDS}
    fields.update({k: getattr(model, k) for k in FAMILY_FIELDS
                   if k in (saved or {}) or getattr(model, k) != getattr(default, k)})
    if fields.get("mamba") is not None:  # the Mamba-2 sub-config as config.json holds it (asdict)
        fields["mamba"] = asdict(fields["mamba"])
    return fields


def saved_model_config(path: str) -> dict[str, Any]:
    """The "model" object of a checkpoint's config.json ({} when unreadable: load_checkpoint then says why)."""
    try:
        saved = json.loads((latest_checkpoint(path) / CONFIG).read_text(encoding="utf-8"))["config"]["model"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return saved if isinstance(saved, dict) else {}


def lr_at(cfg: LMTrainConfig, step: int) -> float:
    """Learning rate of 1-based ``step``: linear warm-up, then cosine from lr to min_lr."""
    if step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    frac = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * frac))


class TextBatches:
    """Random windows of s + 1 tokens: inputs (b_local, s) and next-token targets (b_local, s).

    All ranks draw the same global batch of ``batch_size`` windows and keep rows [dp_rank * b_local, ...).
    """

    def __init__(self, ids: torch.Tensor, seq_len: int, batch_size: int, seed: int, dp_rank: int = 0,
                 dp_size: int = 1) -> None:
        if ids.numel() < seq_len + 2:
            raise ValueError(f"the text has {ids.numel()} tokens; need more than seq_len + 1 = {seq_len + 1}")
        self.ids, self.seq_len, self.batch_size = ids, seq_len, batch_size
        self.local = divide(batch_size, dp_size, "global batch size over data-parallel ranks")
        self.rows = slice(dp_rank * self.local, (dp_rank + 1) * self.local)
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, self.ids.numel() - self.seq_len - 1, (self.batch_size,),
                               generator=self.generator)[self.rows]
        windows = torch.stack([self.ids[i: i + self.seq_len + 1] for i in starts.tolist()]).long()
        return windows[:, :-1], windows[:, 1:]


def build_optimizer(model: torch.nn.Module, cfg: LMTrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))


def train(cfg: LMTrainConfig, state: ParallelState, text: str,
          emit: Callable[[dict[str, Any]], None] | None = None, counter: CommCounter | None = None
          ) -> tuple[torch.nn.Module, CharTokenizer, list[dict[str, Any]]]:
    """Train on ``text`` up to step cfg.steps; ``emit`` receives each step's record on rank 0. Returns the local model
    (a GPT, or with the pipeline engine a ModuleList of this rank's GPTChunks), the tokenizer and the records.

    ``counter`` (pipeline engine only) accumulates the bytes of pipeline sends and gradient all-reduces. A peer that
    dies or stops answering ends it with one-line PeerFailure.
    """
    with peer_failures_as_errors(state):
        return _train(cfg, state, text, emit, counter)


def _train(cfg: LMTrainConfig, state: ParallelState, text: str, emit: Callable[[dict[str, Any]], None] | None,
           counter: CommCounter | None) -> tuple[torch.nn.Module, CharTokenizer, list[dict[str, Any]]]:
    pipelined = state.dims.pp > 1 or cfg.vpp > 1 or cfg.microbatches > 1
    if cfg.vpp > 1 and state.dims.pp == 1:
        raise ValueError("interleaving (vpp > 1) needs pipeline parallelism (pp > 1)")
    if cfg.bf16 and state.device.type == "cpu" and not cpu_has_fast_bf16():
        log.warning("bf16 autocast on a CPU without AMX or AVX512-BF16: numerically the GPU recipe (bf16 matmuls, "
                    "fp32 master weights and optimizer state, fp32 loss), but emulated and slower than fp32 here")
    tokenizer = CharTokenizer.train(text)
    mcfg = replace(cfg.model, vocab_size=tokenizer.padded_vocab_size())
    if mcfg.sequence_parallel and group_size(state.tp_group) > 1:
        divide(mcfg.seq_len, state.dims.tp, "seq_len (sequence parallelism splits it over tensor-parallel ranks)")
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.int32)
    log.info("text: %d characters, vocabulary %d (padded to %d)", ids.numel(), tokenizer.vocab_size,
             mcfg.vocab_size)
    model: torch.nn.Module
    if pipelined:
        model = build_chunks(mcfg, state, cfg.vpp, cfg.seed).to(state.device)
        named = list(unique_parameters(model))
        net: torch.nn.Module = model
    else:
        model = GPT(mcfg, state.tp_group, seed=cfg.seed).to(state.device)
        named = list(model.named_parameters())
        net = wrap_data_parallel(model, state)
    n_local = sum(p.numel() for p in model.parameters())
    log.info("LM: %d layers, h=%d, a=%d, g=%d, f=%d, s=%d, %s positions; %d parameters on this rank "
             "(tp=%d pp=%d vpp=%d dp=%d, m=%d, sp=%s, "
             "recompute=%s)", mcfg.layers, mcfg.hidden, mcfg.heads, mcfg.groups, mcfg.ffn, mcfg.seq_len,
             mcfg.positions, n_local, state.dims.tp,
             state.dims.pp, cfg.vpp, state.dims.dp, cfg.microbatches, mcfg.sequence_parallel, mcfg.recompute)
    optimizer = build_optimizer(model, cfg)
    batches = TextBatches(ids, mcfg.seq_len, cfg.batch_size, cfg.seed, state.dp_rank, state.dims.dp)
    start = 0
    if cfg.load_dir:
        start = load_checkpoint(cfg.load_dir, named, optimizer, state,
                                shape_fields(mcfg, saved_model_config(cfg.load_dir)))
        for _ in range(start):  # the batch stream resumes where the checkpointed run stood
            batches.next()
    torch.manual_seed(cfg.seed + 7919 * (state.dp_rank + 1) + start)  # dropout: shared by TP peers, per DP rank
    records: list[dict[str, Any]] = []
    model.train()
    for step in range(start + 1, cfg.steps + 1):
        t0 = time.perf_counter()
        lr = lr_at(cfg, step)
        for g in optimizer.param_groups:
            g["lr"] = lr
        x, y = batches.next()
        if pipelined:
            loss = forward_backward(model, split_microbatches(x, y, cfg.microbatches), state,  # type: ignore[arg-type]
                                    counter, cfg.bf16)
            sync_tied_embedding_grads(model, state, counter)  # type: ignore[arg-type]
            all_reduce_sum(loss, state.pp_group)  # the last stage's loss to every stage
            all_reduce_dp_grads(model.parameters(), state, counter)
        else:
            with torch.autocast(state.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                _, loss = net(x.to(state.device), y.to(state.device))
            loss.backward()
        sync_sequence_parallel_grads(model.parameters(), state.tp_group)
        norm = clip_grad_norm(model.parameters(), cfg.grad_clip, state.tp_group, state.pp_group)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mean_loss = all_reduce_sum(loss.detach().float().clone(), state.dp_group).item() / state.dims.dp
        seconds = time.perf_counter() - t0
        record = {"step": step, "loss": round(mean_loss, 6), "lr": lr, "grad_norm": round(norm, 6),
                  "tokens_per_s": round(cfg.batch_size * mcfg.seq_len / seconds, 1), "seconds": round(seconds, 5)}
        records.append(record)
        if emit is not None and state.is_main:
            emit(record)
        if cfg.save_dir and (step == cfg.steps or (cfg.save_every and step % cfg.save_every == 0)):
            save_checkpoint(cfg.save_dir, named, optimizer, state, step, replace(cfg, model=mcfg))
    return model, tokenizer, records
