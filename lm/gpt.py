"""A GPT-style decoder language model with Megatron tensor and sequence parallelism and selective recomputation.

* Tensor parallelism (arXiv 1909.08053 section 3): attention heads are split over the tensor-parallel ranks (QKV is
  column-parallel, the output projection row-parallel); the MLP is column-parallel h -> 4h, GeLU, row-parallel
  4h -> h; the vocabulary is split in the embedding, the (tied) output layer and the cross-entropy.
* Sequence parallelism (arXiv 2205.05198 section 4.2.2): LayerNorms, dropouts and residuals run on a 1/t slice of
  the sequence; all-gather enters and reduce-scatter leaves each tensor-parallel block.
* Recomputation (2205.05198 section 5): "selective" checkpoints only the attention core (QK^T, softmax, softmax
  dropout, attention over V), whose activations grow with s^2 but are cheap to recompute; "full" checkpoints whole
  layers, keeping only each layer's input.

Activations use Megatron's (s, b, h) layout: sequence, micro-batch, hidden. a = heads, d = h / a, t = tensor-parallel
size. The model is an embedding stage, a list of self-contained layers and a head, so a pipeline split can cut it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from deepspeech.parallel.mappings import group_size, scatter_to_sp
from deepspeech.parallel.tensor_parallel import (
    ColumnParallelLinear,
    Group,
    RowParallelLinear,
    VocabParallelEmbedding,
    column_parallel_linear,
    mark,
    sharded_dropout,
    sharded_normal,
    vocab_parallel_cross_entropy,
)

POSITIONS = ("learned", "rotary")
RECOMPUTE = ("none", "selective", "full")
# GPTConfig fields that decide the parameters' names, shapes or meaning: a checkpoint must agree on them (the
# vocabulary is checked by shape: it depends on the training text)
SHAPE_FIELDS = ("layers", "hidden", "heads", "seq_len", "positions", "tie_embeddings")


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 128  # padded (lm.tokenizer pads to a multiple of 8, so t = 1, 2, 4, 8 all divide it)
    layers: int = 2
    hidden: int = 64  # h
    heads: int = 4  # a; each tensor-parallel rank holds a/t of them
    seq_len: int = 64  # s, the longest sequence (learned position table size)
    dropout: float = 0.0  # embedding, attention-probability and residual dropout
    positions: str = "learned"  # "learned" absolute table or "rotary" (RoPE on q and k)
    recompute: str = "none"  # "none" | "selective" (attention core) | "full" (whole layers)
    sequence_parallel: bool = False  # split LayerNorm/dropout/residual activations along s over the TP group
    tie_embeddings: bool = True  # output layer = embedding matrix (as GPT-2 and Megatron)
    init_std: float = 0.02  # N(0, std) weights; output projections use std / sqrt(2 * layers) (GPT-2)
    rotary_base: float = 10000.0

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.recompute not in RECOMPUTE:
            raise ValueError(f"recompute must be one of {RECOMPUTE}, got {self.recompute!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("vocab_size", "layers", "hidden", "heads", "seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not divisible by heads = {self.heads}")
        if self.positions == "rotary" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head size, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def gpt_tiny() -> GPTConfig:
    """A debug model that trains for a few steps on 2 CPU cores in seconds."""
    return GPTConfig(layers=2, hidden=64, heads=4, seq_len=64)


def gpt_small() -> GPTConfig:
    """A character LM of nanoGPT's Shakespeare size (about 10M parameters)."""
    return GPTConfig(layers=6, hidden=384, heads=8, seq_len=256, dropout=0.1)


PRESETS: dict[str, Callable[[], GPTConfig]] = {"gpt-tiny": gpt_tiny, "gpt-small": gpt_small}


