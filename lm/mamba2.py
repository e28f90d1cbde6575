"""The Mamba-2 mixer (Dao and Gu, arXiv 2405.21060 sections 7-8) with Megatron tensor and sequence parallelism.

One mixer maps (s, b, h) -> (s, b, h) (section 7.1, figure 6, "parallel Mamba block"):

1. in-projection of the input to z (gate, d_inner), x (d_inner), B and C (G x N each) and dt (H), all at once;
2. a causal depthwise convolution (kernel d_conv) over x, B, C, then SiLU;
3. dt = softplus(dt + dt_bias), A = -exp(A_log) (one scalar per head), the SSD scan (lm.ssd), plus D x;
4. a gated RMSNorm, RMSNorm(y * SiLU(z)), normalised over each group's d_inner/G channels (section 7.2: per-group
   normalisation, so that a tensor-parallel rank needs no other rank's channels);
5. the out-projection back to h.

Tensor parallelism (section 8.1, and Megatron-core's MambaMixer): heads and groups are split over the t ranks of
the tensor-parallel group, each rank holding H/t heads and G/t groups (t must divide both). The in-projection is
column-parallel, the out-projection row-parallel (all-reduce; reduce-scatter along s under sequence parallelism);
everything between is local. The in-projection's output features are laid out group by group,
``[z_g | x_g | B_g | C_g | dt_g] for g in 0..G-1`` (z_g, x_g: the (H/G) headdim channels of group g's heads; dt_g its
H/G heads), and the convolution's channels likewise as ``[x_g | B_g | C_g]``: a contiguous 1/t of the rows is whole
groups, so the usual contiguous column split is exact and a checkpoint reshards along dim 0 for any t. (mamba_ssm
stores ``[z | x | B | C | dt]`` and ``[x | B | C]``; converting is a permutation of rows.)

Shapes: s sequence, b batch, h = d_model, E = d_inner = expand h, H = E / headdim heads, P = headdim, G = ngroups,
N = d_state, t = tensor-parallel size; local sizes carry "/t".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from deepspeech.parallel.mappings import divide, group_rank, group_size, reduce_from_tp
from deepspeech.parallel.tensor_parallel import (
    Group,
    RowParallelLinear,
    column_parallel_linear,
    init_generator,
    mark,
)
from lm.ssd import ssd_chunked, ssd_step


@dataclass(frozen=True)
class Mamba2Config:
    d_model: int = 64  # h
    d_state: int = 16  # N
    d_conv: int = 4  # causal convolution width
    expand: int = 2  # d_inner = expand * d_model
    headdim: int = 16  # P
    ngroups: int = 2  # G: B and C shared by H/G heads each
    chunk_size: int = 16  # l of the chunked scan (the published models use 128 or 256)
    layers: int = 2  # mixers in a stack (the published model's depth, for presets)
    in_proj_bias: bool = False
    out_proj_bias: bool = False
    conv_bias: bool = True
    norm_eps: float = 1e-5
    dt_min: float = 1e-3  # initial dt drawn log-uniform in [dt_min, dt_max] (Mamba's init)
    dt_max: float = 0.1
    dt_floor: float = 1e-4
    a_init_max: float = 16.0  # initial -A drawn uniform in [1, a_init_max]
    init_std: float = 0.02  # projections N(0, std); the out-projection std / sqrt(2 layers)
    sequence_parallel: bool = False  # the input/output are (s/t, b, h) sequence shards

    def __post_init__(self) -> None:
        for name in ("d_model", "d_state", "d_conv", "expand", "headdim", "ngroups", "chunk_size", "layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_inner % self.headdim:
            raise ValueError(f"d_inner {self.d_inner} is not divisible by headdim {self.headdim}")
        if self.nheads % self.ngroups:
            raise ValueError(f"nheads {self.nheads} is not divisible by ngroups {self.ngroups}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def conv_channels(self) -> int:
        """x, B and C: E + 2 G N."""
        return self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def in_proj_features(self) -> int:
        """z, x, B, C and dt: 2 E + 2 G N + H."""
        return 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.nheads


def mamba2_tiny() -> Mamba2Config:
    """A debug mixer of the tiny GPT's size (h = 64): 8 heads of 16 in 2 groups, N = 16; trains in seconds."""
    return Mamba2Config()


def mamba2_2p7b() -> Mamba2Config:
    """Mamba-2 2.7B (2405.21060 section 9.2 and its released checkpoint): 64 layers, h 2560, N 128, P 64 (80 heads),
    expand 2, one group, d_conv 4, chunk 256."""
    return Mamba2Config(d_model=2560, d_state=128, d_conv=4, expand=2, headdim=64, ngroups=1, chunk_size=256,
                        layers=64)


