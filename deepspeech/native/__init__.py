"""Native kernels (sources in the top-level ``native/`` folder) with PyTorch reference fallbacks.

- :func:`ctc_loss`: fused CTC loss from logits (``native/ctc_loss.cpp``; on a GPU ``native/ctc_cuda.cu``);
  reference: ``F.ctc_loss(logits.log_softmax(-1), ...)``.
- :func:`gru_layer`, :func:`gru_step`, :class:`FusedGRU`: a fused GRU layer with a hand-written backward and a
  streaming step (``native/gru.cpp``; forward and step on a GPU: ``native/gru_cuda.cu``); reference: ``nn.GRU``'s
  ``torch.gru`` and the step-by-step :func:`gru_layer_reference`.

The CPU kernels are compiled by the set-up into the checkout's ``.venv/native/`` (:mod:`deepspeech.native.build`),
never at run time; the CUDA ones build only where torch has CUDA, a GPU is visible and nvcc is found. If a kernel is
not built or cannot be loaded, a warning is logged once and the reference path runs.
``tests/test_native_cuda_build.py`` compiles the CUDA sources wherever nvcc is on the PATH;
``scripts/device_check.sh`` checks and times them on a GPU. ``DEEPSPEECH_NATIVE=0`` forces the reference.
"""

from deepspeech.native.build import cpu_has_fast_bf16, native_available
from deepspeech.native.ctc import ctc_loss, ctc_loss_reference
from deepspeech.native.gru import FusedGRU, gru_layer, gru_layer_reference, gru_step, gru_step_reference

__all__ = ["FusedGRU", "cpu_has_fast_bf16", "ctc_loss", "ctc_loss_reference", "gru_layer", "gru_layer_reference",
           "gru_step", "gru_step_reference", "native_available"]