def rotary_tables(seq_len: int, dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of RoPE angles, each (s, 1, 1, d): position p, pair i rotates by p * base^(-2i/d)."""
    inv = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv).repeat(1, 2)  # (s, d), halves repeated
    return angles.cos().float()[:, None, None, :], angles.sin().float()[:, None, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+d/2}) of x: (s, b, a, d) by the angles of its positions (GPT-NeoX layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos.to(x.dtype) + torch.cat((-x2, x1), dim=-1) * sin.to(x.dtype)


def attention_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: torch.Tensor,
                   rotary: tuple[torch.Tensor, torch.Tensor] | None, dropout: float, training: bool,
                   group: Group) -> torch.Tensor:
    """softmax(QK^T / sqrt(d) + causal mask), dropout, times V: q, k, v (s, b, a/t, d) -> (s, b, a/t * d).

    This is the part "selective" recomputation recomputes (2205.05198 section 5): it stores the softmax output
    (2as^2b bytes in 16-bit), its dropout mask (as^2b) and the dropout output (2as^2b) otherwise. The softmax
    dropout draws the mask of all a heads and keeps this rank's a/t (see sharded_dropout).
    """
    s, b, a, d = q.shape
    if rotary is not None:
        q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
    qb = q.reshape(s, b * a, d).transpose(0, 1)  # (b a, s, d), a view of the QKV output
    kb = k.reshape(s, b * a, d).transpose(0, 1)
    vb = v.reshape(s, b * a, d).transpose(0, 1)
    scores = torch.bmm(qb, kb.transpose(1, 2)) * (1.0 / math.sqrt(d))  # (b a, s, s)
    probs = torch.softmax(scores.masked_fill(causal, float("-inf")), dim=-1)
    probs = sharded_dropout(probs.view(b, a, s, s), dropout, training, dim=1, group=group).view(b * a, s, s)
    return torch.bmm(probs, vb).transpose(0, 1).reshape(s, b, a * d)


class ParallelAttention(nn.Module):
    """Causal self-attention with a/t heads per rank: (s, b, h) -> (s, b, h); (s/t, b, h) sequence-parallel."""

    def __init__(self, cfg: GPTConfig, group: Group, seed: int, prefix: str) -> None:
        super().__init__()
        self.cfg, self.group = cfg, group
        if cfg.heads % group_size(group):
            raise ValueError(f"heads {cfg.heads} is not divisible by the tensor-parallel size tp = {group_size(group)}")
        self.heads_local = cfg.heads // group_size(group)
        sp, std = cfg.sequence_parallel, cfg.init_std
        # Output rows ordered (head, q|k|v, d): a contiguous slice of rows is a set of whole heads.
        self.qkv = ColumnParallelLinear(cfg.hidden, 3 * cfg.hidden, group, seed=seed, name=f"{prefix}.qkv", std=std,
                                        sequence_parallel=sp)
        self.proj = RowParallelLinear(cfg.hidden, cfg.hidden, group, seed=seed, name=f"{prefix}.proj",
                                      std=std / math.sqrt(2 * cfg.layers), sequence_parallel=sp)
        self.register_buffer("causal", torch.ones(cfg.seq_len, cfg.seq_len, dtype=torch.bool).triu(1),
                             persistent=False)
        if cfg.positions == "rotary":
            cos, sin = rotary_tables(cfg.seq_len, cfg.head_dim, cfg.rotary_base)
            self.register_buffer("cos", cos, persistent=False)
            self.register_buffer("sin", sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)  # (s, b, 3h/t): all-gathered along s first when sequence-parallel
        s, b = qkv.shape[:2]
        d = self.cfg.head_dim
        q, k, v = qkv.view(s, b, self.heads_local, 3 * d).split(d, dim=-1)  # each (s, b, a/t, d)
        rotary = (self.cos[:s], self.sin[:s]) if self.cfg.positions == "rotary" else None
        causal, p, training, group = self.causal[:s, :s], self.cfg.dropout, self.training, self.group

        def core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return attention_core(q, k, v, causal, rotary, p, training, group)

        if self.cfg.recompute == "selective" and torch.is_grad_enabled():
            # Reentrant: the checkpoint saves q, k, v through save_for_backward (as Megatron's CheckpointFunction),
            # restores the RNG for the dropout mask, and works under DDP (each call checkpointed once).
            ctx = checkpoint(core, q, k, v, use_reentrant=True)
        else:
            ctx = core(q, k, v)
        return self.proj(ctx)  # (s, b, h): all-reduced; (s/t, b, h): reduce-scattered


class ParallelMLP(nn.Module):
    """h -> 4h (column-parallel, 4h/t per rank), GeLU, 4h -> h (row-parallel)."""

    def __init__(self, cfg: GPTConfig, group: Group, seed: int, prefix: str) -> None:
        super().__init__()
        sp, std = cfg.sequence_parallel, cfg.init_std
        self.fc1 = ColumnParallelLinear(cfg.hidden, 4 * cfg.hidden, group, seed=seed, name=f"{prefix}.fc1", std=std,
                                        sequence_parallel=sp)
        self.fc2 = RowParallelLinear(4 * cfg.hidden, cfg.hidden, group, seed=seed, name=f"{prefix}.fc2",
                                     std=std / math.sqrt(2 * cfg.layers), sequence_parallel=sp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


def _layer_norm(cfg: GPTConfig, group: Group) -> nn.LayerNorm:
    ln = nn.LayerNorm(cfg.hidden)
    sp = cfg.sequence_parallel and group_size(group) > 1
    for p in ln.parameters():
        mark(p, None, sp)
    return ln


class TransformerLayer(nn.Module):
    """Pre-LayerNorm block: x + drop(attn(ln1(x))), then + drop(mlp(ln2(x))). (s, b, h) or (s/t, b, h) in and out."""

    def __init__(self, cfg: GPTConfig, group: Group, seed: int, index: int) -> None:
        super().__init__()
        self.cfg, self.group = cfg, group
        self.ln1 = _layer_norm(cfg, group)
        self.attn = ParallelAttention(cfg, group, seed, f"layers.{index}.attn")
        self.ln2 = _layer_norm(cfg, group)
        self.mlp = ParallelMLP(cfg, group, seed, f"layers.{index}.mlp")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.recompute == "full" and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=True)  # keeps only x (2sbh, or 2sbh/t with SP)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        # Residual dropout acts on replicated activations, or on a sequence shard (dim 0) under sequence parallelism.
        dim = 0 if self.cfg.sequence_parallel else None
        p = self.cfg.dropout
        x = x + sharded_dropout(self.attn(self.ln1(x)), p, self.training, dim, self.group)
        return x + sharded_dropout(self.mlp(self.ln2(x)), p, self.training, dim, self.group)


class GPT(nn.Module):
    """Decoder LM: token ids (b, s) -> vocabulary-parallel logits (s, b, v/t) and the mean cross-entropy.

    ``tp_group`` None (or one rank) is the unsplit model. Built with the same ``seed``, the model on t ranks holds
    exactly the t slices of the one-rank model's weights.
    """

    def __init__(self, cfg: GPTConfig, tp_group: Group = None, seed: int = 0) -> None:
        super().__init__()
        self.cfg, self.group = cfg, tp_group
        self.embedding = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden, tp_group, seed=seed, name="embedding",
                                                std=cfg.init_std)
        self.positions = (nn.Parameter(sharded_normal((cfg.seq_len, cfg.hidden), cfg.init_std, seed, "positions",
                                                      None, None)) if cfg.positions == "learned" else None)
        if self.positions is not None:
            mark(self.positions)
        self.layers = nn.ModuleList(TransformerLayer(cfg, tp_group, seed, i) for i in range(cfg.layers))
        self.final_norm = _layer_norm(cfg, tp_group)
        self.output = None if cfg.tie_embeddings else ColumnParallelLinear(
            cfg.hidden, cfg.vocab_size, tp_group, seed=seed, name="output", std=cfg.init_std, bias=False,
            sequence_parallel=cfg.sequence_parallel)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (b, s) -> (s, b, h), or this rank's (s/t, b, h) under sequence parallelism."""
        s = tokens.shape[1]
        if s > self.cfg.seq_len:
            raise ValueError(f"sequence of {s} tokens is longer than seq_len {self.cfg.seq_len}")
        x = self.embedding(tokens.t())  # (s, b, h), replicated over the tensor-parallel group
        if self.positions is not None:
            x = x + self.positions[:s].unsqueeze(1)
        x = sharded_dropout(x, self.cfg.dropout, self.training)
        return scatter_to_sp(x, self.group) if self.cfg.sequence_parallel else x

    def head(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Final LayerNorm and output layer: (s, b, h) or (s/t, b, h) -> logits (s, b, v/t); loss if targets (b, s)."""
        x = self.final_norm(x)
        weight = self.embedding.weight if self.output is None else self.output.weight
        logits = column_parallel_linear(x, weight, None, self.group, self.cfg.sequence_parallel)
        if targets is None:
            return logits, None
        return logits, vocab_parallel_cross_entropy(logits, targets.t(), self.group).mean()

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.head(x, targets)
