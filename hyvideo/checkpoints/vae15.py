"""Load and write the HunyuanVideo 1.5 VAE in its two layouts (docs/DESIGN.md §19).

official:  vae/config.json (AutoencoderKLConv3D: ffactor_spatial, ffactor_temporal, sample_size, ...) +
           vae/diffusion_pytorch_model.safetensors with the official key names (= our module names).
diffusers: vae/config.json (AutoencoderKLHunyuanVideo15) + diffusion_pytorch_model.safetensors (or shards) with
           diffusers' names, mapped by `KEY_MAP`.
The layout is read from config.json; the tensors are the same in both, only their names differ.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal, TypeVar

import torch
from safetensors.torch import save_file

from hyvideo.checkpoints.common import (
    CheckpointError,
    StateDict,
    assign_state_dict,
    check_state_dict,
    load_safetensors_dir,
)
from hyvideo.checkpoints.verify import safetensors_dir_shapes
from hyvideo.modules.vae15 import HYVideo15VAE, VAE15Config, build_vae15, config_layout

WEIGHTS_STEM = "diffusion_pytorch_model"  # both layouts
Layout = Literal["official", "diffusers"]
V = TypeVar("V")

# official key prefix <-> diffusers key prefix; {i}, {j} level and resnet indices, {side} encoder or decoder. The
# first matching row wins (longer prefixes first); keys matching no row (conv_in, norm_out, conv_out) are the same.
KEY_MAP: tuple[tuple[str, str], ...] = (
    ("encoder.down.{i}.block.{j}.nin_shortcut.", "encoder.down_blocks.{i}.resnets.{j}.conv_shortcut."),
    ("encoder.down.{i}.block.{j}.", "encoder.down_blocks.{i}.resnets.{j}."),
    ("encoder.down.{i}.downsample.", "encoder.down_blocks.{i}.downsamplers.0."),
    ("decoder.up.{i}.block.{j}.nin_shortcut.", "decoder.up_blocks.{i}.resnets.{j}.conv_shortcut."),
    ("decoder.up.{i}.block.{j}.", "decoder.up_blocks.{i}.resnets.{j}."),
    ("decoder.up.{i}.upsample.", "decoder.up_blocks.{i}.upsamplers.0."),
    ("{side}.mid.block_1.", "{side}.mid_block.resnets.0."),
    ("{side}.mid.block_2.", "{side}.mid_block.resnets.1."),
    ("{side}.mid.attn_1.q.", "{side}.mid_block.attentions.0.to_q."),
    ("{side}.mid.attn_1.k.", "{side}.mid_block.attentions.0.to_k."),
    ("{side}.mid.attn_1.v.", "{side}.mid_block.attentions.0.to_v."),
    ("{side}.mid.attn_1.", "{side}.mid_block.attentions.0."),  # norm.gamma, proj_out
)

_FIELDS = {"i": r"(?P<i>\d+)", "j": r"(?P<j>\d+)", "side": r"(?P<side>encoder|decoder)"}


def _compile(prefix: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", prefix)  # literal, field, literal, ...
    return re.compile("".join(_FIELDS[p] if k % 2 else re.escape(p) for k, p in enumerate(parts)))


_TO_DIFFUSERS = [(_compile(a), b) for a, b in KEY_MAP]
_TO_OFFICIAL = [(_compile(b), a) for a, b in KEY_MAP]


def _rename(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str:
    for pattern, template in rules:
        m = pattern.match(key)
        if m:
            return template.format(**m.groupdict()) + key[m.end() :]
    return key


def to_diffusers_keys(sd: dict[str, V]) -> dict[str, V]:
    return {_rename(k, _TO_DIFFUSERS): v for k, v in sd.items()}


def to_official_keys(sd: dict[str, V]) -> dict[str, V]:
    return {_rename(k, _TO_OFFICIAL): v for k, v in sd.items()}


def read_vae15_config(vae_dir: str | Path) -> tuple[VAE15Config, Layout]:
    """vae_dir/config.json of either layout -> (config, layout)."""
    path = Path(vae_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        cfg = json.loads(path.read_text())
        if not isinstance(cfg, dict):
            raise TypeError("not a JSON object")
        layout = config_layout(cfg)
        return VAE15Config.from_config_dict(cfg), layout
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a usable HunyuanVideo 1.5 VAE config ({e})") from None


def load_vae15(
    vae_dir: str | Path,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> HYVideo15VAE:
    """Build on meta and assign the weights of `vae_dir` (official or diffusers layout, told by its config.json).

    `dtype` None keeps the stored dtype. The model is returned in eval mode with default tiling."""
    vae_dir = Path(vae_dir)
    config, layout = read_vae15_config(vae_dir)
    sd = load_safetensors_dir(vae_dir, WEIGHTS_STEM)
    if layout == "diffusers":
        sd = to_official_keys(sd)
    model = assign_state_dict(build_vae15(config), sd, f"{vae_dir}/{WEIGHTS_STEM}.safetensors ({layout} layout)")
    if dtype is not None or str(device) != "cpu":
        model = model.to(device=device, dtype=dtype)
    return model.eval()


def verify_vae15(vae_dir: str | Path) -> None:
    """Raise `CheckpointError` unless `vae_dir` holds a readable 1.5 config and weights that fit it (names and shapes
    from the safetensors headers; no tensor is read), so a bad VAE fails before sampling."""
    vae_dir = Path(vae_dir)
    config, layout = read_vae15_config(vae_dir)
    found = safetensors_dir_shapes(vae_dir, WEIGHTS_STEM)
    if layout == "diffusers":
        found = to_official_keys(found)
    expected = {k: v.shape for k, v in build_vae15(config).state_dict().items()}
    meta = {k: torch.empty(s, device="meta") for k, s in found.items()}
    check_state_dict(expected, meta, f"{vae_dir}/{WEIGHTS_STEM}.safetensors ({layout} layout)")


def save_vae15(model: HYVideo15VAE, vae_dir: str | Path, layout: Layout) -> Path:
    """Write config.json and diffusion_pytorch_model.safetensors in `layout` into vae_dir."""
    if layout not in ("official", "diffusers"):
        raise ValueError(f"layout must be 'official' or 'diffusers', got {layout!r}")
    vae_dir = Path(vae_dir)
    vae_dir.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    config = model.config.to_official() if layout == "official" else model.config.to_diffusers()
    (vae_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(sd if layout == "official" else to_diffusers_keys(sd), str(vae_dir / f"{WEIGHTS_STEM}.safetensors"))
    return vae_dir


def random_vae15(config: VAE15Config, seed: int = 0, dtype: torch.dtype = torch.float32) -> HYVideo15VAE:
    """A VAE with deterministic random weights (same seed -> same weights on every machine).

    Conv weights ~ N(0, 1/fan_in) so activations keep their scale; biases ~ N(0, 0.02); RMS norm gains
    ~ 1 + N(0, 0.1) so the norms are not plain normalisations."""
    gen = torch.Generator().manual_seed(seed)
    model = build_vae15(config)
    sd: StateDict = {}
    for name, p in model.state_dict().items():  # order fixed by the module structure
        if name.endswith(".gamma"):
            t = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
        elif name.endswith("weight"):
            t = torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5
        else:
            t = 0.02 * torch.randn(p.shape, generator=gen)
        sd[name] = t.to(dtype)
    return assign_state_dict(model, sd, f"random 1.5 VAE (seed {seed})").eval()
