"""The decoder LM of the parallel core: GPT and the families that are configurations of it, with Megatron tensor
and sequence parallelism and selective recomputation.

One module, shared blocks; a family is a :class:`GPTConfig` (presets in lm.families):
* GPT / MT-NLG (arXiv 2201.11990 section 3): learned positions, GeLU MLP, biases, tied embeddings.
* BLOOM (arXiv 2211.05100 section 3.2.2-3.2.3): ALiBi positions (a per-head linear bias on the attention scores) and
  a LayerNorm right after the word embedding ("embedding layernorm").
* Nemotron-4 (arXiv 2402.16819 section 2.2): rotary positions, grouped-query attention (kv_heads < heads), a
  squared-ReLU MLP, no bias terms and untied input and output embeddings.
* Mamba-2 and Mamba-2-Hybrid (arXiv 2405.21060 section 7; 2406.07887 section 3): a layer pattern
  (``hybrid_override_pattern``, Megatron's notation: "M" Mamba-2, "*" attention, "-" MLP) makes layer i a pre-RMSNorm
  residual block of one kind (:class:`HybridLayer`); the Mamba-2 mixer is lm.mamba2's, split over TP by its own
  heads and groups.

* Tensor parallelism (arXiv 1909.08053 section 3): attention heads are split over the tensor-parallel ranks (QKV is
  column-parallel, the output projection row-parallel; with GQA each rank holds a/t query heads and the g/t key/value
  heads of their groups); the MLP is column-parallel h -> f (f = 4h by default), GeLU or squared ReLU, row-parallel
  f -> h; the vocabulary is split in the embedding, the (tied) output layer and the cross-entropy.
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
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from deepspeech.parallel.mappings import group_rank, group_size, scatter_to_sp
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
from lm.mamba2 import Mamba2Config, Mamba2Mixer
from lm.positions import alibi_bias, alibi_slopes, apply_rotary, rotary_tables

POSITIONS = ("learned", "rotary", "alibi", "none")  # "none": no position signal (Mamba-2-Hybrid's attention)
LAYER_KINDS = {"M": "mamba", "*": "attention", "-": "mlp"}  # Megatron's hybrid notation
RECOMPUTE = ("none", "selective", "full")
ACTIVATIONS = ("gelu", "squared_relu")
# GPTConfig fields that decide the parameters' names, shapes or meaning: a checkpoint must agree on them (the
# vocabulary is checked by shape: it depends on the training text)
SHAPE_FIELDS = ("layers", "hidden", "heads", "seq_len", "positions", "tie_embeddings")
# The family fields: checked too where the checkpoint's config has them or the model departs from GPT's defaults,
# so that GPT checkpoints written before these fields existed keep loading (lm.train.shape_fields).
FAMILY_FIELDS = ("kv_heads", "ffn_hidden", "activation", "bias", "embedding_norm", "hybrid_override_pattern", "mamba")


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
    kv_heads: int | None = None  # g, grouped-query attention's key/value heads (None: = heads, multi-head attention)
    ffn_hidden: int | None = None  # f, the MLP's inner size (None: 4h)
    activation: str = "gelu"  # MLP non-linearity: "gelu" or "squared_relu" (relu(x)^2, Nemotron-4)
    bias: bool = True  # biases in the linear layers and LayerNorms (Nemotron-4 has none)
    embedding_norm: bool = False  # LayerNorm after the word embedding (BLOOM)
    # Layer i's kind, one character per layer ("M" Mamba-2, "*" attention, "-" MLP; Megatron's hybrid notation,
    # arXiv 2406.07887 section 3). None: every layer is attention + MLP (the transformer). With a pattern every norm
    # is an RMSNorm (as Mamba-2 and Mamba-2-Hybrid).
    hybrid_override_pattern: str | None = None
    mamba: Mamba2Config | None = None  # the Mamba-2 layers' mixer (d_model, layers, init, SP taken from this config)

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.kv_heads is not None and (self.kv_heads < 1 or self.heads % self.kv_heads):
            raise ValueError(f"heads {self.heads} is not divisible by kv_heads = {self.kv_heads}")
        if self.ffn_hidden is not None and self.ffn_hidden < 1:
            raise ValueError("ffn_hidden must be >= 1")
        if self.recompute not in RECOMPUTE:
            raise ValueError(f"recompute must be one of {RECOMPUTE}, got {self.recompute!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("vocab_size", "layers", "hidden", "heads", "seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not divisible by heads = {self.heads}")
        if self.hybrid_override_pattern is not None:
            bad = set(self.hybrid_override_pattern) - set(LAYER_KINDS)
            if bad or len(self.hybrid_override_pattern) != self.layers:
                raise ValueError(f"hybrid_override_pattern must be {self.layers} characters of {''.join(LAYER_KINDS)}, "
                                 f"got {self.hybrid_override_pattern!r}")
            if "M" in self.hybrid_override_pattern:
                self.mamba_config  # noqa: B018  (validates the derived mixer config)
        if self.positions == "rotary" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head size, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def groups(self) -> int:
        """g, the key/value heads (query groups): heads for multi-head attention."""
        return self.heads if self.kv_heads is None else self.kv_heads

    @property
    def mamba_config(self) -> Mamba2Config:
        """The Mamba-2 mixer's config: ``mamba`` (or its defaults) at this model's h, depth, init and SP."""
        return replace(self.mamba or Mamba2Config(), d_model=self.hidden, layers=self.layers, init_std=self.init_std,
                       sequence_parallel=self.sequence_parallel)

    def kind(self, index: int) -> str:
        """Layer ``index``'s kind: "transformer" (no pattern), else "mamba", "attention" or "mlp"."""
        p = self.hybrid_override_pattern
        return "transformer" if p is None else LAYER_KINDS[p[index]]

    @property
    def ffn(self) -> int:
        """f, the MLP's inner size."""
        return 4 * self.hidden if self.ffn_hidden is None else self.ffn_hidden


