"""Fused GRU layer (Cho et al. 2014; the recurrent layers of DS2, section 3.1) with nn.GRU's equations and layout.

Gates are stacked (r, z, n) along the 3H rows of ``w_ih`` (3H, I) and ``w_hh`` (3H, H)::

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h

- :func:`gru_layer`: a unidirectional, batch-first layer with autograd. On the CPU the native kernel
  (``native/gru.cpp``) runs one GEMM for all input projections, then per step the recurrent GEMM and one fused
  loop for the gates; its backward is hand-written. Elsewhere (or with ``DEEPSPEECH_NATIVE=0``) ``torch.gru``
  runs, which is what ``nn.GRU`` calls (cuDNN on a GPU).
- :func:`gru_step`: one step for streaming inference, no autograd. On CPUs with AVX2 it runs on a packed copy of
  the float32 weights, made once per weight tensor (and again when the weights change) and kept while the tensor
  lives: a stream calls it with the same weights at every step.
- :func:`gru_layer_reference` / :func:`gru_step_reference`: the equations above in plain PyTorch.
- :class:`FusedGRU`: a drop-in for ``nn.GRU(input_size, hidden_size, batch_first=True)`` with the same parameter
  names, so state dicts load either way.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from deepspeech.native.build import load_cuda_extension, load_extension


@torch.library.custom_op("deepspeech::gru_forward", mutates_args=())
def _gru_forward(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, bf16: bool
                 ) -> tuple[Tensor, Tensor]:
    ext = load_extension("gru")
    assert ext is not None
    out, ws = ext.gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, bf16)
    return out, ws


@_gru_forward.register_fake
def _(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, bf16: bool
      ) -> tuple[Tensor, Tensor]:
    B, T, H = x.shape[0], x.shape[1], w_hh.shape[1]
    return x.new_empty(B, T, H), x.new_empty(B, T, 4 * H)


@torch.library.custom_op("deepspeech::gru_backward", mutates_args=())
def _gru_backward_op(grad_out: Tensor, x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, out: Tensor, ws: Tensor,
                     bf16: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    ext = load_extension("gru")
    assert ext is not None
    return tuple(ext.gru_backward(grad_out, x, h0, w_ih, w_hh, out, ws, bf16))  # type: ignore[return-value]


@_gru_backward_op.register_fake
def _(grad_out: Tensor, x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, out: Tensor, ws: Tensor, bf16: bool
      ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return (torch.empty_like(x), torch.empty_like(h0), torch.empty_like(w_ih), torch.empty_like(w_hh),
            w_ih.new_empty(w_ih.shape[0]), w_hh.new_empty(w_hh.shape[0]))


def _setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    x, h0, w_ih, w_hh, _, _, bf16 = inputs
    ctx.bf16 = bf16
    ctx.save_for_backward(x, h0, w_ih, w_hh, *output)


def _backward(ctx, grad_out: Tensor, _grad_ws: Tensor):  # type: ignore[no-untyped-def]
    x, h0, w_ih, w_hh, out, ws = ctx.saved_tensors
    return (*_gru_backward_op(grad_out, x, h0, w_ih, w_hh, out, ws, ctx.bf16), None)


_gru_forward.register_autograd(_backward, setup_context=_setup_context)


def gru_layer_reference(x: Tensor, h0: Tensor | None, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor
                        ) -> tuple[Tensor, Tensor]:
    """The equations step by step in PyTorch. x (B, T, I), h0 (B, H) or None -> (outputs (B, T, H), h_T (B, H))."""
    B, T, H = x.shape[0], x.shape[1], w_hh.shape[1]
    h = x.new_zeros(B, H) if h0 is None else h0
    xp = x @ w_ih.T + b_ih  # (B, T, 3H): all input projections at once
    outs = []
    for t in range(T):
        h = gru_step_reference(xp[:, t], h, w_ih, w_hh, b_ih, b_hh, projected=True)
        outs.append(h)
    out = torch.stack(outs, 1) if outs else x.new_zeros(B, 0, H)
    return out, h


def gru_step_reference(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor,
                       projected: bool = False) -> Tensor:
    """One step in PyTorch: x (B, I) (or its projection (B, 3H) with b_ih when ``projected``), h (B, H) -> (B, H)."""
    xr, xz, xn = (x if projected else x @ w_ih.T + b_ih).chunk(3, -1)
    hr, hz, hn = (h @ w_hh.T + b_hh).chunk(3, -1)
    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h


def _use_native(x: Tensor, native: bool | None) -> bool:
    if native is not None:
        return native
    return x.device.type == "cpu" and load_extension("gru") is not None


def gru_layer(x: Tensor, h0: Tensor | None, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor,
              native: bool | None = None) -> tuple[Tensor, Tensor]:
    """A unidirectional batch-first GRU layer with autograd.

    x (B, T, I), h0 (B, H) or None (zeros), w_ih (3H, I), w_hh (3H, H), b_ih / b_hh (3H,)
    -> (outputs (B, T, H), final hidden state (B, H)).
    ``native``: None = the fused CPU kernel when it loads and x is on the CPU, else ``torch.gru``; False =
    ``torch.gru``; True on a GPU, without gradients: the fused CUDA forward when that extension loads. A GPU
    defaults to cuDNN because it was faster: ``scripts/device_check.sh`` on an H200 timed the fused forward at
    0.24-0.33x cuDNN's speed for ``tiny`` and 0.55-1.16x for the larger presets over two runs (the fused single
    step, which streaming uses, was faster than ``GRUCell`` at 9 of 12 shapes and stays the default there;
    ``bench/README.md`` has the table).
    """
    B, T, H = x.shape[0], x.shape[1], w_hh.shape[1]
    # Under the CPU's bf16 autocast (the trainer's ``cpu_amp``) the fused kernel's three large products run in
    # bfloat16 (native/gru.cpp); its inputs, outputs and recurrence stay float32, as ``torch.gru``'s do here.
    bf16 = x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and \
        torch.get_autocast_dtype("cpu") == torch.bfloat16
    if bf16 and x.dtype == torch.bfloat16:
        x, h0 = x.float(), None if h0 is None else h0.float()
    training = torch.is_grad_enabled() and _needs_grad(x, h0, w_ih, w_hh, b_ih, b_hh)
    if x.is_cuda and native and not training:  # the CUDA kernel is forward-only; cuDNN trains
        ext = load_cuda_extension("gru_cuda")
        if ext is not None:
            out = ext.gru_forward(x, x.new_zeros(B, H) if h0 is None else h0, w_ih, w_hh, b_ih, b_hh)
            return out, (out[:, -1].clone() if T else (x.new_zeros(B, H) if h0 is None else h0))
    if not _use_native(x, native) or T == 0:
        hx = (x.new_zeros(B, H) if h0 is None else h0).unsqueeze(0).contiguous()
        out, hn = torch.gru(x, hx, [w_ih, w_hh, b_ih, b_hh], True, 1, 0.0, torch.is_grad_enabled(), False, True)
        return out, hn[0]
    out, _ = _gru_forward(x, x.new_zeros(B, H) if h0 is None else h0, w_ih, w_hh, b_ih, b_hh, bf16)
    return out, out[:, -1].clone()  # a copy, as nn.GRU's: writing into the state must not change the outputs


def _needs_grad(*ts: Tensor | None) -> bool:
    return any(t is not None and t.requires_grad for t in ts)


# id(weight) -> (weak reference, version, data pointer, packed copy); an entry leaves when its weight is freed.
_PACKED: dict[int, tuple[weakref.ref, int, int, Tensor]] = {}


def _packed(ext, w: Tensor, H: int) -> Tensor | None:  # type: ignore[no-untyped-def]
    """``ext.gru_pack(w, H)``, cached while ``w`` lives and is unchanged (same version counter and storage);
    None for weights whose changes cannot be tracked (inference-mode tensors)."""
    if w.is_inference():
        return None
    key, version, ptr = id(w), w._version, w.data_ptr()
    hit = _PACKED.get(key)
    if hit is not None and hit[0]() is w and hit[1] == version and hit[2] == ptr:
        return hit[3]
    packed = ext.gru_pack(w, H)
    _PACKED[key] = (weakref.ref(w, lambda _ref, k=key: _PACKED.pop(k, None)), version, ptr, packed)
    return packed


def gru_step(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, projected: bool = False,
             native: bool | None = None) -> Tensor:
    """One GRU step for streaming inference (no autograd): x (B, I) (or its input projection (B, 3H), b_ih
    included, when ``projected``), h (B, H) -> h' (B, H). The fused kernel on the CPU (or the CUDA one on a GPU)
    when it loads, else :func:`gru_step_reference`. The CPU kernels work on detached inputs and never record
    autograd, so they run without a grad-mode switch (measured: ~15 us per call, half a batch-1 step).

    float32 on AVX2 CPUs: on packed copies of ``w_ih`` / ``w_hh`` made at the first call and kept per tensor while
    its version counter and storage stay the same (``native/packed_gemm.h``)."""
    if x.is_cuda and native is not False:
        ext = load_cuda_extension("gru_cuda")
        if ext is not None:
            with torch.no_grad():  # its products are ATen calls on the tensors as given
                return ext.gru_step(x, h, w_ih, w_hh, b_ih, b_hh, projected)
    if _use_native(x, native):
        ext = load_extension("gru")
        assert ext is not None
        if ext.have_packed_gemm and x.dtype == torch.float32 and w_hh.dtype == torch.float32:
            H = w_hh.shape[1]
            p_hh = _packed(ext, w_hh, H)
            p_ih = p_hh if projected else _packed(ext, w_ih, H)  # a projected x does not use w_ih
            if p_hh is not None and p_ih is not None:
                return ext.gru_step_packed(x, h, p_ih, p_hh, b_ih, b_hh, projected)
        return ext.gru_step(x, h, w_ih, w_hh, b_ih, b_hh, projected)
    with torch.no_grad():
        return gru_step_reference(x, h, w_ih, w_hh, b_ih, b_hh, projected)


class FusedGRU(nn.GRU):
    """Drop-in for ``nn.GRU(input_size, hidden_size, batch_first=True)`` (one layer, one direction, with biases).

    It is an ``nn.GRU``: same parameters (``weight_ih_l0`` (3H, I), ``weight_hh_l0`` (3H, H), ``bias_ih_l0``,
    ``bias_hh_l0`` (3H,)), same initialisation, same call: ``forward(x (B, T, I), hx (1, B, H) | None) -> (out
    (B, T, H), h_n (1, B, H))``. On the CPU it runs :func:`gru_layer` (the fused kernel). On a GPU it runs
    ``nn.GRU``'s own forward, cuDNN on weights kept in one flattened block (handing cuDNN four separate tensors
    made it copy them together at every call); ``native=True`` picks the fused CUDA forward for inference instead.
    A ``PackedSequence`` input (ragged streaming batches) takes ``nn.GRU``'s packed path.
    """

    def __init__(self, input_size: int, hidden_size: int, batch_first: bool = True, native: bool | None = None
                 ) -> None:
        if not batch_first:
            raise ValueError("FusedGRU is batch-first only")
        super().__init__(input_size, hidden_size, num_layers=1, bias=True, batch_first=True)
        self.native = native

    def forward(self, x: Tensor | PackedSequence, hx: Tensor | None = None  # type: ignore[override]
                ) -> tuple[Tensor | PackedSequence, Tensor]:
        if isinstance(x, PackedSequence) or (x.is_cuda and not (self.native and not torch.is_grad_enabled())):
            return super().forward(x, hx)
        h0 = None if hx is None else hx[0]
        out, hn = gru_layer(x, h0, self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0,
                            native=self.native)
        return out, hn.unsqueeze(0)
