"""Position encodings of lm.gpt's attention: rotary (RoPE, Su et al. arXiv 2104.09864; GPT-NeoX layout) and ALiBi
(Press et al. arXiv 2108.12409 section 3; BLOOM 2211.05100 section 3.2.2)."""

from __future__ import annotations

import math

import torch


def rotary_tables(seq_len: int, dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of RoPE angles, each (s, 1, 1, d): position p, pair i rotates by p * base^(-2i/d)."""
    inv = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv).repeat(1, 2)  # (s, d), halves repeated
    return angles.cos().float()[:, None, None, :], angles.sin().float()[:, None, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+d/2}) of x: (s, b, a, d) by the angles of its positions (GPT-NeoX layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos.to(x.dtype) + torch.cat((-x2, x1), dim=-1) * sin.to(x.dtype)


def alibi_slopes(heads: int) -> torch.Tensor:
    """ALiBi's per-head slopes (a,) (Press et al., arXiv 2108.12409 section 3; BLOOM 2211.05100 section 3.2.2).

    For a power of two n: the geometric sequence starting at 2^(-8/n) with that ratio. Otherwise, with m the largest
    power of two below n: the m slopes of m heads, then every other slope of 2m heads, n - m of them.
    """
    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    m = 2 ** math.floor(math.log2(heads))
    slopes = power_of_two(m) + (power_of_two(2 * m)[0::2][: heads - m] if m < heads else [])
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(slopes: torch.Tensor, seq_len: int) -> torch.Tensor:
    """The additive score bias (a, s, s): -slope * (i - j) for query i and key j (future keys are masked anyway)."""
    pos = torch.arange(seq_len, dtype=torch.float32)
    return -slopes[:, None, None] * (pos[:, None] - pos[None, :]).clamp(min=0)
