"""The pipeline's distributed steps. Every function is a no-op (or the single-process behaviour) when the run was
not launched by torchrun with several processes, so `hyvideo.pipeline` calls them unconditionally.

Roles: rank 0 loads the text encoders and broadcasts the embeddings, logs, decodes and writes; every rank holds
1/N of the DiT blocks (FSDP2) and one chunk of the image tokens. Rank 0 finishes with a barrier that the other
ranks wait on, so a failure on rank 0 while they wait ends them too (with an error instead of exit 0).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from loguru import logger

from hyvideo.config import DiTConfig
from hyvideo.modules.dit import HYVideoDiT
from hyvideo.modules.text_encoders import TextEmbeddings
from hyvideo.parallel import group
from hyvideo.parallel.group import Mesh
from hyvideo.parallel.sequence import SequenceParallelDiT, with_cfg_parallel
from hyvideo.request import SampleRequest, UsageError
from hyvideo.sampling import CondModelFn, ModelFn

_mesh: Mesh | None = None  # set by `start` for the lifetime of the run


def current() -> Mesh | None:
    return _mesh


def is_main() -> bool:
    """True on rank 0 and in single-process runs (decided from torchrun's RANK, so usable before `start`)."""
    return int(os.environ.get("RANK", "0")) == 0


def start(req: SampleRequest) -> Mesh | None:
    """Join the job and build the rank grid when several processes run; None for a single process."""
    global _mesh
    if req.world_size <= 1:
        return None
    cfg = 2 if req.cfg_parallel else 1
    _mesh = group.init(req.ulysses_degree, req.ring_degree, cfg, torch.device(req.device), req.dist_timeout)
    logger.info(
        f"{_mesh.world} processes: ulysses {_mesh.ulysses} x ring {_mesh.ring} x cfg {_mesh.cfg}, "
        f"{'sharded' if req.shard_weights else 'replicated'} DiT weights, device {_mesh.device} on rank 0"
    )
    return _mesh


def check_heads(req: SampleRequest, cfg: DiTConfig) -> None:
    """Ulysses splits attention heads: --ulysses-degree must divide them (checked before anything loads)."""
    if cfg.heads % req.ulysses_degree:
        raise UsageError(
            "--ulysses-degree", f"{req.ulysses_degree} does not divide the DiT's {cfg.heads} attention heads"
        )


def shared_text(
    encode: Callable[[], tuple[TextEmbeddings, TextEmbeddings | None]], req: SampleRequest
) -> tuple[TextEmbeddings, TextEmbeddings | None]:
    """Rank 0 runs `encode` (loading the text encoders); the others receive the embeddings by broadcast."""
    if _mesh is None:
        return encode()
    count = 6 if req.cfg_scale > 1 else 3
    tensors = None
    if _mesh.is_main:
        cond, uncond = encode()
        tensors = [cond.llm_states, cond.llm_mask, cond.clip_pooled]
        if uncond is not None:
            tensors += [uncond.llm_states, uncond.llm_mask, uncond.clip_pooled]
    out = [t.cpu() for t in group.broadcast_tensors(tensors, count, _mesh.device)]
    cond = TextEmbeddings(*out[:3])
    return cond, (TextEmbeddings(*out[3:]) if count == 6 else None)


def load_sharded(req: SampleRequest, path: Path, cfg: DiTConfig, dtype: torch.dtype) -> HYVideoDiT | None:
    """The DiT with FSDP2-sharded blocks read straight from the checkpoint, or None when not sharding (also with
    fp8 storage or offloading, which manage the block weights themselves: those load replicated)."""
    if _mesh is None or not req.shard_weights:
        return None
    if req.use_fp8 or getattr(req, "offload", "none") != "none":
        logger.info("DiT weights replicated on every process: --shard-weights does not combine with fp8 or offload")
        return None
    from hyvideo.parallel.shard import load_sharded_dit, weight_mesh

    mesh = weight_mesh(_mesh.device, _mesh.world)
    return load_sharded_dit(path, cfg, mesh, load_key=req.load_key, dtype=dtype, device=_mesh.device)


def wrap(model: HYVideoDiT) -> HYVideoDiT:
    """Sequence parallelism around a built DiT when the image tokens are split (U x R > 1)."""
    if _mesh is None or _mesh.sp_size == 1:
        return model
    return SequenceParallelDiT(model, _mesh)  # type: ignore[return-value]  # same call signature and attributes


def guided(fn: CondModelFn, cond: TextEmbeddings, uncond: TextEmbeddings, scale: float) -> ModelFn | None:
    """--cfg-parallel: cond and uncond on the two rank halves; None when not splitting CFG."""
    if _mesh is None or _mesh.cfg == 1:
        return None
    return with_cfg_parallel(fn, cond, uncond, scale, _mesh)


def finish() -> None:
    """Every rank waits here for rank 0's outputs, then leaves the job."""
    global _mesh
    if _mesh is None:
        return
    dist.barrier()
    group.shutdown()
    _mesh = None


def abort(code: int) -> None:
    """After an error on this rank: exit now (no teardown that could wait on peers); the peers' pending
    collectives then fail at once instead of timing out, and torchrun reports this rank's exit code."""
    if not dist.is_initialized():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
