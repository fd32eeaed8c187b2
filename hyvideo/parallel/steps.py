"""Who runs which step of a video: one runner chosen per run, applied from outside the pipeline.

`Local` is a single process: it runs every step. `Torchrun` is one rank of a job of U x R (x 2) processes sharing
one video: rank 0 loads the text encoders and broadcasts the embeddings; every rank holds 1/N of the DiT blocks
(FSDP2) and one chunk of the image tokens; rank 0 alone decodes and writes.

The end of a job: every rank leaves the process group together right after the last collective (the end of
denoising), so no rank ever waits for another's decode, however long it takes. Non-main ranks then exit 0; a failure
of rank 0 while decoding or writing is reported by rank 0's own exit code (and so by torchrun's).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from loguru import logger

from hyvideo.config import DiTConfig
from hyvideo.errors import UsageError
from hyvideo.modules.dit import HYVideoDiT
from hyvideo.modules.text_encoders import TextEmbeddings
from hyvideo.parallel import group
from hyvideo.parallel.group import Mesh
from hyvideo.parallel.sequence import SequenceParallelDiT, with_cfg_parallel
from hyvideo.parallel.shard import load_sharded_dit, weight_mesh
from hyvideo.request import SampleRequest
from hyvideo.sampling import CondModelFn, ModelFn, with_cfg

# (prompt, negative prompt or None), each a model family's text conditioning: a dataclass whose fields are all
# tensors (TextEmbeddings; HunyuanVideo 1.5's Text15Embeddings)
Embeddings = tuple[Any, Any | None]
# Reads the DiT straight into this process's share of the block weights: (path, config, dtype) -> model
WeightReader = Callable[[Path, DiTConfig, torch.dtype], HYVideoDiT]


def is_main_process() -> bool:
    """True on rank 0 and in single-process runs (from torchrun's RANK, so usable before a runner starts)."""
    return int(os.environ.get("RANK", "0")) == 0


def check_degrees(req: SampleRequest, cfg: DiTConfig) -> None:
    """Ulysses splits attention heads: --ulysses-degree must divide them (checked before anything loads)."""
    if cfg.heads % req.parallel.ulysses_degree:
        raise UsageError(
            "--ulysses-degree", f"{req.parallel.ulysses_degree} does not divide the DiT's {cfg.heads} attention heads"
        )


class Local:
    """A single process: every step runs here, on the request's device."""

    is_main = True  # decodes and writes

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def encode(self, encode: Callable[[], Embeddings]) -> Embeddings:
        """The embeddings of the prompt and the negative prompt: `encode` loads the text encoders and runs them."""
        return encode()

    def weight_reader(self, req: SampleRequest) -> WeightReader | None:
        """How to read the DiT into a share of the block weights; None: the plain loaders (whole weights)."""
        return None

    def wrap(self, model: HYVideoDiT) -> HYVideoDiT:
        """The DiT as this runner executes it (sequence parallel under torchrun)."""
        return model

    def guided(self, fn: CondModelFn, cond: Any, uncond: Any, scale: float) -> ModelFn:
        """Real classifier-free guidance around `fn` (cond / uncond: a family's text conditioning)."""
        return with_cfg(fn, cond, uncond, scale)

    def finish(self) -> None:
        """Called once, after the last denoising step of the run."""


class Torchrun(Local):
    """This rank of a torchrun job sharing one video."""

    def __init__(self, req: SampleRequest, mesh: Mesh, embeddings: type = TextEmbeddings) -> None:
        super().__init__(mesh.device)
        self.mesh = mesh
        self.is_main = mesh.is_main
        self.cfg_pass = req.sampling.cfg_scale > 1
        self.embeddings = embeddings  # the dataclass `encode` returns, rebuilt by the other ranks

    def encode(self, encode: Callable[[], Embeddings]) -> Embeddings:
        """Rank 0 runs `encode` (loading the text encoders); the others receive the embeddings by broadcast: every
        field of the runner's `embeddings` dataclass, the prompt's, then with real CFG the negative prompt's."""
        kind = self.embeddings
        names = [f.name for f in dataclasses.fields(kind)]
        n = len(names)
        count = n * (2 if self.cfg_pass else 1)
        tensors = None
        if self.mesh.is_main:
            pair = [e for e in encode() if e is not None]
            if len(pair) * n != count or any(type(e) is not kind for e in pair):  # the others would wait or misread
                got = ", ".join(type(e).__name__ for e in pair)
                raise TypeError(f"this runner broadcasts {count // n} {kind.__name__}; the text encoding gave {got}")
            tensors = [getattr(e, name) for e in pair for name in names]
        out = [t.cpu() for t in group.broadcast_tensors(tensors, count, self.mesh.device)]
        return kind(*out[:n]), (kind(*out[n:]) if count > n else None)

    def weight_reader(self, req: SampleRequest) -> WeightReader | None:
        """FSDP2-sharded blocks read straight from the checkpoint with --shard-weights; not with fp8 storage or
        offloading, which manage the block weights themselves (those load replicated)."""
        if not req.parallel.shard_weights:
            return None
        if req.dit.use_fp8 or req.runtime.offload != "none":
            logger.info("DiT weights replicated on every process: --shard-weights does not combine with fp8 or offload")
            return None
        mesh, load_key = weight_mesh(self.mesh.device, self.mesh.world), req.dit.load_key

        def read(path: Path, cfg: DiTConfig, dtype: torch.dtype) -> HYVideoDiT:
            return load_sharded_dit(path, cfg, mesh, load_key=load_key, dtype=dtype, device=self.mesh.device)

        return read

    def wrap(self, model: HYVideoDiT) -> HYVideoDiT:
        if self.mesh.sp_size == 1:
            return model
        return SequenceParallelDiT(model, self.mesh)  # type: ignore[return-value]  # same call signature and attributes

    def guided(self, fn: CondModelFn, cond: Any, uncond: Any, scale: float) -> ModelFn:
        """--cfg-parallel: cond and uncond on the two rank halves."""
        if self.mesh.cfg == 1:
            return super().guided(fn, cond, uncond, scale)
        return with_cfg_parallel(fn, cond, uncond, scale, self.mesh)

    def finish(self) -> None:
        """Every rank leaves the process group here, together, right after the last collective: what follows (rank
        0's decode and write) involves no other rank, so no one waits on it."""
        group.shutdown()


def start(req: SampleRequest, embeddings: type = TextEmbeddings) -> Local:
    """The runner of this request: join the torchrun job and build the rank grid when several processes share the
    video (the device becomes this rank's GPU), else a single process on the request's device. `embeddings`: the
    dataclass of tensors the text encoding gives (HunyuanVideo 1.5: Text15Embeddings), what the other ranks get."""
    par = req.parallel
    if par.world_size <= 1:
        return Local(torch.device(req.runtime.device))
    cfg = 2 if par.cfg_parallel else 1
    mesh = group.init(par.ulysses_degree, par.ring_degree, cfg, torch.device(req.runtime.device), par.dist_timeout)
    logger.info(
        f"{mesh.world} processes: ulysses {mesh.ulysses} x ring {mesh.ring} x cfg {mesh.cfg}, "
        f"{'sharded' if par.shard_weights else 'replicated'} DiT weights, device {mesh.device} on rank 0"
    )
    return Torchrun(req, mesh, embeddings)
