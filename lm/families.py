"""The documented language-model families as configurations of lm.gpt's one decoder, their presets, and the
parameter and memory accounting of a tensor x pipeline layout.

* BLOOM (arXiv 2211.05100, section 3.2 and table 3): ALiBi, embedding LayerNorm, GeLU, tied embeddings.
* Nemotron-4 15B (arXiv 2402.16819, section 2.2 and table 1): RoPE, GQA (8 KV heads), squared ReLU, no biases,
  untied embeddings.
* Mamba-2 (arXiv 2405.21060 sections 7-9): every layer a pre-RMSNorm Mamba-2 mixer (lm.mamba2), no positions,
  tied embeddings (pattern "M" * layers).
* Mamba-2-Hybrid (arXiv 2406.07887 section 3): 43% Mamba-2, 7% attention (GQA, no positions) and 50% squared-ReLU
  MLP layers, attention spread evenly over the depth (:func:`hybrid_pattern`); untied embeddings, no biases.
* MT-NLG 530B (arXiv 2201.11990, sections 2-3): GPT-3's architecture at 105 layers x 20480, trained with 8-way
  tensor x 35-way pipeline x 8-way data parallelism on 2240 A100s. Counted, not trained.

Every family has a tiny preset (trains here in seconds), a ~10M-parameter one of a shared shape (the
bits-per-character table, bench/lm_bpc.py) and its published full-size preset. The full-size presets
fix the architecture and shape only (parameters, memory); initialisation and training hyperparameters stay the
config's defaults, not the papers' recipes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from deepspeech.parallel.mappings import divide
from deepspeech.parallel.pipeline import chunk_layers
from lm.gpt import GPTConfig, gpt_small, gpt_tiny
from lm.mamba2 import Mamba2Config, mamba2_2p7b, mamba2_hybrid_8b

# Mixed-precision Adam, per parameter (Megatron-LM, arXiv 2104.04473 section 5.8 / ZeRO 1910.02054 section 3.1):
# 16-bit weights (2) + 16-bit gradients (2) + fp32 master weights (4) + Adam first and second moments (4 + 4).
BYTES_PER_PARAM = 16


def bloom_tiny() -> GPTConfig:
    """BLOOM's architecture at debug size (trains on 2 CPU cores in seconds)."""
    return GPTConfig(layers=2, hidden=64, heads=4, seq_len=64, positions="alibi", embedding_norm=True)


def bloom_176b() -> GPTConfig:
    """BLOOM 176B (2211.05100 table 3): 70 layers, h 14336, 112 heads, s 2048, vocabulary 250880."""
    return GPTConfig(vocab_size=250880, layers=70, hidden=14336, heads=112, seq_len=2048, positions="alibi",
                     embedding_norm=True)


def nemotron4_tiny() -> GPTConfig:
    """Nemotron-4's architecture at debug size: 4 query heads in 2 KV groups (TP=2 keeps one group per rank)."""
    return GPTConfig(layers=2, hidden=64, heads=4, kv_heads=2, seq_len=64, positions="rotary",
                     activation="squared_relu", bias=False, tie_embeddings=False)


def nemotron4_15b() -> GPTConfig:
    """Nemotron-4 15B (2402.16819 table 1): 32 layers, h 6144, 48 heads, 8 KV heads, f 24576, s 4096, v 256000."""
    return GPTConfig(vocab_size=256000, layers=32, hidden=6144, heads=48, kv_heads=8, ffn_hidden=24576,
                     seq_len=4096, positions="rotary", activation="squared_relu", bias=False, tie_embeddings=False)


def mtnlg_530b() -> GPTConfig:
    """MT-NLG 530B (2201.11990 section 3.1): 105 layers, h 20480, 128 heads, s 2048, GPT-2's BPE vocabulary padded to
    51200 (a multiple of 8 * 128, Megatron's padding for t = 8). Its layout: :data:`MTNLG_LAYOUT`."""
    return GPTConfig(vocab_size=51200, layers=105, hidden=20480, heads=128, seq_len=2048)


