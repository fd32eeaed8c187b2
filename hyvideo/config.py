"""Model configurations and presets (docs/DESIGN.md §2.1).

One dataclass per component; presets live here. A `config.json` beside the DiT weights, written with diffusers'
HunyuanVideoTransformer3DModel key names, overrides the preset (small test models rely on it).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from hyvideo.errors import ConfigError, UsageError
from hyvideo.flags import build_parser


@dataclass(frozen=True)
class DiTConfig:
    """HYVideo-T/2 diffusion transformer. Defaults are the released 13B HYVideo-T/2-cfgdistill."""

    in_channels: int = 16  # latent channels in (VAE 884-16c-hy gives 16)
    out_channels: int = 16  # velocity channels out
    hidden_size: int = 3072  # token width; = heads * head_dim
    heads: int = 24  # attention heads in every block (refiner included)
    mlp_ratio: float = 4.0  # MLP width = hidden_size * mlp_ratio (12288)
    depth_double: int = 20  # double-stream (img/txt) blocks
    depth_single: int = 40  # single-stream blocks on cat(img, txt)
    depth_refiner: int = 2  # token-refiner blocks in txt_in
    patch_size: tuple[int, int, int] = (1, 2, 2)  # (pt, ph, pw) of the Conv3d patch embedding
    rope_axes: tuple[int, int, int] = (16, 56, 56)  # RoPE dims for (t, h, w); sum = head_dim
    rope_theta: float = 256.0
    guidance_embed: bool = True  # cfg-distilled: embedded guidance input (guidance_in)
    text_states_dim: int = 4096  # LLM hidden size (Llama-3-8B)
    text_pool_dim: int = 768  # CLIP-L pooled size
    qk_norm: str = "rms_norm"  # the release uses RMS qk-norm; "none" disables it
    norm_eps: float = 1e-6
    # how an image conditions the video (docs/DESIGN.md §17.1): "none" (text-to-video), "token_replace"
    # (HunyuanVideo-I2V: clean image latent as frame 0, its tokens modulated at t = 0; in = out),
    # "latent_concat" (HunyuanVideo-I2V 33ch: cat[latents, image latent, mask]; in = 2 out + 1) or "concat"
    # (SkyReels-V1: cat[latents, image latent], no mask; in = 2 out)
    image_condition: str = "none"

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"DiT config: {msg}")

        for name in ("in_channels", "out_channels", "hidden_size", "heads", "text_states_dim", "text_pool_dim"):
            need(int(getattr(self, name)) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("depth_double", "depth_single", "depth_refiner"):
            need(int(getattr(self, name)) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        need(
            self.hidden_size % self.heads == 0, f"hidden_size {self.hidden_size} is not divisible by heads {self.heads}"
        )
        need(
            len(self.patch_size) == 3 and min(self.patch_size) >= 1,
            f"patch_size must be 3 ints >= 1: {self.patch_size}",
        )
        need(len(self.rope_axes) == 3, f"rope_axes must have 3 entries (t, h, w), got {self.rope_axes}")
        need(
            all(a > 0 and a % 2 == 0 for a in self.rope_axes), f"rope_axes must be positive and even: {self.rope_axes}"
        )
        need(
            sum(self.rope_axes) == self.head_dim,
            f"sum(rope_axes) = {sum(self.rope_axes)} must equal head_dim = hidden_size/heads = {self.head_dim}",
        )
        need(self.mlp_ratio > 0 and self.mlp_hidden == self.hidden_size * self.mlp_ratio, "mlp_ratio must give an int")
        need(self.qk_norm in ("rms_norm", "none"), f"qk_norm must be 'rms_norm' or 'none', got {self.qk_norm!r}")
        need(self.rope_theta > 0, f"rope_theta must be > 0, got {self.rope_theta}")
        need(
            self.image_condition in IMAGE_CONDITIONS,
            f"image_condition must be one of {', '.join(IMAGE_CONDITIONS)}, got {self.image_condition!r}",
        )
        problem = condition_channels_problem(self.image_condition, self.in_channels, self.out_channels)
        need(problem is None, str(problem))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    def replace(self, **changes: object) -> DiTConfig:
        return dataclasses.replace(self, **changes)

    # diffusers' HunyuanVideoTransformer3DModel config <-> ours
    @classmethod
    def from_diffusers(cls, cfg: dict, base: DiTConfig | None = None) -> DiTConfig:
        """Override `base` (default: the cfgdistill preset) with the diffusers-named keys present in `cfg`."""
        base = base or DIT_PRESETS["HYVideo-T/2-cfgdistill"]
        kw: dict[str, object] = {}
        heads = int(cfg.get("num_attention_heads", base.heads))
        head_dim = int(cfg.get("attention_head_dim", base.head_dim))
        kw["heads"], kw["hidden_size"] = heads, heads * head_dim
        simple = {
            "in_channels": "in_channels",
            "out_channels": "out_channels",
            "num_layers": "depth_double",
            "num_single_layers": "depth_single",
            "num_refiner_layers": "depth_refiner",
            "mlp_ratio": "mlp_ratio",
            "guidance_embeds": "guidance_embed",
            "text_embed_dim": "text_states_dim",
            "pooled_projection_dim": "text_pool_dim",
            "rope_theta": "rope_theta",
            "qk_norm": "qk_norm",
        }
        for theirs, ours in simple.items():
            if cfg.get(theirs) is not None:
                kw[ours] = cfg[theirs]
        if cfg.get("out_channels") is None and "in_channels" in cfg:
            kw["out_channels"] = cfg["in_channels"]
        if "patch_size" in cfg or "patch_size_t" in cfg:
            p = int(cfg.get("patch_size", base.patch_size[1]))
            kw["patch_size"] = (int(cfg.get("patch_size_t", base.patch_size[0])), p, p)
        if "rope_axes_dim" in cfg:
            kw["rope_axes"] = tuple(int(a) for a in cfg["rope_axes_dim"])
        for ints in ("in_channels", "out_channels", "depth_double", "depth_single", "depth_refiner"):
            if ints in kw:
                kw[ints] = int(kw[ints])  # type: ignore[arg-type]
        c_in, c_out = int(kw.get("in_channels", base.in_channels)), int(kw.get("out_channels", base.out_channels))
        kw["image_condition"] = condition_from_diffusers(cfg.get("image_condition_type"), c_in, c_out)
        return dataclasses.replace(base, **kw)

    def to_diffusers(self) -> dict:
        """This config with diffusers' key names (what `config.json` beside our test weights holds)."""
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "num_attention_heads": self.heads,
            "attention_head_dim": self.head_dim,
            "num_layers": self.depth_double,
            "num_single_layers": self.depth_single,
            "num_refiner_layers": self.depth_refiner,
            "mlp_ratio": self.mlp_ratio,
            "patch_size": self.patch_size[1],
            "patch_size_t": self.patch_size[0],
            "qk_norm": self.qk_norm,
            "guidance_embeds": self.guidance_embed,
            "text_embed_dim": self.text_states_dim,
            "pooled_projection_dim": self.text_pool_dim,
            "rope_theta": self.rope_theta,
            "rope_axes_dim": list(self.rope_axes),
            # diffusers names the two HunyuanVideo-I2V types; SkyReels' concat is in_channels = 2 out alone
            **(
                {"image_condition_type": self.image_condition}
                if self.image_condition in ("token_replace", "latent_concat")
                else {}
            ),
        }


