"""Load and write the 884-16c-hy VAE in its two layouts; VAE keys are identical in both.

official:  vae/config.json (AutoencoderKLCausal3D names) + vae/pytorch_model.pt, whose tensors may sit under
           "state_dict" and/or carry a "vae." prefix.
diffusers: vae/config.json (AutoencoderKLHunyuanVideo names) + vae/diffusion_pytorch_model.safetensors (or shards).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from hyvideo.checkpoints.common import (
    CheckpointError,
    StateDict,
    as_state_dict,
    assign_state_dict,
    load_safetensors_dir,
    load_torch_file,
)
from hyvideo.modules.vae import HYVideoVAE, VAEConfig, build_vae

OFFICIAL_WEIGHTS = "pytorch_model.pt"
DIFFUSERS_STEM = "diffusion_pytorch_model"
PREFIX = "vae."


def read_vae_config(vae_dir: str | Path) -> VAEConfig:
    """vae_dir/config.json in either naming style."""
    path = Path(vae_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return VAEConfig.from_config_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a usable VAE config ({e})") from None


def official_state_dict(path: str | Path) -> StateDict:
    """Tensors of an official pytorch_model.pt: unwrap "state_dict", strip a "vae." prefix on every key."""
    sd = as_state_dict(load_torch_file(path), path, "state_dict")
    if all(k.startswith(PREFIX) for k in sd):
        sd = {k[len(PREFIX) :]: v for k, v in sd.items()}
    return sd


def load_vae(
    vae_dir: str | Path,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> HYVideoVAE:
    """Build on meta and assign the weights of `vae_dir` (official or diffusers layout, detected by the weight file).

    `dtype` None keeps the stored dtype. The model is returned in eval mode with default tiling.
    """
    vae_dir = Path(vae_dir)
    config = read_vae_config(vae_dir)
    official = vae_dir / OFFICIAL_WEIGHTS
    if official.is_file():
        sd, what = official_state_dict(official), str(official)
    else:
        try:
            sd, what = load_safetensors_dir(vae_dir, DIFFUSERS_STEM), f"{vae_dir}/{DIFFUSERS_STEM}.safetensors"
        except CheckpointError as e:
            raise CheckpointError(f"{vae_dir}: no {OFFICIAL_WEIGHTS} and no diffusers weights ({e})") from None
    model = assign_state_dict(build_vae(config), sd, what)
    if dtype is not None or str(device) != "cpu":
        model = model.to(device=device, dtype=dtype)
    return model.eval()


def _cpu_state_dict(model: HYVideoVAE) -> StateDict:
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def save_vae_official(model: HYVideoVAE, config: VAEConfig, vae_dir: str | Path) -> Path:
    """Write config.json (official names) and pytorch_model.pt (a bare state dict) into vae_dir."""
    vae_dir = Path(vae_dir)
    vae_dir.mkdir(parents=True, exist_ok=True)
    (vae_dir / "config.json").write_text(json.dumps(config.to_official(), indent=2) + "\n")
    torch.save(_cpu_state_dict(model), vae_dir / OFFICIAL_WEIGHTS)
    return vae_dir


def save_vae_diffusers(model: HYVideoVAE, config: VAEConfig, vae_dir: str | Path) -> Path:
    """Write config.json (diffusers names) and diffusion_pytorch_model.safetensors into vae_dir."""
    vae_dir = Path(vae_dir)
    vae_dir.mkdir(parents=True, exist_ok=True)
    (vae_dir / "config.json").write_text(json.dumps(config.to_diffusers(), indent=2) + "\n")
    save_file(_cpu_state_dict(model), str(vae_dir / f"{DIFFUSERS_STEM}.safetensors"))
    return vae_dir


def random_vae(config: VAEConfig, seed: int = 0, dtype: torch.dtype = torch.float32) -> HYVideoVAE:
    """A VAE with deterministic random weights (same seed -> same weights on every machine).

    Conv/linear weights ~ N(0, 1/fan_in) so activations keep their scale through the stack; biases ~ N(0, 0.02);
    GroupNorm affine weight ~ 1 + N(0, 0.1), bias ~ N(0, 0.1) so the norms are not identities.
    """
    gen = torch.Generator().manual_seed(seed)
    model = build_vae(config)
    sd: StateDict = {}
    for name, p in model.state_dict().items():  # sorted order is fixed by the module structure
        if "norm" in name.rsplit(".", 2)[-2]:  # GroupNorm affine: norm1, norm2, group_norm, conv_norm_out
            base = 1.0 if name.endswith("weight") else 0.0
            t = base + 0.1 * torch.randn(p.shape, generator=gen)
        elif name.endswith("weight"):
            fan_in = p[0].numel()
            t = torch.randn(p.shape, generator=gen) / fan_in**0.5
        else:
            t = 0.02 * torch.randn(p.shape, generator=gen)
        sd[name] = t.to(dtype)
    return assign_state_dict(model, sd, f"random VAE (seed {seed})").eval()
