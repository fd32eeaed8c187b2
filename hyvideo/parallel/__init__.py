"""Multi-process sampling under torchrun: sequence parallelism (Ulysses x ring), cfg-parallel, sharded weights.

Everything here is applied to a built model from outside (`SequenceParallelDiT`, `shard_blocks`); the blocks only
call `Context.attn`. Rank layout: group.py; the math: attention.py; design and measurements: docs/DESIGN.md §10.
"""

from hyvideo.parallel.attention import SequenceParallelAttention, attention_lse, merge_lse
from hyvideo.parallel.group import Mesh, broadcast_tensors, env_world_size, init, launched_by_torchrun, shutdown
from hyvideo.parallel.sequence import SequenceParallelDiT, with_cfg_parallel

__all__ = [
    "Mesh",
    "SequenceParallelAttention",
    "SequenceParallelDiT",
    "attention_lse",
    "broadcast_tensors",
    "env_world_size",
    "init",
    "launched_by_torchrun",
    "merge_lse",
    "shutdown",
    "with_cfg_parallel",
]
