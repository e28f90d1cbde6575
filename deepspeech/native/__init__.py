"""Native kernels (sources in the top-level ``native/`` folder) with PyTorch reference fallbacks.

- :func:`ctc_loss`: fused CTC loss from logits (``native/ctc_loss.cpp``); reference:
  ``F.ctc_loss(logits.log_softmax(-1), ...)``.

Each kernel compiles on first use (``torch.utils.cpp_extension``, cached by torch); if it cannot be built or
loaded, a warning is logged once and the reference path runs. ``DEEPSPEECH_NATIVE=0`` forces the reference.
"""

from deepspeech.native.build import native_available
from deepspeech.native.ctc import ctc_loss, ctc_loss_reference

__all__ = ["ctc_loss", "ctc_loss_reference", "native_available"]
