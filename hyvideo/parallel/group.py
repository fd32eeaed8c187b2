"""Process groups for a torchrun job: a (cfg, ring, ulysses) grid of ranks, plus the few collectives we need.

Rank layout: rank = (c * R + r) * U + u for cfg half c (of C = 1 or 2), ring position r (of R), Ulysses position u
(of U). Ranks sharing (c, r) form a Ulysses group, ranks sharing (c, u) a ring group, ranks sharing c a
sequence-parallel group (R * U ranks holding one image-token chunk each, chunk index r * U + u), and ranks sharing
(r, u) a cfg pair. NCCL on CUDA, gloo on CPU; every collective times out after `timeout_s` instead of hanging.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # set by torchrun


def launched_by_torchrun() -> bool:
    return all(v in os.environ for v in ENV_VARS)


def env_world_size() -> int:
    """WORLD_SIZE from the torchrun environment; 1 when not launched by torchrun."""
    return int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else 1


@dataclass(frozen=True)
class Mesh:
    """This process's place in the rank grid and the groups it belongs to."""

    rank: int
    world: int
    ulysses: int  # U: heads are split U ways inside attention
    ring: int  # R: key/value chunks travel around a ring of R ranks
    cfg: int  # C: 2 when cond and uncond run on two halves of the ranks, else 1
    device: torch.device
    ulysses_group: dist.ProcessGroup
    ring_group: dist.ProcessGroup
    sp_group: dist.ProcessGroup
    cfg_group: dist.ProcessGroup | None  # None when C == 1
    ring_ranks: tuple[int, ...]  # global ranks of this ring group, by ring position

    @property
    def u_rank(self) -> int:
        return self.rank % self.ulysses

    @property
    def r_rank(self) -> int:
        return self.rank // self.ulysses % self.ring

    @property
    def c_rank(self) -> int:
        return self.rank // (self.ulysses * self.ring)

    @property
    def sp_size(self) -> int:
        return self.ulysses * self.ring

    @property
    def sp_rank(self) -> int:
        """Index of the image-token chunk this rank holds: r * U + u."""
        return self.rank % self.sp_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(ulysses: int, ring: int, cfg: int, device: torch.device, timeout_s: float) -> Mesh:
    """Join the torchrun job (env:// rendezvous, once per process) and build the groups for these degrees.
    `device` "cuda" becomes cuda:LOCAL_RANK."""
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    if ulysses * ring * cfg != world:
        raise ValueError(f"ulysses {ulysses} x ring {ring} x cfg {cfg} != world size {world}")
    timeout = timedelta(seconds=timeout_s)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl", timeout=timeout, device_id=device)
    elif not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timeout)
    U, R = ulysses, ring

    def groups(members: list[list[int]]) -> dist.ProcessGroup:
        """Create every group of a partition (all ranks must call new_group for all) and return ours."""
        mine = None
        for ranks in members:
            g = dist.new_group(ranks, timeout=timeout)
            if rank in ranks:
                mine = g
        assert mine is not None
        return mine

    grid = [[[(c * R + r) * U + u for u in range(U)] for r in range(R)] for c in range(cfg)]
    ulysses_group = groups([grid[c][r] for c in range(cfg) for r in range(R)])
    ring_members = [[grid[c][r][u] for r in range(R)] for c in range(cfg) for u in range(U)]
    ring_group = groups(ring_members)
    sp_group = groups([[x for row in grid[c] for x in row] for c in range(cfg)])
    cfg_group = groups([[grid[c][r][u] for c in range(cfg)] for r in range(R) for u in range(U)]) if cfg > 1 else None
    ring_ranks = next(tuple(m) for m in ring_members if rank in m)
    return Mesh(rank, world, U, R, cfg, device, ulysses_group, ring_group, sp_group, cfg_group, ring_ranks)


def shutdown() -> None:
    """Leave the job: every rank calls this at the same point (destroying an NCCL group waits for the peers)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def abort(code: int) -> None:
    """After an error on this rank of a running job: exit now (no teardown that could wait on peers); the peers'
    pending collectives then fail at once instead of timing out, and torchrun reports this rank's exit code. Does
    nothing outside a job."""
    if not dist.is_initialized():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# ---------------------------------------------------------------------------------------------------------------
# Broadcasting tensors of unknown shape from rank 0 (no pickling: a small int64 header carries dtype and shape)
# ---------------------------------------------------------------------------------------------------------------
DTYPES = (
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.uint8,
    torch.bool,
)
MAX_DIMS = 6


def broadcast_tensors(tensors: list[torch.Tensor] | None, count: int, device: torch.device) -> list[torch.Tensor]:
    """Rank 0 passes `count` tensors; every other rank passes None and receives copies (on `device`)."""
    header = torch.zeros(count, 2 + MAX_DIMS, dtype=torch.int64, device=device)  # (dtype index, ndim, shape...)
    if tensors is not None:
        for i, t in enumerate(tensors):
            header[i, 0], header[i, 1] = DTYPES.index(t.dtype), t.ndim
            header[i, 2 : 2 + t.ndim] = torch.tensor(t.shape)
    dist.broadcast(header, 0)
    out = []
    for i, row in enumerate(header.tolist()):
        dtype, shape = DTYPES[row[0]], row[2 : 2 + row[1]]
        wire = torch.uint8 if dtype == torch.bool else dtype  # not every backend sends bool
        if tensors is not None:
            t = tensors[i].to(device=device, dtype=wire).contiguous()
        else:
            t = torch.empty(shape, dtype=wire, device=device)
        dist.broadcast(t, 0)
        out.append(t.to(dtype))
    return out
