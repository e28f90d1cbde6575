"""The fused native GRU layer and step against nn.GRU / nn.GRUCell with the same weights, and float64 gradcheck.

Tolerance: 1e-5 (the issue's bar), absolute and relative, on outputs and every gradient, where a gradient's
absolute part is taken relative to its tensor's scale (1e-5 * max |grad|, at least 1e-5). A weight gradient sums
up to 8 * 50 products whose sizes reach the tensor's largest entries: float32 summation order (one GEMM over all
steps here, per-step products in autograd there) moves every entry by ~1e-7..1e-6 of that scale, and an entry that
cancels to near zero keeps that absolute error (seen: 1.1e-5 on an entry of 0.12 in a W_ih gradient whose largest
entry is 22.6, i.e. 5e-7 of its scale). The fast exp in the gate loop is within 7e-8 relative of the exact one.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import nn

from deepspeech.native import native_available
from deepspeech.native.build import load_extension
from deepspeech.native.gru import FusedGRU, gru_layer, gru_layer_reference, gru_step, gru_step_reference

pytestmark = pytest.mark.skipif(not native_available("gru"), reason="native GRU did not build here")

TOL = {"rtol": 1e-5, "atol": 1e-5}


def assert_grad_close(a: torch.Tensor, b: torch.Tensor) -> None:
    """1e-5 relative, with the absolute part scaled to the gradient tensor's size (see the module docstring)."""
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * max(1.0, float(b.abs().max())))


def _pair(I: int, H: int, seed: int, native: bool | None = True) -> tuple[nn.GRU, FusedGRU]:
    torch.manual_seed(seed)
    ref = nn.GRU(I, H, batch_first=True)
    ours = FusedGRU(I, H, native=native)
    ours.load_state_dict(ref.state_dict())  # same parameter names: the state dict loads as is
    return ref, ours


def _grads(m: nn.Module, x: torch.Tensor, h0: torch.Tensor | None, g_out: torch.Tensor, g_hn: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    out, hn = m(x, h0)
    leaves = [x, *m.parameters()] + ([h0] if h0 is not None else [])
    grads = torch.autograd.grad((out * g_out).sum() + (hn * g_hn).sum(), leaves)
    return out, hn, list(grads)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), B=st.integers(1, 8), T=st.integers(1, 50), I=st.integers(1, 24),
       H=st.integers(1, 24), with_h0=st.booleans())
@example(seed=72, B=6, T=49, I=13, H=13, with_h0=True)  # a W_ih gradient entry cancels to 0.12 (CI, 2026-11-29)
def test_outputs_and_all_gradients_match_nn_gru(seed: int, B: int, T: int, I: int, H: int, with_h0: bool) -> None:
    ref, ours = _pair(I, H, seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, I, generator=g).requires_grad_()
    h0 = torch.randn(1, B, H, generator=g).requires_grad_() if with_h0 else None
    g_out, g_hn = torch.randn(B, T, H, generator=g), torch.randn(1, B, H, generator=g)
    o_ref, hn_ref, gr_ref = _grads(ref, x, h0, g_out, g_hn)
    o, hn, gr = _grads(ours, x, h0, g_out, g_hn)
    torch.testing.assert_close(o, o_ref, **TOL)
    torch.testing.assert_close(hn, hn_ref, **TOL)
    assert hn.shape == (1, B, H)
    for a, b in zip(gr, gr_ref, strict=True):  # x, W_ih, W_hh, b_ih, b_hh (, h0)
        assert_grad_close(a, b)


def test_reference_matches_nn_gru() -> None:
    ref, _ = _pair(7, 5, 0)
    x, h0 = torch.randn(3, 9, 7), torch.randn(1, 3, 5)
    out, hn = gru_layer_reference(x, h0[0], *ref.parameters())
    o_ref, hn_ref = ref(x, h0)
    torch.testing.assert_close(out, o_ref, **TOL)
    torch.testing.assert_close(hn, hn_ref[0], **TOL)


