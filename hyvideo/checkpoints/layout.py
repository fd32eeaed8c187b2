"""Where each component lives under `--model-base`: official `ckpts/` tree or a diffusers folder (docs/DESIGN.md §1).

Only paths are resolved here (cheap, before anything loads); a missing component is one error listing what was
expected where.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from hyvideo.checkpoints.common import CheckpointError
from hyvideo.choices import HV15_PIPELINES, HV15_TARGET_SIZES, HV15_VERSIONS
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
    return _absent(wants)


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


# ---------------------------------------------------------------------------------------------------------------
# HunyuanVideo 1.5: the family, the version and the components (docs/DESIGN.md §21)
# ---------------------------------------------------------------------------------------------------------------
def model_family(model_base: str | Path) -> str:
    """The family of the weights, "1.5" or "v1", from the folder's shape alone: a diffusers folder by its pipeline
    class (model_index.json), an official tree by `transformer/` (the 1.5 release; the v1 trees hold
    hunyuan-video-*-720p/ instead)."""
    base = Path(model_base)
    if not base.is_dir():
        raise CheckpointError(f"--model-base {base}: not a directory")
    index = base / "model_index.json"
    if index.is_file():
        return "1.5" if _read_json(index).get("_class_name") in HV15_PIPELINES else "v1"
    return "1.5" if (base / "transformer").is_dir() else "v1"


@dataclass(frozen=True)
class Model15Paths:
    """Where each HunyuanVideo 1.5 component lives (official `ckpts/` tree or a diffusers folder)."""

    layout: str  # "official" or "diffusers"
    version: str  # e.g. "480p_i2v_step_distilled" (a key of hyvideo.choices.HV15_VERSIONS)
    dit: Path  # official transformer/<version>/, diffusers transformer/ (config.json + safetensors)
    vae: Path
    llm: Path  # Qwen2.5-VL: official text_encoder/llm/ (the whole model), diffusers text_encoder/ (its language model)
    llm_tokenizer: Path
    byt5: Path  # official text_encoder/byt5-small/ (google/byt5-small), diffusers text_encoder_2/ (already Glyph)
    byt5_tokenizer: Path
    glyph: Path | None  # official text_encoder/Glyph-SDXL-v2/ (the byT5 weights and glyph vocabularies); diffusers None
    vision: Path | None  # SigLIP; None for a diffusers text-to-video folder (official: always the path, maybe absent)
    vision_processor: Path | None
    scheduler: Path
    guider: Path | None  # diffusers guider/ (its guidance_scale is the folder's default); official None


_VERSION_RE = re.compile(r"(480p|720p)_(t2v|i2v)(_step_distilled|_distilled(_sparse)?)?")
GLYPH_FILES = (
    ("checkpoints/byt5_model.pt",),
    ("assets/color_idx.json",),
    ("assets/multilingual_10-lang_idx.json",),
)
BYT5_TOKENIZER_FILES = (("tokenizer_config.json",),)  # byte-level: no vocabulary file
DIT15_FILES = (
    ("config.json",),
    ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json"),
)
VAE15_FILES = DIT15_FILES  # config.json + diffusers-named safetensors in both layouts
SCHEDULER_FILES = (("scheduler_config.json",),)
GUIDER_FILES = (("guider_config.json",),)


def official_versions15(model_base: str | Path) -> tuple[str, ...]:
    """The DiT versions under an official tree's transformer/, sorted; folders of other names (the
    super-resolution DiTs, anything else) are left out."""
    root = Path(model_base) / "transformer"
    if not root.is_dir():
        return ()
    return tuple(sorted(d.name for d in root.iterdir() if d.is_dir() and _VERSION_RE.fullmatch(d.name)))


def folder_version15(model_base: str | Path) -> str:
    """The version a diffusers 1.5 folder holds: resolution from the DiT config's target_size, task from the
    pipeline class, step distillation from use_meanflow, cfg distillation from the guider's guidance_scale 1.

    The class decides the task, not the DiT config's task_type: diffusers reads only the class (the DiT is the same
    for both tasks), and its converter writes task_type "i2v" for the 480p text-to-video weights."""
    base = Path(model_base)
    cls = _read_json(base / "model_index.json").get("_class_name")
    if cls not in HV15_PIPELINES:
        raise CheckpointError(f"{base / 'model_index.json'}: {cls} is not a HunyuanVideo 1.5 pipeline")
    config_path = base / "transformer" / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: missing (the DiT's configuration)")
    config = _read_json(config_path)
    target = config.get("target_size", 640)  # diffusers' default
    resolution = next((r for r, size in HV15_TARGET_SIZES.items() if size == target), None)
    if resolution is None:
        sizes = ", ".join(f"{s} ({r})" for r, s in HV15_TARGET_SIZES.items())
        raise CheckpointError(f"{config_path}: target_size {target!r} is not a released size ({sizes})")
    task = HV15_PIPELINES[cls]
    if config.get("use_meanflow", False):
        name = f"{resolution}_{task}_step_distilled"
    else:
        guidance, _ = folder_settings15(base)
        name = f"{resolution}_{task}" + ("_distilled" if guidance is not None and guidance <= 1.0 else "")
    if name not in HV15_VERSIONS:
        raise CheckpointError(
            f"{base}: describes {name} (target_size {target}, {cls}, use_meanflow "
            f"{bool(config.get('use_meanflow', False))}), not a released version ({', '.join(HV15_VERSIONS)})"
        )
    return name


def folder_settings15(model_base: str | Path) -> tuple[float | None, float | None]:
    """(guidance_scale, flow shift) a diffusers 1.5 folder sets in guider/guider_config.json and
    scheduler/scheduler_config.json; None for a file that is absent (the missing-file check names it)."""
    base = Path(model_base)
    values: list[float | None] = []
    for path, key in ((base / "guider" / "guider_config.json", "guidance_scale"),
                      (base / "scheduler" / "scheduler_config.json", "shift")):  # fmt: skip
        if not path.is_file():
            values.append(None)
            continue
        value = _read_json(path).get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise CheckpointError(f"{path}: {key} must be a number > 0, got {value!r}")
        values.append(float(value))
    return values[0], values[1]


def locate15(
    model_base: str | Path, version: str | None, *, need_text: bool = True, need_dit: bool = True
) -> Model15Paths:
    """Resolve every 1.5 component under `model_base` for `version` (None: the only one there, or the one a
    diffusers folder holds); a missing component, an absent version or a version the folder does not hold is one
    CheckpointError. `need_text`/`need_dit` as for `locate` (decoding latents needs only the VAE)."""
    base = Path(model_base)
    if not base.is_dir():
        raise CheckpointError(f"--model-base {base}: not a directory")
    if (base / "model_index.json").is_file():
        found = folder_version15(base)
        if version is not None and version != found:
            raise CheckpointError(f"--model-base {base}: holds {found}, not {version}")
        i2v = HV15_VERSIONS[found].task == "i2v"
        paths = Model15Paths(
            "diffusers", found, base / "transformer", base / "vae", base / "text_encoder", base / "tokenizer",
            base / "text_encoder_2", base / "tokenizer_2", None,
            base / "image_encoder" if i2v else None, base / "feature_extractor" if i2v else None,
            base / "scheduler", base / "guider",
        )  # fmt: skip
    else:
        found_versions = official_versions15(base)
        if version is None:
            if len(found_versions) != 1:
                listed = ", ".join(found_versions) or "none"
                raise CheckpointError(f"--model-base {base}: choose a version of transformer/ (found: {listed})")
            version = found_versions[0]
        elif version not in found_versions:
            listed = ", ".join(found_versions) or "none"
            raise CheckpointError(f"--model-base {base}: no transformer/{version} (versions found: {listed})")
        text, siglip = base / "text_encoder", base / "vision_encoder" / "siglip"
        paths = Model15Paths(
            "official", version, base / "transformer" / version, base / "vae", text / "llm", text / "llm",
            text / "byt5-small", text / "byt5-small", text / "Glyph-SDXL-v2",
            siglip / "image_encoder", siglip / "feature_extractor", base / "scheduler", None,
        )  # fmt: skip
        _check_official_dit_config(paths.dit / "config.json", version)
    missing = _missing15(paths, need_text, need_dit)
    if missing:
        raise CheckpointError(
            f"--model-base {base}: {paths.layout} HunyuanVideo 1.5 layout, missing {'; '.join(missing)}"
        )
    return paths


def _check_official_dit_config(config: Path, version: str) -> None:
    """The official DiT config names the resolution and task it was trained for and whether it takes the meanflow
    timestep; a folder whose config says otherwise than its name is refused (the official pipeline refuses a task
    mismatch when it runs)."""
    if not config.is_file():
        return  # the missing-file check names it
    cfg, spec = _read_json(config), HV15_VERSIONS[version]
    said = {"ideal_resolution": spec.resolution, "ideal_task": spec.task, "use_meanflow": spec.step_distilled}
    for key, expected in said.items():
        if key in cfg and cfg[key] is not None and cfg[key] != expected:
            raise CheckpointError(f"{config}: {key} is {cfg[key]!r}, but the folder name {version} says {expected!r}")


def _missing15(paths: Model15Paths, need_text: bool, need_dit: bool) -> list[str]:
    """Every absent 1.5 component as "folder" or "folder/file (or other accepted names)", in load order."""
    wants: list[tuple[Path, tuple[tuple[str, ...], ...]]] = []
    if need_text:
        wants += [(paths.llm, HF_MODEL_FILES), (paths.llm_tokenizer, TOKENIZER_FILES)]
        wants += [(paths.byt5, HF_MODEL_FILES), (paths.byt5_tokenizer, BYT5_TOKENIZER_FILES)]
        if paths.glyph is not None:
            wants.append((paths.glyph, GLYPH_FILES))
        if HV15_VERSIONS[paths.version].task == "i2v":
            assert paths.vision is not None and paths.vision_processor is not None
            wants += [(paths.vision, HF_MODEL_FILES), (paths.vision_processor, IMAGE_PROCESSOR_FILES)]
    if need_dit:
        wants.append((paths.dit, DIT15_FILES))
        if paths.layout == "diffusers":  # the folder's own defaults; the official tree's come from the version table
            wants.append((paths.scheduler, SCHEDULER_FILES))
            if paths.guider is not None:
                wants.append((paths.guider, GUIDER_FILES))
    wants.append((paths.vae, VAE15_FILES))
    return _absent(wants)


def _absent(wants: list[tuple[Path, tuple[tuple[str, ...], ...]]]) -> list[str]:
    """Each folder of `wants` that is absent, or each of its file groups none of whose names is there."""
    missing: list[str] = []
    for folder, groups in wants:
        if not folder.exists():
            missing.append(str(folder))
            continue
        for names in groups:
            if not any((folder / name).is_file() for name in names):
                others = f" (or {', '.join(names[1:])})" if len(names) > 1 else ""
                missing.append(f"{folder / names[0]}{others}")
    return list(dict.fromkeys(missing))  # the official trees share one folder between model and tokenizer
