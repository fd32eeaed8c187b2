"""Tiny random-weight models for the demo and the tests (no network, no downloads).

`random_dit(cfg, seed)` gives a DiT whose weights are drawn so activations stay O(1): Linear/Conv weights
~ N(0, 1/fan_in), biases ~ N(0, 0.1^2), norm weights ~ 1 + N(0, 0.1^2). Deterministic for a seed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from hyvideo.checkpoints.dit import save_dit, save_dit_diffusers, save_dit_official
from hyvideo.checkpoints.layout import OFFICIAL_DIT_DIR, OFFICIAL_I2V_DIT_DIR
from hyvideo.checkpoints.vae import random_vae, save_vae_diffusers, save_vae_official
from hyvideo.checkpoints.vae15 import random_vae15, save_vae15
from hyvideo.choices import HV15_VERSIONS
from hyvideo.config import TINY_DIT15, DiTConfig, with_image_condition
from hyvideo.modules.dit import HYVideoDiT
from hyvideo.modules.vae import VAEConfig
from hyvideo.modules.vae15 import TINY_VAE15

TINY_DIT = DiTConfig(
    in_channels=16,
    out_channels=16,
    hidden_size=48,
    heads=2,
    depth_double=2,
    depth_single=2,
    depth_refiner=2,
    rope_axes=(4, 10, 10),
    text_states_dim=32,
    text_pool_dim=32,
)


def mid_dit_config(
    hidden: int, heads: int, double: int, single: int, *, refiner: int = 2, text_dim: int = 1024, pool_dim: int = 768
) -> DiTConfig:
    """A benchmark-size DiT whose RoPE split follows the release's (16, 56, 56) of 128 head dims."""
    hd = hidden // heads
    hw = hd * 7 // 16 // 2 * 2
    return DiTConfig(hidden_size=hidden, heads=heads, depth_double=double, depth_single=single, depth_refiner=refiner,
                     rope_axes=(hd - 2 * hw, hw, hw), text_states_dim=text_dim, text_pool_dim=pool_dim)  # fmt: skip


def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Fill every parameter in place with seeded values of a sensible scale (see module docstring)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if p.ndim > 1:
                r = r / math.sqrt(p[0].numel())
            elif name.endswith("weight"):
                r = 1 + 0.1 * r
            else:
                r = 0.1 * r
            p.copy_(r.to(p.dtype))
    return model


def random_dit(cfg: DiTConfig = TINY_DIT, seed: int = 0) -> HYVideoDiT:
    return randomize_(HYVideoDiT(cfg), seed).eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------------------------
# A complete tiny model on disk: `python -m hyvideo.tiny OUT [--layout official|diffusers]`
# ---------------------------------------------------------------------------------------------------------------
def tiny_vae_config():
    return VAEConfig(block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8)


MODEL_INDEX = {
    "_class_name": "HunyuanVideoPipeline",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "LlamaModel"],
    "text_encoder_2": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "transformer": ["diffusers", "HunyuanVideoTransformer3DModel"],
    "vae": ["diffusers", "AutoencoderKLHunyuanVideo"],
}