def gpt_tiny() -> GPTConfig:
    """A debug model that trains for a few steps on 2 CPU cores in seconds."""
    return GPTConfig(layers=2, hidden=64, heads=4, seq_len=64)


def gpt_small() -> GPTConfig:
    """A character LM of nanoGPT's Shakespeare size (about 10M parameters)."""
    return GPTConfig(layers=6, hidden=384, heads=8, seq_len=256, dropout=0.1)


def attention_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: torch.Tensor,
                   rotary: tuple[torch.Tensor, torch.Tensor] | None, dropout: float, training: bool,
                   group: Group, alibi: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(QK^T / sqrt(d) + bias + causal mask), dropout, times V: q (s, b, a/t, d), k, v (s, b, g/t, d)
    -> (s, b, a/t * d). ``alibi``: this rank's (a/t, s, s) score bias, or None.

    With grouped-query attention (g < a, Nemotron-4 2402.16819 section 2.2; Ainslie et al. 2305.13245) each of the
    g/t key/value heads serves a/g consecutive query heads. This is the part "selective" recomputation recomputes
    (2205.05198 section 5): it stores the softmax output (2as^2b bytes in 16-bit), its dropout mask (as^2b) and the
    dropout output (2as^2b) otherwise. The softmax dropout draws the mask of all a heads and keeps this rank's a/t
    (see sharded_dropout).
    """
    s, b, a, d = q.shape
    if rotary is not None:
        q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
    if k.shape[2] != a:  # grouped-query: repeat each key/value head for its a/g query heads
        k, v = (t.repeat_interleave(a // k.shape[2], dim=2) for t in (k, v))
    qb = q.reshape(s, b * a, d).transpose(0, 1)  # (b a, s, d), a view of the QKV output
    kb = k.reshape(s, b * a, d).transpose(0, 1)
    vb = v.reshape(s, b * a, d).transpose(0, 1)
    scores = torch.bmm(qb, kb.transpose(1, 2)) * (1.0 / math.sqrt(d))  # (b a, s, s)
    if alibi is not None:
        scores = (scores.view(b, a, s, s) + alibi).view(b * a, s, s)
    probs = torch.softmax(scores.masked_fill(causal, float("-inf")), dim=-1)
    probs = sharded_dropout(probs.view(b, a, s, s), dropout, training, dim=1, group=group).view(b * a, s, s)
    return torch.bmm(probs, vb).transpose(0, 1).reshape(s, b, a * d)


class ParallelAttention(nn.Module):
    """Causal self-attention with a/t query heads and g/t key/value heads per rank: (s, b, h) -> (s, b, h);
    (s/t, b, h) sequence-parallel."""

    def __init__(self, cfg: GPTConfig, group: Group, seed: int, prefix: str) -> None:
        super().__init__()
        self.cfg, self.group = cfg, group
        t = group_size(group)
        if cfg.heads % t or cfg.groups % t:
            raise ValueError(f"heads {cfg.heads} and kv_heads {cfg.groups} must be divisible by the tensor-parallel "
                             f"size tp = {t}")
        self.heads_local, self.groups_local = cfg.heads // t, cfg.groups // t
        sp, std, d = cfg.sequence_parallel, cfg.init_std, cfg.head_dim
        # Output rows ordered (group, [a/g queries | key | value], d), Megatron's GQA layout: a contiguous slice of
        # rows is a set of whole groups with their query heads. For g = a it is GPT's (head, q|k|v, d).
        self.qkv = ColumnParallelLinear(cfg.hidden, (cfg.heads + 2 * cfg.groups) * d, group, seed=seed,
                                        name=f"{prefix}.qkv", std=std, bias=cfg.bias, sequence_parallel=sp)
        self.proj = RowParallelLinear(cfg.hidden, cfg.hidden, group, seed=seed, name=f"{prefix}.proj",
                                      std=std / math.sqrt(2 * cfg.layers), bias=cfg.bias, sequence_parallel=sp)
        self.register_buffer("causal", torch.ones(cfg.seq_len, cfg.seq_len, dtype=torch.bool).triu(1),
                             persistent=False)
        if cfg.positions == "rotary":
            cos, sin = rotary_tables(cfg.seq_len, cfg.head_dim, cfg.rotary_base)
            self.register_buffer("cos", cos, persistent=False)
            self.register_buffer("sin", sin, persistent=False)
        if cfg.positions == "alibi":
            # Slopes of the GLOBAL head count; this rank keeps its heads' slice (BLOOM's TP layout).
            slopes = alibi_slopes(cfg.heads)[group_rank(group) * self.heads_local:][: self.heads_local]
            self.register_buffer("alibi", alibi_bias(slopes, cfg.seq_len), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)  # (s, b, (a + 2g) d / t): all-gathered along s first when sequence-parallel
        s, b = qkv.shape[:2]
        d, g, r = self.cfg.head_dim, self.groups_local, self.heads_local // self.groups_local
        q, k, v = qkv.view(s, b, g, (r + 2) * d).split([r * d, d, d], dim=-1)
        q = q.reshape(s, b, g * r, d)  # (s, b, a/t, d); k, v (s, b, g/t, d)
        rotary = (self.cos[:s], self.sin[:s]) if self.cfg.positions == "rotary" else None
        alibi = self.alibi[:, :s, :s] if self.cfg.positions == "alibi" else None
        causal, p, training, group = self.causal[:s, :s], self.cfg.dropout, self.training, self.group

        def core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return attention_core(q, k, v, causal, rotary, p, training, group, alibi)

        if self.cfg.recompute == "selective" and torch.is_grad_enabled():
            # Reentrant: the checkpoint saves q, k, v through save_for_backward (as Megatron's CheckpointFunction),
            # restores the RNG for the dropout mask, and works under DDP (each call checkpointed once).
            ctx = checkpoint(core, q, k, v, use_reentrant=True)
        else:
            ctx = core(q, k, v)
        return self.proj(ctx)  # (s, b, h): all-reduced; (s/t, b, h): reduce-scattered


class ParallelMLP(nn.Module):
    """h -> f (column-parallel, f/t per rank; f = 4h by default), GeLU or squared ReLU, f -> h (row-parallel)."""

    def __init__(self, cfg: GPTConfig, group: Group, seed: int, prefix: str) -> None:
        super().__init__()
        sp, std = cfg.sequence_parallel, cfg.init_std
        self.squared_relu = cfg.activation == "squared_relu"
        self.fc1 = ColumnParallelLinear(cfg.hidden, cfg.ffn, group, seed=seed, name=f"{prefix}.fc1", std=std,
                                        bias=cfg.bias, sequence_parallel=sp)
        self.fc2 = RowParallelLinear(cfg.ffn, cfg.hidden, group, seed=seed, name=f"{prefix}.fc2",
                                     std=std / math.sqrt(2 * cfg.layers), bias=cfg.bias, sequence_parallel=sp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc1(x)  # (s, b, f/t)
        y = torch.relu(y).square() if self.squared_relu else torch.nn.functional.gelu(y)
        return self.fc2(y)


def build_mixer(cfg: GPTConfig, group: Group, seed: int, index: int) -> nn.Module:
    """The sequence mixer of layer ``index``: (s, b, h) -> (s, b, h), (s/t, b, h) sequence-parallel.

    The one place a layer's mixer is chosen: attention for a transformer layer or a "*" of the hybrid pattern, the
    Mamba-2 mixer (lm.mamba2, arXiv 2405.21060 section 7) for an "M" (Mamba-2-Hybrid, arXiv 2406.07887).
    """
    if cfg.kind(index) == "mamba":
        return Mamba2Mixer(cfg.mamba_config, group, seed, f"layers.{index}.mixer")
    return ParallelAttention(cfg, group, seed, f"layers.{index}.attn")


def _layer_norm(cfg: GPTConfig, group: Group, sequence_parallel: bool | None = None) -> nn.Module:
    """LayerNorm over h (RMSNorm, no bias, in a hybrid-pattern model: Mamba-2 2405.21060 section 7); its parameters
    see a sequence shard under sequence parallelism (unless told otherwise), so they are marked for the SP gradient
    all-reduce."""
    ln: nn.Module = (nn.RMSNorm(cfg.hidden, eps=1e-5) if cfg.hybrid_override_pattern is not None
                     else nn.LayerNorm(cfg.hidden, bias=cfg.bias))
    sp = (cfg.sequence_parallel if sequence_parallel is None else sequence_parallel) and group_size(group) > 1
    for p in ln.parameters():
        mark(p, None, sp)
    return ln


class TransformerLayer(nn.Module):
    """Pre-LayerNorm block: x + drop(attn(ln1(x))), then + drop(mlp(ln2(x))). (s, b, h) or (s/t, b, h) in and out."""

    def __init__(self, cfg: GPTConfig, group: Group, seed: int, index: int) -> None:
        super().__init__()
        self.cfg, self.group = cfg, group
        self.ln1 = _layer_norm(cfg, group)
        self.attn = build_mixer(cfg, group, seed, index)
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


class HybridLayer(nn.Module):
    """One layer of a hybrid pattern (arXiv 2406.07887 section 3; Megatron's MambaStack): a pre-RMSNorm residual
    block of one kind, x + drop(mixer(norm(x))) for "M" (Mamba-2) and "*" (attention), x + drop(mlp(norm(x))) for
    "-". (s, b, h) or (s/t, b, h) in and out."""

    def __init__(self, cfg: GPTConfig, group: Group, seed: int, index: int) -> None:
        super().__init__()
        self.cfg, self.group = cfg, group
        self.norm = _layer_norm(cfg, group)
        kind = cfg.kind(index)
        # Parameter names as in lm.mamba2 / TransformerLayer: layers.i.mixer.*, layers.i.attn.*, layers.i.mlp.*
        self.name = {"mamba": "mixer", "attention": "attn", "mlp": "mlp"}[kind]
        self.add_module(self.name, ParallelMLP(cfg, group, seed, f"layers.{index}.mlp") if kind == "mlp"
                        else build_mixer(cfg, group, seed, index))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.recompute == "full" and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=True)  # keeps only x
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = 0 if self.cfg.sequence_parallel else None
        block = getattr(self, self.name)
        return x + sharded_dropout(block(self.norm(x)), self.cfg.dropout, self.training, dim, self.group)


def build_layer(cfg: GPTConfig, group: Group, seed: int, index: int) -> nn.Module:
    """Layer ``index``: a :class:`TransformerLayer` (no pattern) or a :class:`HybridLayer` of its pattern's kind."""
    cls = TransformerLayer if cfg.hybrid_override_pattern is None else HybridLayer
    return cls(cfg, group, seed, index)


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
        # On the replicated (s, b, h) embedding output, before any sequence split: not sequence-parallel.
        self.embedding_norm = _layer_norm(cfg, tp_group, sequence_parallel=False) if cfg.embedding_norm else None
        self.layers = nn.ModuleList(build_layer(cfg, tp_group, seed, i) for i in range(cfg.layers))
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
        if self.embedding_norm is not None:
            x = self.embedding_norm(x)
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
