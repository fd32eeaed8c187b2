"""Where each component lives under `--model-base`: official `ckpts/` tree or a diffusers folder (docs/DESIGN.md §1).

Only paths are resolved here (cheap, before anything loads); a missing component is one error listing what was
expected where.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hyvideo.checkpoints.common import CheckpointError

OFFICIAL_DIT_DIR = "hunyuan-video-t2v-720p"  # both --model-resolution values use the 720p release folder
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


def locate(
    model_base: str | Path, dit_weight: str | Path | None = None, *, need_text: bool = True, need_dit: bool = True
) -> ModelPaths:
    """Resolve every component under `model_base`; `dit_weight` overrides the DiT location."""
    base = Path(model_base)
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
        )
    else:
        dit_dir = base / OFFICIAL_DIT_DIR
        paths = ModelPaths(
            "official",
            dit_dir / "transformers" / OFFICIAL_DIT_FILE,
            dit_dir / "vae",
            base / "text_encoder",
            base / "text_encoder_2",
            None,
            None,
        )
    if dit_weight is not None:
        paths = ModelPaths(paths.layout, Path(dit_weight), *(getattr(paths, f) for f in _AFTER_DIT))
    missing = _missing(paths, need_text, need_dit)
    if missing:
        raise CheckpointError(
            f"--model-base {base}: {paths.layout} layout, missing {'; '.join(missing)} (see ckpts/README.md)"
        )
    return paths


_AFTER_DIT = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")

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
# A tokenizer folder needs a vocabulary file: from tokenizer_config.json alone transformers silently builds an
# empty vocabulary (every word becomes <unk>).
TOKENIZER_FILES = (("tokenizer.json", "vocab.json", "tokenizer.model"),)


def _missing(paths: ModelPaths, need_text: bool, need_dit: bool) -> list[str]:
    """Every absent component as "folder" or "folder/file (or other accepted names)", in load order."""
    wants: list[tuple[Path, tuple[tuple[str, ...], ...]]] = []
    if need_text:
        wants += [(paths.text_encoder, HF_MODEL_FILES), (paths.tokenizer or paths.text_encoder, TOKENIZER_FILES)]
        wants += [(paths.text_encoder_2, HF_MODEL_FILES), (paths.tokenizer_2 or paths.text_encoder_2, TOKENIZER_FILES)]
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