IMAGE_CONDITIONS = ("none", "token_replace", "latent_concat", "concat")


def condition_channels_problem(condition: str, c_in: int, c_out: int) -> str | None:
    """Why `condition` cannot go with in_channels `c_in` and out_channels `c_out` (both named), or None.
    "none" refuses the two concatenated widths so that a config's condition is always recoverable from diffusers'
    keys (SkyReels' 2 out carries no image_condition_type)."""
    need = {"token_replace": c_out, "latent_concat": 2 * c_out + 1, "concat": 2 * c_out}.get(condition)
    if need is not None and c_in != need:
        return (
            f"image_condition {condition!r} needs in_channels = {need} for out_channels {c_out}, got in_channels {c_in}"
        )
    if condition == "none" and c_in in (2 * c_out, 2 * c_out + 1):
        kind = "concat (SkyReels)" if c_in == 2 * c_out else "latent_concat"
        return f"in_channels {c_in} with out_channels {c_out} is the {kind} image input, but image_condition is 'none'"
    return None


def with_image_condition(cfg: DiTConfig, condition: str) -> DiTConfig:
    """`cfg` (e.g. a text-to-video preset) made into the DiT of `condition` as released: input width out, 2 out + 1
    or 2 out (16 / 33 / 32 for 16 latent channels), and no guidance input for latent_concat (the 33-channel release
    has none). For the released official I2V tree, which keeps no config beside its weights."""
    c = cfg.out_channels
    widths = {"none": cfg.in_channels, "token_replace": c, "latent_concat": 2 * c + 1, "concat": 2 * c}
    if condition not in widths:
        raise ConfigError(f"image_condition must be one of {', '.join(IMAGE_CONDITIONS)}, got {condition!r}")
    guidance = cfg.guidance_embed and condition != "latent_concat"
    return cfg.replace(image_condition=condition, in_channels=widths[condition], guidance_embed=guidance)