def write_tiny_model(root: str | Path, layout: str = "official", seed: int = 0, dit: DiTConfig = TINY_DIT) -> Path:
    """Write a complete random-weight model (DiT, VAE, both text encoders with locally trained tokenizers).

    official: root/hunyuan-video-t2v-720p/{transformers,vae}/, root/text_encoder/, root/text_encoder_2/
    diffusers: root/model_index.json, transformer/, vae/, text_encoder/, tokenizer/, text_encoder_2/, tokenizer_2/,
    scheduler/. The same seed gives the same weights in both layouts.
    """
    # start-up: tiny_text imports transformers, which the DiT/VAE helpers of this module never need
    from hyvideo.tiny_text import write_text_encoders_diffusers, write_text_encoders_official

    if layout not in ("official", "diffusers"):
        raise ValueError(f"layout must be 'official' or 'diffusers', got {layout!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_text = write_text_encoders_official if layout == "official" else write_text_encoders_diffusers
    dims = write_text(root, seed)
    cfg = dit.replace(text_states_dim=dims.llm_hidden, text_pool_dim=dims.clip_hidden)
    model = random_dit(cfg, seed)
    vae_cfg = tiny_vae_config()
    vae = random_vae(vae_cfg, seed)
    if layout == "official":
        save_dit_official(model, root / OFFICIAL_DIT_DIR / "transformers")
        save_vae_official(vae, vae_cfg, root / OFFICIAL_DIT_DIR / "vae")
    else:
        save_dit_diffusers(model, root / "transformer")
        save_vae_diffusers(vae, vae_cfg, root / "vae")
        (root / "scheduler").mkdir(exist_ok=True)
        sched = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 7.0, "num_train_timesteps": 1000}
        (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=2))
        (root / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    return root


# ---------------------------------------------------------------------------------------------------------------
# Image-to-video: `python -m hyvideo.tiny OUT --task i2v [--layout diffusers] [--condition ...]`
# ---------------------------------------------------------------------------------------------------------------
# --condition -> DiTConfig.image_condition
I2V_CONDITIONS: dict[str, str] = {
    "token_replace": "token_replace",
    "latent_concat": "latent_concat",
    "skyreels": "concat",
}
I2V_MODEL_INDEX = {
    **MODEL_INDEX,
    "_class_name": "HunyuanVideoImageToVideoPipeline",
    "text_encoder": ["transformers", "LlavaForConditionalGeneration"],
    "image_processor": ["transformers", "CLIPImageProcessor"],
}
SKYREELS_MODEL_INDEX = {**MODEL_INDEX, "_class_name": "HunyuanSkyreelsImageToVideoPipeline"}


def i2v_dit_config(condition: str, dit: DiTConfig = TINY_DIT) -> DiTConfig:
    """`dit` made into the image-to-video DiT of a `--condition` (token_replace, latent_concat, skyreels)."""
    if condition not in I2V_CONDITIONS:
        raise ValueError(f"condition must be one of {', '.join(I2V_CONDITIONS)}, got {condition!r}")
    return with_image_condition(dit, I2V_CONDITIONS[condition])  # widths and guidance input as released


def write_tiny_i2v_model(
    root: str | Path,
    layout: str = "official",
    condition: str = "token_replace",
    seed: int = 0,
    dit: DiTConfig = TINY_DIT,
) -> Path:
    """Write a complete random-weight image-to-video model.

    official (HunyuanVideo-I2V `ckpts/`): root/hunyuan-video-i2v-720p/{transformers,vae}/, root/text_encoder_i2v/
    (the whole tiny LLaVA), root/text_encoder_2/. diffusers: a `HunyuanVideoImageToVideoPipeline` folder (LLaVA
    `text_encoder/`, `image_processor/`), or with condition "skyreels" a `HunyuanSkyreelsImageToVideoPipeline`
    folder (text-only Llama, as for text-to-video); SkyReels-V1 is published in diffusers format only. The same
    seed gives the same weights in both layouts."""
    # start-up: tiny_llava and tiny_text import transformers, which the DiT/VAE helpers of this module never need
    from hyvideo.tiny_llava import write_llava  # start-up (transformers)
    from hyvideo.tiny_text import write_text_encoders_diffusers  # start-up (transformers)

    if layout not in ("official", "diffusers"):
        raise ValueError(f"layout must be 'official' or 'diffusers', got {layout!r}")
    cfg = i2v_dit_config(condition, dit)
    if condition == "skyreels" and layout == "official":
        raise ValueError("SkyReels-V1 is published in diffusers format only: use layout 'diffusers'")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if condition == "skyreels":
        dims = write_text_encoders_diffusers(root, seed)
    else:
        dims = write_llava(root, layout, seed)
    model = random_dit(cfg.replace(text_states_dim=dims.llm_hidden, text_pool_dim=dims.clip_hidden), seed)
    vae_cfg = tiny_vae_config()
    vae = random_vae(vae_cfg, seed)
    if layout == "official":
        save_dit_official(model, root / OFFICIAL_I2V_DIT_DIR / "transformers")
        save_vae_official(vae, vae_cfg, root / OFFICIAL_I2V_DIT_DIR / "vae")
        return root
    save_dit_diffusers(model, root / "transformer")
    save_vae_diffusers(vae, vae_cfg, root / "vae")
    (root / "scheduler").mkdir(exist_ok=True)
    sched = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 7.0, "num_train_timesteps": 1000}
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=2))
    index = SKYREELS_MODEL_INDEX if condition == "skyreels" else I2V_MODEL_INDEX
    (root / "model_index.json").write_text(json.dumps(index, indent=2))
    return root


# ---------------------------------------------------------------------------------------------------------------
# HunyuanVideo 1.5: `python -m hyvideo.tiny OUT --family 1.5 [--task i2v] [--version V] [--layout diffusers]`
# official: transformer/<version>/, vae/, scheduler/, text_encoder/{llm, byt5-small, Glyph-SDXL-v2}/,
# vision_encoder/siglip/{image_encoder, feature_extractor}/. diffusers: model_index.json, transformer/, vae/,
# scheduler/, guider/, text_encoder/, tokenizer/, text_encoder_2/, tokenizer_2/ (+ image_encoder/,
# feature_extractor/ for image-to-video). The same seed gives the same weights in both layouts.
# ---------------------------------------------------------------------------------------------------------------
# the tiny encoders' widths (hyvideo/tiny_qwen.py; tests/test_tiny15.py checks they agree)
TINY_TEXT_DIMS = {"text_states_dim": 32, "byt5_dim": 24, "vision_dim": 48, "vision_tokens": 16}
PIPELINES = {"t2v": "HunyuanVideo15Pipeline", "i2v": "HunyuanVideo15ImageToVideoPipeline"}


