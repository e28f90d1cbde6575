"""Sharded, layout-independent checkpoints of the GPT LM with torch.distributed.checkpoint (DCP).

Every parameter and its AdamW moments are stored under the full model's name ("model.layers.3.attn.qkv.weight",
"optim.layers.3.attn.qkv.weight.exp_avg") with the UNSHARDED shape: a tensor-parallel shard is wrapped as a DTensor
(Shard(tp_dim) on a 1-D mesh over the tensor-parallel group), so DCP records each rank's chunk with its offsets
(ChunkStorageMetadata) and any other layout (tp, pp, vpp, dp) reads back the slices it needs. Replicated copies
(data-parallel replicas, tensor-parallel replicated LayerNorms) are written once (DCP de-duplicates equal chunks);
the last pipeline stage's copy of the tied embedding is not written, and is read from the first stage's.

Layout: ``DIR/step-000010/`` holds the DCP files (``.metadata``, ``__*.distcp``) and ``config.json`` (the full
training config and the parallel layout it was written at). ``latest_checkpoint(DIR)`` finds the newest step.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard

from deepspeech.parallel.dims import ParallelState
from deepspeech.parallel.mappings import group_size

log = logging.getLogger(__name__)

MOMENTS = ("exp_avg", "exp_avg_sq")


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step-{step:06d}"


def latest_checkpoint(path: str | Path) -> Path:
    """``path`` itself when it is a checkpoint (has .metadata), else its newest ``step-*`` directory."""
    path = Path(path)
    if (path / ".metadata").is_file():
        return path
    steps = sorted(p for p in path.glob("step-*") if (p / ".metadata").is_file())
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {path} (no .metadata, no step-* directories)")
    return steps[-1]


class _Wrapper:
    """Turns local shards into tensors with global shape: DTensors over the tensor-parallel group, or the shard."""

    def __init__(self, state: ParallelState) -> None:
        self.mesh = (DeviceMesh.from_group(state.tp_group, state.device.type, mesh_dim_names=("tp",))
                     if group_size(state.tp_group) > 1 else None)

    def __call__(self, local: torch.Tensor, tp_dim: int | None) -> torch.Tensor:
        if self.mesh is None:
            return local
        placement = Replicate() if tp_dim is None else Shard(tp_dim)
        return DTensor.from_local(local, self.mesh, [placement], run_check=False)


def _init_adam_state(optimizer: torch.optim.Optimizer) -> None:
    """Create AdamW's lazily made state (zeros) so a checkpoint can be loaded into it before the first step."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p not in optimizer.state or not optimizer.state[p]:
                optimizer.state[p] = {"step": torch.zeros((), dtype=torch.float32),
                                      "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                      "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}


def _state_dict(named: Iterable[tuple[str, nn.Parameter]], optimizer: torch.optim.Optimizer, state: ParallelState,
                step: int, for_save: bool) -> tuple[dict[str, Any], list[tuple[torch.Tensor, torch.Tensor]]]:
    """The DCP state dict and the (destination, loaded) pairs to copy back after a load."""
    wrap = _Wrapper(state)
    sd: dict[str, Any] = {"train.step": torch.tensor(step, dtype=torch.int64)}
    back: list[tuple[torch.Tensor, torch.Tensor]] = []
    for name, p in named:
        if for_save and getattr(p, "pipeline_copy", False):
            continue
        tp_dim = getattr(p, "tp_dim", None)
        tensors = {f"model.{name}": p.data}
        st = optimizer.state.get(p, {})
        for k in MOMENTS:
            if k in st:
                tensors[f"optim.{name}.{k}"] = st[k]
        for key, local in tensors.items():
            sd[key] = wrap(local, tp_dim)
            back.append((local, sd[key]))
        if "step" in st:
            sd[f"optim.{name}.step"] = st["step"]
    return sd, back


def save_checkpoint(path: str | Path, named: Iterable[tuple[str, nn.Parameter]], optimizer: torch.optim.Optimizer,
                    state: ParallelState, step: int, config: Any) -> Path:
    """Write model and optimizer state after ``step`` steps (collective over the whole world)."""
    out = step_dir(path, step)
    sd, _ = _state_dict(named, optimizer, state, step, for_save=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(sd, checkpoint_id=str(out), no_dist=not dist.is_initialized())
    if state.is_main:
        meta = {"step": step, "config": asdict(config), "layout": asdict(state.dims)}
        (out / "config.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    log.info("saved checkpoint %s (step %d, tp=%d pp=%d dp=%d)", out, step, state.dims.tp, state.dims.pp,
             state.dims.dp)
    return out


def load_checkpoint(path: str | Path, named: Iterable[tuple[str, nn.Parameter]], optimizer: torch.optim.Optimizer,
                    state: ParallelState) -> int:
    """Read model and optimizer state into this layout's shards (any layout may have written it); returns the step."""
    src = latest_checkpoint(path)
    _init_adam_state(optimizer)
    sd, back = _state_dict(list(named), optimizer, state, 0, for_save=False)
    with warnings.catch_warnings():  # one process without a process group is a supported case, not a mistake
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(sd, checkpoint_id=str(src), no_dist=not dist.is_initialized())
    with torch.no_grad():
        for local, loaded in back:
            value = loaded.to_local() if isinstance(loaded, DTensor) else loaded
            if value.data_ptr() != local.data_ptr():
                local.copy_(value)
    step = int(sd["train.step"])
    log.info("loaded checkpoint %s (step %d) at tp=%d pp=%d dp=%d", src, step, state.dims.tp, state.dims.pp,
             state.dims.dp)
    return step
