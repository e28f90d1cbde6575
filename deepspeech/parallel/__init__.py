"""The shared parallel core: layout and process groups (dims), communication functions (mappings), data
parallelism, Megatron tensor-parallel layers (tensor_parallel), pipeline schedules (pipeline) and sharded
checkpoints (sharded_checkpoint), and the local gloo workers that test them (workers).

Used by the acoustic-model trainer (deepspeech.training) and by the LM trainer; never copied. This package imports
only its light modules; pipeline and sharded_checkpoint are imported by name where they are used.
"""

from deepspeech.parallel.data_parallel import dp_loss_scale, wrap_data_parallel
from deepspeech.parallel.dims import (
    ParallelDims,
    ParallelState,
    PeerFailure,
    destroy_parallel,
    init_parallel,
    peer_failures_as_errors,
)
from deepspeech.parallel.mappings import all_reduce_sum, all_reduce_sum_with_grad, group_size

__all__ = [
    "ParallelDims", "ParallelState", "init_parallel", "destroy_parallel", "PeerFailure", "peer_failures_as_errors",
    "wrap_data_parallel", "dp_loss_scale",
    "all_reduce_sum", "all_reduce_sum_with_grad", "group_size",
]