def test_gradcheck_float64() -> None:
    torch.manual_seed(2)
    B, T, I, H = 2, 4, 3, 3
    args = [torch.randn(B, T, I), torch.randn(B, H), torch.randn(3 * H, I), torch.randn(3 * H, H),
            torch.randn(3 * H), torch.randn(3 * H)]
    args = [a.double().requires_grad_() for a in args]
    assert torch.autograd.gradcheck(lambda *a: gru_layer(*a, native=True), args)


@pytest.mark.parametrize("B", [1, 8, 64])
@pytest.mark.parametrize("projected", [False, True])
def test_step_matches_one_step_of_nn_gru(B: int, projected: bool) -> None:
    ref, ours = _pair(11, 16, B)
    x, h = torch.randn(B, 11), torch.randn(B, 16)
    w = (ours.weight_ih_l0, ours.weight_hh_l0, ours.bias_ih_l0, ours.bias_hh_l0)
    xin = x @ w[0].detach().T + w[2].detach() if projected else x
    new = gru_step(xin, h, *w, projected=projected, native=True)
    with torch.no_grad():
        _, expect = ref(x[:, None], h[None])
    torch.testing.assert_close(new, expect[0], **TOL)
    torch.testing.assert_close(gru_step_reference(xin, h, *w, projected=projected).detach(), expect[0], **TOL)
    cell = nn.GRUCell(11, 16)
    cell.load_state_dict({k[:-3]: v for k, v in ref.state_dict().items()})  # weight_ih_l0 -> weight_ih
    with torch.no_grad():
        torch.testing.assert_close(new, cell(x, h), **TOL)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(("B", "I", "H"),
                         [(5, 37, 70), (5, 37, 130), (5, 37, 257), (5, 37, 520), (4, 656, 384), (33, 656, 384)])
@pytest.mark.parametrize("projected", [False, True])
@pytest.mark.parametrize("packed", [True, False])
def test_step_split_over_threads_matches_nn_gru(threads: int, B: int, I: int, H: int, projected: bool,
                                                packed: bool) -> None:
    """The step splits its work over the threads. On packed weights (gru_step's path for float32 on AVX2 CPUs):
    by hidden units in whole panels of 16 (at least 32 units each). On the weights as they lie (the extension's
    gru_step: float64, inference-mode weights): by hidden units with native/small_gemm.h's kernel at small batches,
    by projection rows (at least 192 each) with the BLAS (batch 33 here), else one thread runs two threaded GEMMs.
    Odd batches, input sizes that are not a multiple of the 8-wide vectors, uneven last blocks and every thread
    count give nn.GRU's numbers."""
    ref, ours = _pair(I, H, B)
    x, h = torch.randn(B, I), torch.randn(B, H)
    w = (ours.weight_ih_l0, ours.weight_hh_l0, ours.bias_ih_l0, ours.bias_hh_l0)
    xin = x @ w[0].detach().T + w[2].detach() if projected else x
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if packed:
            new = gru_step(xin, h, *w, projected=projected, native=True)
        else:
            new = load_extension("gru").gru_step(xin, h, *(t.detach() for t in w), projected)
    finally:
        torch.set_num_threads(before)
    with torch.no_grad():
        _, expect = ref(x[:, None], h[None])
    torch.testing.assert_close(new, expect[0], **TOL)


