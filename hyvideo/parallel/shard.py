"""DiT weights sharded across ranks with FSDP2 (`fully_shard` per block): each rank keeps 1/N of every block's
parameters (dim-0 rows) and all-gathers one block just before it runs, freeing it again after (inference only).

Loading never materialises the full model on a rank: the model is built on the meta device, sharded, and each rank
copies only its rows out of the (memory-mapped) checkpoint, so only those pages of the file are read. The small
non-block parameters (embedders, token refiner, final layer) stay replicated.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from hyvideo.checkpoints.common import check_state_dict
from hyvideo.checkpoints.dit import build_dit, find_dit_weights, read_dit_state_dict
from hyvideo.config import DiTConfig
from hyvideo.modules.dit import HYVideoDiT
from hyvideo.utils.host_memory import set_mmap_threshold

HOST_MMAP_THRESHOLD = 1 << 20  # bytes: host buffers at least this large are mmapped, so a free returns them


def return_large_frees() -> bool:
    """Make glibc hand large freed buffers straight back to the OS (fixed mmap threshold of 1 MiB).

    By default glibc raises its mmap threshold after each large free (up to 32 MiB), so the gathered block weights
    freed after every block stay in the heap and the resident memory of a sharded CPU run climbs back towards the
    unsharded size (measured in docs/BENCHMARKS.md). Returns False where glibc is not available.
    """
    return set_mmap_threshold(HOST_MMAP_THRESHOLD)


def weight_mesh(device: torch.device, world: int) -> DeviceMesh:
    """A 1-D mesh over every rank (cfg halves and sequence ranks all hold 1/world of each block)."""
    return init_device_mesh(device.type, (world,))


def shard_blocks(model: HYVideoDiT, mesh: DeviceMesh) -> HYVideoDiT:
    """fully_shard every double/single block (works on meta-device models too)."""
    for block in [*model.double_blocks, *model.single_blocks]:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    return model


def load_sharded_dit(
    path: str | Path,
    cfg: DiTConfig,
    mesh: DeviceMesh,
    *,
    load_key: str = "module",
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> HYVideoDiT:
    """Build on meta, shard the blocks, then assign each rank's rows of every weight (cast per shard)."""
    _, where = find_dit_weights(path)
    if torch.device(device).type == "cpu":
        return_large_frees()
    sd = read_dit_state_dict(path, cfg, load_key)  # memory-mapped where the format allows
    model = shard_blocks(build_dit(cfg), mesh)
    expected = model.state_dict()
    check_state_dict({k: v.shape for k, v in expected.items()}, sd, f"DiT {where}")
    rank, world = mesh.get_local_rank(), mesh.size()
    local = {}
    for name, meta in expected.items():
        full = sd.pop(name)
        if isinstance(meta, DTensor):  # this rank's rows (FSDP2's torch.chunk split), cast alone: only they are read
            chunks = full.chunk(world, 0)
            mine = chunks[rank] if rank < len(chunks) else full[:0]
            mine = mine.to(device=device, dtype=dtype or full.dtype)
            local[name] = DTensor.from_local(mine, mesh, meta.placements, shape=full.shape, stride=full.stride())
        else:
            local[name] = full.to(device=device, dtype=dtype or full.dtype)
    del sd
    model.load_state_dict(local, strict=True, assign=True)
    return model.eval().requires_grad_(False)
