"""The JSON sidecar written next to every video (`name.mp4` -> `name.json`): everything needed to know how the video
was made and to make it again.

Contents (schema version `SCHEMA`): prompt, negative prompt, seed, size, frames, steps, shift, guidance values, model
paths with a short weight fingerprint, LoRAs, precision / offload / parallel settings, package versions, stage
timings, peak memory; batch runs add their file, line and entry. Written atomically together with the MP4 by
`hyvideo.pipeline.write_video` (the sidecar is renamed into place only after the MP4 is), so a finished video always
has its sidecar.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

if TYPE_CHECKING:
    from hyvideo.checkpoints.layout import Model15Paths, ModelPaths
    from hyvideo.request import SampleRequest

SCHEMA = 1
FINGERPRINT_HEAD_BYTES = 2**20  # the first MiB of each weight file goes into its fingerprint
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".json")
# Request fields recorded under "runtime" after the ones above (speed, memory and parallel options)
_RUNTIME_OPTIONS = (
    "offload",
    "fp8_compute",
    "teacache_thresh",
    "compile",
    "compile_mode",
    "vae_tile_size",
    "vae_tile_stride",
    "shard_weights",
    "cfg_parallel",
)
_PACKAGES = ("hyvideo", "torch", "diffusers", "transformers", "safetensors", "imageio-ffmpeg", "flash-attn")


def sidecar_path(video: str | Path) -> Path:
    """`dir/name.mp4` -> `dir/name.json`."""
    video = Path(video)
    return video.with_suffix(".json")


def _file_digest(path: Path, h: hashlib._Hash) -> None:
    st = path.stat()
    h.update(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    with path.open("rb") as f:
        h.update(f.read(FINGERPRINT_HEAD_BYTES))


@cache
def fingerprint(path: str | Path) -> str:
    """A cheap identity of a weight file or folder: sha256 over (name, size, mtime, first MiB) of each weight file,
    first 16 hex digits. Equal fingerprints mean the same files (short of an edit that keeps size and mtime);
    computed once per path per process. "missing" when the path does not exist."""
    path = Path(path)
    h = hashlib.sha256()
    try:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
            for p in files:
                h.update(str(p.relative_to(path)).encode())
                _file_digest(p, h)
        else:
            _file_digest(path, h)
    except OSError:
        return "missing"
    return h.hexdigest()[:16]


@cache
def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape the output (absent ones omitted), plus Python's."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _model_entry(path: Path | None) -> dict[str, str] | None:
    if path is None:
        return None
    return {"path": str(Path(path).resolve()), "fingerprint": fingerprint(Path(path).resolve())}


def parallel_settings(req: SampleRequest) -> dict[str, object]:
    """World size and ranks from the torchrun environment, and the sequence-parallel degrees asked for."""
    return {  # the environment's, not req.world_size: a data-parallel batch runs each process alone
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "rank": int(os.environ.get("RANK", "0")),
        "ulysses_degree": req.ulysses_degree,
        "ring_degree": req.ring_degree,
    }


def _models(req: SampleRequest, paths: ModelPaths | Model15Paths | None) -> dict[str, object]:
    """The weights used: folder, layout and a fingerprint per component."""
    if req.hv15 is not None:  # HunyuanVideo 1.5: its version and its own encoders
        return {
            "family": "1.5",
            "version": req.hv15.version,
            "base": str(Path(req.model_base).resolve()),
            "layout": paths.layout if paths else None,
            **{
                name: _model_entry(getattr(paths, name)) if paths and getattr(paths, name) else None
                for name in ("dit", "vae", "llm", "byt5", "glyph", "vision")
            },
        }
    return {
        "family": "v1",
        "name": req.model,
        "base": str(Path(req.model_base).resolve()),
        "layout": paths.layout if paths else None,
        "dit": _model_entry(paths.dit) if paths else None,
        "vae": _model_entry(paths.vae) if paths else None,
        "text_encoder": _model_entry(paths.text_encoder) if paths else None,
        "text_encoder_2": _model_entry(paths.text_encoder_2) if paths else None,
        "load_key": req.load_key,
    }


def _runtime(req: SampleRequest) -> dict[str, object]:
    """How it ran: device, kernels, memory and speed options, processes."""
    return {
        "device": req.device,
        "attn_backend": req.attn_backend,
        "vae_tiling": req.vae_tiling,
        "use_cpu_offload": req.use_cpu_offload,
        "use_fp8": req.use_fp8,
        "disable_autocast": req.disable_autocast,
        "reproduce": req.reproduce,
        **{name: getattr(req, name) for name in _RUNTIME_OPTIONS},
        "parallel": parallel_settings(req),
    }


def _image(req: SampleRequest) -> dict[str, object] | None:
    """Image-to-video: the image file and how it conditioned the video; None for text-to-video."""
    if not req.i2v_mode:
        return None
    return {
        "image": str(req.i2v_image.path.resolve()) if req.i2v_image.path.is_file() else str(req.i2v_image.path),
        "image_sha256": req.i2v_image.sha256,
        "condition_type": req.i2v_condition if req.hv15 is None else "1.5 image latent + mask",
        "stability": req.i2v_stability,
        "resize": req.i2v_resize,
        "resolution": None if req.i2v_size_given else req.i2v_resolution,
    }


def build(
    req: SampleRequest,
    seed: int,
    paths: ModelPaths | Model15Paths | None,
    *,
    timings: Mapping[str, float] | None = None,
    peak_memory_mib: Mapping[str, float] | None = None,
    extra: Mapping[str, object] | None = None,
    riflex_applied: bool | None = None,
) -> dict[str, object]:
    """The sidecar record of one video made from `req` with `seed` (`paths`: the components used; None for a
    decode-only run, which records the VAE folder under `extra`; `riflex_applied`: whether the DiT ran with RIFLEx,
    None when the caller did not say)."""
    record: dict[str, object] = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "prompt": req.prompt,
        "negative_prompt": req.neg_prompt,
        "seed": seed,
        "height": req.height,
        "width": req.width,
        "video_length": req.video_length,
        "fps": req.fps,
        "infer_steps": req.infer_steps,
        "flow_shift": req.flow_shift,
        "cfg_scale": req.cfg_scale,
        "embedded_cfg_scale": req.embedded_cfg_scale if req.hv15 is None else None,  # 1.5 has no guidance input
        "sampler": {
            "solver": req.flow_solver,
            "denoise_type": req.denoise_type,
            "flow_reverse": req.flow_reverse,
            "noise": req.noise,
        },
        "riflex": {"mode": req.riflex, "applied": riflex_applied},
        "i2v": _image(req),
        "model": _models(req, paths),
        "loras": [
            {"path": str(s.path.resolve()), "scale": s.scale, "fingerprint": fingerprint(s.path.resolve())}
            for s in req.loras
        ],
        "lora_mode": "merge" if req.lora_merge else "unmerged",
        "precision": {
            "dit": req.precision,
            "vae": req.vae_precision,
            "text_encoder": req.text_encoder_precision,
            "text_encoder_2": req.text_encoder_precision_2,
        },
        "runtime": _runtime(req),
        "versions": package_versions(),
        "command": sys.argv,
        "timings_s": {k: round(v, 3) for k, v in (timings or {}).items()},
        "peak_memory_mib": {k: round(v, 1) for k, v in (peak_memory_mib or {}).items()},
    }
    if extra:
        record.update(extra)
    return record


def dumps(record: Mapping[str, object]) -> str:
    return json.dumps(record, indent=2, ensure_ascii=False, default=str) + "\n"


def read(path: str | Path) -> dict[str, object] | None:
    """A sidecar's record, or None when the file is missing or not a JSON object (never raises for bad files)."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def for_latents(latents_path: str | Path) -> Path:
    """The sidecar of the video a latents file belongs to: `dir/name.latents.safetensors` -> `dir/name.json`."""
    latents_path = Path(latents_path)
    return latents_path.with_name(latents_path.name.removesuffix(".latents.safetensors") + ".json")


