"""Loading the DiT: the official `mp_rank_00_model_states.pt` and diffusers-format `transformer/` folders, and for
HunyuanVideo 1.5 the official `transformer/<version>/` folder (config.json + safetensors with official key names).

Official keys equal our module names, so an official state dict loads with no mapping. The diffusers layout goes
through one table per family (`DIFFUSERS_RULES` for v1, `DIFFUSERS15_RULES` for 1.5, chosen by `diffusers_rules`),
which both directions use.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from hyvideo.checkpoints.common import (
    CheckpointError,
    StateDict,
    as_state_dict,
    assign_state_dict,
    load_safetensors,
    load_safetensors_dir,
    load_torch_file,
)
from hyvideo.config import DiTConfig, dit_config
from hyvideo.modules.dit import HYVideoDiT
from hyvideo.offload import move_releasing

OFFICIAL_FILE = "mp_rank_00_model_states.pt"
DIFFUSERS_STEM = "diffusion_pytorch_model"


# ---------------------------------------------------------------------------------------------------------------
# The key map. Each rule: official name (with {n} for a block index) -> diffusers name(s) and how tensors change.
#   "same":  one tensor, renamed
#   "split": official tensor = cat(diffusers parts, dim 0); part sizes from `parts(cfg)`
#   "swap":  official = cat(shift, scale), diffusers = cat(scale, shift)
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    official: str
    diffusers: tuple[str, ...]
    kind: str = "same"
    parts: Callable[[DiTConfig], list[int]] | None = None


def _qkv(cfg: DiTConfig) -> list[int]:
    return [cfg.hidden_size] * 3


def _linear1(cfg: DiTConfig) -> list[int]:
    return [cfg.hidden_size] * 3 + [cfg.mlp_hidden]


_R = "txt_in.individual_token_refiner.blocks.{n}"
_DR = "context_embedder.token_refiner.refiner_blocks.{n}"
_TE = "time_text_embed"

# shared by both families: the patch embedding, the text refiner, the double blocks' modulation, norms, output
# projections and MLPs, and the final layer
_SHARED_RULES: tuple[Rule, ...] = (
    Rule("img_in.proj", ("x_embedder.proj",)),
    Rule("txt_in.input_embedder", ("context_embedder.proj_in",)),
    Rule("txt_in.t_embedder.mlp.0", (f"context_embedder.{_TE}.timestep_embedder.linear_1",)),
    Rule("txt_in.t_embedder.mlp.2", (f"context_embedder.{_TE}.timestep_embedder.linear_2",)),
    Rule("txt_in.c_embedder.linear_1", (f"context_embedder.{_TE}.text_embedder.linear_1",)),
    Rule("txt_in.c_embedder.linear_2", (f"context_embedder.{_TE}.text_embedder.linear_2",)),
    Rule(f"{_R}.norm1", (f"{_DR}.norm1",)),
    Rule(f"{_R}.norm2", (f"{_DR}.norm2",)),
    Rule(f"{_R}.self_attn_qkv", (f"{_DR}.attn.to_q", f"{_DR}.attn.to_k", f"{_DR}.attn.to_v"), "split", _qkv),
    Rule(f"{_R}.self_attn_proj", (f"{_DR}.attn.to_out.0",)),
    Rule(f"{_R}.mlp.fc1", (f"{_DR}.ff.net.0.proj",)),
    Rule(f"{_R}.mlp.fc2", (f"{_DR}.ff.net.2",)),
    Rule(f"{_R}.adaLN_modulation.1", (f"{_DR}.norm_out.linear",)),
    Rule("double_blocks.{n}.img_mod.linear", ("transformer_blocks.{n}.norm1.linear",)),
    Rule("double_blocks.{n}.txt_mod.linear", ("transformer_blocks.{n}.norm1_context.linear",)),
    Rule("double_blocks.{n}.img_attn_q_norm", ("transformer_blocks.{n}.attn.norm_q",)),
    Rule("double_blocks.{n}.img_attn_k_norm", ("transformer_blocks.{n}.attn.norm_k",)),
    Rule("double_blocks.{n}.txt_attn_q_norm", ("transformer_blocks.{n}.attn.norm_added_q",)),
    Rule("double_blocks.{n}.txt_attn_k_norm", ("transformer_blocks.{n}.attn.norm_added_k",)),
    Rule("double_blocks.{n}.img_attn_proj", ("transformer_blocks.{n}.attn.to_out.0",)),
    Rule("double_blocks.{n}.txt_attn_proj", ("transformer_blocks.{n}.attn.to_add_out",)),
    Rule("double_blocks.{n}.img_mlp.fc1", ("transformer_blocks.{n}.ff.net.0.proj",)),
    Rule("double_blocks.{n}.img_mlp.fc2", ("transformer_blocks.{n}.ff.net.2",)),
    Rule("double_blocks.{n}.txt_mlp.fc1", ("transformer_blocks.{n}.ff_context.net.0.proj",)),
    Rule("double_blocks.{n}.txt_mlp.fc2", ("transformer_blocks.{n}.ff_context.net.2",)),
    Rule("final_layer.linear", ("proj_out",)),
    Rule("final_layer.adaLN_modulation.1", ("norm_out.linear",), "swap"),
)

# HunyuanVideoTransformer3DModel (v1)
DIFFUSERS_RULES: tuple[Rule, ...] = (
    *_SHARED_RULES,
    Rule("time_in.mlp.0", (f"{_TE}.timestep_embedder.linear_1",)),
    Rule("time_in.mlp.2", (f"{_TE}.timestep_embedder.linear_2",)),
    Rule("guidance_in.mlp.0", (f"{_TE}.guidance_embedder.linear_1",)),
    Rule("guidance_in.mlp.2", (f"{_TE}.guidance_embedder.linear_2",)),
    Rule("vector_in.in_layer", (f"{_TE}.text_embedder.linear_1",)),
    Rule("vector_in.out_layer", (f"{_TE}.text_embedder.linear_2",)),
    Rule(
        "double_blocks.{n}.img_attn_qkv",
        tuple(f"transformer_blocks.{{n}}.attn.to_{x}" for x in "qkv"),
        "split",
        _qkv,
    ),
    Rule(
        "double_blocks.{n}.txt_attn_qkv",
        tuple(f"transformer_blocks.{{n}}.attn.add_{x}_proj" for x in "qkv"),
        "split",
        _qkv,
    ),
    Rule(
        "single_blocks.{n}.linear1",
        tuple(f"single_transformer_blocks.{{n}}.{x}" for x in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")),
        "split",
        _linear1,
    ),
    Rule("single_blocks.{n}.linear2", ("single_transformer_blocks.{n}.proj_out",)),
    Rule("single_blocks.{n}.q_norm", ("single_transformer_blocks.{n}.attn.norm_q",)),
    Rule("single_blocks.{n}.k_norm", ("single_transformer_blocks.{n}.attn.norm_k",)),
    Rule("single_blocks.{n}.modulation.linear", ("single_transformer_blocks.{n}.norm.linear",)),
)

# HunyuanVideo15Transformer3DModel (1.5, docs/DESIGN.md §18.3): q/k/v already apart, three context streams
DIFFUSERS15_RULES: tuple[Rule, ...] = (
    *_SHARED_RULES,
    Rule("time_in.mlp.0", ("time_embed.timestep_embedder.linear_1",)),
    Rule("time_in.mlp.2", ("time_embed.timestep_embedder.linear_2",)),
    Rule("time_r_in.mlp.0", ("time_embed.timestep_embedder_r.linear_1",)),
    Rule("time_r_in.mlp.2", ("time_embed.timestep_embedder_r.linear_2",)),
    *(Rule(f"double_blocks.{{n}}.img_attn_{x}", (f"transformer_blocks.{{n}}.attn.to_{x}",)) for x in "qkv"),
    *(Rule(f"double_blocks.{{n}}.txt_attn_{x}", (f"transformer_blocks.{{n}}.attn.add_{x}_proj",)) for x in "qkv"),
    Rule("byt5_in.layernorm", ("context_embedder_2.norm",)),
    Rule("byt5_in.fc1", ("context_embedder_2.linear_1",)),
    Rule("byt5_in.fc2", ("context_embedder_2.linear_2",)),
    Rule("byt5_in.fc3", ("context_embedder_2.linear_3",)),
    Rule("vision_in.proj.0", ("image_embedder.norm_in",)),
    Rule("vision_in.proj.1", ("image_embedder.linear_1",)),
    Rule("vision_in.proj.3", ("image_embedder.linear_2",)),
    Rule("vision_in.proj.4", ("image_embedder.norm_out",)),
    Rule("cond_type_embedding", ("cond_type_embed",)),
)


def diffusers_rules(cfg: DiTConfig) -> tuple[Rule, ...]:
    """The key map of `cfg`'s family: 1.5 or v1."""
    return DIFFUSERS15_RULES if cfg.is_15 else DIFFUSERS_RULES


