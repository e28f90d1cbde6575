"""Sharded, layout-independent training checkpoints with torch.distributed.checkpoint (DCP), for any model whose
tensor-parallel shards mark their split dimension (``tp_dim``, deepspeech.parallel.tensor_parallel).

Every parameter and its AdamW moments are stored under the full model's name ("model.layers.3.attn.qkv.weight",
"optim.layers.3.attn.qkv.weight.exp_avg") with the UNSHARDED shape: a tensor-parallel shard is wrapped as a DTensor
(Shard(tp_dim) on a 1-D mesh over the tensor-parallel group), so DCP records each rank's chunk with its offsets
(ChunkStorageMetadata) and any other layout (tp, pp, vpp, dp) reads back the slices it needs. Replicated copies
(data-parallel replicas, tensor-parallel replicated LayerNorms) are written once (DCP de-duplicates equal chunks);
a parameter marked ``pipeline_copy`` (the last pipeline stage's copy of a tied embedding) is not written, and is
read from the first stage's.

Layout: ``DIR/step-000010/`` holds the DCP files (``.metadata``, ``__*.distcp``) and ``config.json`` (the full
training config and the parallel layout it was written at; written last, so it marks a complete checkpoint).
``latest_checkpoint(DIR)`` finds the newest complete step.

Loading trusts nothing in the directory. DCP's ``.metadata`` is a pickle: it is read by an unpickler that builds
only the DCP metadata classes and the few torch types they hold (``torch.Size``, dtypes, layouts), so a crafted
file cannot run code; entries that DCP would read with ``torch.load(weights_only=False)`` (non-tensor "bytes"
items) are refused, and tensor data is read with ``weights_only=True``. Before any tensor is read, the checkpoint's
model shape (the fields of config.json's "model" that the caller names: the GPT LM's are lm.gpt.SHAPE_FIELDS) is
compared with this model's, and its tensor names and global shapes (.metadata) with this layout's state dict: a
difference is a :class:`ShardedCheckpointError` naming it, never a partial load.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard

from deepspeech.parallel.dims import ParallelState
from deepspeech.parallel.mappings import group_size

log = logging.getLogger(__name__)

MOMENTS = ("exp_avg", "exp_avg_sq")
METADATA, CONFIG = ".metadata", "config.json"


class ShardedCheckpointError(ValueError):
    """A checkpoint that is unsafe to read, incomplete, or written for another model."""


# What a DCP .metadata pickle may build: DCP's metadata dataclasses and the torch types inside them.
_DCP = "torch.distributed.checkpoint"
_ALLOWED = {(f"{_DCP}.metadata", n) for n in ("Metadata", "TensorStorageMetadata", "TensorProperties",
                                               "ChunkStorageMetadata", "MetadataIndex", "StorageMeta",
                                               "_MEM_FORMAT_ENCODING")}
_ALLOWED |= {(f"{_DCP}.filesystem", "_StorageInfo"), ("torch", "Size"), ("torch.serialization", "_get_layout")}
_ALLOWED |= {(m, n) for m in ("pathlib", "pathlib._local") for n in ("PosixPath", "PurePosixPath", "PureWindowsPath")}


class _MetadataUnpickler(pickle.Unpickler):
    """Builds only the classes of :data:`_ALLOWED` (exact module and name) and torch dtypes/layouts."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or (module == "torch" and isinstance(vars(torch).get(name),
                                                                             torch.dtype | torch.layout)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of checkpoint metadata")


def read_metadata(path: str | Path) -> Metadata:
    """A DCP ``.metadata`` file, unpickled with :class:`_MetadataUnpickler` and checked: tensor entries only, data
    files inside the checkpoint directory. Anything else is an ShardedCheckpointError."""
    p = Path(path)
    try:
        md = _MetadataUnpickler(io.BytesIO(p.read_bytes())).load()
    except FileNotFoundError:
        raise ShardedCheckpointError(f"{p.parent}: not a checkpoint (no {p.name})") from None
    except Exception as e:  # noqa: BLE001 -- any failure to build the metadata means the same: refuse the file
        raise ShardedCheckpointError(f"{p}: refusing to load checkpoint metadata ({type(e).__name__}: {e})") from None
    if not isinstance(md, Metadata) or not isinstance(md.state_dict_metadata, dict) or \
            not isinstance(md.storage_data, dict):
        raise ShardedCheckpointError(f"{p}: not DCP checkpoint metadata ({type(md).__name__})")
    for key, entry in md.state_dict_metadata.items():
        if not isinstance(key, str) or not isinstance(entry, TensorStorageMetadata):
            raise ShardedCheckpointError(f"{p}: entry {key!r} is not a tensor ({type(entry).__name__}); refusing it")
    for info in md.storage_data.values():
        rel = getattr(info, "relative_path", None)
        inside = isinstance(rel, str) and rel and not rel.startswith(".") and "/" not in rel and "\\" not in rel
        if not inside or not all(isinstance(getattr(info, k, None), int) for k in ("offset", "length")):
            raise ShardedCheckpointError(f"{p}: a data entry points outside the checkpoint ({rel!r}); refusing it")
    return md


