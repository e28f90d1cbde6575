"""The GPT LM (any family of lm.gpt's configuration) cut into pipeline stages for the schedules of
deepspeech.parallel.pipeline (1F1B and interleaved 1F1B, arXiv 2104.04473 section 2.2).

The layers are split evenly over the p * v chunks; the embedding lives on chunk 0 (rank 0), the final LayerNorm,
output layer and loss on the last chunk (rank p - 1). With tied embeddings the last stage keeps a copy of the
embedding matrix (built from the same seed) whose gradient is summed with the first stage's over the pipeline group
after the backward passes, so both copies stay equal (Megatron's embedding group, section 4).

Activations cross a stage boundary as (s, b_mb, h) tensors, or this tensor-parallel rank's (s/t, b_mb, h) sequence
shard under sequence parallelism.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from deepspeech.parallel.dims import ParallelState
from deepspeech.parallel.mappings import all_reduce_sum, group_size
from deepspeech.parallel.pipeline import CommCounter, chunk_layers
from deepspeech.parallel.tensor_parallel import (
    ColumnParallelLinear,
    Group,
    VocabParallelEmbedding,
    mark,
    sharded_normal,
)
from lm.gpt import GPT, GPTConfig, _layer_norm, build_layer

log = logging.getLogger(__name__)


class GPTChunk(GPT):
    """A contiguous slice of :class:`GPT`: optional embedding (with its LayerNorm), some layers, optional head.

    Parameter names equal the full model's ("embedding.weight", "layers.5.mlp.fc1.weight", "final_norm.bias"), and
    every weight is drawn from (seed, name), so a chunk holds exactly those parameters of the one-rank model.
    ``forward``: tokens (b, s) on the first chunk, activations (s, b, h) (or (s/t, b, h)) elsewhere -> activations,
    or the mean loss on the last chunk.
    """

    def __init__(self, cfg: GPTConfig, tp_group: Group, seed: int, layer_ids: range, first: bool,
                 last: bool) -> None:
        nn.Module.__init__(self)
        self.cfg, self.group, self.first, self.last = cfg, tp_group, first, last
        self.embedding = (VocabParallelEmbedding(cfg.vocab_size, cfg.hidden, tp_group, seed=seed, name="embedding",
                                                 std=cfg.init_std)
                          if first or (last and cfg.tie_embeddings) else None)
        if self.embedding is not None and not first:
            self.embedding.weight.pipeline_copy = True  # type: ignore[attr-defined]  # the last stage's tied copy
        self.positions = None
        if first and cfg.positions == "learned":
            self.positions = mark(nn.Parameter(sharded_normal((cfg.seq_len, cfg.hidden), cfg.init_std, seed,
                                                              "positions", None, None)))
        self.embedding_norm = (_layer_norm(cfg, tp_group, sequence_parallel=False)
                               if first and cfg.embedding_norm else None)
        self.layers = nn.ModuleDict({str(i): build_layer(cfg, tp_group, seed, i) for i in layer_ids})
        self.final_norm = _layer_norm(cfg, tp_group) if last else None
        self.output = None
        if last and not cfg.tie_embeddings:
            self.output = ColumnParallelLinear(cfg.hidden, cfg.vocab_size, tp_group, seed=seed, name="output",
                                               std=cfg.init_std, bias=False, sequence_parallel=cfg.sequence_parallel)

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None  # type: ignore[override]
                ) -> torch.Tensor:
        if self.first:
            x = self.embed(x)
        for layer in self.layers.values():
            x = layer(x)
        if not self.last:
            return x
        _, loss = self.head(x, targets)
        assert loss is not None, "the last chunk needs targets"
        return loss

    def boundary_shape(self, microbatch: int, seq_len: int) -> tuple[int, int, int]:
        """(s, b_mb, h) activations between stages; (s/t, b_mb, h) under sequence parallelism."""
        s = seq_len // group_size(self.group) if self.cfg.sequence_parallel else seq_len
        return (s, microbatch, self.cfg.hidden)


def build_chunks(cfg: GPTConfig, state: ParallelState, vpp: int, seed: int) -> nn.ModuleList:
    """This pipeline rank's ``vpp`` chunks (local index v holds global chunk v * pp + pp_rank)."""
    pp, r = state.dims.pp, state.pp_rank
    last = pp * vpp - 1
    return nn.ModuleList(
        GPTChunk(cfg, state.tp_group, seed, chunk_layers(cfg.layers, pp, vpp, r, v), first=v * pp + r == 0,
                 last=v * pp + r == last) for v in range(vpp))


def sync_tied_embedding_grads(chunks: nn.ModuleList, state: ParallelState, counter: CommCounter | None = None
                              ) -> None:
    """Sum the gradients of the tied embedding's two copies (first and last stage) over the pipeline group.

    Middle stages contribute zeros, so one all-reduce over the pipeline group serves every layout.
    """
    cfg: GPTConfig = chunks[0].cfg
    if state.dims.pp == 1 or not cfg.tie_embeddings:
        return
    # With pp > 1 chunk 0 and the last chunk sit on different ranks: a rank holds one copy or none.
    weight = next((c.embedding.weight for c in chunks if c.embedding is not None), None)
    if weight is not None:
        grad = torch.zeros_like(weight) if weight.grad is None else weight.grad
    else:
        grad = torch.zeros(cfg.vocab_size // group_size(state.tp_group), cfg.hidden, device=state.device)
    all_reduce_sum(grad, state.pp_group)
    if counter is not None:
        counter.add("pp_embedding_allreduce", 2 * (state.dims.pp - 1) / state.dims.pp * grad.numel() * 4)
    if weight is not None:
        weight.grad = grad


__all__ = ["GPTChunk", "build_chunks", "sync_tied_embedding_grads"]