def condition_from_diffusers(condition_type: object, c_in: int, c_out: int) -> str:
    """Our `image_condition` from diffusers' `image_condition_type` and the channel counts; a contradiction between
    them is a ConfigError naming both."""
    if condition_type is None:
        if c_in == 2 * c_out:
            return "concat"  # SkyReels-V1 writes no type: 32 channels = 16 noisy + 16 image
        if c_in == 2 * c_out + 1:
            raise ConfigError(
                f"DiT config: in_channels {c_in} (= 2 x {c_out} + 1, the latent_concat input) "
                "but image_condition_type is null"
            )
        return "none"
    if condition_type not in ("token_replace", "latent_concat"):
        raise ConfigError(
            f"DiT config: image_condition_type {condition_type!r} is not supported (token_replace, latent_concat)"
        )
    problem = condition_channels_problem(str(condition_type), c_in, c_out)
    if problem is not None:
        raise ConfigError(f"DiT config: image_condition_type {problem.removeprefix('image_condition ')}")
    return str(condition_type)


DIT_PRESETS: dict[str, DiTConfig] = {
    "HYVideo-T/2-cfgdistill": DiTConfig(),
    "HYVideo-T/2": DiTConfig(guidance_embed=False),
}


def dit_config(preset: str, config_json: str | Path | None = None) -> DiTConfig:
    """The preset named `preset`, overridden by a diffusers-style `config.json` when one is given and exists."""
    if preset not in DIT_PRESETS:
        raise ConfigError(f"--model: unknown DiT {preset!r}; choose from {', '.join(DIT_PRESETS)}")
    base = DIT_PRESETS[preset]
    if config_json is None or not Path(config_json).is_file():
        return base
    try:
        cfg = json.loads(Path(config_json).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{config_json}: not a readable JSON file ({e})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{config_json}: expected a JSON object")
    try:
        return DiTConfig.from_diffusers(cfg, base)
    except (TypeError, ValueError) as e:
        msg = str(e) if isinstance(e, ConfigError) else f"bad value ({e})"
        raise ConfigError(f"{config_json}: {msg}") from None


# ---------------------------------------------------------------------------------------------------------------
# The official package's entry point for scripts: `from hyvideo.config import parse_args`
# ---------------------------------------------------------------------------------------------------------------
def parse_args(namespace: object | None = None, argv: list[str] | None = None):
    """Parse `argv` (default: sys.argv[1:]) with the command line's parser into an argparse Namespace holding every
    official flag (official names and defaults) plus ours, as the official `parse_args` does. A bad flag prints one
    `error:` line and exits with code 2. Values are checked in full when the Namespace is used
    (`hyvideo.inference.HunyuanVideoSampler.from_pretrained`)."""
    try:
        return build_parser().parse_args(argv, namespace=namespace)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def tile_problem(size: int, stride: int, unit: int) -> str | None:
    """Why tiles of `size` taken every `stride` (in steps of `unit`) cannot cover an axis with blended overlaps, or
    None: both multiples of `unit`, 0 < stride <= size, and the blended overlap (size - stride) at most half a tile.
    Shared by the VAE's TilingConfig and the request's --vae-tile-size/--vae-tile-stride check."""
    if size % unit or stride % unit or not 0 < stride <= size:
        return f"must be multiples of {unit} with 0 < stride <= size, got {size}/{stride}"
    if 2 * (size - stride) > size:
        return f"the blended overlap {size - stride} must be at most half the tile"
    return None
