"""Cheaper CPU inference for a trained Deep Speech 2 model (Amodei et al., arXiv 1512.02595; the recurrent layers of
section 3.1, the output layer of section 3.1, the convolutions of section 3.5): two stored precisions.

- ``int8``: dynamic int8 of the recurrent and linear layers (the GRUs' ``W_ih`` / ``W_hh`` and the output
  projection): int8 weights with one symmetric scale per output row; activations are quantised on the fly per call
  (fbgemm's ``quantized::linear_dynamic`` on prepacked weights) and the GRU's gate arithmetic stays float32. The
  convolutions and the lookahead keep float32 weights and compute in bfloat16 where the CPU does so natively (AMX,
  AVX512-BF16: they cost more than the GRUs at 32 streams), else in float32; batch norms stay float32.
- ``bf16``: every convolution, recurrent and linear weight stored in bfloat16 and computed in bfloat16 (CPU autocast:
  oneDNN with AMX / AVX512-BF16 where the CPU has them) with float32 accumulation, gates, batch-norm statistics,
  streaming state and logits.

A quantized model directory holds the same files as any other (never a pickle): ``model.safetensors`` with, for
``int8``, ``<layer>.weight_int8`` (I8, (out, in)), ``<layer>.scale`` (F32, (out,)) and ``<layer>.bias`` (F32) in
place of each quantized ``weight`` / ``bias`` pair, and for ``bf16`` its weights as BF16; ``config.json`` adds
``"quantization": {"scheme": ...}`` (:class:`QuantConfig`). ``deepspeech.checkpoint.load_model_dir`` builds the
network that scheme describes (:func:`build_model`), so ``serve``, ``transcribe`` and ``eval`` use it as any model.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from deepspeech.model.config import ModelConfig
from deepspeech.model.ds2 import DeepSpeech2
from deepspeech.model.state import FrameBuffer, StepState
from deepspeech.native import cpu_has_fast_bf16

SCHEMES = ("int8", "bf16")


@dataclass(frozen=True)
class QuantConfig:
    """How a model directory's weights are stored and computed (``config.json``'s ``quantization``)."""

    scheme: str  # "int8" (dynamic int8 recurrent + linear layers) or "bf16" (bfloat16 weights and products)

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown quantization scheme {self.scheme!r} (known: {', '.join(SCHEMES)})")

    def to_dict(self) -> dict[str, Any]:
        return {"scheme": self.scheme}

    @staticmethod
    def from_dict(raw: Any) -> QuantConfig:
        if not isinstance(raw, dict) or set(raw) != {"scheme"} or not isinstance(raw["scheme"], str):
            raise ValueError(f"quantization: expected {{\"scheme\": one of {', '.join(SCHEMES)}}}, got "
                             f"{str(raw)[:60]}")
        return QuantConfig(raw["scheme"])


def _reduce_range() -> bool:
    """fbgemm's u8 x s8 products saturate 16-bit pair sums without VNNI; 7-bit activations avoid that there."""
    return not torch.cpu._is_vnni_supported()


class Int8Linear(nn.Module):
    """y = x W^T + b with W stored as int8 rows and one float32 scale per row (W ~ weight_int8 * scale[:, None]);
    x is quantised per call (dynamic, per tensor, asymmetric uint8), the product accumulates in int32 and comes
    back in float32. x (..., in) -> (..., out)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features))
        self._packed: tuple[tuple[int, ...], Any] | None = None  # fbgemm's prepacked weight, see _prepacked

    @staticmethod
    def from_float(weight: Tensor, bias: Tensor | None) -> Int8Linear:
        """Symmetric per-row int8 of a float weight (out, in): scale = max |w_row| / 127."""
        w = weight.detach().float()
        mod = Int8Linear(w.shape[1], w.shape[0])
        scale = (w.abs().amax(1) / 127.0).clamp_min(1e-12)
        mod.weight_int8.copy_(torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        mod.scale.copy_(scale)
        if bias is not None:
            mod.bias.copy_(bias.detach().float())
        return mod

    def dequantized(self) -> Tensor:
        """The float weight (out, in) the int8 rows stand for."""
        return self.weight_int8.float() * self.scale[:, None]

    def _prepacked(self) -> Any:
        """fbgemm's packed weight, made at the first call and again when a buffer changes (load_state_dict)."""
        key = tuple(t._version for t in (self.weight_int8, self.scale, self.bias)) + (self.weight_int8.data_ptr(),)
        if self._packed is None or self._packed[0] != key:
            with warnings.catch_warnings():  # quantized tensors are deprecated as a type; fbgemm's packing takes one
                warnings.simplefilter("ignore", UserWarning)
                q = torch._make_per_channel_quantized_tensor(
                    self.weight_int8, self.scale.double(), torch.zeros(self.out_features, dtype=torch.long), 0)
            self._packed = (key, torch.ops.quantized.linear_prepack(q, self.bias))
        return self._packed[1]

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.quantized.linear_dynamic(x.float().contiguous(), self._prepacked(), _reduce_range())


