"""LoRA adapters for the DiT: `--lora PATH[:SCALE]` (repeatable).

A LoRA on a Linear layer W (out, in) is a pair down A (r, in), up B (out, r) with an optional `alpha`; applied with a
user scale s it gives

    W' = W + s * (alpha / r) * B @ A          (alpha defaults to r)

Accepted key names (a `.safetensors` file):
- diffusers / PEFT: `[transformer.]<diffusers module>.lora_A.weight` / `.lora_B.weight` (+ optional `.alpha`), with
  diffusers' DiT names (`transformer_blocks.0.attn.to_q`, ...). They are mapped to our (official) names with the one
  key map in `hyvideo.checkpoints.dit`; a LoRA on a part of a fused official layer (to_q/to_k/to_v of
  `img_attn_qkv`, or the q/k/v/proj_mlp parts of a single block's `linear1`) updates that part's rows only.
- official / kohya: `lora_unet_<official module with . as _>.lora_down.weight` / `.lora_up.weight` / `.alpha`
  (e.g. `lora_unet_double_blocks_0_img_attn_qkv`), or official dotted names with lora_A/lora_B.
- HunyuanVideo 1.5: the same forms with the 1.5 names: diffusers' HunyuanVideo15Transformer3DModel names
  (`transformer_blocks.0.attn.to_q` is then the whole `double_blocks.0.img_attn_q`, `context_embedder_2.linear_1`
  is `byt5_in.fc1`, ...) or the official 1.5 names. Which table applies follows the model (`rules`, default v1).
- the official image-to-video tool's kohya files (`--use-lora --lora-path`): the prefix `Hunyuan_video_I2V_lora_`
  (e.g. `Hunyuan_video_I2V_lora_double_blocks_0_img_attn_qkv.lora_down.weight`). The official loader merges these
  as W += s * B @ A and skips their `.alpha` (its trainer writes alpha, its loader never reads it), so for this
  prefix only we ignore alpha too: W' = W + s * B @ A. Other kohya files keep the usual s * alpha / r.
Keys that match no DiT layer are an error listing them (exit 2 naming the file), never silently skipped.

`merge_loras(model_or_state_dict, loras)` adds the products into the float weights (call it before any fp8
quantization); `wrap_loras(model, loras)` keeps them separate: y = x W^T + b + s (alpha/r) (x A^T) B^T.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from hyvideo.checkpoints.dit import DIFFUSERS15_RULES, DIFFUSERS_RULES, Rule, diffusers_rules
from hyvideo.errors import UsageError

FLAG = "--lora"
_PREFIXES = ("base_model.model.", "transformer.", "diffusion_model.", "model.diffusion_model.")
OFFICIAL_I2V_PREFIX = "Hunyuan_video_I2V_lora_"  # official I2V kohya files: alpha ignored (see the docstring)
_KOHYA_PREFIXES = ("lora_unet_", "lora_transformer_", OFFICIAL_I2V_PREFIX)
_SUFFIXES = {  # key ending -> role
    ".lora_A.weight": "down",
    ".lora_B.weight": "up",
    ".lora_down.weight": "down",
    ".lora_up.weight": "up",
    ".alpha": "alpha",
}


@dataclass(frozen=True)
class LoraSpec:
    """One `--lora` flag (or the official `--use-lora --lora-path --lora-scale`): a file and the user's scale s."""

    path: Path
    scale: float = 1.0
    flag: str = field(default=FLAG, compare=False)  # the flag that gave it, named in error messages


@dataclass(frozen=True)
class Target:
    """Where a LoRA lands: an official module, and the part of its rows for a fused layer."""

    module: str  # official module name, e.g. "double_blocks.0.img_attn_qkv"
    rule: Rule | None = None  # the key-map rule when the LoRA names a part of a fused / reordered official layer
    part: int = 0  # index of that part among rule.diffusers


@dataclass
class LoraDelta:
    """One low-rank update, ready to apply: W[rows] += factor * up @ down."""

    target: Target
    down: torch.Tensor  # A (r, in)
    up: torch.Tensor  # B (out_part, r)
    factor: float  # s * alpha / r
    source: str  # "file: key stem", for error messages