def mamba2_hybrid_8b() -> Mamba2Config:
    """The Mamba-2 layers of Mamba-2-Hybrid 8B (arXiv 2406.07887 section 3; Megatron-LM's defaults
    mamba_state_dim 128, mamba_head_dim 64, mamba_num_groups 8): h 4096, N 128, P 64 (128 heads), expand 2, 8 groups
    (so TP up to 8 keeps whole groups), d_conv 4, chunk 128 (MambaMixer's default); 24 of its 56 layers are Mamba-2
    (with 4 attention and 28 MLP layers)."""
    return Mamba2Config(d_model=4096, d_state=128, d_conv=4, expand=2, headdim=64, ngroups=8, chunk_size=128,
                        layers=24)


PRESETS: dict[str, Callable[[], Mamba2Config]] = {
    "mamba2-tiny": mamba2_tiny, "mamba2-2.7b": mamba2_2p7b, "mamba2-hybrid-8b": mamba2_hybrid_8b}


@dataclass(frozen=True)
class Mamba2Cache:
    """The state of incremental decoding on this rank: conv (b, (E + 2GN)/t, d_conv - 1), the last d_conv - 1
    convolution inputs; ssm (b, H/t, P, N), the SSM state."""

    conv: torch.Tensor
    ssm: torch.Tensor


