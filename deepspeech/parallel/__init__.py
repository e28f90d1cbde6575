"""The shared parallel core: layout and process groups, communication functions, data parallelism.

Used by the acoustic-model trainer (deepspeech.training) and by the LM trainer; never copied.
"""

from deepspeech.parallel.data_parallel import dp_loss_scale, wrap_data_parallel
from deepspeech.parallel.dims import ParallelDims, ParallelState, destroy_parallel, init_parallel
from deepspeech.parallel.mappings import all_reduce_sum, all_reduce_sum_with_grad, group_size

__all__ = [
    "ParallelDims", "ParallelState", "init_parallel", "destroy_parallel",
    "wrap_data_parallel", "dp_loss_scale",
    "all_reduce_sum", "all_reduce_sum_with_grad", "group_size",
]