class _SafeReader(FileSystemReader):
    """DCP's file reader with :func:`read_metadata` in place of a plain ``pickle.load``."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        md = read_metadata(Path(self.path) / (METADATA if rank is None else f"__{rank}{METADATA}"))
        if md.storage_meta is None:
            md.storage_meta = StorageMeta()
        md.storage_meta.load_id = self.load_id
        return md


class _TensorsOnlyPlanner(DefaultLoadPlanner):
    """DCP's load planner without its one unpickling path (non-tensor items; read_metadata refuses them too)."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        raise ShardedCheckpointError(f"checkpoint entry {read_item.dest_index.fqn!r} is not a tensor; refusing it")


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step-{step:06d}"


def _complete(p: Path) -> bool:
    return (p / METADATA).is_file() and (p / CONFIG).is_file()


def latest_checkpoint(path: str | Path) -> Path:
    """``path`` itself when it is a checkpoint (has .metadata), else its newest complete ``step-*`` directory."""
    path = Path(path)
    if (path / METADATA).is_file():
        if not (path / CONFIG).is_file():
            raise ShardedCheckpointError(f"{path}: incomplete checkpoint (no {CONFIG}; the save was interrupted)")
        return path
    steps = sorted(p for p in path.glob("step-*") if _complete(p))
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {path} (no .metadata, no complete step-* directories)")
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
    if state.is_main:  # last, atomically: it marks the checkpoint complete
        meta = {"step": step, "config": asdict(config), "layout": asdict(state.dims)}
        tmp = out / (CONFIG + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(meta, indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out / CONFIG)
    log.info("saved checkpoint %s (step %d, tp=%d pp=%d dp=%d)", out, step, state.dims.tp, state.dims.pp,
             state.dims.dp)
    return out


def check_model_config(src: Path, model: Mapping[str, Any]) -> None:
    """Compare the checkpoint's saved model config (config.json's "model") with the fields of ``model`` (name ->
    this model's value); a difference is an error."""
    try:
        saved = json.loads((src / CONFIG).read_text(encoding="utf-8"))["config"]["model"]
        if not isinstance(saved, dict):
            raise TypeError("config.model is not an object")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ShardedCheckpointError(f"{src / CONFIG}: missing or malformed ({e})") from None
    diff = [f"checkpoint has {k}={saved.get(k)!r}, this model has {k}={v!r}" for k, v in model.items()
            if saved.get(k) != v]
    if diff:
        raise ShardedCheckpointError(f"{src}: written for another model: {'; '.join(diff)}")


def _check_entries(src: Path, md: Metadata, sd: dict[str, Any]) -> None:
    """Every rank's tensor names and global shapes against the checkpoint's: missing or unexpected entries and
    shape differences are errors (DCP itself ignores unexpected ones). All ranks reach the same verdict."""
    want: dict[str, tuple[int, ...]] = {k: tuple(v.shape) for k, v in sd.items()}  # a DTensor's shape is global
    if dist.is_initialized() and dist.get_world_size() > 1:
        every: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(every, want)
        want = {k: v for part in every for k, v in part.items()}
    have = {k: tuple(e.size) for k, e in md.state_dict_metadata.items()}
    problems = [f"missing {k}" for k in sorted(set(want) - set(have))]
    problems += [f"unexpected {k}" for k in sorted(set(have) - set(want))]
    problems += [f"{k} has shape {list(have[k])} in the checkpoint, {list(want[k])} in this model"
                 for k in sorted(set(want) & set(have)) if have[k] != want[k]]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ShardedCheckpointError(f"{src}: does not fit this model: {'; '.join(problems[:3])}{more}")


def load_checkpoint(path: str | Path, named: Iterable[tuple[str, nn.Parameter]], optimizer: torch.optim.Optimizer,
                    state: ParallelState, model: Mapping[str, Any] | None = None) -> int:
    """Read model and optimizer state into this layout's shards (any layout may have written it); returns the step.
    ``model`` (the model config fields that decide parameter names and shapes, name -> value) is compared with the
    checkpoint's before anything is read."""
    src = latest_checkpoint(path)
    if model is not None:
        check_model_config(src, model)
    md = read_metadata(src / METADATA)
    _init_adam_state(optimizer)
    sd, back = _state_dict(list(named), optimizer, state, 0, for_save=False)
    _check_entries(src, md, sd)
    with warnings.catch_warnings():  # one process without a process group is a supported case, not a mistake
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(sd, storage_reader=_SafeReader(src), planner=_TensorsOnlyPlanner(),
                 no_dist=not dist.is_initialized())
    with torch.no_grad():
        for local, loaded in back:
            value = loaded.to_local() if isinstance(loaded, DTensor) else loaded
            if value.data_ptr() != local.data_ptr():
                local.copy_(value)
    step = int(sd["train.step"])
    log.info("loaded checkpoint %s (step %d) at tp=%d pp=%d dp=%d", src, step, state.dims.tp, state.dims.pp,
             state.dims.dp)
    return step
