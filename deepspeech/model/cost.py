"""Memory and compute of one Deep Speech 2 training step (Amodei et al., arXiv 1512.02595), for sizing a job before it
is submitted (``deepspeech plan``).

* Parameters: :func:`parameter_count`, layer by layer as :class:`deepspeech.model.ds2.DeepSpeech2` builds them.
* Model state: weights + gradients + optimizer state, :func:`state_bytes_per_param` (AdamW: 4 + 4 + 4 + 4 bytes in
  float32; SGD with momentum: 4 + 4 + 4).
* Activations: :func:`activation_bytes`, the bytes autograd keeps for backward during the forward of a training
  step (float32 on the CPU, the fused GRU and CTC kernels), counted per tensor below; ``tests/test_plan.py`` checks
  it against the saved tensors of the ``tiny`` preset (``torch.autograd.graph.saved_tensors_hooks``).
* Compute: :func:`training_flops`, the multiply-adds of the convolutions, the GRUs (6H(I + H) FLOPs per frame and
  direction: three gates, each an input and a recurrent product, 2 FLOPs a multiply-add; DS2 section 3.3 and
  BENCHMARKS.md's B2) and the output layer, times 3 for forward + backward (the backward costs two forward GEMMs:
  the gradient of the input and of the weight). Element-wise work, batch norm and CTC are left out.

Shapes: a batch of B utterances of T input frames (10 ms each) and F = ``n_features`` bins; convolution l gives
(B, C_l, F_l, T_l); the recurrent layers run on T' = T_L frames of I = C_L * F_L (the first) or H features.
"""

from __future__ import annotations

from dataclasses import dataclass

from deepspeech.model.config import ModelConfig

H100_BF16_TFLOPS = 989.0  # an H100 SXM's dense bf16 peak, TFLOP/s
DEFAULT_TFLOPS = 0.4 * H100_BF16_TFLOPS  # the planning default: 40% of it (DS2 reached ~45% of peak, section 4)
_F32 = 4  # bytes of a float32 activation
_I64 = 8  # the int64 gather index of a reversed direction (reverse_padded)


@dataclass(frozen=True)
class PlanConfig:
    """A job to size (``deepspeech plan``): the layout, the batch and the throughput assumed per GPU."""

    gpus: int = 1  # GPUs in the job: tp * pp * dp
    tp: int = 1  # tensor-parallel size (LMs)
    pp: int = 1  # pipeline-parallel size (LMs)
    microbatches: int = 0  # per step and data-parallel rank (LMs; 0: pp)
    batch: int = 0  # utterances per GPU (DS2; 0: the preset's data.max_batch) or sequences per micro-batch (LMs; 0: 1)
    seconds: float = 10.0  # duration of every utterance (DS2)
    seq: int = 0  # sequence length (LMs; 0: the preset's)
    sp: bool = False  # sequence parallelism (LMs)
    recompute: str = "none"  # none | selective | full (LMs)
    tflops: float = DEFAULT_TFLOPS  # achieved TFLOP/s per GPU

    def __post_init__(self) -> None:
        if min(self.gpus, self.tp, self.pp) < 1 or self.microbatches < 0 or self.batch < 0 or self.seq < 0:
            raise ValueError("gpus, tp and pp must be >= 1; microbatches, batch and seq >= 0")
        if self.gpus % (self.tp * self.pp):
            raise ValueError(f"gpus {self.gpus} is not divisible by tp * pp = {self.tp * self.pp}")
        if not 0 < self.seconds < 1e6 or not 0 < self.tflops < 1e6:  # rejects NaN
            raise ValueError("seconds and tflops must be positive")
        if self.recompute not in ("none", "selective", "full"):
            raise ValueError(f"recompute must be none, selective or full, got {self.recompute!r}")


