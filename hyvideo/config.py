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
    # HunyuanVideo 1.5 (docs/DESIGN.md §18); the defaults are v1's, so a v1 config never sets them
    split_qkv: bool = False  # double blocks hold img/txt_attn_{q,k,v} Linears instead of one fused *_attn_qkv
    byt5_dim: int = 0  # glyph byT5 state width (1472) fed through byt5_in; 0 = no byT5 stream
    byt5_hidden: int = 2048  # byt5_in's inner width (fixed at 2048 by the release and by diffusers)
    vision_dim: int = 0  # SigLIP state width (1152) fed through vision_in; 0 = no vision stream
    vision_tokens: int = 729  # SigLIP tokens per image (27 x 27); the DiT takes whatever count it is given
    meanflow: bool = False  # step-distilled: a second timestep embedder time_r_in(t_r) added to vec
    cond_type_embed: bool = False  # cond_type_embedding (3, C) added per stream: Qwen 0, byT5 1, vision 2
    # release metadata of a 1.5 transformer folder (no effect on the model): "480p" | "720p" and "t2v" | "i2v",
    # read from and written back to the official (ideal_resolution, ideal_task) and diffusers (target_size,
    # task_type) config keys; "" when unknown
    resolution: str = ""
    task: str = ""

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"DiT config: {msg}")

        for name in ("in_channels", "out_channels", "hidden_size", "heads", "text_states_dim", "byt5_hidden"):
            need(int(getattr(self, name)) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("depth_double", "depth_single", "depth_refiner", "text_pool_dim", "byt5_dim", "vision_dim"):
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
        need(
            not self.cond_type_embed or (self.byt5_dim > 0 and self.vision_dim > 0),
            "cond_type_embed needs the byT5 and vision streams (byt5_dim, vision_dim > 0)",
        )
        need(
            not self.split_qkv or (self.depth_single == 0 and not self.guidance_embed and self.text_pool_dim == 0),
            "split_qkv (the 1.5 layout) has no single-stream blocks, guidance or pooled text input: "
            "depth_single and text_pool_dim must be 0, guidance_embed false",
        )
        need(
            self.split_qkv or not (self.byt5_dim or self.vision_dim or self.meanflow),
            "the byT5 / vision streams and meanflow belong to the 1.5 layout (split_qkv)",
        )
        need(self.vision_tokens >= 1, f"vision_tokens must be >= 1, got {self.vision_tokens}")
        need(self.resolution in RESOLUTIONS, f"resolution must be one of {RESOLUTIONS}, got {self.resolution!r}")
        need(self.task in TASKS, f"task must be one of {TASKS}, got {self.task!r}")

    @property
    def is_15(self) -> bool:
        """A HunyuanVideo 1.5 DiT (the 1.5 layout and key names): split q/k/v, which v1 never has."""
        return self.split_qkv

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
        """Override `base` (default: the cfgdistill preset) with the diffusers-named keys present in `cfg`. A
        HunyuanVideo15Transformer3DModel config (recognised by `is_diffusers15`) reads as 1.5 whatever `base` is."""
        if is_diffusers15(cfg):
            return dit15_from_diffusers(cfg)
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

    @classmethod
    def from_official(cls, cfg: dict) -> DiTConfig:
        """A HunyuanVideo 1.5 `transformer/<version>/config.json` (the official class's argument names)."""
        return dit15_from_official(cfg)

    def to_official(self) -> dict:
        """This 1.5 config with the official class's argument names (its `transformer/<version>/config.json`)."""
        return dit15_to_official(self)

    def to_diffusers(self) -> dict:
        """This config with diffusers' key names (what `config.json` beside our test weights holds); a 1.5 config
        gets HunyuanVideo15Transformer3DModel's names."""
        if self.is_15:
            return dit15_to_diffusers(self)
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
RESOLUTIONS = ("", "480p", "720p")  # a 1.5 DiT's release metadata ("" = unknown)
TASKS = ("", "t2v", "i2v")


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
    """The preset named `preset`, overridden by a diffusers-style `config.json` when one is given and exists. A 1.5
    transformer config (official or diffusers names) gives its own configuration: `preset` does not apply."""
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
        if is_official15(cfg):
            return DiTConfig.from_official(cfg)
        return DiTConfig.from_diffusers(cfg, base)
    except (TypeError, ValueError) as e:
        msg = str(e) if isinstance(e, ConfigError) else f"bad value ({e})"
        raise ConfigError(f"{config_json}: {msg}") from None


# ---------------------------------------------------------------------------------------------------------------
# HunyuanVideo 1.5 (docs/DESIGN.md §18.1): the release, a tiny test model, and both config.json layouts
# ---------------------------------------------------------------------------------------------------------------
TARGET_SIZES = {"480p": 640, "720p": 960}  # diffusers' target_size (bucket base, pixels) of each resolution
BYT5_DIM = 1472  # byt5-small (Glyph-SDXL-v2) hidden size; the official class hard-codes it
# our own key in an official config.json for a byT5 width other than 1472 (tiny test models only; the official
# class has no such argument)
BYT5_DIM_KEY = "byt5_states_dim"
# the official pipeline config's name for the SigLIP token count; written into either transformer config.json only
# when it differs from the release's 729 (tiny test models)
VISION_TOKENS_KEY = "vision_num_semantic_tokens"
OFFICIAL15_CLASS = "HunyuanVideo_1_5_DiffusionTransformer"
DIFFUSERS15_CLASS = "HunyuanVideo15Transformer3DModel"

HYVIDEO15_DIT = DiTConfig(
    in_channels=65,  # noisy latents 32 + image condition 32 + mask 1
    out_channels=32,
    hidden_size=2048,
    heads=16,
    depth_double=54,
    depth_single=0,
    patch_size=(1, 1, 1),
    guidance_embed=False,
    text_states_dim=3584,  # Qwen2.5-VL-7B
    text_pool_dim=0,
    image_condition="latent_concat",
    split_qkv=True,
    byt5_dim=BYT5_DIM,
    vision_dim=1152,  # SigLIP so400m
    cond_type_embed=True,
)

# Tests and the tiny kit: small widths; the text stream widths are those of the tiny encoders (Qwen 32, byT5 24,
# SigLIP 16 with 9 tokens). byt5_hidden stays 2048: diffusers fixes it, and the parity tests build diffusers' model.
TINY_DIT15 = HYVIDEO15_DIT.replace(
    hidden_size=64,
    heads=4,
    depth_double=2,
    rope_axes=(4, 6, 6),
    text_states_dim=32,
    byt5_dim=24,
    vision_dim=16,
    vision_tokens=9,
)


def is_official15(cfg: dict) -> bool:
    """An official 1.5 transformer config: its class name, or the official argument names with the byT5 flag."""
    return cfg.get("_class_name") == OFFICIAL15_CLASS or ("mm_double_blocks_depth" in cfg and "glyph_byT5_v2" in cfg)


def is_diffusers15(cfg: dict) -> bool:
    """A diffusers HunyuanVideo15Transformer3DModel config: its class name or its byT5 / image widths."""
    return cfg.get("_class_name") == DIFFUSERS15_CLASS or "text_embed_2_dim" in cfg or "image_embed_dim" in cfg


def _resolution_of_target(size: object) -> str:
    for res, px in TARGET_SIZES.items():
        if size == px:
            return res
    return ""


def dit15_from_diffusers(cfg: dict) -> DiTConfig:
    """diffusers' HunyuanVideo15Transformer3DModel config -> ours; absent keys take diffusers' defaults, which are
    the release's (HYVIDEO15_DIT)."""
    base = HYVIDEO15_DIT
    heads = int(cfg.get("num_attention_heads", base.heads))
    head_dim = int(cfg.get("attention_head_dim", base.head_dim))
    p = int(cfg.get("patch_size", base.patch_size[1]))
    c_in = int(cfg.get("in_channels", base.in_channels))
    task = cfg.get("task_type", "")
    return base.replace(
        in_channels=c_in,
        out_channels=int(cfg.get("out_channels", base.out_channels) or c_in),  # null: = in_channels, as diffusers
        heads=heads,
        hidden_size=heads * head_dim,
        depth_double=int(cfg.get("num_layers", base.depth_double)),
        depth_refiner=int(cfg.get("num_refiner_layers", base.depth_refiner)),
        mlp_ratio=float(cfg.get("mlp_ratio", base.mlp_ratio)),
        patch_size=(int(cfg.get("patch_size_t", base.patch_size[0])), p, p),
        qk_norm=str(cfg.get("qk_norm", base.qk_norm)),
        text_states_dim=int(cfg.get("text_embed_dim", base.text_states_dim)),
        byt5_dim=int(cfg.get("text_embed_2_dim", base.byt5_dim)),
        vision_dim=int(cfg.get("image_embed_dim", base.vision_dim)),
        rope_theta=float(cfg.get("rope_theta", base.rope_theta)),
        rope_axes=tuple(int(a) for a in cfg.get("rope_axes_dim", base.rope_axes)),
        meanflow=bool(cfg.get("use_meanflow", False)),
        vision_tokens=int(cfg.get(VISION_TOKENS_KEY, base.vision_tokens)),
        resolution=_resolution_of_target(cfg.get("target_size")),
        task=task if task in TASKS else "",
    )


def dit15_to_diffusers(c: DiTConfig) -> dict:
    """A 1.5 config with HunyuanVideo15Transformer3DModel's argument names (ConfigError if diffusers' class cannot
    hold it: it always has the byT5 (inner width 2048), vision and cond-type inputs, square patches, no guidance
    or pooled text input)."""
    fits = c.byt5_dim and c.vision_dim and c.cond_type_embed and c.byt5_hidden == 2048
    if not fits or c.patch_size[1] != c.patch_size[2] or c.guidance_embed or c.text_pool_dim:
        raise ConfigError(f"DiT config: diffusers' HunyuanVideo15Transformer3DModel cannot hold {c}")
    return {
        "_class_name": DIFFUSERS15_CLASS,
        "in_channels": c.in_channels,
        "out_channels": c.out_channels,
        "num_attention_heads": c.heads,
        "attention_head_dim": c.head_dim,
        "num_layers": c.depth_double,
        "num_refiner_layers": c.depth_refiner,
        "mlp_ratio": c.mlp_ratio,
        "patch_size": c.patch_size[1],
        "patch_size_t": c.patch_size[0],
        "qk_norm": c.qk_norm,
        "text_embed_dim": c.text_states_dim,
        "text_embed_2_dim": c.byt5_dim,
        "image_embed_dim": c.vision_dim,
        "rope_theta": c.rope_theta,
        "rope_axes_dim": list(c.rope_axes),
        **({"target_size": TARGET_SIZES[c.resolution]} if c.resolution else {}),
        **({"task_type": c.task} if c.task else {}),
        "use_meanflow": c.meanflow,
        **_vision_tokens(c),
    }


def _vision_tokens(c: DiTConfig) -> dict:
    return {VISION_TOKENS_KEY: c.vision_tokens} if c.vision_tokens != HYVIDEO15_DIT.vision_tokens else {}


def dit15_from_official(cfg: dict) -> DiTConfig:
    """The official class's config -> ours. Options the release never uses and our model does not build (no
    q/k/v bias, a linear text projection, reshaped temporal channels, single blocks) are a ConfigError."""

    def refuse(ok: bool, what: str) -> None:
        if not ok:
            raise ConfigError(f"DiT config: {what} is not supported for HunyuanVideo 1.5")

    refuse(cfg.get("qkv_bias", True) is True, "qkv_bias false")
    refuse(
        cfg.get("text_projection", "single_refiner") == "single_refiner", "text_projection other than single_refiner"
    )
    refuse(cfg.get("use_attention_mask", True) is True, "use_attention_mask false")
    refuse(not cfg.get("is_reshape_temporal_channels", False), "is_reshape_temporal_channels")
    refuse(cfg.get("mlp_act_type", "gelu_tanh") == "gelu_tanh", f"mlp_act_type {cfg.get('mlp_act_type')!r}")
    refuse(cfg.get("qk_norm_type", "rms") == "rms", f"qk_norm_type {cfg.get('qk_norm_type')!r}")
    refuse(int(cfg.get("mm_single_blocks_depth", 0)) == 0, "mm_single_blocks_depth > 0")
    refuse(cfg.get("glyph_byT5_v2", True) is True, "glyph_byT5_v2 false")
    refuse(cfg.get("text_pool_type") is None, "a pooled text input (text_pool_type)")
    refuse(not cfg.get("guidance_embed", False), "guidance_embed")
    latent = int(cfg.get("in_channels", 32))
    concat = bool(cfg.get("concat_condition", True))
    out = cfg.get("out_channels")
    out = latent if out is None else int(out)
    vision = cfg.get("vision_projection", "linear") == "linear"
    patch = tuple(int(p) for p in cfg.get("patch_size", (1, 1, 1)))
    res, task = cfg.get("ideal_resolution") or "", cfg.get("ideal_task") or ""
    return HYVIDEO15_DIT.replace(
        in_channels=2 * latent + 1 if concat else latent,
        out_channels=out,
        hidden_size=int(cfg.get("hidden_size", HYVIDEO15_DIT.hidden_size)),
        heads=int(cfg.get("heads_num", HYVIDEO15_DIT.heads)),
        mlp_ratio=float(cfg.get("mlp_width_ratio", HYVIDEO15_DIT.mlp_ratio)),
        depth_double=int(cfg.get("mm_double_blocks_depth", HYVIDEO15_DIT.depth_double)),
        depth_refiner=2,  # the official class fixes the refiner depth
        patch_size=patch if len(patch) == 3 else (1, *patch),
        rope_axes=tuple(int(a) for a in cfg.get("rope_dim_list", HYVIDEO15_DIT.rope_axes)),
        rope_theta=float(cfg.get("rope_theta", HYVIDEO15_DIT.rope_theta)),
        qk_norm="rms_norm" if cfg.get("qk_norm", True) else "none",
        meanflow=bool(cfg.get("use_meanflow", False)),
        text_states_dim=int(cfg.get("text_states_dim", HYVIDEO15_DIT.text_states_dim)),
        byt5_dim=int(cfg.get(BYT5_DIM_KEY, BYT5_DIM)),
        vision_dim=int(cfg.get("vision_states_dim", HYVIDEO15_DIT.vision_dim)) if vision else 0,
        cond_type_embed=bool(cfg.get("use_cond_type_embedding", False)),
        vision_tokens=int(cfg.get(VISION_TOKENS_KEY, HYVIDEO15_DIT.vision_tokens)),
        image_condition="latent_concat" if concat else "none",
        resolution=res if res in RESOLUTIONS else "",
        task=task if task in TASKS else "",
    )


def dit15_to_official(c: DiTConfig) -> dict:
    """A 1.5 config with the official class's argument names; `in_channels` is the latent width (the class adds the
    condition and mask itself when concat_condition is set)."""
    if not c.is_15 or not c.byt5_dim or c.byt5_hidden != 2048 or c.guidance_embed or c.text_pool_dim:
        raise ConfigError(
            "DiT config: an official 1.5 config.json holds a 1.5 DiT with a byT5 stream of inner width 2048, "
            "no guidance and no pooled text input"
        )
    concat = c.image_condition == "latent_concat"
    return {
        "_class_name": OFFICIAL15_CLASS,
        "patch_size": list(c.patch_size),
        "in_channels": (c.in_channels - 1) // 2 if concat else c.in_channels,
        "concat_condition": concat,
        "out_channels": c.out_channels,
        "hidden_size": c.hidden_size,
        "heads_num": c.heads,
        "mlp_width_ratio": c.mlp_ratio,
        "mlp_act_type": "gelu_tanh",
        "mm_double_blocks_depth": c.depth_double,
        "mm_single_blocks_depth": 0,
        "rope_dim_list": list(c.rope_axes),
        "rope_theta": c.rope_theta,
        "qkv_bias": True,
        "qk_norm": c.qk_norm == "rms_norm",
        "qk_norm_type": "rms",
        "guidance_embed": False,
        "use_meanflow": c.meanflow,
        "text_projection": "single_refiner",
        "use_attention_mask": True,
        "text_states_dim": c.text_states_dim,
        "text_states_dim_2": None,
        "text_pool_type": None,
        "glyph_byT5_v2": True,
        **({BYT5_DIM_KEY: c.byt5_dim} if c.byt5_dim != BYT5_DIM else {}),
        "vision_projection": "linear" if c.vision_dim else "none",
        "vision_states_dim": c.vision_dim,
        "is_reshape_temporal_channels": False,
        "use_cond_type_embedding": c.cond_type_embed,
        "ideal_resolution": c.resolution or None,
        "ideal_task": c.task or None,
        **_vision_tokens(c),
    }


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