def test_packed_weights_follow_weight_changes() -> None:
    """gru_step keeps packed weights per weight tensor: an in-place update (an optimizer step, load_state_dict)
    bumps the version counter and repacks; inference-mode weights (no version counter) take the unpacked path."""
    ref, ours = _pair(40, 64, 0)
    x, h = torch.randn(3, 40), torch.randn(3, 64)
    w = (ours.weight_ih_l0, ours.weight_hh_l0, ours.bias_ih_l0, ours.bias_hh_l0)
    first = gru_step(x, h, *w, native=True)
    assert not first.requires_grad  # parameters in, no autograd graph out
    torch.testing.assert_close(gru_step(x, h, *w, native=True), first, rtol=0, atol=0)  # the cached packing
    with torch.no_grad():
        for p in ours.parameters():
            p.mul_(0.5)
        for p in ref.parameters():
            p.mul_(0.5)
        _, expect = ref(x[:, None], h[None])
    changed = gru_step(x, h, *w, native=True)
    torch.testing.assert_close(changed, expect[0], **TOL)
    assert not torch.allclose(changed, first)
    with torch.inference_mode():
        frozen = [t.clone() for t in w]
        torch.testing.assert_close(gru_step(x, h, *frozen, native=True), expect[0], **TOL)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(("B", "T", "I", "H"), [(3, 5, 37, 70), (5, 4, 20, 130), (2, 3, 16, 257)])
def test_layer_split_over_threads_matches_nn_gru(threads: int, B: int, T: int, I: int, H: int) -> None:
    """The layer's per-step recurrent products (forward: h W_hh^T; backward: carry += dG W_hh) run on packed
    weights split by hidden units over the threads (float32, T >= 2): outputs and every gradient as nn.GRU's."""
    ref, ours = _pair(I, H, T)
    x = torch.randn(B, T, I).requires_grad_()
    h0 = torch.randn(1, B, H).requires_grad_()
    g_out, g_hn = torch.randn(B, T, H), torch.randn(1, B, H)
    o_ref, hn_ref, gr_ref = _grads(ref, x, h0, g_out, g_hn)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        o, hn, gr = _grads(ours, x, h0, g_out, g_hn)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(o, o_ref, **TOL)
    torch.testing.assert_close(hn, hn_ref, **TOL)
    for a, b in zip(gr, gr_ref, strict=True):
        assert_grad_close(a, b)


def test_extreme_preactivations_saturate_without_nan() -> None:
    ref, ours = _pair(4, 6, 3)
    x = torch.randn(2, 5, 4) * 200  # gates far outside the fast exp's clamped range
    torch.testing.assert_close(ours(x)[0], ref(x)[0], **TOL)
    assert torch.isfinite(ours(x)[0]).all()


def test_packed_sequence_as_nn_gru() -> None:
    """Ragged batches (the streaming recogniser packs its sessions' chunks) give nn.GRU's outputs and states."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    ref, ours = _pair(6, 5, 5)
    x, h0, lengths = torch.randn(3, 7, 6), torch.randn(1, 3, 5), torch.tensor([4, 7, 2])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    (y_ref, hn_ref), (y, hn) = ref(packed, h0), ours(packed, h0)
    torch.testing.assert_close(pad_packed_sequence(y, batch_first=True)[0],
                               pad_packed_sequence(y_ref, batch_first=True)[0], rtol=0, atol=0)
    torch.testing.assert_close(hn, hn_ref, rtol=0, atol=0)


def test_fallback_path_matches() -> None:
    """native=False runs torch.gru (what nn.GRU calls): identical numbers."""
    ref, ours = _pair(5, 4, 4, native=False)
    x = torch.randn(2, 6, 5)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=0, atol=0)


def test_disabled_by_environment() -> None:
    code = ("import torch; from deepspeech.native.build import load_extension; "
            "from deepspeech.native.gru import FusedGRU, gru_step; assert load_extension('gru') is None; "
            "m = FusedGRU(3, 4); o, h = m(torch.randn(2, 5, 3)); o.sum().backward(); "
            "assert o.shape == (2, 5, 4) and h.shape == (1, 2, 4) and m.weight_hh_l0.grad is not None; "
            "assert gru_step(torch.randn(2, 3), torch.randn(2, 4), *m.parameters()).shape == (2, 4)")
    res = subprocess.run([sys.executable, "-c", code], env={"DEEPSPEECH_NATIVE": "0", "PATH": ""},
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