def tiny_dit15(version: str, dit: DiTConfig = TINY_DIT15) -> DiTConfig:
    """The tiny DiT of a release `version` (its resolution, task and meanflow), with the tiny encoders' widths."""
    spec = HV15_VERSIONS[version]
    return dit.replace(**TINY_TEXT_DIMS, resolution=spec.resolution, task=spec.task, meanflow=spec.step_distilled)


def model_index(task: str) -> dict:
    index = {
        "_class_name": PIPELINES[task],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen2_5_VLTextModel"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer_2": ["transformers", "ByT5Tokenizer"],
        "transformer": ["diffusers", "HunyuanVideo15Transformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLHunyuanVideo15"],
        "guider": ["diffusers", "ClassifierFreeGuidance"],
    }
    if task == "i2v":
        index["image_encoder"] = ["transformers", "SiglipVisionModel"]
        index["feature_extractor"] = ["transformers", "SiglipImageProcessor"]
    return index


def write_tiny15_model(
    root: str | Path, layout: str = "official", version: str = "480p_t2v", seed: int = 0, dit: DiTConfig = TINY_DIT15
) -> Path:
    """Write a complete random-weight 1.5 model of release `version` (e.g. "480p_i2v_step_distilled") in `layout`."""
    # start-up: tiny_qwen imports transformers, which the DiT/VAE writers of this module never need
    from hyvideo.tiny_qwen import write_tiny_text15  # start-up (transformers)

    if layout not in ("official", "diffusers"):
        raise ValueError(f"layout must be 'official' or 'diffusers', got {layout!r}")
    if version not in HV15_VERSIONS:
        raise ValueError(f"version must be one of {', '.join(HV15_VERSIONS)}, got {version!r}")
    spec = HV15_VERSIONS[version]
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_tiny_text15(root, layout, seed, vision=layout == "official" or spec.task == "i2v")
    model = randomize_(HYVideoDiT(tiny_dit15(version, dit)), seed)
    save_dit(model, root / "transformer" / (version if layout == "official" else ""), layout)
    save_vae15(random_vae15(TINY_VAE15, seed), root / "vae", layout)
    _write_json(
        root / "scheduler" / "scheduler_config.json",
        {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": spec.flow_shift, "num_train_timesteps": 1000},
    )
    if layout == "diffusers":
        _write_json(root / "guider" / "guider_config.json",
                    {"_class_name": "ClassifierFreeGuidance", "guidance_scale": spec.cfg_scale})  # fmt: skip
        _write_json(root / "model_index.json", model_index(spec.task))
    return root


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m hyvideo.tiny", description="Write a tiny random-weight model.")
    ap.add_argument("out", type=Path, help="output folder (used as --model-base)")
    ap.add_argument("--layout", choices=("official", "diffusers"), default="official")
    ap.add_argument("--task", choices=("t2v", "i2v"), default="t2v", help="text-to-video (default) or image-to-video")
    ap.add_argument(
        "--condition",
        choices=tuple(I2V_CONDITIONS),
        default=None,
        help="with --task i2v: the image condition (default token_replace; skyreels needs --layout diffusers)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--family", choices=("v1", "1.5"), default="v1", help="HunyuanVideo (default) or HunyuanVideo 1.5")
    ap.add_argument(
        "--version",
        choices=tuple(HV15_VERSIONS),
        default=None,
        help="with --family 1.5: the release version to imitate (default 480p_<task>)",
    )
    args = ap.parse_args(argv)
    if args.family == "1.5":
        if args.condition is not None:
            ap.error("--condition is for v1 image-to-video; 1.5 has one image condition")
        version = args.version or f"480p_{args.task}"
        if HV15_VERSIONS[version].task != args.task:
            ap.error(f"--version {version} is a {HV15_VERSIONS[version].task} model; it contradicts --task {args.task}")
        write_tiny15_model(args.out, args.layout, version, args.seed)
        print(f"wrote a tiny {args.layout}-layout HunyuanVideo 1.5 model ({version}) to {args.out}")
        return 0
    if args.version is not None:
        ap.error("--version needs --family 1.5")
    if args.task == "t2v":
        if args.condition is not None:
            ap.error("--condition needs --task i2v")
        write_tiny_model(args.out, args.layout, args.seed)
        print(f"wrote a tiny {args.layout}-layout model to {args.out}")
        return 0
    condition = args.condition or "token_replace"
    if condition == "skyreels" and args.layout == "official":
        ap.error("--condition skyreels: SkyReels-V1 is published in diffusers format only; add --layout diffusers")
    write_tiny_i2v_model(args.out, args.layout, condition, args.seed)
    print(f"wrote a tiny {args.layout}-layout image-to-video model ({condition}) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