# ---------------------------------------------------------------------------------------------------------------
# Names: LoRA key stem -> Target
# ---------------------------------------------------------------------------------------------------------------
def _module_pattern(template: str, sep: str) -> re.Pattern:
    text = re.escape(template.replace(".", sep)).replace(re.escape("{n}"), r"(?P<n>\d+)")
    return re.compile(text + "$")


def _fill(template: str, match: re.Match) -> str:
    return template.replace("{n}", match["n"]) if "{n}" in template else template


def _name_patterns(rules: tuple[Rule, ...]) -> tuple[list, list]:
    """(dotted, underscored) patterns of a key-map table: official and diffusers module names."""
    out = []
    for sep in (".", "_"):
        out.append(
            [(_module_pattern(r.official, sep), r, None) for r in rules]
            + [(_module_pattern(d, sep), r, i) for r in rules for i, d in enumerate(r.diffusers)]
        )
    return out[0], out[1]


_NAMES = {id(t): _name_patterns(t) for t in (DIFFUSERS_RULES, DIFFUSERS15_RULES)}


def model_rules(model: object) -> tuple[Rule, ...]:
    """The key-map table of a DiT (its config's family); v1 for anything without a config (a state dict)."""
    cfg = getattr(model, "cfg", None)
    return DIFFUSERS_RULES if cfg is None else diffusers_rules(cfg)


def target_of(stem: str, rules: tuple[Rule, ...] = DIFFUSERS_RULES) -> Target | None:
    """The official module (and fused part) a LoRA key stem refers to, or None if it names no DiT layer."""
    dotted, underscored = _NAMES[id(rules)]
    kohya = stem.startswith(_KOHYA_PREFIXES)
    if kohya:
        stem = stem[len(next(p for p in _KOHYA_PREFIXES if stem.startswith(p))) :]
    else:
        for prefix in _PREFIXES:
            if stem.startswith(prefix):
                stem = stem[len(prefix) :]
                break
    for pattern, rule, part in underscored if kohya else dotted:
        m = pattern.match(stem)
        if m:
            official = _fill(rule.official, m)
            if part is None or rule.kind == "same":
                return Target(official)
            return Target(official, rule, part)
    return None


def split_key(key: str) -> tuple[str, str] | None:
    """`stem.lora_A.weight` -> (stem, "down"), ... ; None for a key that is not a LoRA tensor."""
    for suffix, role in _SUFFIXES.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return None


def group_keys(
    keys: Iterable[str], path: Path, flag: str = FLAG, rules: tuple[Rule, ...] = DIFFUSERS_RULES
) -> dict[str, tuple[Target, dict[str, str]]]:
    """stem -> (target, {role: key}); raises UsageError listing every key that maps to no DiT layer."""
    groups: dict[str, tuple[Target, dict[str, str]]] = {}
    unknown: list[str] = []
    for key in sorted(keys):
        parts = split_key(key)
        target = target_of(parts[0], rules) if parts else None
        if parts is None or target is None:
            unknown.append(key)
            continue
        stem, role = parts
        groups.setdefault(stem, (target, {}))[1][role] = key
    if unknown:
        shown = ", ".join(unknown[:8]) + (f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else "")
        raise UsageError(
            flag,
            f"{path}: {len(unknown)} key(s) match no DiT layer: {shown}; expected diffusers names "
            "(transformer.<module>.lora_A/lora_B.weight) or kohya names (lora_unet_ or Hunyuan_video_I2V_lora_ + "
            "<official module>.lora_down/lora_up.weight, .alpha)",
        )
    incomplete = [stem for stem, (_, roles) in groups.items() if not {"down", "up"} <= set(roles)]
    if incomplete:
        raise UsageError(flag, f"{path}: {len(incomplete)} layer(s) lack a down/up pair, e.g. {incomplete[0]}")
    if not groups:
        raise UsageError(flag, f"{path}: no LoRA tensors in this file")
    return groups


# ---------------------------------------------------------------------------------------------------------------
# Flags and files
# ---------------------------------------------------------------------------------------------------------------
def parse_lora_flag(text: str) -> LoraSpec:
    """`PATH` or `PATH:SCALE` (a trailing `:number` is the scale; other colons belong to the path)."""
    path, sep, tail = text.rpartition(":")
    if sep:
        try:
            scale = float(tail)
        except ValueError:
            path, scale = text, 1.0
    else:
        path, scale = text, 1.0
    if not math.isfinite(scale):
        raise UsageError(FLAG, f"{text}: SCALE must be a finite number")
    return LoraSpec(Path(path), scale)


