"""CTC loss from unnormalised logits (Graves et al. 2006; fused as in warp-ctc, DS2 section 4).

``ctc_loss(logits, ...)`` means ``F.ctc_loss(logits.log_softmax(-1), ...)``. The native kernels (CPU:
``native/ctc_loss.cpp``; GPU: ``native/ctc_cuda.cu``) compute the log-softmax normaliser, the alpha/beta recursions
and the gradient with respect to the logits in one pass, and autograd's backward only scales that stored gradient
by the incoming per-utterance gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from deepspeech.native.build import load_cuda_extension, load_extension


def _extension(device: torch.device):  # type: ignore[no-untyped-def]
    """The fused kernel for ``device``: ``native/ctc_loss.cpp`` on the CPU, ``native/ctc_cuda.cu`` on a GPU."""
    if device.type == "cpu":
        return load_extension("ctc_loss")
    if device.type == "cuda":
        return load_cuda_extension("ctc_cuda")
    return None


@torch.library.custom_op("deepspeech::ctc_loss_fused", mutates_args=())
def _ctc_fused(logits: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor, blank: int,
               zero_infinity: bool) -> tuple[Tensor, Tensor]:
    ext = _extension(logits.device)
    assert ext is not None
    loss, grad = ext.ctc_loss_fused(logits, targets, input_lengths, target_lengths, blank, zero_infinity)
    return loss, grad


@_ctc_fused.register_fake
def _(logits: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor, blank: int,
      zero_infinity: bool) -> tuple[Tensor, Tensor]:
    return logits.new_empty(logits.shape[1]), torch.empty_like(logits)


def _setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    ctx.save_for_backward(output[1])
    # The stored gradient is an output nobody differentiates; without this autograd would materialise a zero
    # (T, B, V) tensor as its incoming gradient on every backward (as costly as the softmax at V = 5000).
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_loss: Tensor, _grad_grad: Tensor):  # type: ignore[no-untyped-def]
    (grad,) = ctx.saved_tensors
    if grad_loss is None:  # only the stored gradient was used downstream: it is treated as a constant
        return None, None, None, None, None, None
    return grad * grad_loss.to(grad.dtype)[None, :, None], None, None, None, None, None


_ctc_fused.register_autograd(_backward, setup_context=_setup_context)


def _reduce(losses: Tensor, target_lengths: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":  # as F.ctc_loss: each loss over its target length, then the batch mean
        return (losses / target_lengths.to(losses.dtype).clamp_min(1)).mean()
    raise ValueError(f"reduction must be none, sum or mean, got {reduction!r}")


def ctc_loss_reference(logits: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor,
                       blank: int = 0, reduction: str = "mean", zero_infinity: bool = False) -> Tensor:
    """The PyTorch path: log-softmax, then ``F.ctc_loss``. logits (T, B, V)."""
    return F.ctc_loss(logits.log_softmax(-1), targets, input_lengths, target_lengths, blank=blank,
                      reduction=reduction, zero_infinity=zero_infinity)


def ctc_loss(logits: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor, blank: int = 0,
             reduction: str = "mean", zero_infinity: bool = False, native: bool | None = None) -> Tensor:
    """CTC loss of unnormalised ``logits`` (T, B, V); targets (B, S) padded or (sum L,) concatenated; lengths (B,).

    ``native``: None = the fused kernel for the logits' device when it builds and loads (C++ on the CPU, CUDA on a
    GPU), else the reference. Half and bfloat16 logits (autocast) are computed in float32, as ``F.ctc_loss`` does."""
    use = native if native is not None else _extension(logits.device) is not None
    if not use:
        return ctc_loss_reference(logits, targets, input_lengths, target_lengths, blank, reduction, zero_infinity)
    il = torch.as_tensor(input_lengths, dtype=torch.long).cpu()
    tl = torch.as_tensor(target_lengths, dtype=torch.long).cpu()
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    losses, _ = _ctc_fused(logits, targets.long(), il, tl, blank, zero_infinity)
    return _reduce(losses, tl, reduction)