class Bf16Linear(nn.Module):
    """y = x W^T + b with W stored in bfloat16: x is rounded to bfloat16, the product accumulates in float32
    (oneDNN; AMX where the CPU has it) and comes back in float32 with the float32 bias. x (..., in) -> (..., out)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.bfloat16))
        self.register_buffer("bias", torch.zeros(out_features))

    @staticmethod
    def from_float(weight: Tensor, bias: Tensor | None) -> Bf16Linear:
        mod = Bf16Linear(weight.shape[1], weight.shape[0])
        mod.weight.copy_(weight.detach().bfloat16())
        if bias is not None:
            mod.bias.copy_(bias.detach().float())
        return mod

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast("cpu", enabled=False):
            # contiguous: a strided 3-D input (the first GRU's, from the convolutions) sends linear to a batched
            # product over a copy of the weight per row (measured 5 ms per step at 32 streams)
            xb = x.to(torch.bfloat16).contiguous()
            return F.linear(xb, self.weight).float() + self.bias


class Int8GRU(nn.Module):
    """A one-layer, batch-first GRU (nn.GRU's equations, :mod:`deepspeech.native.gru`) whose two products are
    :class:`Int8Linear` (``ih``: W_ih with b_ih, ``hh``: W_hh with b_hh; :class:`Bf16Linear` for ``bf16``) and
    whose gates are float32. Called as ``nn.GRU``: ``forward(x (B, T, I) or a PackedSequence, hx (1, B, H) | None)
    -> (out, h_n (1, B, H))``; all T input products are one call, then one recurrent product per frame for the
    whole batch."""

    def __init__(self, input_size: int, hidden_size: int, linear: type[nn.Module] = Int8Linear) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.ih = linear(input_size, 3 * hidden_size)
        self.hh = linear(hidden_size, 3 * hidden_size)
        self._cell: tuple[Any, Any, Any] | None = None  # see _cell_params

    @staticmethod
    def from_gru(gru: nn.GRU, linear: type[Int8Linear] | type[Bf16Linear] = Int8Linear) -> Int8GRU:
        mod = Int8GRU(gru.input_size, gru.hidden_size, linear)
        mod.ih = linear.from_float(gru.weight_ih_l0, gru.bias_ih_l0)
        mod.hh = linear.from_float(gru.weight_hh_l0, gru.bias_hh_l0)
        return mod

    @property
    def weight_hh_l0(self) -> Tensor:
        """A float32 tensor on this layer's device: what ``RecurrentLayer.initial_state`` takes the hidden
        state's dtype and device from (the int8 weight itself is ``hh.weight_int8``)."""
        return self.hh.bias

    def _cell_params(self) -> Any:
        """ATen's dynamic int8 GRU cell parameters over the two prepacked products (remade when either is)."""
        assert isinstance(self.ih, Int8Linear) and isinstance(self.hh, Int8Linear)
        p_ih, p_hh = self.ih._prepacked(), self.hh._prepacked()
        if self._cell is None or self._cell[0] is not p_ih or self._cell[1] is not p_hh:
            cell = torch.ops.quantized.make_quantized_cell_params_dynamic(p_ih, p_hh, self.ih.bias, self.hh.bias,
                                                                         _reduce_range())
            self._cell = (p_ih, p_hh, cell)
        return self._cell[2]

    def forward(self, x: Tensor | PackedSequence, hx: Tensor | None = None
                ) -> tuple[Tensor | PackedSequence, Tensor]:
        if isinstance(self.ih, Int8Linear) and isinstance(x, Tensor) and x.shape[1] > 0 and x.device.type == "cpu":
            # ATen's dynamic quantized GRU: the same products (one input product over all T frames, one
            # recurrent product per frame, fbgemm) and gate equations, its time loop in C++ (at 32 streams the
            # Python loop's ~8 element-wise calls per frame cost more in dispatch than in arithmetic)
            h0 = x.new_zeros(1, x.shape[0], self.hidden_size) if hx is None else hx.float()
            out, h_n = torch.quantized_gru(x.float().contiguous(), h0.contiguous(), [self._cell_params()], True, 1,
                                           0.0, False, False, True)
            return out, h_n
        packed = isinstance(x, PackedSequence)
        if packed:
            x, lengths = pad_packed_sequence(x, batch_first=True)  # original row order
        b, t = x.shape[0], x.shape[1]
        h = x.new_zeros(b, self.hidden_size) if hx is None else hx[0].float()
        xp = self.ih(x)  # (B, T, 3H), b_ih included
        two = 2 * self.hidden_size
        outs = []
        for i in range(t):  # few, fused element-wise ops: at 32 streams each op costs more in dispatch than in math
            hp, g = self.hh(h), xp[:, i]
            rz = torch.sigmoid(g[:, :two] + hp[:, :two])  # (B, 2H): r, z
            n = torch.tanh(torch.addcmul(g[:, two:], rz[:, : self.hidden_size], hp[:, two:]))
            new = torch.lerp(n, h, rz[:, self.hidden_size:])  # (1 - z) * n + z * h
            if packed:  # rows past their length keep their state
                new = torch.where((lengths > i).to(x.device)[:, None], new, h)
            h = new
            outs.append(h)
        out = torch.stack(outs, 1) if outs else x.new_zeros(b, 0, self.hidden_size)
        if packed:
            return pack_padded_sequence(out, lengths, batch_first=True, enforce_sorted=False), h[None]
        return out, h[None]


class QuantizedDeepSpeech2(DeepSpeech2):
    """DS2 with its GRUs and output layer in ``scheme``'s form (:class:`Int8GRU` over :class:`Int8Linear` or
    :class:`Bf16Linear`) and its convolutions (the 2D ones and the lookahead) in bfloat16 under CPU autocast: always for
    ``bf16`` (their weights are bfloat16 values held in float32, so autocast's casts are exact), for ``int8`` where the
    CPU has native bfloat16 (:func:`deepspeech.native.cpu_has_fast_bf16`: oneDNN's bf16 convolutions pay there, 3.4x for
    the 2nd DS2 convolution at 32 streams on one core; float32 elsewhere). Batch-norm statistics, GRU gates and
    recurrence stay float32; it returns float32 logits, as the float model. The streaming step runs as the float model's
    (batch norms folded into the convolutions, the lookahead in float32: :mod:`deepspeech.model.layers`) with its
    convolutions in bfloat16, and the frames waiting between them in bfloat16 (what the next one reads); ``bf16``'s step
    keeps its forward's arithmetic instead (``step_as_forward``), so its stream rounds as its offline pass does."""

    def __init__(self, cfg: ModelConfig, scheme: str, stats_group: Any = None) -> None:
        super().__init__(cfg, stats_group=stats_group)
        self.scheme = QuantConfig(scheme).scheme
        self.bf16_convs = scheme == "bf16" or cpu_has_fast_bf16()
        for conv in self.convs:  # the step's convolutions, their outputs and buffers in bfloat16
            conv.step_dtype = torch.bfloat16 if self.bf16_convs else None
        # bf16 (bfloat16 everywhere) streams with its forward's roundings: its convolutions' batch norms are not
        # folded and the lookahead is forward's bfloat16 convolution (any other rounding of a bfloat16 value moves
        # some probabilities by ~0.015); int8's activation quantisation differs per call anyway (test_quantize.py)
        for layer in (*self.convs, self.lookahead):
            if layer is not None:
                layer.step_as_forward = self.scheme == "bf16"
        _swap_modules(self, None, Bf16Linear if scheme == "bf16" else Int8Linear)

    def _autocast(self, x: Tensor) -> torch.autocast:
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16_convs and x.device.type == "cpu")

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        with self._autocast(feats):
            logits, lengths = super().forward(feats, lengths)
        return logits.float(), lengths

    def step(self, feats: Tensor, lengths: Any, state: StepState, final: Any) -> tuple[Tensor, list[int], StepState]:
        with self._autocast(feats):
            logits, out_n, state = super().step(feats, lengths, state, final)
        return logits.float(), out_n, self._state_dtypes(state)

    def _state_dtypes(self, state: StepState) -> StepState:
        """The step state with each buffer in the dtype ``initial_state`` gives it (a bfloat16 convolution's
        outputs wait in bfloat16, the features and the lookahead's GRU outputs in float32): sessions gathered into
        one batch must share a dtype. A no-op unless a step's output came out in another dtype."""
        def f(b: FrameBuffer, dtype: torch.dtype) -> FrameBuffer:
            return b if b.frames.dtype == dtype else FrameBuffer(b.frames.to(dtype), b.lengths)
        convs = [f(buf, dt) for buf, dt in zip(state.convs, self.step_buffer_dtypes(), strict=True)]
        la = state.lookahead
        if la is not None and self.lookahead is not None:
            la = f(la, self.lookahead.conv.weight.dtype)
        return StepState(tuple(convs), state.rnns, la)


