"""The state-space dual (SSD) scan of Mamba-2 (Dao and Gu, arXiv 2405.21060): chunked, sequential and one step.

The selective SSM with a scalar decay per head (section 3, "SSM with scalar-times-identity structure") is, per head,

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T          h: (headdim, d_state)
    y_t = h_t C_t                                       y: (headdim,)

:func:`ssd_sequential` runs this recurrence token by token (the reference); :func:`ssd_step` is one token of it
(incremental scoring); :func:`ssd_chunked` is the SSD algorithm of section 6 (listing 1): split the sequence into
chunks of length l, compute (1) the within-chunk outputs in the quadratic, attention-like form
(C B^T masked by the segment sums of A dt, times x dt), (2) each chunk's final state, (3) the states passed between
chunks (the same 1-semiseparable form, over chunks), and (4) each chunk's output due to the state entering it.

Layout: Megatron's sequence-first (s, b, ...). x (s, b, H, P), dt (s, b, H) (after softplus), A (H,) (negative),
B and C (s, b, G, N), states (b, H, P, N): H heads of size P = headdim, G groups of B/C shared by H/G consecutive
heads, N = d_state. The D skip connection is the caller's (it is not part of the scan).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segsum(a: torch.Tensor) -> torch.Tensor:
    """Segment sums (..., T) -> (..., T, T): out[i, j] = a[j+1] + ... + a[i] for i >= j, -inf above the diagonal.

    Computed as a masked cumulative sum rather than a difference of cumulative sums, which loses the small sums to
    cancellation (2405.21060 listing 1 uses the same stable form).
    """
    t = a.shape[-1]
    strict = torch.ones(t, t, dtype=torch.bool, device=a.device).tril(-1)
    x = a.unsqueeze(-1).expand(*a.shape, t).masked_fill(~strict, 0.0)  # x[i, j] = a[i] for i > j
    x = x.cumsum(dim=-2)
    return x.masked_fill(~strict.logical_or(torch.eye(t, dtype=torch.bool, device=a.device)), float("-inf"))


def _heads_as_groups(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(..., H, rest...) with the head dimension at index 2 viewed as (..., G, H/G, rest...)."""
    return x.view(*x.shape[:2], groups, x.shape[2] // groups, *x.shape[3:])


def ssd_chunked(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                chunk_size: int, initial_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked SSD scan (2405.21060 section 6): y (s, b, H, P) and the final state (b, H, P, N).

    A length that is not a multiple of ``chunk_size`` is padded at the end with dt = 0, which neither decays nor
    feeds the state, so the final state is exact. ``initial_state`` (b, H, P, N) continues an earlier scan.
    Work is O(s l) per head within chunks plus O((s/l)^2) between them; memory is O(s l) per head.
    """
    s, b, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    l = chunk_size
    pad = (-s) % l
    if pad:  # pad the sequence dimension (dim 0) at its end
        x, dt, B, C = (F.pad(v, (0, 0) * (v.dim() - 1) + (0, pad)) for v in (x, dt, B, C))
    c = (s + pad) // l
    xg = _heads_as_groups(x, G).view(c, l, b, G, H // G, P)  # (c, l, b, g, r, p)
    dtg = _heads_as_groups(dt, G).view(c, l, b, G, H // G)  # (c, l, b, g, r)
    Bc, Cc = B.view(c, l, b, G, N), C.view(c, l, b, G, N)
    xdt = xg * dtg.unsqueeze(-1)  # dt folded into the input, as in listing 1
    a = (dtg * A.view(G, H // G)).permute(2, 3, 4, 0, 1)  # A dt: (b, g, r, c, l)
    a_cum = a.cumsum(dim=-1)

    # (1) within chunks: y[l] = sum_{m <= l} C_l . B_m exp(a[m+1] + ... + a[l]) x_m dt_m (the quadratic form)
    scores = torch.einsum("clbgn,cmbgn->bgclm", Cc, Bc).unsqueeze(2)  # (b, g, 1, c, l, m): shared by a group's heads
    weights = scores * torch.exp(segsum(a))  # (b, g, r, c, l, m)
    y = torch.einsum("bgrclm,cmbgrp->clbgrp", weights, xdt)

    # (2) each chunk's own final state: sum_m exp(a[m+1] + ... + a[l-1]) x_m dt_m B_m^T
    decay_to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (b, g, r, c, l)
    states = torch.einsum("cmbgn,cmbgrp->cbgrpn", Bc, xdt * decay_to_end.permute(3, 4, 0, 1, 2).unsqueeze(-1))

    # (3) between chunks: the state entering chunk k is sum_{j <= k} exp(sum of chunk decays j..k-1) states_j
    if initial_state is None:
        initial_state = torch.zeros(b, H, P, N, dtype=x.dtype, device=x.device)
    states = torch.cat([initial_state.reshape(1, b, G, H // G, P, N), states], dim=0)
    chunk_decay = torch.exp(segsum(F.pad(a_cum[..., -1], (1, 0))))  # (b, g, r, c+1, c+1)
    entering = torch.einsum("bgrkj,jbgrpn->kbgrpn", chunk_decay, states)  # (c+1, b, g, r, p, n)

    # (4) the output due to the state entering each chunk, decayed to each position
    decay_in = torch.exp(a_cum).permute(3, 4, 0, 1, 2).unsqueeze(-1)  # (c, l, b, g, r, 1)
    y = y + torch.einsum("clbgn,cbgrpn->clbgrp", Cc, entering[:-1]) * decay_in
    return y.reshape(c * l, b, H, P)[:s], entering[-1].reshape(b, H, P, N)


def ssd_step(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of the recurrence: x (b, H, P), dt (b, H), B, C (b, G, N), state (b, H, P, N) -> y (b, H, P), state.
    """
    b, H, P = x.shape
    G = B.shape[1]
    Bh = B.repeat_interleave(H // G, dim=1)  # (b, H, N)
    Ch = C.repeat_interleave(H // G, dim=1)
    decay = torch.exp(dt * A).view(b, H, 1, 1)
    state = decay * state + (dt.unsqueeze(-1) * x).unsqueeze(-1) * Bh.unsqueeze(2)
    return torch.einsum("bhpn,bhn->bhp", state, Ch), state


def ssd_sequential(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   initial_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: :func:`ssd_step` over every token. Shapes as :func:`ssd_chunked`."""
    s, b, H, P = x.shape
    state = initial_state if initial_state is not None else x.new_zeros(b, H, P, B.shape[-1])
    ys = []
    for t in range(s):
        y, state = ssd_step(x[t], dt[t], A, B[t], C[t], state)
        ys.append(y)
    return torch.stack(ys), state