def matches_latents(record: Mapping[str, object], shape: tuple[int, ...]) -> bool:
    """Whether a sidecar's size and frames give latents of `shape` (1, C, (F-1)//4+1, H/s, W/s), s the spatial
    compression of the sidecar's model family's VAE (v1: 8, HunyuanVideo 1.5: 16)."""
    try:
        frames, height, width = int(record["video_length"]), int(record["height"]), int(record["width"])
    except (KeyError, TypeError, ValueError):
        return False
    model = record.get("model")
    s = 16 if isinstance(model, Mapping) and model.get("family") == "1.5" else 8
    return tuple(shape[2:]) == ((frames - 1) // 4 + 1, height // s, width // s)


def for_decoded(
    req: SampleRequest,
    shape: tuple[int, ...],
    latents_meta: Mapping[str, str],
    timings: Mapping[str, float],
    peak_memory_mib: Mapping[str, float],
    vae: Path,
) -> dict[str, object]:
    """The sidecar of a `--decode-latents` video: the generating run's sidecar (when it sits beside the latents file
    and fits their shape), else what the latents file's own metadata says; plus how this decode was made."""
    source = for_latents(req.decode_latents)
    record = read(source)
    if record is not None and not matches_latents(record, shape):
        logger.warning(f"{source}: its size/frames do not fit latents {tuple(shape)}; not using it")
        record = None
    if record is None:
        record = {"schema": SCHEMA, "prompt": latents_meta.get("prompt"), "latents_metadata": dict(latents_meta)}
        if "seed" in latents_meta:
            record["seed"] = int(latents_meta["seed"])
    else:
        logger.info(f"using the generation record {source}")
    record = dict(record)
    record["fps"] = req.fps
    record["decoded_from"] = {
        "latents": str(Path(req.decode_latents).resolve()),
        "sidecar": str(source.resolve()) if source.is_file() else None,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "vae": _model_entry(vae),
        "vae_precision": req.vae_precision,
        "vae_tiling": req.vae_tiling,
        "versions": package_versions(),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "peak_memory_mib": {k: round(v, 1) for k, v in peak_memory_mib.items()},
    }
    return record
