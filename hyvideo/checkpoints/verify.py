"""Cheap checks of weight files before the expensive work starts, so a bad file fails in seconds, not after sampling.

Only names and shapes are read (safetensors headers; the pickle index of a zip-format `.pt`, whose tensors stay
memory-mapped), then compared with the meta-built model by `check_state_dict`. A file whose tensor bytes are
corrupt but whose index is intact still passes; the real load reports it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from hyvideo.checkpoints.common import CheckpointError, check_state_dict
from hyvideo.checkpoints.vae import DIFFUSERS_STEM, OFFICIAL_WEIGHTS, official_state_dict, read_vae_config
from hyvideo.modules.vae import build_vae

Shapes = dict[str, torch.Size]


def safetensors_shapes(path: str | Path) -> Shapes:
    """Tensor names and shapes from a safetensors header (no tensor data read)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: torch.Size(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors file, truncated or corrupt? ({str(e)[:160]})") from None


def safetensors_dir_shapes(directory: str | Path, stem: str) -> Shapes:
    """Like `common.load_safetensors_dir` (single file or index + shards), headers only."""
    directory = Path(directory)
    single, index = directory / f"{stem}.safetensors", directory / f"{stem}.safetensors.index.json"
    if single.is_file():
        return safetensors_shapes(single)
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index}: not a usable safetensors index ({e})") from None
    shapes: Shapes = {}
    for shard in shards:
        shapes.update(safetensors_shapes(directory / shard))
    return shapes


def verify_vae(vae_dir: str | Path) -> None:
    """Raise `CheckpointError` unless `vae_dir` holds a readable config and weights that fit it (names, shapes)."""
    vae_dir = Path(vae_dir)
    config = read_vae_config(vae_dir)
    official = vae_dir / OFFICIAL_WEIGHTS
    if official.is_file():
        found, what = {k: v.shape for k, v in official_state_dict(official).items()}, str(official)
    else:
        found, what = safetensors_dir_shapes(vae_dir, DIFFUSERS_STEM), f"{vae_dir}/{DIFFUSERS_STEM}.safetensors"
    expected = {k: v.shape for k, v in build_vae(config).state_dict().items()}
    check_state_dict(expected, {k: torch.empty(s, device="meta") for k, s in found.items()}, what)