def _pattern(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(re.escape("{n}"), r"(?P<n>\d+)") + r"\.(?P<p>weight|bias)$")


def _patterns(rules: tuple[Rule, ...]) -> tuple[list, list]:
    """(official patterns [(pattern, rule)], diffusers patterns [(pattern, rule, part)]) of a table."""
    official = [(_pattern(r.official), r) for r in rules]
    return official, [(_pattern(d), r, i) for r in rules for i, d in enumerate(r.diffusers)]


_PATTERNS = {id(t): _patterns(t) for t in (DIFFUSERS_RULES, DIFFUSERS15_RULES)}


def _fill(template: str, n: str | None, param: str) -> str:
    return (template.replace("{n}", n) if n is not None else template) + "." + param


def official_to_diffusers(sd: Mapping[str, torch.Tensor], cfg: DiTConfig) -> StateDict:
    """Official-named state dict -> diffusers-named (fused tensors split as views, adaLN halves swapped)."""
    out: StateDict = {}
    unknown = []
    official, _ = _PATTERNS[id(diffusers_rules(cfg))]
    for key, value in sd.items():
        for pat, rule in official:
            m = pat.match(key)
            if m:
                names = [_fill(d, m["n"] if "{n}" in d else None, m["p"]) for d in rule.diffusers]
                if rule.kind == "same":
                    out[names[0]] = value
                elif rule.kind == "split":
                    out.update(zip(names, value.split(rule.parts(cfg), dim=0), strict=True))
                else:  # swap
                    shift, scale = value.chunk(2, dim=0)
                    out[names[0]] = torch.cat([scale, shift], 0)
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"official DiT state dict: {len(unknown)} keys with no diffusers name: {unknown[:5]}")
    return out


