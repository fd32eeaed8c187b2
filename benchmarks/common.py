"""Pieces the benchmarks share."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

# block_out_channels, resnets per block, norm groups of the benchmarks' mid-size VAE
MID_VAE_LAYOUT = ((32, 64, 64, 64), 2, 32)
# the variables of an enclosing torchrun job, removed before launching another job (or a single process)
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")


def add_dit_size_args(ap: argparse.ArgumentParser, double: int = 6, single: int = 12) -> None:
    """--hidden/--heads/--double/--single: the random mid-size DiT a benchmark builds (`hyvideo.tiny.mid_dit_config`)."""
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--double", type=int, default=double)
    ap.add_argument("--single", type=int, default=single)


def write_mid_vae(vae_dir: Path, seed: int) -> Path:
    """The mid-size random VAE (MID_VAE_LAYOUT), fp32, in the diffusers layout."""
    # start-up: torch and the model code load only for the benchmarks that write a model
    import torch

    from hyvideo.checkpoints.vae import random_vae, save_vae_diffusers
    from hyvideo.modules.vae import VAEConfig

    channels, layers, groups = MID_VAE_LAYOUT
    cfg = VAEConfig(block_out_channels=channels, layers_per_block=layers, norm_num_groups=groups)
    return save_vae_diffusers(random_vae(cfg, seed, torch.float32), cfg, vae_dir)


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, grandchildren, ...), from /proc: torchrun's ranks run in sessions
    of their own, so stopping a timed-out job means finding them."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    out, frontier = [], [pid]
    while frontier:
        frontier = [child for child, ppid in parent.items() if ppid in frontier]
        out += frontier
    return out


# block_out_channels and resnets per block of the benchmarks' mid-size HunyuanVideo 1.5 VAE (the release:
# (128, 256, 512, 1024, 1024), 2); RMS norms, so no group count
MID_VAE15_LAYOUT = ((32, 64, 128, 256, 256), 2)


def write_mid_vae15(vae_dir: Path, seed: int, layout: str = "diffusers") -> Path:
    """The mid-size random 1.5 VAE (MID_VAE15_LAYOUT), fp32, in `layout` ("diffusers" or "official")."""
    # start-up: the model code loads only for the benchmarks that write a model
    from hyvideo.checkpoints.vae15 import random_vae15, save_vae15
    from hyvideo.modules.vae15 import VAE15Config

    channels, layers = MID_VAE15_LAYOUT
    return save_vae15(random_vae15(VAE15Config(block_out_channels=channels, layers_per_block=layers), seed), vae_dir,
                      layout)  # fmt: skip


def run_child(module: str, child: list[str], a: argparse.Namespace, env: dict[str, str] | None = None) -> dict:
    """`python -m module --child CHILD... --size H W --frames F --steps S` in a fresh process (its own peak RSS); the
    JSON object on the last line of its stdout."""
    cmd = [sys.executable, "-m", module, "--child", *child, "--size", *map(str, a.size), "--frames", str(a.frames),
           "--steps", str(a.steps)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"{child[0]} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def latents_rel_diff(ours: Path, theirs: Path) -> float:
    """||ours - theirs|| / ||theirs|| of the latents each side decoded."""
    # start-up: safetensors loads only for the benchmarks that compare latents
    from safetensors.torch import load_file

    o, t = load_file(str(ours))["latents"], load_file(str(theirs))["latents"]
    if o.shape != t.shape:
        raise RuntimeError(f"final latents differ in shape: ours {tuple(o.shape)}, diffusers {tuple(t.shape)}")
    return ((o - t).norm() / t.norm()).item()
