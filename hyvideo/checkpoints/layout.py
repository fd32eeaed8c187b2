"""Where each component lives under `--model-base`: the official `ckpts/` tree or a diffusers folder (DESIGN §1).

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
    missing = [str(p) for p in _required(paths, need_text, need_dit) if not p.exists()]
    if missing:
        raise CheckpointError(
            f"--model-base {base}: {paths.layout} layout, missing {', '.join(missing)} (see ckpts/README.md)"
        )
    return paths


_AFTER_DIT = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")


def _required(paths: ModelPaths, need_text: bool, need_dit: bool) -> list[Path]:
    req = [paths.vae / "config.json"] + ([paths.dit] if need_dit else [])
    if need_text:
        req += [p for p in (paths.text_encoder, paths.text_encoder_2, paths.tokenizer, paths.tokenizer_2) if p]
    return req
