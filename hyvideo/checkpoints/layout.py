"""Where each component lives under `--model-base`: official `ckpts/` tree or a diffusers folder (docs/DESIGN.md §1).

Only paths are resolved here (cheap, before anything loads); a missing component is one error listing what was
expected where.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hyvideo.checkpoints.common import CheckpointError
from hyvideo.config import ConfigError, condition_from_diffusers

OFFICIAL_DIT_DIR = "hunyuan-video-t2v-720p"  # both --model-resolution values use the 720p release folder
OFFICIAL_I2V_DIT_DIR = "hunyuan-video-i2v-720p"  # HunyuanVideo-I2V: DiT, VAE and LoRAs (every --i2v-resolution)
OFFICIAL_I2V_TEXT_DIR = "text_encoder_i2v"  # the whole LLaVA with its tokenizer and image processor settings
# diffusers pipeline classes (model_index.json) that take an image
I2V_PIPELINES = ("HunyuanVideoImageToVideoPipeline", "HunyuanSkyreelsImageToVideoPipeline")
OFFICIAL_DIT_FILE = "mp_rank_00_model_states.pt"
OFFICIAL_FP8_FILE = "mp_rank_00_model_states_fp8.pt"


@dataclass(frozen=True)
class ModelPaths:
    """Resolved component locations."""

    layout: str  # "official" or "diffusers"
    dit: Path  # official .pt file, or diffusers transformer/ folder
    vae: Path  # folder with config.json + weights
    text_encoder: Path  # LLM folder (official: tokenizer files inside too)
    text_encoder_2: Path  # CLIP-L folder
    tokenizer: Path | None  # diffusers: tokenizer/, official: None (inside text_encoder/)
    tokenizer_2: Path | None
    # LLaVA image processor settings (I2V with the LLaVA only): diffusers image_processor/, official the
    # text_encoder_i2v/ folder itself; None otherwise
    image_processor: Path | None = None


def locate(
    model_base: str | Path,
    dit_weight: str | Path | None = None,
    *,
    need_text: bool = True,
    need_dit: bool = True,
    i2v: bool = False,
    llava: bool | None = None,
) -> ModelPaths:
    """Resolve every component under `model_base`; `dit_weight` overrides the DiT location.

    `i2v` selects the official I2V tree (hunyuan-video-i2v-720p/, text_encoder_i2v/); `llava` (default: `i2v`)
    says the text encoder is the LLaVA, whose image processor settings are then located too (a diffusers
    HunyuanVideoImageToVideoPipeline folder; SkyReels folders keep the text-only Llama)."""
    base = Path(model_base)
    llava = i2v if llava is None else llava
    if not base.is_dir():
        raise CheckpointError(f"--model-base {base}: not a directory")
    if (base / "model_index.json").is_file():
        paths = ModelPaths(
            "diffusers",
            base / "transformer",
            base / "vae",
            base / "text_encoder",
            base / "text_encoder_2",
            base / "tokenizer",
            base / "tokenizer_2",
            base / "image_processor" if llava else None,
        )
    else:
        dit_dir = base / (OFFICIAL_I2V_DIT_DIR if i2v else OFFICIAL_DIT_DIR)
        text = base / (OFFICIAL_I2V_TEXT_DIR if llava else "text_encoder")
        paths = ModelPaths(
            "official",
            dit_dir / "transformers" / OFFICIAL_DIT_FILE,
            dit_dir / "vae",
            text,
            base / "text_encoder_2",
            None,
            None,
            text if llava else None,
        )
    if dit_weight is not None:
        paths = ModelPaths(paths.layout, Path(dit_weight), *(getattr(paths, f) for f in _AFTER_DIT))
    missing = _missing(paths, need_text, need_dit)
    if missing:
        raise CheckpointError(
            f"--model-base {base}: {paths.layout} layout, missing {'; '.join(missing)} (see ckpts/README.md)"
        )
    return paths


_AFTER_DIT = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "image_processor")

# What a component folder must hold; each tuple lists alternatives (any one will do).
VAE_FILES = (
    ("config.json",),
    ("pytorch_model.pt", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json"),
)
DIT_DIR_FILES = (
    (OFFICIAL_DIT_FILE, "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json"),
)
HF_MODEL_FILES = (
    ("config.json",),
    ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"),
)
IMAGE_PROCESSOR_FILES = (("preprocessor_config.json",),)
# A tokenizer folder needs a vocabulary file: from tokenizer_config.json alone transformers silently builds an
# empty vocabulary (every word becomes <unk>).
TOKENIZER_FILES = (("tokenizer.json", "vocab.json", "tokenizer.model"),)


def _missing(paths: ModelPaths, need_text: bool, need_dit: bool) -> list[str]:
    """Every absent component as "folder" or "folder/file (or other accepted names)", in load order."""
    wants: list[tuple[Path, tuple[tuple[str, ...], ...]]] = []
    if need_text:
        wants += [(paths.text_encoder, HF_MODEL_FILES), (paths.tokenizer or paths.text_encoder, TOKENIZER_FILES)]
        wants += [(paths.text_encoder_2, HF_MODEL_FILES), (paths.tokenizer_2 or paths.text_encoder_2, TOKENIZER_FILES)]
        if paths.image_processor is not None:
            wants.append((paths.image_processor, IMAGE_PROCESSOR_FILES))
    if need_dit:
        wants.append((paths.dit, DIT_DIR_FILES if paths.dit.is_dir() else ()))
    wants.append((paths.vae, VAE_FILES))
    missing: list[str] = []
    for folder, groups in wants:
        if not folder.exists():
            missing.append(str(folder))
            continue
        for names in groups:
            if not any((folder / name).is_file() for name in names):
                others = f" (or {', '.join(names[1:])})" if len(names) > 1 else ""
                missing.append(f"{folder / names[0]}{others}")
    return list(dict.fromkeys(missing))  # the official tree shares one folder between model and tokenizer


# ---------------------------------------------------------------------------------------------------------------
# What a folder holds: text-to-video, image-to-video and the image condition type
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelKind:
    """The tasks a `--model-base` folder serves, read from small JSON files only (nothing loads)."""

    layout: str  # "official" or "diffusers"
    t2v: bool  # a text-to-video DiT is there
    i2v: bool  # an image-to-video DiT is there
    # the I2V DiT's image_condition (token_replace / latent_concat / concat), or None when the folder does not say:
    # the released official tree has no config beside its weights, so the --i2v-condition-type flag decides and
    # loading checks it against the weights' input width (`hyvideo.checkpoints.dit.load_dit`)
    condition: str | None


def model_kind(model_base: str | Path) -> ModelKind:
    """Which tasks `model_base` serves. diffusers: the transformer's config decides (image_condition_type and
    in_channels), not the pipeline class, which both HunyuanVideo-I2V types share; a class that contradicts the
    config is an error naming both. official: the presence of hunyuan-video-t2v-720p/ and hunyuan-video-i2v-720p/,
    the I2V condition from a config.json beside its weights when there is one."""
    base = Path(model_base)
    if not base.is_dir():
        raise CheckpointError(f"--model-base {base}: not a directory")
    index = base / "model_index.json"
    if index.is_file():
        cls = _read_json(index).get("_class_name")
        condition = _dit_condition(base / "transformer" / "config.json")
        if condition is None:
            raise CheckpointError(f"{base / 'transformer' / 'config.json'}: missing (the DiT's configuration)")
        if (cls in I2V_PIPELINES) != (condition != "none"):
            raise CheckpointError(
                f"{base}: model_index.json names {cls} but transformer/config.json describes "
                + (f"an image-to-video DiT ({condition})" if condition != "none" else "a text-to-video DiT")
            )
        i2v = condition != "none"
        return ModelKind("diffusers", not i2v, i2v, condition if i2v else None)
    t2v, i2v = (base / OFFICIAL_DIT_DIR).is_dir(), (base / OFFICIAL_I2V_DIT_DIR).is_dir()
    condition = _dit_condition(base / OFFICIAL_I2V_DIT_DIR / "transformers" / "config.json") if i2v else None
    if condition == "none":
        raise CheckpointError(
            f"{base / OFFICIAL_I2V_DIT_DIR / 'transformers' / 'config.json'}: describes a text-to-video DiT "
            "in the image-to-video folder"
        )
    return ModelKind("official", t2v, i2v, condition)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _dit_condition(config: Path) -> str | None:
    """The image_condition a diffusers-named DiT config.json describes; None when the file is absent."""
    if not config.is_file():
        return None
    cfg = _read_json(config)
    try:
        return condition_from_diffusers(
            cfg.get("image_condition_type"),
            int(cfg.get("in_channels", 16)),
            int(cfg.get("out_channels") or cfg.get("in_channels", 16)),
        )
    except ConfigError as e:
        raise CheckpointError(f"{config}: {e}") from None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{config}: bad channel count ({e})") from None