def diffusers_to_official(
    sd: Mapping[str, torch.Tensor], cfg: DiTConfig, what: str = "diffusers DiT", consume: bool = False
) -> StateDict:
    """Diffusers-named state dict -> official names (split parts fused back, adaLN halves swapped).

    With `consume=True` entries are popped from `sd` as they are converted and fused parts are released as soon as
    their tensor is built, so converting a loaded file never holds two copies of the weights.
    """
    out: StateDict = {}
    pending: dict[str, dict[int, torch.Tensor]] = {}
    rules: dict[str, Rule] = {}
    unknown = []
    _, diffusers = _PATTERNS[id(diffusers_rules(cfg))]
    for key in list(sd):
        value = sd.pop(key) if consume else sd[key]  # type: ignore[attr-defined]
        for pat, rule, i in diffusers:
            m = pat.match(key)
            if m:
                name = _fill(rule.official, m["n"] if "{n}" in rule.official else None, m["p"])
                if rule.kind == "same":
                    out[name] = value
                elif rule.kind == "swap":
                    scale, shift = value.chunk(2, dim=0)
                    out[name] = torch.cat([shift, scale], 0)
                else:
                    parts = pending.setdefault(name, {})
                    parts[i] = value
                    rules[name] = rule
                    if len(parts) == len(rule.diffusers):  # complete: fuse now and let the parts go
                        out[name] = torch.cat([parts[j] for j in range(len(parts))], 0)
                        del pending[name]
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{what}: unexpected keys {len(unknown)}: {', '.join(sorted(unknown)[:5])}")
    for name, parts in pending.items():
        n = len(rules[name].diffusers)
        absent = [rules[name].diffusers[i] for i in range(n) if i not in parts]
        raise CheckpointError(f"{what}: {name} needs all of its parts; missing {absent}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Building and loading
# ---------------------------------------------------------------------------------------------------------------
def build_dit(cfg: DiTConfig, device: torch.device | str = "meta") -> HYVideoDiT:
    """The DiT with uninitialised (meta) weights by default: no memory until a state dict is assigned."""
    with torch.device(device):
        return HYVideoDiT(cfg)


def find_dit_weights(path: str | Path) -> tuple[str, Path]:
    """Resolve a DiT weight location to ("official", file) or ("diffusers", dir)."""
    path = Path(path)
    if path.is_file():
        if path.suffix == ".safetensors":
            return "diffusers", path
        return "official", path
    if path.is_dir():
        if (path / OFFICIAL_FILE).is_file():
            return "official", path / OFFICIAL_FILE
        if any(path.glob(f"{DIFFUSERS_STEM}*.safetensors*")):
            return "diffusers", path
        raise CheckpointError(f"{path}: no {OFFICIAL_FILE} and no {DIFFUSERS_STEM}*.safetensors in this folder")
    raise CheckpointError(f"{path}: DiT weights not found")


def read_dit_state_dict(path: str | Path, cfg: DiTConfig, load_key: str = "module") -> StateDict:
    """Official-named state dict from an official `.pt`, a diffusers folder, or a single safetensors file."""
    kind, where = find_dit_weights(path)
    if kind == "official":
        return as_state_dict(load_torch_file(where), where, load_key)
    if where.is_file():
        sd = load_safetensors(where)
    else:
        sd = load_safetensors_dir(where, DIFFUSERS_STEM)
    if any(k.startswith(("double_blocks.", "single_blocks.", "img_in.")) for k in sd):
        return sd  # already official names (e.g. a converted single file)
    return diffusers_to_official(sd, cfg, str(where), consume=True)


def load_dit(
    path: str | Path,
    cfg: DiTConfig | None = None,
    *,
    preset: str = "HYVideo-T/2-cfgdistill",
    load_key: str = "module",
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> HYVideoDiT:
    """Build on meta, read weights (mmap), assign strictly, then cast/move. Host RAM stays near one copy: the cast
    goes one tensor at a time and returns each source's mapped pages as soon as its copy exists.

    `cfg` defaults to the preset overridden by a `config.json` beside the weights.
    """
    _, where = find_dit_weights(path)
    if cfg is None:
        folder = where if where.is_dir() else where.parent
        cfg = dit_config(preset, folder / "config.json")
    sd = read_dit_state_dict(path, cfg, load_key)
    check_input_width(sd, cfg, where)
    model = build_dit(cfg)
    assign_state_dict(model, sd, f"DiT {where}")
    del sd
    if dtype is not None or str(device) != "cpu":
        move_releasing(model, device, dtype)
    return model.eval().requires_grad_(False)


def check_input_width(sd: Mapping[str, torch.Tensor], cfg: DiTConfig, where: str | Path) -> None:
    """The weights' input width must be the one the configured image condition needs: 16 (text-to-video,
    token_replace), 33 (latent_concat) or 32 (SkyReels concat) for 16 latent channels. A mismatch (e.g.
    --i2v-condition-type token_replace with the 33-channel weights) is one error naming both."""
    w = sd.get("img_in.proj.weight")  # (C, in, pt, ph, pw)
    if w is None or w.ndim != 5 or w.shape[1] == cfg.in_channels:
        return  # a missing or odd tensor is reported by the strict load, by name
    c_in, c_out = int(w.shape[1]), cfg.out_channels
    fits = {c_out: "text-to-video or token_replace", 2 * c_out + 1: "latent_concat", 2 * c_out: "concat (SkyReels)"}
    raise CheckpointError(
        f"DiT {where}: the weights take {c_in} input channels ({fits.get(c_in, 'no known image condition')}), "
        f"but image_condition {cfg.image_condition!r} needs {cfg.in_channels}"
    )


# ---------------------------------------------------------------------------------------------------------------
# Writing (used by the tiny-model kit and the tests)
# ---------------------------------------------------------------------------------------------------------------
def save_dit_official(model: HYVideoDiT, folder: str | Path, load_key: str = "module") -> Path:
    """`folder/mp_rank_00_model_states.pt` = {load_key: state_dict} plus a diffusers-named `config.json`."""
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save({load_key: sd}, folder / OFFICIAL_FILE)
    (folder / "config.json").write_text(json.dumps(model.cfg.to_diffusers(), indent=2))
    return folder / OFFICIAL_FILE


def save_dit15_official(model: HYVideoDiT, folder: str | Path) -> Path:
    """An official 1.5 `transformer/<version>/` folder: the official class's `config.json` and
    `diffusion_pytorch_model.safetensors` with the official (= our) key names."""
    import json

    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.cfg.to_official(), indent=2))
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(folder / f"{DIFFUSERS_STEM}.safetensors"))
    return folder