def _keys(path: Path, flag: str = FLAG) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return list(f.keys())
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise UsageError(flag, f"{path}: not a readable .safetensors file ({str(e)[:120]})") from None


def check_lora_specs(specs: Iterable[LoraSpec], rules: tuple[Rule, ...] = DIFFUSERS_RULES) -> tuple[LoraSpec, ...]:
    """Check every LoRA file exists and its key names against the family's table `rules` (reads only the
    safetensors header)."""
    specs = tuple(specs)
    for spec in specs:
        if not spec.path.is_file():
            raise UsageError(spec.flag, f"{spec.path}: no such file; give a LoRA .safetensors file")
        if spec.path.suffix != ".safetensors":
            raise UsageError(spec.flag, f"{spec.path}: only .safetensors LoRA files are read (no pickles)")
        group_keys(_keys(spec.path, spec.flag), spec.path, spec.flag, rules)
    return specs


def read_lora(spec: LoraSpec, rules: tuple[Rule, ...] = DIFFUSERS_RULES) -> list[LoraDelta]:
    """The file's updates with their factors s * alpha / r (tensors in float32 on the CPU), names read with the
    family's table `rules`."""
    from safetensors.torch import load_file

    sd = load_file(str(spec.path))
    deltas = []
    for stem, (target, roles) in group_keys(sd, spec.path, spec.flag, rules).items():
        down, up = sd[roles["down"]].float(), sd[roles["up"]].float()
        if down.ndim != 2 or up.ndim != 2 or down.shape[0] != up.shape[1]:
            raise UsageError(
                FLAG, f"{spec.path}: {stem}: down {tuple(down.shape)} and up {tuple(up.shape)} are not a LoRA pair"
            )
        rank = down.shape[0]
        alpha = float(sd[roles["alpha"]].float().item()) if "alpha" in roles else float(rank)
        factor = spec.scale * alpha / rank
        if stem.startswith(OFFICIAL_I2V_PREFIX):  # the official I2V loader ignores alpha: W += s * B @ A
            factor = spec.scale
        deltas.append(LoraDelta(target, down, up, factor, f"{spec.path}: {stem}"))
    return deltas


def _as_deltas(loras: Iterable[LoraSpec | LoraDelta], rules: tuple[Rule, ...]) -> list[LoraDelta]:
    out: list[LoraDelta] = []
    for item in loras:
        out.extend(read_lora(item, rules) if isinstance(item, LoraSpec) else [item])
    return out


# ---------------------------------------------------------------------------------------------------------------
# Placing an update in a (possibly fused) official weight
# ---------------------------------------------------------------------------------------------------------------
def rows_and_up(delta: LoraDelta, weight_shape: torch.Size) -> tuple[int, int, torch.Tensor]:
    """(first row, end row, up matrix in official row order) of `delta` inside an official weight (out, in)."""
    out_features, in_features = weight_shape
    if delta.down.shape[1] != in_features:
        raise UsageError(FLAG, f"{delta.source}: input size {delta.down.shape[1]}, the layer takes {in_features}")
    up, start, end = delta.up, 0, out_features
    rule = delta.target.rule
    if rule is not None and rule.kind == "split":
        # part sizes from the weight itself: q, k, v are `in_features` rows each; linear1's MLP part takes the rest
        cfg = SimpleNamespace(hidden_size=in_features, mlp_hidden=out_features - 3 * in_features)
        sizes = rule.parts(cfg)  # type: ignore[arg-type, misc]
        start = sum(sizes[: delta.target.part])
        end = start + sizes[delta.target.part]
    elif rule is not None and rule.kind == "swap":  # diffusers (scale, shift) rows -> official (shift, scale)
        scale_rows, shift_rows = up.chunk(2, dim=0)
        up = torch.cat([shift_rows, scale_rows], 0)
    if up.shape[0] != end - start:
        raise UsageError(FLAG, f"{delta.source}: output size {up.shape[0]}, the layer part has {end - start}")
    return start, end, up


def _unknown_targets(deltas: list[LoraDelta], names: set[str]) -> None:
    missing = sorted({d.source for d in deltas if d.target.module + ".weight" not in names})
    if missing:
        shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise UsageError(
            FLAG, f"{len(missing)} LoRA layer(s) are not in this DiT (more blocks than the model?): {shown}"
        )


@torch.no_grad()
def merge_loras(
    target: nn.Module | MutableMapping[str, torch.Tensor], loras: Iterable[LoraSpec | LoraDelta]
) -> nn.Module | MutableMapping[str, torch.Tensor]:
    """W' = W + s * (alpha / r) * B @ A for every LoRA layer, in place, on a model or an official-named state dict.

    Each weight is updated once in float32 (all LoRAs on it summed) and cast back to its dtype; call this on the
    float weights, before any fp8 quantization. Names are read with the model's family table (v1 for a state dict).
    Returns `target`.
    """
    deltas = _as_deltas(loras, model_rules(target))
    weights = dict(target.named_parameters()) if isinstance(target, nn.Module) else target
    _unknown_targets(deltas, set(weights))
    by_module: dict[str, list[LoraDelta]] = {}
    for d in deltas:
        by_module.setdefault(d.target.module, []).append(d)
    for module, group in by_module.items():
        w = weights[module + ".weight"]
        if w.ndim != 2:
            raise UsageError(FLAG, f"{group[0].source}: {module} is not a Linear layer (weight {tuple(w.shape)})")
        merged = w.float().clone()  # (out, in)
        for d in group:
            start, end, up = rows_and_up(d, w.shape)
            merged[start:end] += d.factor * (up.to(merged.device) @ d.down.to(merged.device))
        if isinstance(target, nn.Module):
            w.copy_(merged.to(w.dtype))
        else:
            target[module + ".weight"] = merged.to(w.dtype)
    return target


class LoraLinear(nn.Module):
    """A Linear plus unmerged LoRA updates: y = base(x); y[..., rows_i] += factor_i * (x A_i^T) B_i^T."""

    def __init__(self, base: nn.Linear, deltas: list[LoraDelta]) -> None:
        super().__init__()
        self.base = base
        self.rows: list[tuple[int, int]] = []
        self.factors: list[float] = []
        self.downs = nn.ParameterList()
        self.ups = nn.ParameterList()
        for d in deltas:
            start, end, up = rows_and_up(d, base.weight.shape)
            self.rows.append((start, end))
            self.factors.append(d.factor)
            dev, dtype = base.weight.device, base.weight.dtype
            self.downs.append(nn.Parameter(d.down.to(dev, dtype), requires_grad=False))
            self.ups.append(nn.Parameter(up.to(dev, dtype), requires_grad=False))

    @property
    def weight(self) -> torch.Tensor:  # code that reads `layer.weight.dtype` keeps working
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # (..., out)
        out = y.shape[-1]
        for (start, end), factor, down, up in zip(self.rows, self.factors, self.downs, self.ups, strict=True):
            part = F.linear(F.linear(x.to(down.dtype), down), up) * factor  # (..., end - start)
            y = y + F.pad(part.to(y.dtype), (start, out - end))
        return y


def wrap_loras(model: nn.Module, loras: Iterable[LoraSpec | LoraDelta]) -> nn.Module:
    """Replace every LoRA-targeted Linear of `model` with a `LoraLinear` (weights untouched). Returns `model`."""
    deltas = _as_deltas(loras, model_rules(model))
    _unknown_targets(deltas, {n for n, _ in model.named_parameters()})
    by_module: dict[str, list[LoraDelta]] = {}
    for d in deltas:
        by_module.setdefault(d.target.module, []).append(d)
    for name, group in by_module.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = getattr(parent, child)
        if not isinstance(layer, nn.Linear):
            raise UsageError(FLAG, f"{group[0].source}: {name} is not a Linear layer")
        setattr(parent, child, LoraLinear(layer, group))
    return model


def apply_loras(model: nn.Module, loras: Iterable[LoraSpec], merge: bool = True) -> nn.Module:
    """`merge_loras` or `wrap_loras` by `merge`; logs what was applied."""
    from loguru import logger

    loras = list(loras)
    deltas = _as_deltas(loras, model_rules(model))
    (merge_loras if merge else wrap_loras)(model, deltas)
    names = ", ".join(f"{s.path.name}:{s.scale:g}" for s in loras)
    logger.info(f"LoRA {'merged' if merge else 'applied unmerged'}: {names} ({len(deltas)} layer updates)")
    return model
