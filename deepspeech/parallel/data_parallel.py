"""Data parallelism through PyTorch's DistributedDataParallel over an explicit data-parallel group.

Loss convention: each rank computes ``sum of its per-example losses / global example count``; DDP averages
gradients over ranks (divides by the group size), so the caller multiplies the local loss by the group size to
obtain exactly the gradient of the global-batch mean. :func:`dp_loss_scale` returns that factor.
"""

from __future__ import annotations

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from deepspeech.parallel.dims import ParallelState
from deepspeech.parallel.mappings import group_size


def wrap_data_parallel(model: nn.Module, state: ParallelState) -> nn.Module:
    """DDP over ``state.dp_group`` when it has more than one rank, else the model itself."""
    if group_size(state.dp_group) == 1:
        return model
    device_ids = [state.device.index] if state.device.type == "cuda" else None
    # Buffers (batch-norm running statistics) are computed from all-reduced statistics and so already agree.
    return DistributedDataParallel(model, device_ids=device_ids, process_group=state.dp_group,
                                   broadcast_buffers=False)


def dp_loss_scale(state: ParallelState) -> float:
    """Factor on the local loss that undoes DDP's gradient averaging (see module docstring)."""
    return float(group_size(state.dp_group))