def _grouped_rows(cfg: Mamba2Config, parts: list[int], full: list[torch.Tensor]) -> torch.Tensor:
    """Interleave per-part tensors (rows = part size x G, part-major) into the group-major layout of the module
    docstring: rows [part_0 of g | part_1 of g | ...] for each group g."""
    g = cfg.ngroups
    per_group = [f.view(g, n // g, *f.shape[1:]) for f, n in zip(full, parts, strict=True)]
    return torch.cat(per_group, dim=1).reshape(sum(parts), *full[0].shape[1:])


def _local(full: torch.Tensor, group: Group) -> torch.Tensor:
    """This rank's contiguous 1/t of dim 0."""
    size = divide(full.shape[0], group_size(group), "rows")
    return full.narrow(0, group_rank(group) * size, size).clone()


class Mamba2Mixer(nn.Module):
    """The Mamba-2 mixer: (s, b, h) -> (s, b, h), or (s/t, b, h) in and out under sequence parallelism.

    Built with the same ``seed`` and ``name``, the mixer on t ranks holds exactly the t row-slices (dim 0; dim 1 of
    the out-projection) of the one-rank mixer's parameters, each marked with its ``tp_dim``.
    """

    def __init__(self, cfg: Mamba2Config, group: Group = None, seed: int = 0, name: str = "mixer") -> None:
        super().__init__()
        self.cfg, self.group = cfg, group
        t = group_size(group)
        if cfg.nheads % t or cfg.ngroups % t:
            raise ValueError(f"nheads {cfg.nheads} and ngroups {cfg.ngroups} must be divisible by the "
                             f"tensor-parallel size tp = {t}")
        self.heads, self.groups = cfg.nheads // t, cfg.ngroups // t  # local H/t, G/t
        E, G, N, H = cfg.d_inner, cfg.ngroups, cfg.d_state, cfg.nheads
        parts = [E, E, G * N, G * N, H]  # z, x, B, C, dt
        w = [torch.empty(n, cfg.d_model).normal_(0.0, cfg.init_std, generator=init_generator(seed, f"{name}.in.{k}"))
             for n, k in zip(parts, "zxBCd", strict=True)]
        self.in_proj = mark(nn.Parameter(_local(_grouped_rows(cfg, parts, w), group)), 0)
        self.in_proj_bias = (mark(nn.Parameter(torch.zeros(cfg.in_proj_features // t)), 0)
                             if cfg.in_proj_bias else None)
        gen = init_generator(seed, f"{name}.conv")
        bound = 1.0 / math.sqrt(cfg.d_conv)  # nn.Conv1d's default for a depthwise kernel
        conv_w = torch.empty(cfg.conv_channels, cfg.d_conv).uniform_(-bound, bound, generator=gen)
        conv_b = torch.empty(cfg.conv_channels).uniform_(-bound, bound, generator=gen)
        conv_parts = [E, G * N, G * N]
        self.conv_weight = mark(nn.Parameter(_local(_grouped_rows(cfg, conv_parts, list(conv_w.split(conv_parts))),
                                                    group)), 0)
        self.conv_bias = (mark(nn.Parameter(_local(_grouped_rows(cfg, conv_parts, list(conv_b.split(conv_parts))),
                                                   group)), 0) if cfg.conv_bias else None)
        gen = init_generator(seed, f"{name}.ssm")
        dt = torch.exp(torch.rand(H, generator=gen) * (math.log(cfg.dt_max) - math.log(cfg.dt_min))
                       + math.log(cfg.dt_min)).clamp(min=cfg.dt_floor)
        self.dt_bias = mark(nn.Parameter(_local(dt + torch.log(-torch.expm1(-dt)), group)), 0)  # softplus^-1(dt)
        a = torch.empty(H).uniform_(1.0, cfg.a_init_max, generator=gen)
        self.A_log = mark(nn.Parameter(_local(torch.log(a), group)), 0)
        self.D = mark(nn.Parameter(torch.ones(H // t)), 0)
        self.norm_weight = mark(nn.Parameter(torch.ones(E // t)), 0)
        self.out_proj = RowParallelLinear(E, cfg.d_model, group, seed=seed, name=f"{name}.out",
                                          std=cfg.init_std / math.sqrt(2 * cfg.layers), bias=cfg.out_proj_bias,
                                          sequence_parallel=cfg.sequence_parallel)

    # --- the pieces, shared by forward and step ---------------------------------------------------------------------

    def _split(self, zxbcdt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(..., in_proj_features/t) -> z (..., E/t), xBC (..., (E + 2GN)/t) in the conv layout, dt (..., H/t)."""
        cfg, g = self.cfg, self.groups
        r, n = cfg.nheads // cfg.ngroups, cfg.d_state
        u = zxbcdt.view(*zxbcdt.shape[:-1], g, -1)
        z, xbc, dt = u.split([r * cfg.headdim, r * cfg.headdim + 2 * n, r], dim=-1)
        # z contiguous: SiLU saves it, and a view would keep the whole projection output alive (one group)
        return (z.reshape(*z.shape[:-2], -1).contiguous(), xbc.reshape(*xbc.shape[:-2], -1),
                dt.reshape(*dt.shape[:-2], -1))

    def _ssm_inputs(self, xbc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Convolved xBC (..., (E + 2GN)/t) -> x (..., H/t, P), B and C (..., G/t, N)."""
        cfg = self.cfg
        r, p, n = cfg.nheads // cfg.ngroups, cfg.headdim, cfg.d_state
        u = xbc.view(*xbc.shape[:-1], self.groups, r * p + 2 * n)
        x, B, C = u.split([r * p, n, n], dim=-1)
        return x.reshape(*x.shape[:-2], self.heads, p).contiguous(), B, C  # a copy for any G/t: see above

    def _gated_out(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """RMSNorm(y * SiLU(z)) over each group's E/G channels: y, z (..., E/t) -> (..., E/t)."""
        g = (y * F.silu(z)).view(*y.shape[:-1], self.groups, -1)
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.cfg.norm_eps)
        return g.reshape(y.shape) * self.norm_weight

    # --- whole sequences ---------------------------------------------------------------------------------------------

    def prefill(self, u: torch.Tensor, cache: Mamba2Cache | None = None) -> tuple[torch.Tensor, Mamba2Cache]:
        """u (s, b, h) (or (s/t, b, h) sequence-parallel) -> the output of the same shape and the cache after the
        last token, continuing from ``cache`` when given (otherwise from zero states)."""
        cfg = self.cfg
        zxbcdt = column_parallel_linear(u, self.in_proj, self.in_proj_bias, self.group, cfg.sequence_parallel)
        z, xbc, dt = self._split(zxbcdt)  # (s, b, ...) each
        s, b = xbc.shape[:2]
        k = cfg.d_conv
        past = cache.conv if cache is not None else xbc.new_zeros(b, xbc.shape[-1], k - 1)
        padded = torch.cat([past, xbc.permute(1, 2, 0)], dim=-1)  # (b, C/t, k - 1 + s)
        conv = F.conv1d(padded, self.conv_weight.unsqueeze(1), self.conv_bias, groups=padded.shape[1])
        x, B, C = self._ssm_inputs(F.silu(conv).permute(2, 0, 1))  # (s, b, H/t, P), (s, b, G/t, N) x 2
        dt = F.softplus(dt + self.dt_bias)  # (s, b, H/t)
        A = -torch.exp(self.A_log)
        y, state = ssd_chunked(x, dt, A, B, C, cfg.chunk_size, cache.ssm if cache is not None else None)
        y = y + x * self.D.unsqueeze(-1)
        out = self.out_proj(self._gated_out(y.reshape(s, b, -1), z))
        return out, Mamba2Cache(conv=padded[..., padded.shape[-1] - (k - 1):], ssm=state)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """(s, b, h) -> (s, b, h); (s/t, b, h) -> (s/t, b, h) under sequence parallelism."""
        return self.prefill(u)[0]

    # --- one token ---------------------------------------------------------------------------------------------------

    def empty_cache(self, batch: int, dtype: torch.dtype = torch.float32,
                    device: torch.device | None = None) -> Mamba2Cache:
        cfg, t = self.cfg, group_size(self.group)
        return Mamba2Cache(conv=torch.zeros(batch, cfg.conv_channels // t, cfg.d_conv - 1, dtype=dtype, device=device),
                           ssm=torch.zeros(batch, self.heads, cfg.headdim, cfg.d_state, dtype=dtype, device=device))

    def step(self, u: torch.Tensor, cache: Mamba2Cache) -> tuple[torch.Tensor, Mamba2Cache]:
        """One token: u (b, h) (replicated; no sequence split) -> (b, h) and the next cache. O(1) in the position."""
        zxbcdt = column_parallel_linear(u, self.in_proj, self.in_proj_bias, self.group)
        z, xbc, dt = self._split(zxbcdt)  # (b, ...) each
        window = torch.cat([cache.conv, xbc.unsqueeze(-1)], dim=-1)  # (b, C/t, d_conv)
        conv = (window * self.conv_weight).sum(-1)
        if self.conv_bias is not None:
            conv = conv + self.conv_bias
        x, B, C = self._ssm_inputs(F.silu(conv))
        dt = F.softplus(dt + self.dt_bias)
        y, state = ssd_step(x, dt, -torch.exp(self.A_log), B, C, cache.ssm)
        y = y + x * self.D.unsqueeze(-1)
        gated = self._gated_out(y.reshape(y.shape[0], -1), z)
        out = reduce_from_tp(F.linear(gated, self.out_proj.weight), self.group)
        if self.out_proj.bias is not None:
            out = out + self.out_proj.bias
        return out, Mamba2Cache(conv=window[..., 1:], ssm=state)


def activation_bytes(cfg: Mamba2Config, s: int, b: int, t: int = 1, element_bytes: int = 4) -> int:
    """Bytes one training-mode mixer saves for backward (its parameters excluded), as implemented here.

    s sequence, b micro-batch, t tensor-parallel size (with ``cfg.sequence_parallel`` the saved input is the s/t
    shard), ``element_bytes`` of the activation dtype; the two pairs of bool masks of the segment sums count 1 byte
    an element. With E' = E/t, H' = H/t, G' = G/t, C' = (E + 2GN)/t, s' = s rounded up to the chunk l, c = s'/l:

    * projections and convolution: input s b h (s/t b h under SP), padded conv input b C' (s + d_conv - 1), conv
      output b C' s, dt + dt_bias s b H', A 2H';
    * the scan (lm.ssd): x s b E' (and, padded, s' b E'), dt s' b H', decays 2 b H' s', C B^T b G' s' l and the
      decay mask b H' s' l stored twice (its exponential and the product), copies of B and C 4 s' b G' N, x dt four
      times s' b E', chunk states (2c + 1) b H' P N and their decays b H' (c + 1)^2;
    * gated RMSNorm and out-projection: z, SiLU(z), y, y SiLU(z), the normalised and the scaled output 6 s b E',
      1/rms s b G'.

    The terms that grow with l (C B^T and the decay mask: (2H' + G') b s' l) are the "attention-like" part; at the
    published shapes (l = 128..256, N = 128) they and the chunk states are the bulk.

    Exact (tests/test_mamba2.py, saved-tensor hooks) when b G/t >= 2 and s > l. With b G/t = 1 or a single chunk,
    torch.einsum finds some operands (B, C, x dt, the chunk states) already in its batched-matmul layout and saves
    views of storages counted elsewhere, or copies of other extents: within 2.2% in the shapes tested (2.2% under at
    s = 1024, b = 1, G/t = 1, l = 128, N = 128, P = 64); a single chunk much longer than the sequence (s = 7,
    l = 64) is over-counted by 10% (not a training shape).
    """
    E, H, G, C = cfg.d_inner // t, cfg.nheads // t, cfg.ngroups // t, cfg.conv_channels // t
    N, P, l, k, h = cfg.d_state, cfg.headdim, cfg.chunk_size, cfg.d_conv, cfg.d_model
    sp = -(-s // l) * l
    c = sp // l
    s_in = s // t if cfg.sequence_parallel and t > 1 else s
    proj = s_in * b * h + b * C * (s + k - 1) + b * C * s + s * b * H + 2 * H
    scan = (s * b * E + (sp * b * E if sp != s else 0) + sp * b * H + 2 * b * H * sp
            + (2 * H + G) * b * sp * l + 4 * sp * b * G * N + 4 * sp * b * E
            + (2 * c + 1) * b * H * P * N + b * H * (c + 1) ** 2)
    out = 6 * s * b * E + s * b * G
    masks = 2 * l * l + 2 * (c + 1) ** 2
    return element_bytes * (proj + scan + out) + masks