def _swap_modules(model: DeepSpeech2, src: DeepSpeech2 | None, linear: type[Int8Linear] | type[Bf16Linear]
                  ) -> None:
    """Replace ``model``'s GRUs and output layer in place by :class:`Int8GRU` / ``linear`` forms: converted from
    ``src``'s float weights, or empty (for loading) when ``src`` is None."""
    ref = model if src is None else src
    for layer, ref_layer in zip(model.rnns, ref.rnns, strict=True):
        for name in ("rnn", "rnn_reverse"):
            gru = getattr(ref_layer, name)
            if gru is None:
                continue
            if not isinstance(gru, nn.GRU):
                raise ValueError(f"quantization covers GRU layers only, not {type(gru).__name__}")
            new = Int8GRU(gru.input_size, gru.hidden_size, linear) if src is None else Int8GRU.from_gru(gru, linear)
            setattr(layer, name, new)
    fc = model.fc if src is None else src.fc
    model.fc = linear(fc.in_features, fc.out_features) if src is None else linear.from_float(fc.weight, fc.bias)


def build_model(cfg: ModelConfig, quant: QuantConfig | None, stats_group: Any = None) -> DeepSpeech2:
    """The network a model directory of ``quant``'s scheme loads into (a plain :class:`DeepSpeech2` for None)."""
    if quant is None:
        return DeepSpeech2(cfg, stats_group=stats_group)
    return QuantizedDeepSpeech2(cfg, quant.scheme, stats_group=stats_group)


