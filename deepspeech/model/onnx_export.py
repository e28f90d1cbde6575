"""A portable copy of the Deep Speech 2 acoustic model (Amodei et al., arXiv 1512.02595): its offline forward as
ONNX, for runtimes without PyTorch (onnxruntime).

``model.onnx``: inputs ``features`` (B, T, F) float32, normalised as the model directory's ``feature_stats.json``
says, zero-padded, and ``lengths`` (B,) int64; outputs ``log_probs`` (B, T', V) float32 (log-softmax of the logits;
frames past a row's length are the log-softmax of the output layer's bias path, as in PyTorch) and
``out_lengths`` (B,) int64. Batch and time axes are dynamic. The fused GRU (a custom op) is exported as ONNX's
``GRU`` (``torch.gru`` through ``nn.GRU``, the same weights: :class:`~deepspeech.native.gru.FusedGRU` is an
``nn.GRU``); batch norm runs on its running statistics (eval mode), the lookahead is a grouped ``Conv``.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from deepspeech.model.ds2 import DeepSpeech2
from deepspeech.native.gru import FusedGRU

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
OPSET = 17


class _LogProbs(nn.Module):
    """forward (B, T, F), (B,) -> log-probabilities (B, T', V), lengths (B,)."""

    def __init__(self, model: DeepSpeech2) -> None:
        super().__init__()
        self.model = model

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        logits, out_lengths = self.model(feats, lengths)
        return logits.log_softmax(-1), out_lengths


def portable_copy(model: DeepSpeech2) -> DeepSpeech2:
    """A float32 eval-mode copy whose GRUs are plain ``nn.GRU`` modules with the same weights (torch.gru, which
    ONNX export maps to its GRU op, instead of the native kernel)."""
    grus = [getattr(layer, n) for layer in model.rnns for n in ("rnn", "rnn_reverse")]
    if type(model) is not DeepSpeech2 or type(model.fc) is not nn.Linear or \
            not all(g is None or isinstance(g, nn.RNNBase) for g in grus):
        raise ValueError("ONNX export takes a float model, not a quantized one (export the float model "
                         "directory)")
    out = copy.deepcopy(model).float().eval()
    for layer in out.rnns:
        for name in ("rnn", "rnn_reverse"):
            gru = getattr(layer, name)
            if isinstance(gru, FusedGRU):
                plain = nn.GRU(gru.input_size, gru.hidden_size, batch_first=True)
                plain.load_state_dict(gru.state_dict())
                setattr(layer, name, plain.eval())
    return out


def export_onnx(model: DeepSpeech2, path: str | Path, example_frames: int = 120) -> Path:
    """Write ``model``'s offline forward to ``path`` as ONNX (see the module docstring). -> path."""
    p = Path(path)
    wrapped = _LogProbs(portable_copy(model)).eval()
    feats = torch.zeros(2, example_frames, model.cfg.n_features)
    lengths = torch.tensor([example_frames, example_frames - 17])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on Python-side shape arithmetic and RNN batch sizes
        torch.onnx.export(wrapped, (feats, lengths), str(p), input_names=["features", "lengths"],
                          output_names=["log_probs", "out_lengths"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"features": {0: "batch", 1: "time"}, "lengths": {0: "batch"},
                                        "log_probs": {0: "batch", 1: "frames"}, "out_lengths": {0: "batch"}})
    log.info("wrote %s (%.1f MB)", p, p.stat().st_size / 1e6)
    return p
