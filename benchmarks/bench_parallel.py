"""Per-process host RAM of the DiT weights under torchrun, with FSDP2 block sharding on vs off (CPU, gloo).

Writes a mid-size random DiT (official layout, bf16), then for each mode starts N processes that load it (replicated:
`load_dit` on every rank; sharded: `load_sharded_dit`, each rank reading only its rows) and run one Ulysses
sequence-parallel forward (which gathers each sharded block just before it runs). Per rank: the bytes of weights it
holds, and RSS growth over the RSS before loading (after a warm-up forward of a tiny DiT, so code pages of the
kernels are already counted), after the load and at the peak of load + forward (/proc/self/status VmRSS, VmHWM).

The sharded CPU loader fixes glibc's mmap threshold (`return_large_frees`) so freed gathered blocks leave RSS; the
last rows repeat the sharded run with glibc's default (MALLOC_MMAP_THRESHOLD_ unset and the call skipped) to show why.

    .venv/bin/python -m benchmarks.bench_parallel [--nproc 2 --hidden 1024 --heads 16 --double 6 --single 12]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import add_dit_size_args
from hyvideo.utils.host_memory import proc_kb

ROOT = Path(__file__).resolve().parents[1]


def _child(path: str, mode: str) -> None:
    """One rank: load (replicated or sharded), one forward, report RSS growth; rank 0 prints every rank's numbers."""
    import torch
    import torch.distributed as dist

    from hyvideo.checkpoints.dit import find_dit_weights, load_dit
    from hyvideo.config import dit_config
    from hyvideo.parallel import group
    from hyvideo.parallel.sequence import SequenceParallelDiT
    from hyvideo.parallel.shard import load_sharded_dit, weight_mesh
    from hyvideo.tiny import TINY_DIT, random_dit

    world = int(os.environ["WORLD_SIZE"])
    mesh = group.init(world, 1, 1, torch.device("cpu"), 600.0)
    _, where = find_dit_weights(path)
    cfg = dit_config("HYVideo-T/2-cfgdistill", where.parent / "config.json")
    with torch.no_grad():  # warm-up: page in the bf16 kernels' code before measuring
        x = torch.randn(1, TINY_DIT.in_channels, 2, 8, 8)
        t, g = torch.full((1,), 500.0), torch.full((1,), 6000.0)
        random_dit(TINY_DIT).to(torch.bfloat16)(x, t, torch.randn(1, 16, 32), None, torch.randn(1, 32), g)
    before = proc_kb("VmRSS")
    t0 = time.perf_counter()
    if os.environ.get("BENCH_MALLOC") == "glibc default":
        import hyvideo.parallel.shard as shard

        shard.return_large_frees = lambda: False  # measure what the fixed threshold avoids
    if mode == "sharded":
        model = load_sharded_dit(path, cfg, weight_mesh(mesh.device, world), dtype=torch.bfloat16)
    else:
        model = load_dit(path, cfg, dtype=torch.bfloat16)
    load_s = time.perf_counter() - t0
    loaded = proc_kb("VmRSS")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg.in_channels, 2, 8, 8, generator=g)  # 32 image tokens
    text = torch.randn(1, 16, cfg.text_states_dim, generator=g)
    pooled = torch.randn(1, cfg.text_pool_dim, generator=g)
    sp = SequenceParallelDiT(model, mesh) if world > 1 else model
    t0 = time.perf_counter()
    with torch.no_grad():
        sp(x, torch.full((1,), 500.0), text, None, pooled, torch.full((1,), 6000.0))
    forward_s = time.perf_counter() - t0
    held = sum((p.to_local() if hasattr(p, "to_local") else p).nbytes for p in model.parameters()) / 1024
    row = torch.tensor([before, loaded, proc_kb("VmHWM"), load_s * 1e3, forward_s * 1e3, held], dtype=torch.float64)
    rows = [torch.empty_like(row) for _ in range(world)]
    dist.all_gather(rows, row)
    if mesh.rank == 0:
        keys = ("before_kb", "loaded_kb", "peak_kb", "load_ms", "forward_ms", "held_kb")
        print(json.dumps([dict(zip(keys, r.tolist(), strict=True)) for r in rows]))
    group.shutdown()


def _launch(nproc: int, path: Path, mode: str, malloc: str) -> list[dict[str, float]]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["BENCH_MALLOC"] = malloc
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd += ["-m", "benchmarks.bench_parallel", "--child", str(path), mode]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=2)
    add_dit_size_args(ap)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(*args.child)

    import torch

    from hyvideo.checkpoints.dit import save_dit_official
    from hyvideo.tiny import mid_dit_config, random_dit

    cfg = mid_dit_config(args.hidden, args.heads, args.double, args.single)
    with tempfile.TemporaryDirectory() as tmp:
        model = random_dit(cfg).to(torch.bfloat16)
        params = sum(p.numel() for p in model.parameters())
        blocks = sum(p.numel() for b in [*model.double_blocks, *model.single_blocks] for p in b.parameters())
        path = save_dit_official(model, tmp)
        del model
        mb = path.stat().st_size / 2**20
        print(f"DiT hidden {args.hidden}, {args.double}+{args.single} blocks: {params / 1e6:.0f}M parameters "
              f"({blocks / params:.0%} in blocks), bf16 file {mb:.0f} MiB; {args.nproc} processes")  # fmt: skip
        print("| weights | processes | malloc | rank | weights held MiB | RSS after load MiB | peak RSS MiB "
              "(load + forward) | load s | forward s |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        runs = [(1, "replicated", "-"), (args.nproc, "replicated", "-"), (args.nproc, "sharded", "1 MiB threshold")]
        for nproc, mode, malloc in [*runs, (args.nproc, "sharded", "glibc default")]:
            for rank, r in enumerate(_launch(nproc, path, mode, malloc)):
                load, peak = (r["loaded_kb"] - r["before_kb"]) / 1024, (r["peak_kb"] - r["before_kb"]) / 1024
                print(f"| {mode} | {nproc} | {malloc} | {rank} | {r['held_kb'] / 1024:.0f} | {load:.0f} | {peak:.0f} | "
                      f"{r['load_ms'] / 1e3:.2f} | {r['forward_ms'] / 1e3:.2f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