def _out(n: int, k: int, s: int) -> int:
    """Length of a padded (k // 2 each side) convolution's output: the frame arithmetic of ModelConfig."""
    return (n + 2 * (k // 2) - k) // s + 1


def conv_shapes(cfg: ModelConfig, frames: int) -> list[tuple[int, int, int, int]]:
    """(C_in, C_out, F_out, T_out) of each convolution for an input of ``frames`` frames."""
    shapes, c, f, t = [], 1, cfg.n_features, frames
    for spec in cfg.convs:
        f, t = _out(f, spec.kernel[0], spec.stride[0]), _out(t, spec.kernel[1], spec.stride[1])
        shapes.append((c, spec.channels, f, t))
        c = spec.channels
    return shapes


def _rnn_inputs(cfg: ModelConfig) -> list[int]:
    return [cfg.conv_out_features() if i == 0 else cfg.rnn_hidden for i in range(cfg.rnn_layers)]


def parameter_count(cfg: ModelConfig) -> int:
    """Parameters of ``DeepSpeech2(cfg)``: convolutions (no bias) and their batch norms, the recurrent layers (with
    a batch norm of the input from the second on), the lookahead, the output batch norm and linear layer."""
    n = sum(ci * co * spec.kernel[0] * spec.kernel[1] + 2 * co
            for (ci, co, _, _), spec in zip(conv_shapes(cfg, 1), cfg.convs, strict=True))
    gates = {"gru": 3, "lstm": 4, "rnn": 1}[cfg.rnn_type]
    h, dirs = cfg.rnn_hidden, 2 if cfg.bidirectional else 1
    for i, size in enumerate(_rnn_inputs(cfg)):
        n += dirs * gates * h * (size + h + 2) + (2 * size if i > 0 else 0)
    n += h * (cfg.lookahead + 1) if cfg.lookahead else 0
    return n + 2 * h + h * cfg.vocab_size + cfg.vocab_size


def state_bytes_per_param(optimizer: str = "adamw", momentum: float = 0.0) -> int:
    """Bytes a parameter keeps between steps in float32 (bf16 autocast keeps float32 master weights and states):
    weight 4 + gradient 4 + AdamW's two moments 8 = 16; SGD 8, plus 4 with momentum."""
    if optimizer == "adamw":
        return 16
    if optimizer == "sgd":
        return 12 if momentum else 8
    raise ValueError(f"unknown optimizer {optimizer!r}")


@dataclass(frozen=True)
class ActivationBytes:
    """Bytes saved for backward by one training step's forward, by part (see :func:`activation_bytes`)."""

    convs: int  # the input spectrogram and the convolution blocks
    rnns: int  # the recurrent layers with their input batch norms (GRU gate workspaces included)
    head: int  # the output batch norm and linear layer
    ctc: int  # the CTC loss

    @property
    def total(self) -> int:
        return self.convs + self.rnns + self.head + self.ctc


def _batch_norm(elements: int, positions: int, element_bytes: int) -> int:
    """MaskedBatchNorm in training: the centred input (for the variance), x - mean and the normalised y (for the
    affine product) of ``elements`` each, and the float mask of ``positions`` (B x T)."""
    return 3 * elements * element_bytes + positions * element_bytes


def activation_bytes(cfg: ModelConfig, batch: int, frames: int, target_len: int = 0, fused_ctc: bool = True,
                     element_bytes: int = _F32) -> ActivationBytes:
    """Bytes autograd keeps for backward during one training forward of B = ``batch`` utterances of T = ``frames``
    input frames (all of full length), by tensor:

    * input: the spectrogram (B, 1, F, T), saved by the first convolution;
    * each convolution block (B, C, F_l, T_l) = n_l elements: its batch norm (3 n_l + the float mask B T_l), the
      clipped ReLU's input n_l, its output n_l when the next convolution saves it (the last one's is copied to
      (B, T', I) and counted as the first recurrent layer's input), and the bool time mask B T_l (1 byte);
    * each recurrent layer, N = B T' positions: from the second on its input batch norm (3 N I + N); the input N I,
      per direction h0 (B, H), the outputs N H and, for a GRU, the fused kernel's gate workspace N 4H (r, z, n and
      the recurrent n-gate product, ``native/gru.cpp``); a bidirectional layer adds its reversed input N I and two
      int64 gather indices N (``reverse_padded``); dropout > 0 its mask N H (float on the CPU);
    * the head: the output batch norm (3 N H + N) and the linear layer's input N H;
    * CTC: the fused kernel keeps the gradient of the logits (T', B, V); ``F.ctc_loss`` (``fused_ctc=False``) keeps
      the log-probabilities (T', B, V) and the alphas (B, T', 2L + 1) for targets of length L = ``target_len``.

    Left out: per-channel statistics and copies of weights (a few KB). LSTM and plain RNN layers are counted with
    the GRU's layout (their kernels are PyTorch's; an approximation). ``element_bytes``: 4 (float32); under bf16
    autocast the products' saved inputs shrink to 2 while batch norm and the recurrences stay float32, so the true
    figure lies between element_bytes 2 and 4.
    """
    e, b = element_bytes, batch
    convs = b * cfg.n_features * frames * e
    shapes = conv_shapes(cfg, frames)
    for i, (_, co, f, t) in enumerate(shapes):
        n = b * co * f * t
        saved_output = i + 1 < len(shapes)  # the last one's output is copied to (B, T', I), the GRU's input
        convs += _batch_norm(n, b * t, e) + (2 if saved_output else 1) * n * e + b * t
    t_out = shapes[-1][3]
    pos, h, dirs = b * t_out, cfg.rnn_hidden, 2 if cfg.bidirectional else 1
    workspace = 4 * h if cfg.rnn_type == "gru" else 0
    rnns = 0
    for i, size in enumerate(_rnn_inputs(cfg)):
        if i > 0:
            rnns += _batch_norm(pos * size, pos, e)
        rnns += pos * size * e + dirs * (b * h + pos * (h + workspace)) * e
        if cfg.bidirectional:
            rnns += pos * size * e + 2 * pos * _I64
        if cfg.dropout > 0:  # the CPU's dropout keeps a mask of the activation dtype (CUDA's fused one a bool)
            rnns += pos * h * e
    if cfg.lookahead:
        rnns += 2 * pos * h * e  # the row convolution's padded input and the clipped ReLU's input
    head = _batch_norm(pos * h, pos, e) + pos * h * e
    logits = pos * cfg.vocab_size * _F32  # CTC runs in float32 (ds2.ctc_loss)
    ctc = logits if fused_ctc else logits + b * t_out * (2 * target_len + 1) * _F32
    return ActivationBytes(convs, rnns, head, ctc)


def gru_layer_flops(input_size: int, hidden: int) -> int:
    """Forward FLOPs of one GRU direction per frame: 3 gates x (I + H) x H multiply-adds, 2 FLOPs each."""
    return 6 * hidden * (input_size + hidden)


def forward_flops(cfg: ModelConfig, batch: int, frames: int) -> int:
    """Forward FLOPs of the convolutions, recurrent layers and output layer for B = ``batch`` utterances of
    ``frames`` frames (2 per multiply-add; a GRU's gates 6H(I + H) per frame and direction, an LSTM's 8H(I + H),
    a plain RNN's 2H(I + H))."""
    flops = 0
    for (ci, co, f, t), spec in zip(conv_shapes(cfg, frames), cfg.convs, strict=True):
        flops += 2 * batch * co * f * t * ci * spec.kernel[0] * spec.kernel[1]
    pos = batch * conv_shapes(cfg, frames)[-1][3]
    gates = {"gru": 3, "lstm": 4, "rnn": 1}[cfg.rnn_type]
    dirs = 2 if cfg.bidirectional else 1
    for size in _rnn_inputs(cfg):
        flops += dirs * pos * gru_layer_flops(size, cfg.rnn_hidden) * gates // 3
    if cfg.lookahead:
        flops += 2 * pos * cfg.rnn_hidden * (cfg.lookahead + 1)
    return flops + 2 * pos * cfg.rnn_hidden * cfg.vocab_size


def training_flops(cfg: ModelConfig, batch: int, frames: int) -> int:
    """FLOPs of one training step (forward + backward = 3 x forward)."""
    return 3 * forward_flops(cfg, batch, frames)


__all__ = ["DEFAULT_TFLOPS", "H100_BF16_TFLOPS", "ActivationBytes", "PlanConfig", "activation_bytes", "conv_shapes",
           "forward_flops", "gru_layer_flops", "parameter_count", "state_bytes_per_param", "training_flops"]