def hybrid_pattern(mamba: int, attention: int, mlp: int) -> str:
    """A layer pattern of those counts with the attention layers spread evenly: the depth cut into ``attention``
    equal segments, each with its attention layer in the middle; the rest alternates Mamba-2 and MLP layers (as
    Megatron's allocation), Mamba-2 first, the surplus kind last."""
    layers = mamba + attention + mlp
    kinds = [""] * layers
    for k in range(attention):
        kinds[(2 * k + 1) * layers // (2 * attention)] = "*"
    rest = iter(["M", "-"] * min(mamba, mlp) + ["M"] * (mamba - mlp) + ["-"] * (mlp - mamba))
    return "".join(k or next(rest) for k in kinds)


def mamba2_tiny() -> GPTConfig:
    """Mamba-2 at the tiny GPT's size: 4 Mamba-2 layers, h 64 (8 heads of 16 in 2 groups, N 16, chunk 16)."""
    return GPTConfig(layers=4, hidden=64, heads=4, seq_len=64, positions="none", bias=False,
                     hybrid_override_pattern="MMMM", mamba=Mamba2Config())


def mamba2_2p7b_lm() -> GPTConfig:
    """Mamba-2 2.7B (2405.21060 section 9.2; the released state-spaces/mamba2-2.7b): 64 layers, h 2560, the mixer of
    lm.mamba2.mamba2_2p7b, GPT-NeoX's vocabulary 50277 padded to 50288 (a multiple of 16), tied embeddings."""
    return GPTConfig(vocab_size=50288, layers=64, hidden=2560, heads=4, seq_len=2048, positions="none", bias=False,
                     hybrid_override_pattern="M" * 64, mamba=mamba2_2p7b())


def mamba2_hybrid_tiny() -> GPTConfig:
    """Mamba-2-Hybrid at debug size: 8 layers, 3 Mamba-2, 1 attention, 4 MLP, "M-M-*M--" (hybrid_pattern(3, 1, 4)),
    h 64, 4 query heads in 2 KV groups, squared ReLU, no positions, untied embeddings."""
    return GPTConfig(layers=8, hidden=64, heads=4, kv_heads=2, seq_len=64, positions="none", bias=False,
                     activation="squared_relu", tie_embeddings=False,
                     hybrid_override_pattern=hybrid_pattern(3, 1, 4), mamba=Mamba2Config())


def mamba2_hybrid_8b_lm() -> GPTConfig:
    """Mamba-2-Hybrid 8B (2406.07887 section 3 and table 1; Megatron-LM's examples/mamba): 56 layers = 24 Mamba-2 +
    4 attention + 28 MLP, h 4096, 32 heads with 8 KV groups, f 16384 squared ReLU, no positions, no biases,
    untied embeddings, s 4096, the 256000-token vocabulary. The pattern is :func:`hybrid_pattern`'s (attention
    evenly spread), not a copy of the released checkpoint's."""
    return GPTConfig(vocab_size=256000, layers=56, hidden=4096, heads=32, kv_heads=8, ffn_hidden=16384,
                     seq_len=4096, positions="none", activation="squared_relu", bias=False, tie_embeddings=False,
                     hybrid_override_pattern=hybrid_pattern(24, 4, 28), mamba=mamba2_hybrid_8b())


# ~10M-parameter character LMs, one per family, for the bits-per-character table (bench/lm_bpc.py) and N-best
# rescoring: the same body (h 384, 6 heads of 64, s 256) for every family, the depth and MLP width chosen so each is
# within 5% of 10M parameters at the English character vocabulary (29 symbols + the unknown one, padded to 32).
# A larger vocabulary (Mandarin: thousands of characters) adds v*h (tied) or 2*v*h (untied) to the same body.
SEQ_10M = 256
HIDDEN_10M = 384
MAMBA_10M = Mamba2Config(d_state=128, headdim=64, ngroups=1, chunk_size=64)  # 2405.21060 section 9: N 128, P 64


def gpt_10m() -> GPTConfig:
    """GPT at ~10M: 6 layers x h 384, f 1408 (not 4h: 4h gives 10.76M), learned positions, tied; 10.17M at v 32."""
    return GPTConfig(layers=6, hidden=HIDDEN_10M, heads=6, ffn_hidden=1408, seq_len=SEQ_10M)


def bloom_10m() -> GPTConfig:
    """BLOOM's architecture (2211.05100 section 3.2) at gpt_10m's shape: ALiBi, embedding LayerNorm; 10.07M at v 32."""
    return replace(gpt_10m(), positions="alibi", embedding_norm=True)


def nemotron4_10m() -> GPTConfig:
    """Nemotron-4's architecture (2402.16819 section 2.2) at ~10M: 6 layers x h 384, 6 query heads in 2 KV groups,
    f 1600 squared ReLU, RoPE, no biases, untied; 9.76M at v 32."""
    return GPTConfig(layers=6, hidden=HIDDEN_10M, heads=6, kv_heads=2, ffn_hidden=1600, seq_len=SEQ_10M,
                     positions="rotary", activation="squared_relu", bias=False, tie_embeddings=False)


def mamba2_10m() -> GPTConfig:
    """Mamba-2 (2405.21060 sections 7-9) at ~10M: 10 Mamba-2 layers x h 384 (12 heads of 64, one group, N 128,
    chunk 64), tied; 9.95M at v 32."""
    return GPTConfig(layers=10, hidden=HIDDEN_10M, heads=6, seq_len=SEQ_10M, positions="none", bias=False,
                     hybrid_override_pattern="M" * 10, mamba=MAMBA_10M)


def mamba2_hybrid_10m() -> GPTConfig:
    """Mamba-2-Hybrid (2406.07887 section 3) at ~10M: 10 layers = 4 Mamba-2 + 1 attention + 5 MLP ("M-M-M*-M--",
    40/10/50% against the paper's 43/7/50), h 384, 6 query heads in 2 KV groups, f 4h squared ReLU, no positions,
    untied; 10.29M at v 32."""
    return GPTConfig(layers=10, hidden=HIDDEN_10M, heads=6, kv_heads=2, seq_len=SEQ_10M, positions="none",
                     bias=False, activation="squared_relu", tie_embeddings=False,
                     hybrid_override_pattern=hybrid_pattern(4, 1, 5), mamba=MAMBA_10M)


PRESETS: dict[str, Callable[[], GPTConfig]] = {
    "gpt-tiny": gpt_tiny, "gpt-small": gpt_small,
    "bloom-tiny": bloom_tiny, "bloom-176b": bloom_176b,
    "nemotron4-tiny": nemotron4_tiny, "nemotron4-15b": nemotron4_15b,
    "mtnlg-530b": mtnlg_530b,
    "mamba2-tiny": mamba2_tiny, "mamba2-2.7b": mamba2_2p7b_lm,
    "mamba2-hybrid-tiny": mamba2_hybrid_tiny, "mamba2-hybrid-8b": mamba2_hybrid_8b_lm,
    "gpt-10m": gpt_10m, "bloom-10m": bloom_10m, "nemotron4-10m": nemotron4_10m, "mamba2-10m": mamba2_10m,
    "mamba2-hybrid-10m": mamba2_hybrid_10m,
}
# The presets that train on these machines (the full-size ones are for counting and for GPU clusters).
TINY_PRESETS = ("gpt-tiny", "gpt-small", "bloom-tiny", "nemotron4-tiny", "mamba2-tiny", "mamba2-hybrid-tiny",
                "gpt-10m", "bloom-10m", "nemotron4-10m", "mamba2-10m", "mamba2-hybrid-10m")
# The ~10M presets of the bits-per-character table, one per family (bench/lm_bpc.py).
PRESETS_10M = ("gpt-10m", "bloom-10m", "nemotron4-10m", "mamba2-10m", "mamba2-hybrid-10m")


@dataclass(frozen=True)
class Layout:
    """A published training layout: tp * pp * dp GPUs."""

    tp: int
    pp: int
    dp: int

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp


MTNLG_LAYOUT = Layout(tp=8, pp=35, dp=8)  # 2201.11990 section 2.3: 280 DGX A100 nodes, 2240 GPUs


def _layer_split(cfg: GPTConfig, index: int) -> tuple[int, int]:
    """Layer ``index``'s parameters as (split over tp, replicated on every tensor-parallel rank).

    Attention h(a + 2g)d + h^2, MLP 2hf (column-parallel biases split, row-parallel ones replicated); a norm h(1 + b)
    (LayerNorm) or h (RMSNorm, hybrid patterns). Mamba-2 (lm.mamba2): in-projection h(2E + 2GN + H), convolution
    (E + 2GN)(d_conv + 1), dt_bias, A_log and D (3H), the gated norm E, out-projection Eh, all split but the
    out-projection bias.
    """
    h, d, f, b = cfg.hidden, cfg.head_dim, cfg.ffn, int(cfg.bias)
    qkv = (cfg.heads + 2 * cfg.groups) * d
    attention = (h * qkv + h * h + b * qkv, b * h)
    mlp = (2 * h * f + b * f, b * h)
    kind = cfg.kind(index)
    if kind == "transformer":
        return attention[0] + mlp[0], attention[1] + mlp[1] + 2 * h * (1 + b)
    if kind == "attention":
        return attention[0], attention[1] + h
    if kind == "mlp":
        return mlp[0], mlp[1] + h
    m = cfg.mamba_config
    F = m.in_proj_features
    mixer = (h * F + int(m.in_proj_bias) * F + m.conv_channels * (m.d_conv + int(m.conv_bias)) + 3 * m.nheads
             + m.d_inner + m.d_inner * h)
    return mixer, int(m.out_proj_bias) * h + h


def layer_parameters(cfg: GPTConfig, index: int = 0) -> int:
    """Parameters of layer ``index`` (any layer of a transformer): attention h(a + 2g)d + h^2, MLP 2hf, plus biases
    and norms; a hybrid pattern's layer of its kind (:func:`_layer_split`).

    With g = a, f = 4h and biases a transformer layer is GPT's 12h^2 + 13h (2104.04473 section 5.1).
    """
    return sum(_layer_split(cfg, index))


def _norm_parameters(cfg: GPTConfig) -> int:
    """One LayerNorm h(1 + b), or RMSNorm h in a hybrid-pattern model."""
    return cfg.hidden * (1 + int(cfg.bias)) if cfg.hybrid_override_pattern is None else cfg.hidden


def embedding_parameters(cfg: GPTConfig) -> int:
    """Word embedding vh, learned positions sh, embedding LayerNorm."""
    h = cfg.hidden
    return (cfg.vocab_size * h + (cfg.seq_len * h if cfg.positions == "learned" else 0)
            + (_norm_parameters(cfg) if cfg.embedding_norm else 0))


def head_parameters(cfg: GPTConfig) -> int:
    """Final LayerNorm and, untied, the output layer vh."""
    h = cfg.hidden
    return _norm_parameters(cfg) + (0 if cfg.tie_embeddings else cfg.vocab_size * h)


def parameter_count(cfg: GPTConfig) -> int:
    """Parameters of the whole model (the tied output layer counted once)."""
    return (embedding_parameters(cfg) + sum(layer_parameters(cfg, i) for i in range(cfg.layers))
            + head_parameters(cfg))


def _split(n_sharded: int, n_replicated: int, tp: int) -> int:
    return n_sharded // tp + n_replicated


def stage_parameters(cfg: GPTConfig, tp: int, pp: int) -> list[int]:
    """Parameters held by one GPU of each of the pp stages (tensor-parallel rank 0; all ranks of a stage hold the
    same count up to the replicated LayerNorms), layers split evenly.

    Matrices, the vocabulary and sharded biases divide by tp; LayerNorms, the row-parallel biases and the learned
    position table are replicated. With tied embeddings and pp > 1 the last stage holds a copy of the word embedding
    (Megatron's embedding group, 2104.04473 section 4).
    """
    h = cfg.hidden
    pattern = cfg.hybrid_override_pattern
    if pattern is None or "*" in pattern:
        divide(cfg.heads, tp, "heads over tp")
        divide(cfg.groups, tp, "kv_heads over tp")
    if pattern is not None and "M" in pattern:
        divide(cfg.mamba_config.ngroups, tp, "Mamba-2 groups over tp")
    vocab = cfg.vocab_size * h // tp
    first = vocab + (cfg.seq_len * h if cfg.positions == "learned" else 0) + (
        _norm_parameters(cfg) if cfg.embedding_norm else 0)
    last = _norm_parameters(cfg) + (vocab if not cfg.tie_embeddings or pp > 1 else 0)
    stages = [sum(_split(*_layer_split(cfg, i), tp) for i in chunk_layers(cfg.layers, pp, 1, r, 0))
              for r in range(pp)]
    stages[0] += first
    stages[-1] += last
    return stages


@dataclass(frozen=True)
class MemoryReport:
    """Model-state memory of a layout (weights, gradients and Adam states; activations not included)."""

    parameters: int  # whole model
    per_gpu_max: int  # parameters on the fullest GPU (a first or last stage)
    per_gpu_min: int
    bytes_per_param: int
    bytes_per_gpu_max: int  # per_gpu_max * bytes_per_param
    total_bytes: int  # parameters * bytes_per_param (the unsharded model's states)


def model_state_memory(cfg: GPTConfig, tp: int, pp: int, bytes_per_param: int = BYTES_PER_PARAM) -> MemoryReport:
    """Weights + gradients + Adam states per GPU: bytes = parameters on the GPU * bytes_per_param (16 for
    mixed-precision Adam, :data:`BYTES_PER_PARAM`). Data parallelism replicates them (no ZeRO)."""
    stages = stage_parameters(cfg, tp, pp)
    total = parameter_count(cfg)
    return MemoryReport(total, max(stages), min(stages), bytes_per_param, max(stages) * bytes_per_param,
                        total * bytes_per_param)


__all__ = ["BYTES_PER_PARAM", "MTNLG_LAYOUT", "PRESETS", "PRESETS_10M", "TINY_PRESETS", "Layout", "MemoryReport",
           "bloom_10m", "bloom_176b", "bloom_tiny", "gpt_10m", "hybrid_pattern", "mamba2_10m", "mamba2_2p7b_lm",
           "mamba2_hybrid_10m", "mamba2_hybrid_8b_lm", "mamba2_hybrid_tiny", "mamba2_tiny", "model_state_memory",
           "mtnlg_530b", "nemotron4_10m", "nemotron4_15b", "nemotron4_tiny", "parameter_count", "stage_parameters"]