def quantize(model: DeepSpeech2, quant: QuantConfig) -> QuantizedDeepSpeech2:
    """A quantized copy of a float model (eval mode); ``model`` itself is not changed."""
    src = copy.deepcopy(model).float().eval()
    out = QuantizedDeepSpeech2(model.cfg, quant.scheme)
    _swap_modules(out, src, Bf16Linear if quant.scheme == "bf16" else Int8Linear)
    rest = {k: v.bfloat16().float() if quant.scheme == "bf16" and _is_bf16_weight(k, v) else v
            for k, v in src.state_dict().items() if not (k.startswith("rnns.") and ".rnn" in k)
            and not k.startswith("fc.")}
    missing, unexpected = out.load_state_dict(rest, strict=False)  # convolutions, lookahead, batch norms
    if unexpected or any(not (k.startswith("fc.") or ".rnn" in k) for k in missing):
        raise RuntimeError(f"{quant.scheme} conversion: unexpected {unexpected}, missing {missing}")
    return out.eval()


def _is_bf16_weight(name: str, t: Tensor) -> bool:
    """The float32 tensors ``bf16`` stores (and computes) in bfloat16: the convolution and lookahead weights (the
    GRU and output weights are :class:`Bf16Linear` buffers, bfloat16 already); biases and batch norms stay float32."""
    return t.is_floating_point() and name.endswith("conv.weight")


def stored_tensors(model: DeepSpeech2, quant: QuantConfig | None) -> dict[str, Tensor]:
    """The tensors ``model.safetensors`` holds for ``model`` (quantized by :func:`quantize` for int8)."""
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if quant is not None and quant.scheme == "bf16":
        sd = {k: v.bfloat16() if _is_bf16_weight(k, v) else v for k, v in sd.items()}
    return sd


def check_tensors(tensors: dict[str, Tensor], quant: QuantConfig | None) -> str | None:
    """What is wrong with loaded quantized tensors (beyond names, shapes and finiteness), or None."""
    if quant is None:
        return None
    for k, v in tensors.items():
        if quant.scheme == "int8" and k.endswith(".weight_int8") and v.dtype != torch.int8:
            return f"{k} is {str(v.dtype).removeprefix('torch.')}, expected int8"
        if quant.scheme == "int8" and k.endswith(".scale") and not bool((v > 0).all()):
            return f"{k} holds scales that are not positive"
    return None