DIT_LAYOUTS = ("official", "diffusers")


def save_dit(model: HYVideoDiT, folder: str | Path, layout: str, max_shard_bytes: int | None = None) -> Path:
    """Write `model` in `layout`: "official" (v1: `mp_rank_00_model_states.pt`; 1.5: a `transformer/<version>/`
    folder) or "diffusers" (a `transformer/` folder, sharded when over `max_shard_bytes`)."""
    if layout == "diffusers":
        return save_dit_diffusers(model, folder, max_shard_bytes)
    if layout != "official":
        raise ValueError(f"DiT layout must be one of {DIT_LAYOUTS}, got {layout!r}")
    return save_dit15_official(model, folder) if model.cfg.is_15 else save_dit_official(model, folder)


def save_dit_diffusers(model: HYVideoDiT, folder: str | Path, max_shard_bytes: int | None = None) -> Path:
    """A diffusers `transformer/` folder: config.json + safetensors (sharded with an index when over the limit)."""
    import json

    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    sd = {k: v.contiguous() for k, v in official_to_diffusers(model.state_dict(), cfg).items()}
    config = {"_class_name": "HunyuanVideoTransformer3DModel", **cfg.to_diffusers()}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if max_shard_bytes is None:
        save_file(sd, str(folder / f"{DIFFUSERS_STEM}.safetensors"))
        return folder
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k in sorted(sd):
        nbytes = sd[k].numel() * sd[k].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = sd[k]
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"{DIFFUSERS_STEM}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name))
        weight_map.update(dict.fromkeys(shard, name))
    index = {
        "metadata": {"total_size": sum(v.numel() * v.element_size() for v in sd.values())},
        "weight_map": weight_map,
    }
    (folder / f"{DIFFUSERS_STEM}.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder
