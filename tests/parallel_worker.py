"""Run by tests/test_parallel.py under torchrun: `parallel_worker.py OUT.json WEIGHTS_DIR U,R,C,SHARD ...`.

For each rank layout (ulysses U x ring R x cfg C, DiT blocks FSDP-sharded when SHARD is 1), samples two Euler
steps of the tiny DiT on token grids that do and do not divide by U*R, with and without real CFG, and compares
the final latents with the single-process result computed on the same rank. Also one batch-2 forward with padded
text (key mask path), and TeaCache step caching around the parallel model (same skipped steps, same latents). Rank 0 writes {case: max relative error over ranks} to OUT.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from hyvideo.checkpoints.dit import save_dit_official
from hyvideo.modules.text_encoders import TextEmbeddings
from hyvideo.parallel import group
from hyvideo.parallel.sequence import SequenceParallelDiT, with_cfg_parallel
from hyvideo.parallel.shard import load_sharded_dit, weight_mesh
from hyvideo.sampling import euler, flow_sigmas, initial_noise, with_cfg, with_cond
from hyvideo.teacache import TeaCache
from hyvideo.tiny import TINY_DIT, random_dit

GRIDS = {"divides": (2, 4, 4), "pads": (1, 6, 6)}  # latent (T, H, W) -> 8 and 9 image tokens
STEPS = 2
TEACACHE_STEPS = 4
# Longest wait in a collective. Every rank also computes the single-process references, so under load ranks drift
# apart by minutes before they meet; the launch's own timeout (tests/torchrun_launch.py) is longer still.
COLLECTIVE_TIMEOUT_S = 600.0


def embeddings(seed: int) -> TextEmbeddings:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(1, 8, dtype=torch.int64)
    mask[:, 5:] = 0  # padded text (dropped for batch 1)
    return TextEmbeddings(
        torch.randn(1, 8, TINY_DIT.text_states_dim, generator=g), mask, torch.randn(1, 32, generator=g)
    )


def cond_fn(model):
    guidance = torch.full((1,), 6000.0)
    return lambda x, t, e: model(x, t, e.llm_states, e.llm_mask, e.clip_pooled, guidance)


def sample(model, grid, cfg_scale: float, cfg_split=None, steps: int = STEPS) -> torch.Tensor:
    cond, uncond = embeddings(1), embeddings(2)
    fn = cond_fn(model)
    if cfg_scale == 1:
        model_fn = with_cond(fn, cond)
    elif cfg_split is not None:
        model_fn = with_cfg_parallel(fn, cond, uncond, cfg_scale, cfg_split)
    else:
        model_fn = with_cfg(fn, cond, uncond, cfg_scale)
    return euler(model_fn, initial_noise((1, 16, *grid), [5], torch.device("cpu")), flow_sigmas(steps, 7.0))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@record  # an exception writes this rank's traceback and time to torchrun's error file (the test reports it)
def main() -> None:
    try:
        errors = run_layouts(Path(sys.argv[2]), [tuple(int(v) for v in a.split(",")) for a in sys.argv[3:]])
        worst = torch.tensor(list(errors.values()), dtype=torch.float64)
        dist.all_reduce(worst, op=dist.ReduceOp.MAX)
        if dist.get_rank() == 0:
            with open(sys.argv[1], "w") as f:
                json.dump(dict(zip(errors, worst.tolist(), strict=True)), f, indent=1)
    finally:
        group.shutdown()  # every path leaves the process group: exiting with a live gloo group can abort


def run_layouts(folder: Path, layouts: list[tuple[int, ...]]) -> dict[str, float]:
    """{case: relative error on this rank} for every layout (U, R, C, shard)."""
    dit = random_dit(TINY_DIT, seed=1)
    errors: dict[str, float] = {}
    refs: dict[tuple[str, float], torch.Tensor] = {}  # the single-process latents, the same for every layout
    for i, (U, R, C, shard) in enumerate(layouts):
        mesh = group.init(U, R, C, torch.device("cpu"), COLLECTIVE_TIMEOUT_S)
        if i == 0:  # rank 0 writes the weights the sharded loads read; every rank waits for them. Whether to wait
            # must not depend on what each rank sees on disk: a rank that found rank 0's half-written folder skipped
            # the barrier, entered the sharded load's collectives and hung the others (the flaky CI failure)
            if mesh.rank == 0:
                save_dit_official(dit, folder)
            dist.barrier()
        model = load_sharded_dit(folder, TINY_DIT, weight_mesh(mesh.device, mesh.world)) if shard else dit
        wrapped = SequenceParallelDiT(model, mesh) if U * R > 1 else model
        tag = f"U{U} R{R} C{C}{' sharded' if shard else ''}"
        if shard:  # each rank keeps exactly 1/N of every block parameter (the tiny sizes divide by N)
            params = [p for b in [*model.double_blocks, *model.single_blocks] for p in b.parameters()]
            held = sum(p.to_local().numel() for p in params) * mesh.world / sum(p.numel() for p in params)
            errors[f"{tag} held block weights x N / all - 1"] = abs(held - 1)
        for grid_name, grid in GRIDS.items():
            for cfg_scale in (1.0, 3.0):
                if C == 2 and cfg_scale == 1:
                    continue
                if (grid_name, cfg_scale) not in refs:
                    with torch.no_grad():
                        refs[grid_name, cfg_scale] = sample(dit, grid, cfg_scale)
                got = sample(wrapped, grid, cfg_scale, mesh if C == 2 else None)
                errors[f"{tag} {grid_name} cfg {cfg_scale:g}"] = rel(got, refs[grid_name, cfg_scale])
        # TeaCache around the parallel model: 4 steps, threshold huge -> steps 1 and 2 reuse the cached residual
        split = mesh if C == 2 else None
        with torch.no_grad():
            ref_cache, cache = TeaCache(dit, 1e9, TEACACHE_STEPS), TeaCache(wrapped, 1e9, TEACACHE_STEPS)
            ref = sample(ref_cache, GRIDS["pads"], 3.0, steps=TEACACHE_STEPS)
            got = sample(cache, GRIDS["pads"], 3.0, split, steps=TEACACHE_STEPS)
        errors[f"{tag} pads teacache"] = rel(got, ref)
        mine = [s.skipped for s in cache.streams]
        want = [ref_cache.streams[mesh.c_rank].skipped] if split is not None else [s.skipped for s in ref_cache.streams]
        errors[f"{tag} teacache skipped steps differ"] = float(mine != want or mine[0] != [1, 2])
        if C == 1 and U * R > 1:  # batch 2, different prompt lengths: the key-mask path
            g = torch.Generator().manual_seed(3)
            x, states = torch.randn(2, 16, 1, 6, 6, generator=g), torch.randn(2, 8, 32, generator=g)
            mask = torch.ones(2, 8, dtype=torch.int64)
            mask[0, 4:] = 0
            args = (x, torch.full((2,), 700.0), states, mask, torch.randn(2, 32, generator=g), torch.full((2,), 6e3))
            with torch.no_grad():
                errors[f"{tag} pads batch 2 masked"] = rel(wrapped(*args), dit(*args))
    return errors


if __name__ == "__main__":
    main()
