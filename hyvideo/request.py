"""What one run of the sampler is asked to do: `SampleRequest`, one typed options class per stage, and `validate`.

Each stage's options (text, sampling, DiT, decode, runtime, parallel, output) are a frozen dataclass built and checked
by its own `from_flags`; `validate` composes them. Input is the flag values by argparse name (`dest -> value`: the
command line's Namespace, or the Python API's keywords over `flag_defaults()`). Every check is cheap (no model loads,
no files created) and raises `UsageError(flag, message)` on the first problem. Nothing downstream sees argparse: the
pipeline reads only the `SampleRequest`.

Adding a flag: its line in `hyvideo.flags`, a field in the options class of its stage, and its check in that class's
`from_flags`.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from argparse import Namespace
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import torch

from hyvideo import hardware, io
from hyvideo.checkpoints.dit import DIFFUSERS15_RULES, DIFFUSERS_RULES, Rule
from hyvideo.checkpoints.layout import (
    Model15Paths,
    ModelKind,
    folder_settings15,
    folder_version15,
    locate15,
    model_family,
    model_kind,
    official_versions15,
)
from hyvideo.choices import (
    ATTN_PACKAGES,
    COMPILE_MODES,
    CUDA_GRAPH_COMPILE_MODES,
    DEFAULT_NEGATIVE_PROMPT,
    HV15_ASPECT_RATIO,
    HV15_BUCKET_STRIDE,
    HV15_SEED,
    HV15_TARGET_SIZES,
    HV15_VERSIONS,
    HV15_VIDEO_LENGTH,
    I2V_RESIZE_MODES,
    I2V_RESOLUTIONS,
    RANDOM_SEED_MAX,
    SEED_MAX,
    SIZE_MULTIPLE,
    hv15_version_name,
)
from hyvideo.config import tile_problem
from hyvideo.errors import CheckpointError, UsageError
from hyvideo.flags import build_parser, check_size, given
from hyvideo.image import SourceImage, bucket_sizes, i2v_bucket, load_image
from hyvideo.lora import LoraSpec, check_lora_specs, parse_lora_flag
from hyvideo.parallel.group import env_world_size, launched_by_torchrun

__all__ = [
    "SUPPORTED_VALUES_ONLY",
    "Family15Options",
    "SampleRequest",
    "UsageError",
    "flag_defaults",
    "for_prompt",
    "hv15_bucket",
    "validate",
]

Precision = Literal["fp32", "fp16", "bf16"]
AttnBackend = Literal["auto", "sdpa", "flash", "sage"]
Flags = Mapping[str, Any]  # flag values by argparse dest (e.g. "video_size" -> [720, 1280])

# Flags that parse but that we cannot honour yet: flag -> the only values we accept. Anything else fails with exit
# code 2 and "not supported yet" instead of being ignored. When the pipeline learns a feature, delete its line here.
SUPPORTED_VALUES_ONLY: dict[str, tuple[object, ...]] = {
    "--batch-size": (1,),  # several videos are sampled one after another (--num-videos), not batched
    "--denoise-type": ("flow",),
    "--flow-solver": ("euler",),
    "--use-linear-quadratic-schedule": (False,),
    "--text-encoder": ("llm",),
    "--text-encoder-2": ("clipL",),
    "--tokenizer": ("llm",),
    "--tokenizer-2": ("clipL",),
}


@cache
def flag_defaults() -> dict[str, Any]:
    """Every flag's default by dest, as declared in `hyvideo.flags` (nothing is parsed)."""
    return {a.dest: a.default for a in build_parser()._actions if a.dest != "help"}


@cache
def _flag_choices() -> dict[str, tuple[str, tuple[object, ...]]]:
    """dest -> (flag, allowed values) of the flags with a fixed set of values, as declared in `hyvideo.flags`."""
    return {a.dest: (a.option_strings[0], tuple(a.choices)) for a in build_parser()._actions if a.choices}


def _check_choices(f: Flags) -> None:
    """The parser's own choice check, for values that did not come through it (the Python API)."""
    for dest, (flag, allowed) in _flag_choices().items():
        if f[dest] not in allowed and not (f[dest] is None and flag_defaults()[dest] is None):  # None = unset
            raise UsageError(flag, f"invalid choice: {f[dest]!r} (choose from {', '.join(map(str, allowed))})")


# ---------------------------------------------------------------------------------------------------------------
# Small checks
# ---------------------------------------------------------------------------------------------------------------
def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _int(f: Flags, dest: str, low: int, what: str = "") -> int:
    value = f[dest]
    if value < low:
        raise UsageError(_flag(dest), f"must be an integer >= {low}{what}, got {value}")
    return int(value)


def _float(f: Flags, dest: str, low: float, *, strict: bool = False, what: str = "") -> float:
    value = float(f[dest])
    if not math.isfinite(value) or (value <= low if strict else value < low):
        op = ">" if strict else ">="
        raise UsageError(_flag(dest), f"must be a finite number {op} {low:g}{what}, got {value}")
    return value


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _exists(path: Path) -> bool:
    """Path.exists that treats unusable paths (embedded NUL, name too long, no permission) as missing."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------------------------
# The stages
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class SamplingOptions:
    """What to sample: size, seeds and the flow-matching schedule."""

    height: int  # output height in pixels, a multiple of 16 (rounded up from --video-size)
    width: int  # output width in pixels, a multiple of 16
    video_length: int  # frames, 4n+1; latent frames = (video_length - 1) // 4 + 1
    seed: int  # seed of video 0; video i uses seed + i on a CPU generator
    seed_was_random: bool  # True when --seed was missing and `seed` was drawn at random
    num_videos: int  # videos to generate for the prompt, one after another
    infer_steps: int  # Euler steps (>= 1)
    cfg_scale: float  # real classifier-free guidance scale; > 1 enables the unconditional pass
    embedded_cfg_scale: float  # guidance fed to the cfg-distilled DiT (x1000 inside the model); >= 0
    flow_shift: float  # sigma shift s' = shift*s / (1 + (shift-1)*s); > 0
    flow_reverse: bool  # accepted for compatibility; sampling always runs sigma 1 -> 0
    flow_solver: str  # "euler" (the only one supported)
    denoise_type: str  # "flow" (the only one supported)
    noise: str  # start noise: "ours" (CPU generator, float32) or "official" (the run's device, text encoder dtype)

    @classmethod
    def from_flags(cls, f: Flags, notes: list[str]) -> SamplingOptions:
        height, width = check_size(f["video_size"])
        video_length = _int(f, "video_length", 1)
        if (video_length - 1) % 4:
            lo = (video_length - 1) // 4 * 4 + 1
            raise UsageError("--video-length", f"must be 4n+1 (e.g. {lo} or {lo + 4}), got {video_length}")
        infer_steps = _int(f, "infer_steps", 1)
        num_videos = _int(f, "num_videos", 1)
        _int(f, "batch_size", 1)
        linear_end = _int(f, "linear_schedule_end", 1)
        cfg_scale = _float(f, "cfg_scale", 1.0, what=" (1 turns real classifier-free guidance off)")
        embedded_cfg_scale = _float(f, "embedded_cfg_scale", 0.0)
        flow_shift = _float(f, "flow_shift", 0.0, strict=True)
        if f["use_linear_quadratic_schedule"] and linear_end > infer_steps:
            raise UsageError("--linear-schedule-end", f"must be <= --infer-steps ({infer_steps})")
        seed = f["seed"]
        if seed is not None and not 0 <= seed <= SEED_MAX - (num_videos - 1):
            raise UsageError("--seed", f"must be an integer in [0, {SEED_MAX - (num_videos - 1)}], got {seed}")
        rounded = _round_up(height, SIZE_MULTIPLE), _round_up(width, SIZE_MULTIPLE)
        if rounded != (height, width):
            notes.append(
                f"--video-size {height} {width} rounded up to {rounded[0]} {rounded[1]} (multiples of {SIZE_MULTIPLE})"
            )
        return cls(
            height=rounded[0],
            width=rounded[1],
            video_length=video_length,
            seed=random.randint(0, RANDOM_SEED_MAX) if seed is None else int(seed),
            seed_was_random=seed is None,
            num_videos=num_videos,
            infer_steps=infer_steps,
            cfg_scale=cfg_scale,
            embedded_cfg_scale=embedded_cfg_scale,
            flow_shift=flow_shift,
            flow_reverse=bool(f["flow_reverse"]),
            flow_solver=f["flow_solver"],
            denoise_type=f["denoise_type"],
            noise=f["noise"],
        )


@dataclass(frozen=True, kw_only=True)
class TextOptions:
    """The prompts and the two text encoders (Llama-3 with a template, CLIP-L pooled)."""

    prompt: str | None  # stripped, non-empty text prompt; None when decoding latents, reading a prompt file or planning
    # negative prompt for real CFG; None exactly when cfg_scale <= 1 (no unconditional pass); "" possible for 1.5
    neg_prompt: str | None
    text_len: int  # LLM tokens kept after cropping the template (256)
    text_len_2: int  # CLIP tokens (77)
    hidden_state_skip_layer: int  # use hidden_states[-(skip + 1)] of the LLM (2 -> hidden_states[-3])
    apply_final_norm: bool  # apply the LLM's final norm to those states (no-op when skip is 0)
    text_encoder_precision: Precision  # LLM dtype
    text_encoder_precision_2: Precision  # CLIP dtype
    prompt_template: str  # template name for 1-frame outputs ("dit-llm-encode")
    prompt_template_video: str  # template name for video outputs ("dit-llm-encode-video")

    @classmethod
    def from_flags(
        cls, f: Flags, cfg_scale: float, notes: list[str], default_negative: str = DEFAULT_NEGATIVE_PROMPT
    ) -> TextOptions:
        """`cfg_scale` decides whether a negative prompt is used at all; `default_negative` is the one used when none
        is given (HunyuanVideo 1.5: empty, as its generate.py)."""
        text_len, text_len_2 = _int(f, "text_len", 1), _int(f, "text_len_2", 1)
        _int(f, "text_states_dim", 1)
        _int(f, "text_states_dim_2", 1)
        skip = _int(f, "hidden_state_skip_layer", 0)
        prompt = f["prompt"].strip() if f["prompt"] is not None else None
        if not prompt:
            if f["decode_latents"] is None and f["prompt_file"] is None and not f["dry_run"]:
                raise UsageError("--prompt", "give a non-empty text prompt, e.g. --prompt 'a cat walks on the grass'")
            prompt = None
        neg = f["neg_prompt"].strip() if f["neg_prompt"] is not None else ""
        if cfg_scale <= 1 and neg:
            notes.append("--neg-prompt has no effect without --cfg-scale > 1 (real classifier-free guidance is off)")
        return cls(
            prompt=prompt,
            neg_prompt=(neg or default_negative) if cfg_scale > 1 else None,
            text_len=text_len,
            text_len_2=text_len_2,
            hidden_state_skip_layer=skip,
            apply_final_norm=bool(f["apply_final_norm"]),
            text_encoder_precision=f["text_encoder_precision"],
            text_encoder_precision_2=f["text_encoder_precision_2"],
            prompt_template=f["prompt_template"],
            prompt_template_video=f["prompt_template_video"],
        )


@dataclass(frozen=True, kw_only=True)
class RuntimeOptions:
    """Where and how the run executes: device, memory policy, determinism."""

    device: str  # torch device string, checked available: "cpu", "cuda", "cuda:N" or "mps"
    offload: str  # "none", "model" (components on the device only while they run), "block" (DiT blocks stream)
    use_cpu_offload: bool  # the official flag: model-level offload (sets offload "model" unless --offload is given)
    memory_check: bool  # estimate peak memory before loading and refuse requests that cannot fit
    reproduce: bool  # deterministic algorithms (CUBLAS_WORKSPACE_CONFIG set while validating, before CUDA runs)
    disable_autocast: bool  # accepted for compatibility and recorded; dtypes are explicit, so it changes nothing
    debug: bool  # show full tracebacks and debug logs
    dry_run: bool  # print the memory plan and the cheapest flags that fit, load nothing (weights need not exist)
    gpu_memory: float | None  # --dry-run only: plan for a CUDA card of this many GB (2^30 bytes); None: the device here

    @classmethod
    def from_flags(cls, f: Flags) -> RuntimeOptions:
        gpu_memory = _check_gpu_memory(f)
        if f["reproduce"]:
            hardware.prepare_deterministic()  # cuBLAS reads its workspace setting once, before its first GEMM
        offload = f["offload"]
        if f["use_cpu_offload"] and offload == "none":
            offload = "model"  # the official --use-cpu-offload
        return cls(
            device=_resolve_device(f["device"]),
            offload=offload,
            use_cpu_offload=bool(f["use_cpu_offload"]),
            memory_check=bool(f["memory_check"]),
            reproduce=bool(f["reproduce"]),
            disable_autocast=bool(f["disable_autocast"]),
            debug=bool(f["debug"]),
            dry_run=bool(f["dry_run"]),
            gpu_memory=gpu_memory,
        )


def _check_gpu_memory(f: Flags) -> float | None:
    """--gpu-memory GB plans a card that is not here: only for --dry-run (a real run measures the free memory of the
    card it runs on), and only for a CUDA card."""
    gb = f["gpu_memory"]
    if gb is None:
        return None
    if not f["dry_run"]:
        raise UsageError(
            "--gpu-memory", "plans for another card: add --dry-run (a real run checks the card it runs on)"
        )
    if not math.isfinite(gb) or gb <= 0:
        raise UsageError("--gpu-memory", f"must be a number of GB > 0 (e.g. 24), got {gb}")
    if f["device"] == "cpu":
        raise UsageError("--gpu-memory", "plans for a CUDA card; drop --device cpu")
    return float(gb)


def _resolve_device(name: str | None) -> str:
    """'cuda' if available else 'cpu' when unset; otherwise the named device, which must be present."""
    if name is not None and not re.fullmatch(r"cpu|cuda(:\d+)?|mps", name):
        raise UsageError("--device", f"expected cpu, cuda, cuda:N or mps, got {name!r}")
    if name is None or name == "cpu":
        return name or hardware.default_device()
    if name == "mps":
        if not hardware.mps_available():
            raise UsageError("--device", "mps is not available on this machine; use --device cpu")
        return name
    count = hardware.cuda_count()
    if count == 0:
        raise UsageError("--device", f"{name} requested but CUDA is not available; use --device cpu")
    if int(name.partition(":")[2] or 0) >= count:
        raise UsageError("--device", f"{name}: only {count} CUDA device(s) present")
    return name


@dataclass(frozen=True, kw_only=True)
class DiTOptions:
    """The diffusion transformer: weights, dtype, LoRAs and how its blocks run."""

    model: str  # DiT preset: "HYVideo-T/2-cfgdistill" (guidance embedding) or "HYVideo-T/2"
    model_base: Path  # existing directory: official `ckpts/` tree or a diffusers folder (model_index.json)
    dit_weight: Path | None  # explicit DiT weights (existing file or directory); None = locate under model_base
    load_key: str  # key of the state dict inside the official .pt ("module" or "ema")
    latent_channels: int  # DiT/VAE latent channels; equals the VAE's (16)
    precision: Precision  # DiT compute dtype
    rope_theta: int  # RoPE base (256)
    riflex: str  # --riflex: "auto" (long videos, when it lowers the frequency), "on" or "off" (modules.dit.riflex_k)
    use_fp8: bool  # block Linear weights stored as fp8 e4m3 (official _fp8.pt pair, or quantized while loading)
    fp8_compute: bool  # fp8 matmuls via torch._scaled_mm (needs use_fp8 and CUDA compute capability >= 8.9)
    loras: tuple[LoraSpec, ...]  # --lora PATH[:SCALE] in the order given (file keys already checked)
    lora_merge: bool  # merge LoRAs into the DiT weights at load; False: unmerged wrappers (--lora-mode)
    attn_backend: AttnBackend  # "auto" (flash on CUDA when installed, else SDPA), "sdpa", "flash" or "sage" (CUDA)
    teacache_thresh: float  # TeaCache: skip the DiT blocks while the accumulated rescaled change < this; 0 = off
    compile: bool  # torch.compile each transformer block (regional); the first step pays the compilation
    compile_mode: str  # torch.compile mode of the blocks (COMPILE_MODES); others than "default" imply compile

    @classmethod
    def from_flags(cls, f: Flags, runtime: RuntimeOptions, hv15: bool = False) -> DiTOptions:
        """Paths and files first (names checked, nothing loaded), then what the device must support. `hv15`: LoRA
        names are checked against HunyuanVideo 1.5's DiT."""
        rope_theta = _int(f, "rope_theta", 1)
        vae_channels = int(f["vae"].split("-")[1].rstrip("c"))
        if f["latent_channels"] != vae_channels:
            raise UsageError("--latent-channels", f"must equal the channels of --vae {f['vae']} ({vae_channels})")
        if not f["load_key"].strip():
            raise UsageError("--load-key", "must not be empty (e.g. module or ema)")
        model_base, dit_weight = _check_weights(f, must_exist=not runtime.dry_run)
        loras = _lora_specs(f, DIFFUSERS15_RULES if hv15 else DIFFUSERS_RULES)  # reads only the files' headers
        _check_attn_backend(f["attn_backend"], runtime.device)
        teacache_thresh = _float(f, "teacache_thresh", 0.0, what=" (0 turns step caching off)")
        compile_mode = _check_compile_mode(f["compile_mode"], runtime.device, runtime.offload)
        if f["fp8_compute"]:
            if not f["use_fp8"]:
                raise UsageError("--fp8-compute", "needs --use-fp8 (fp8 weights); add it or drop --fp8-compute")
            _check_fp8_matmul(runtime.device)
        return cls(
            model=f["model"],
            model_base=model_base,
            dit_weight=dit_weight,
            load_key=f["load_key"].strip(),
            latent_channels=int(f["latent_channels"]),
            precision=f["precision"],
            rope_theta=rope_theta,
            riflex=f["riflex"],
            use_fp8=bool(f["use_fp8"]),
            fp8_compute=bool(f["fp8_compute"]),
            loras=loras,
            lora_merge=f["lora_mode"] == "merge",
            attn_backend=f["attn_backend"],
            teacache_thresh=teacache_thresh,
            compile=bool(f["compile"]) or compile_mode != "default",
            compile_mode=compile_mode,
        )


def _lora_specs(f: Flags, rules: tuple[Rule, ...]) -> tuple[LoraSpec, ...]:
    """--lora PATH[:SCALE] values, then the official `--use-lora --lora-path P --lora-scale S` as one more entry."""
    official: tuple[LoraSpec, ...] = ()
    if f["use_lora"]:
        if not f["lora_path"]:
            raise UsageError("--use-lora", "needs --lora-path PATH (a LoRA .safetensors file)")
        if not math.isfinite(scale := float(f["lora_scale"])):
            raise UsageError("--lora-scale", f"must be a finite number, got {scale}")
        official = (LoraSpec(Path(f["lora_path"]), scale, flag="--lora-path"),)
    elif f["lora_path"]:
        raise UsageError("--lora-path", "needs --use-lora (official flags), or give it as --lora PATH[:SCALE]")
    elif f["lora_scale"] != 1.0:
        raise UsageError("--lora-scale", "needs --use-lora --lora-path PATH; for --lora use PATH:SCALE")
    return check_lora_specs([*(parse_lora_flag(v) for v in f["lora"] or ()), *official], rules)


def _check_weights(f: Flags, must_exist: bool = True) -> tuple[Path, Path | None]:
    """--model-base and --dit-weight; a dry run plans before the download, so there they need not exist yet."""
    model_base = Path(f["model_base"])
    if not must_exist:
        return model_base, Path(f["dit_weight"]) if f["dit_weight"] else None
    if not _exists(model_base) or not model_base.is_dir():
        raise UsageError(
            "--model-base",
            f"{model_base!s:.200} is not a directory; give the folder holding the weights (official ckpts/ tree or "
            "a diffusers-format folder)",
        )
    dit_weight = Path(f["dit_weight"]) if f["dit_weight"] else None
    if dit_weight is not None and not _exists(dit_weight):
        raise UsageError("--dit-weight", f"{dit_weight!s:.200} does not exist; give a weight file or directory")
    return model_base, dit_weight


def _check_attn_backend(backend: str, device: str) -> None:
    """flash and sage need their package and a CUDA device, and a card their kernels support."""
    if backend not in ATTN_PACKAGES:
        return
    module, pip = ATTN_PACKAGES[backend]
    if not hardware.installed(module):
        raise UsageError("--attn-backend", f"{backend} needs the {pip} package (pip install {pip}); use sdpa")
    if not device.startswith("cuda"):
        raise UsageError("--attn-backend", f"{backend} needs a CUDA device, got --device {device}; use sdpa")
    cap = hardware.capability(device)
    card = f"{hardware.device_name(device)} ({device}, sm{cap[0]}{cap[1]})" if cap else device
    if backend == "sage" and not hardware.sage_supported(cap):
        known = ", ".join(f"sm{a}{b}" for a, b in hardware.SAGE_CAPABILITIES)
        raise UsageError("--attn-backend", f"sage has no kernel for {card} (it has: {known}); use sdpa or flash")
    if backend == "flash" and cap is not None and not hardware.flash_supported(cap):
        raise UsageError("--attn-backend", f"flash-attn has no kernel for {card} (it has: sm8x, sm90); use sdpa")


def _check_compile_mode(mode: str, device: str, offload: str) -> str:
    """--compile-mode: a torch.compile mode; the CUDA-graph modes need a CUDA device and resident DiT weights."""
    if mode not in COMPILE_MODES:
        raise UsageError("--compile-mode", f"unknown {mode!r}; choose from {', '.join(COMPILE_MODES)}")
    if mode in CUDA_GRAPH_COMPILE_MODES:
        if not device.startswith("cuda"):
            raise UsageError(
                "--compile-mode", f"{mode} replays CUDA graphs: needs a CUDA device, got --device {device}"
            )
        if offload == "block":
            raise UsageError(
                "--compile-mode", f"{mode} (CUDA graphs) needs the DiT blocks resident: not with --offload block"
            )
    return mode


def _check_fp8_matmul(device: str) -> None:
    """--fp8-compute needs fp8 matmul hardware: a CUDA device of compute capability 8.9+ (Ada, Hopper, later)."""
    if not device.startswith("cuda"):
        raise UsageError("--fp8-compute", f"needs a CUDA GPU with fp8 matmul (sm89+), got --device {device}")
    if not hardware.scaled_mm_available(torch.device(device)):
        raise UsageError("--fp8-compute", f"{device} has no fp8 matmul (needs compute capability 8.9+); drop the flag")


@dataclass(frozen=True, kw_only=True)
class DecodeOptions:
    """The VAE decode."""

    vae_precision: Precision  # VAE dtype
    vae_tiling: bool  # decode in overlapping spatial/temporal tiles to bound memory
    vae_tile_size: int  # VAE spatial tile edge in pixels (smaller: less decode memory, more blended seams)
    vae_tile_stride: int  # VAE spatial tile stride in pixels (tile_size - stride pixels are blended)

    @classmethod
    def from_flags(cls, f: Flags, hv15: bool = False) -> DecodeOptions:
        """Tiles: multiples of one latent in pixels (v1: 8; HunyuanVideo 1.5 (`hv15`): 16), at least 64, the blended
        overlap (size - stride) at most half a tile. The stride defaults to the official overlap: 1/4 of the tile
        for v1, 1/8 for 1.5 (256 -> 224)."""
        unit = 16 if hv15 else 8
        size = int(f["vae_tile_size"])
        if size < 64 or size % unit:
            raise UsageError("--vae-tile-size", f"must be a multiple of {unit} pixels, at least 64, got {size}")
        overlap = size // 8 if hv15 else size // 4
        default = (size - overlap) // unit * unit
        stride = default if f["vae_tile_stride"] is None else int(f["vae_tile_stride"])
        why = tile_problem(size, stride, unit)
        if why is not None:
            raise UsageError("--vae-tile-stride", f"{why} (pixels; --vae-tile-size {size})")
        return cls(
            vae_precision=f["vae_precision"],
            vae_tiling=bool(f["vae_tiling"]),
            vae_tile_size=size,
            vae_tile_stride=stride,
        )


@dataclass(frozen=True, kw_only=True)
class ParallelOptions:
    """Processes of a torchrun job: U x R (x 2 with cfg_parallel) ranks share one video."""

    ulysses_degree: int  # U: attention heads split U ways by all-to-all (needs torchrun); 1 = off
    ring_degree: int  # R: image tokens' keys/values passed around a ring of R processes; 1 = off
    cfg_parallel: bool  # cond and uncond passes on two halves of the processes (needs cfg_scale > 1)
    shard_weights: bool  # with several processes, each holds 1/N of the DiT blocks' weights (FSDP2)
    dist_timeout: float  # seconds any inter-process wait may take before the run fails
    world_size: int  # processes sharing this video = U x R (x 2); 1 = alone (also each rank of a batch)

    @classmethod
    def from_flags(cls, f: Flags, cfg_scale: float) -> ParallelOptions:
        """The degrees must tile the torchrun job exactly: U x R (x 2 with --cfg-parallel) == WORLD_SIZE (1 without
        torchrun). A prompt file under torchrun runs data parallel: every process alone on its share. A dry run
        outside torchrun plans for the job of U x R (x 2) processes."""
        ulysses, ring = _int(f, "ulysses_degree", 1), _int(f, "ring_degree", 1)
        cfg_parallel = bool(f["cfg_parallel"])
        if cfg_parallel and cfg_scale <= 1:
            raise UsageError(
                "--cfg-parallel", "needs --cfg-scale > 1 (without real CFG there is no second pass to split)"
            )
        timeout = float(f["dist_timeout"])
        if not math.isfinite(timeout) or timeout <= 0:
            raise UsageError("--dist-timeout", f"must be a number of seconds > 0, got {timeout}")
        needed = ulysses * ring * (2 if cfg_parallel else 1)
        if f["dry_run"] and not launched_by_torchrun():
            world = needed  # a dry run plans the job these degrees describe, without starting it
        else:
            world = _check_world(needed, ulysses, ring, cfg_parallel, batch=f["prompt_file"] is not None)
        return cls(
            ulysses_degree=ulysses,
            ring_degree=ring,
            cfg_parallel=cfg_parallel,
            shard_weights=bool(f["shard_weights"]),
            dist_timeout=timeout,
            world_size=world,
        )


def _check_world(needed: int, ulysses: int, ring: int, cfg_parallel: bool, *, batch: bool) -> int:
    """The processes one video runs on: `needed`, which must be what torchrun started (1 without torchrun)."""
    world = env_world_size()
    if batch and world > 1:
        if needed > 1:
            raise UsageError(
                "--prompt-file",
                "with sequence parallelism is not supported yet; drop --ulysses-degree/--ring-degree/--cfg-parallel "
                "and each process takes its own share of the entries",
            )
        return 1  # data parallel: each process runs alone on its share of the entries (hyvideo.batch)
    product = f"--ulysses-degree {ulysses} x --ring-degree {ring}" + (" x 2 (--cfg-parallel)" if cfg_parallel else "")
    if needed > 1 and not launched_by_torchrun():
        flag = "--ulysses-degree" if ulysses > 1 else "--ring-degree" if ring > 1 else "--cfg-parallel"
        raise UsageError(
            flag, f"{product} = {needed} processes: launch with torchrun --nproc_per_node {needed} sample_video.py ..."
        )
    if needed != world:
        raise UsageError(
            "--ulysses-degree",
            f"{product} = {needed} process(es), but torchrun started {world}; make the product equal --nproc_per_node",
        )
    return world


@dataclass(frozen=True, kw_only=True)
class OutputOptions:
    """What is written, and where."""

    save_dir: Path  # output directory (--save-path, plus "_<suffix>" with --save-path-suffix); may not exist yet
    name_suffix: str  # appended to each output file name (no path separators)
    fps: int  # frames per second of the MP4 (24)
    save_latents: bool  # also write <video name>.latents.safetensors (key "latents", float32, (1, C, T, h, w))
    decode_latents: Path | None  # existing latents file to decode instead of sampling; None = sample
    prompt_file: Path | None  # --prompt-file: many prompts (expanded by `hyvideo.prompt_file.expand`); else None

    @classmethod
    def from_flags(cls, f: Flags) -> OutputOptions:
        fps = _int(f, "fps", 1)
        if "/" in f["name_suffix"] or "\0" in f["name_suffix"]:
            raise UsageError("--name-suffix", "must not contain '/' or NUL; it becomes part of a file name")
        decode_latents = Path(f["decode_latents"]) if f["decode_latents"] is not None else None
        if decode_latents is not None and not (_exists(decode_latents) and decode_latents.is_file()):
            raise UsageError(
                "--decode-latents", f"{decode_latents!s:.200} is not a file; give a .latents.safetensors file"
            )
        suffix = f["save_path_suffix"]
        save_dir = Path(f"{f['save_path']}_{suffix}" if suffix else f["save_path"])
        if not f["dry_run"]:  # a dry run writes nothing
            _check_save_dir(save_dir)
        return cls(
            save_dir=save_dir,
            name_suffix=f["name_suffix"],
            fps=fps,
            save_latents=bool(f["save_latents"]),
            decode_latents=decode_latents,
            prompt_file=Path(f["prompt_file"]) if f["prompt_file"] is not None else None,
        )


def _check_save_dir(save_dir: Path) -> None:
    """Files must be writable into the output directory (or into it once created): tried for real by
    `io.output_dir_problem` (which leaves nothing behind), so a read-only mount, /proc or a file in the way is
    refused now rather than after the whole computation."""
    if "\0" in str(save_dir):
        raise UsageError("--save-path", f"{save_dir!s:.200} is not a valid path (NUL character)")
    problem = io.output_dir_problem(save_dir)
    if problem is not None:
        raise UsageError("--save-path", f"{problem}; give a folder you can write to")


@dataclass(frozen=True, kw_only=True)
class ImageOptions:
    """Image-to-video (`--i2v-mode`): the conditioning image and how it enters the DiT. Checked before the other
    stages because some of their defaults follow the weights (`model_defaults`)."""

    i2v_mode: bool  # image-to-video; every other field below is None/False/default without it
    i2v_image: SourceImage | None  # the checked, decoded image (whole, RGB, EXIF applied), its path and sha256
    i2v_resolution: str  # "720p", "540p" or "360p": the size bucket when --video-size is not given
    i2v_condition: str | None  # the DiT's image condition: token_replace, latent_concat or concat (SkyReels-V1)
    i2v_stability: bool  # start from 0.999 noise + 0.001 image latent
    i2v_resize: str  # "crop" (keep the aspect, center crop) or "stretch" (diffusers)
    i2v_size_given: bool  # --video-size given: the video has exactly that size (else the image's bucket)

    @classmethod
    def from_flags(cls, f: Flags, image_later: bool = False) -> ImageOptions:
        """Flags, weights (small JSON files only) and the image file, in that order; each problem is one line.
        `image_later`: the images come with each prompt (the Python API), --i2v-image-path is optional."""
        if not f["i2v_mode"]:
            _check_no_image_flags(f)
            return cls(
                i2v_mode=False,
                i2v_image=None,
                i2v_resolution=f["i2v_resolution"],
                i2v_condition=None,
                i2v_stability=False,
                i2v_resize=f["i2v_resize"],
                i2v_size_given=given(f["video_size"]),
            )
        if f["decode_latents"] is not None:
            raise UsageError("--decode-latents", "decoding latents with --i2v-mode: not supported yet; drop one")
        if f["i2v_image_path"] is None and f["prompt_file"] is None and not image_later:  # lines may bring theirs
            raise UsageError("--i2v-mode", "needs --i2v-image-path IMG (the first frame)")
        if f["video_length"] == 1:  # the official I2V encoder refuses it too: the video would be the image
            raise UsageError("--video-length", "1 frame with --i2v-mode would be the image itself; give 4n+1 >= 5")
        kind = _i2v_kind(f)
        condition = _i2v_condition(kind, f["i2v_condition_type"])
        if f["i2v_stability"] and condition == "concat":
            raise UsageError("--i2v-stability", "SkyReels-V1 weights start from pure noise; drop --i2v-stability")
        path = f["i2v_image_path"]
        return cls(
            i2v_mode=True,
            i2v_image=load_image(path) if path is not None else None,  # refuses missing, truncated, ... (one line)
            i2v_resolution=f["i2v_resolution"],
            i2v_condition=condition,
            i2v_stability=bool(f["i2v_stability"]),
            i2v_resize=f["i2v_resize"],
            i2v_size_given=given(f["video_size"]),
        )

    @classmethod
    def from_flags15(cls, f: Flags, hv15: Family15Options, image_later: bool = False) -> ImageOptions:
        """HunyuanVideo 1.5: the image (--image_path, or --i2v-mode --i2v-image-path) of image-to-video weights; the
        condition is fixed by the family (image latent + mask, `i2v_condition` None), there is no stability start.
        Text-to-video weights take no image (checked where the version is chosen)."""
        size_given = given(f["video_size"])
        decode_only = f["decode_latents"] is not None and _image_path(f) is None and not f["i2v_mode"]
        if hv15.task == "t2v" or decode_only:  # decoding latents needs no image, whatever the version
            return cls(i2v_mode=False, i2v_image=None, i2v_resolution=f["i2v_resolution"], i2v_condition=None,
                       i2v_stability=False, i2v_resize=f["i2v_resize"], i2v_size_given=size_given)  # fmt: skip
        if f["decode_latents"] is not None:
            raise UsageError("--decode-latents", "decoding latents with an image: not supported yet; drop one")
        path = _image_path(f)
        flag = "--image_path" if f["image_path"] is not None else "--i2v-image-path"
        if path is None and f["prompt_file"] is None and not image_later and not f["dry_run"]:
            raise UsageError(
                "--image_path", f"image-to-video weights ({hv15.version}) need the first frame: add --image_path IMG"
            )
        if f["video_length"] == 1:
            raise UsageError("--video-length", "1 frame with an image would be the image itself; give 4n+1 >= 5")
        return cls(
            i2v_mode=True,
            i2v_image=load_image(path, flag=flag) if path is not None else None,
            i2v_resolution=f["i2v_resolution"],
            i2v_condition=None,
            i2v_stability=False,
            i2v_resize=f["i2v_resize"],
            i2v_size_given=size_given,
        )

    def for_prompt(self, f: Flags, image: SourceImage | None) -> ImageOptions:
        """This run's options for one prompt of a prompt file or the Python API: its own image (None: the run's),
        stability, resize and size (the condition and the weights are the run's, checked once)."""
        image = image or self.i2v_image
        if image is None:
            raise UsageError("--i2v-image-path", "no image for this prompt; give one (or --i2v-image-path IMG)")
        if f["video_length"] == 1:
            raise UsageError("--video-length", "1 frame with --i2v-mode would be the image itself; give 4n+1 >= 5")
        if f["i2v_stability"] and self.i2v_condition == "concat":
            raise UsageError("--i2v-stability", "SkyReels-V1 weights start from pure noise; drop --i2v-stability")
        return dataclasses.replace(
            self,
            i2v_image=image,
            i2v_stability=bool(f["i2v_stability"]),
            i2v_resize=f["i2v_resize"],
            i2v_resolution=f["i2v_resolution"],
            i2v_size_given=given(f["video_size"]),
        )

    def model_defaults(self, f: Flags) -> dict[str, Any]:
        """`f` with the defaults that follow the weights, where the flag was not given: the video size from the
        image's bucket; flow shift 17 (7 with --i2v-stability) for HunyuanVideo-I2V; SkyReels-V1's embedded guidance
        1 and real CFG 6; --i2v-dit-weight as the DiT weights."""
        if not self.i2v_mode:
            return dict(f)
        out = {**f, "dit_weight": f["i2v_dit_weight"] or f["dit_weight"]}
        if not self.i2v_size_given and self.i2v_image is not None:  # None: a prompt file's lines bring the images
            image = self.i2v_image.image
            out["video_size"] = list(i2v_bucket(self.i2v_resolution, image.height, image.width))
        if self.i2v_condition == "concat":
            out["embedded_cfg_scale"] = f["embedded_cfg_scale"] if given(f["embedded_cfg_scale"]) else 1.0
            out["cfg_scale"] = f["cfg_scale"] if given(f["cfg_scale"]) else 6.0
        elif not given(f["flow_shift"]):
            out["flow_shift"] = 7.0 if self.i2v_stability else 17.0
        return out


_IMAGE_FLAGS = ("i2v_image_path", "i2v_condition_type", "i2v_stability", "i2v_dit_weight")


def _check_no_image_flags(f: Flags) -> None:
    """Without --i2v-mode: no image flag, and weights that can run text-to-video (when the folder says)."""
    defaults = flag_defaults()
    for dest in (*_IMAGE_FLAGS, "i2v_resolution", "i2v_resize"):
        if f[dest] != defaults[dest]:
            raise UsageError(_flag(dest), "needs --i2v-mode (image-to-video)")
    if f["decode_latents"] is not None or not _exists(Path(f["model_base"])):
        return
    try:
        kind = model_kind(f["model_base"])
    except CheckpointError:
        return  # the pipeline names the bad file when it locates the components
    if kind.i2v and not kind.t2v:
        raise UsageError(
            "--model-base",
            f"{f['model_base']} holds image-to-video weights ({kind.condition or 'HunyuanVideo-I2V'}); add "
            "--i2v-mode --i2v-image-path IMG, or give text-to-video weights",
        )


def _i2v_kind(f: Flags) -> ModelKind:
    """What --model-base holds; it must serve image-to-video. --i2v-dit-weight replaces --dit-weight."""
    model_base, _ = _check_weights(f)
    if f["i2v_dit_weight"] is not None:
        if f["dit_weight"] is not None:
            raise UsageError("--i2v-dit-weight", "replaces --dit-weight with --i2v-mode; give only one of the two")
        if not _exists(Path(f["i2v_dit_weight"])):
            raise UsageError("--i2v-dit-weight", f"{f['i2v_dit_weight']!s:.200} does not exist")
    try:
        kind = model_kind(model_base)
    except CheckpointError as e:
        raise UsageError("--model-base", str(e)) from None
    if not kind.i2v:
        raise UsageError(
            "--i2v-mode",
            f"--model-base {model_base} holds text-to-video weights; give image-to-video weights "
            "(HunyuanVideo-I2V or SkyReels-V1) or drop --i2v-mode",
        )
    return kind


def _i2v_condition(kind: ModelKind, flag: str | None) -> str:
    """The condition the weights describe; the flag must agree (the released official tree describes none: then
    the flag, default token_replace, and loading checks it against the weights' input width)."""
    if kind.condition is None:
        return flag or "token_replace"
    if flag is not None and flag != kind.condition:
        weights = "SkyReels-V1 (concat)" if kind.condition == "concat" else kind.condition
        raise UsageError("--i2v-condition-type", f"{flag}, but the weights under --model-base are {weights}")
    return kind.condition


# ---------------------------------------------------------------------------------------------------------------
# HunyuanVideo 1.5 (docs/DESIGN.md §21)
# ---------------------------------------------------------------------------------------------------------------
# generate.py's options (flags group "HunyuanVideo 1.5"): with v1 weights any of them not at its default is refused.
HV15_ONLY = (
    "resolution", "aspect_ratio", "image_path", "output_path", "cfg_distilled", "enable_step_distill", "sparse_attn",
    "sr", "save_pre_sr_video", "rewrite", "offloading", "group_offloading", "overlap_group_offloading",
    "use_sageattn", "sage_blocks_range", "enable_torch_compile", "enable_cache", "cache_type", "no_cache_block_id",
    "cache_start_step", "cache_end_step", "total_steps", "cache_step_interval", "save_generation_config",
    "checkpoint_path", "use_fp8_gemm", "quant_type", "include_patterns", "neg_byt5",
)  # fmt: skip
# The v1 model's flags that mean nothing for 1.5 (its DiT, VAE, encoders and their templates are fixed by the
# version): refused with 1.5 weights when not at their defaults, each with what to use instead.
V1_ONLY: dict[str, str] = {
    "model": "the DiT follows the weights' version",
    "model_resolution": "use --resolution 480p|720p",
    "load_key": "1.5 weights are safetensors",
    "latent_channels": "the 1.5 VAE has 32",
    "rope_theta": "the 1.5 DiT's config sets it",
    "vae": "the 1.5 VAE is found under --model-base",
    "text_states_dim": "Qwen2.5-VL's width comes from its config",
    "text_states_dim_2": "1.5 has no CLIP",
    "text_len": "1.5 encodes 1000 Qwen tokens",
    "text_len_2": "1.5 has no CLIP; byT5 takes 256 tokens",
    "prompt_template": "1.5 uses its own Qwen template",
    "prompt_template_video": "1.5 uses its own Qwen template",
    "hidden_state_skip_layer": "1.5 uses Qwen's hidden_states[-3]",
    "apply_final_norm": "1.5 uses Qwen's hidden_states[-3] as it is",
    "embedded_cfg_scale": "the 1.5 DiT has no guidance embedding; use --cfg-scale",
    "i2v_resolution": "use --resolution 480p|720p",
    "i2v_condition_type": "1.5 concatenates the image latent and a mask",
    "i2v_stability": "1.5 starts from pure noise",
    "i2v_dit_weight": "use --dit-weight",
    "riflex": "RIFLEx is calibrated for the v1 DiT's 129 frames",
}
LORA_FOLDER_FILE = "pytorch_lora_weights.safetensors"  # the file diffusers saves a LoRA folder's weights in
_SR_HINT = "the super-resolution stage needs the separate upsampler models: not supported; run with --sr false"
# generate.py options for features we do not have: refused with 1.5 weights when set (value -> message)
_HV15_REFUSED: dict[str, str] = {
    "sr": _SR_HINT,
    "save_pre_sr_video": "only with --sr, which is not supported; drop it",
    "rewrite": "prompt rewriting needs an external LLM service: not supported; rewrite the prompt yourself and use "
    "--rewrite false",
    "sparse_attn": "SSTA sparse attention needs H-series GPUs and the flex-block-attn kernels: not supported; use "
    "the dense weights (--sparse_attn false)",
    "enable_cache": "feature caching (deepcache/teacache/taylorcache) comes from an external package with no "
    "published calibration for 1.5 here: not supported; drop it",
}
HV15_NOTICE_SR = "super-resolution (generate.py's default --sr true) is not supported: the video keeps the DiT's size"


def hv15_bucket(target_size: int, height: int, width: int) -> tuple[int, int]:
    """The official 1.5 size for a height x width picture (an image, or the aspect ratio's W:H as H, W): the bucket of
    (target_size / 16)^2 cells whose h/w, rounded to 5 decimals, is nearest to height / width, the tallest on a tie
    (numpy's argmin over the official bucket order)."""
    ratio = float(height) / float(width)
    buckets = bucket_sizes(target_size, HV15_BUCKET_STRIDE)
    return min(buckets, key=lambda hw: abs(round(hw[0] / hw[1], 5) - ratio))  # min keeps the first of equals


def _family(f: Flags) -> str:
    """The family, "1.5" or "v1": from the folder when it exists, else (a dry run, or an error reported later) from
    the flags."""
    base = Path(f["model_base"])
    if _exists(base) and base.is_dir():
        try:
            return model_family(base)
        except CheckpointError as e:
            raise UsageError(None, str(e)) from None
    defaults = flag_defaults()
    return "1.5" if any(f[d] != defaults[d] for d in HV15_ONLY) else "v1"


def _check_no_hv15_flags(f: Flags) -> None:
    defaults = flag_defaults()
    for dest in HV15_ONLY:
        if f[dest] != defaults[dest]:
            raise UsageError(
                _hv15_flag(dest),
                f"a HunyuanVideo 1.5 option, but --model-base {f['model_base']} holds HunyuanVideo (v1) weights; "
                "drop it or give 1.5 weights",
            )


def _hv15_flag(dest: str) -> str:
    """generate.py's spelling of one of its options (its own: underscores)."""
    return "--neg-byt5" if dest == "neg_byt5" else "--" + dest


def _check_hv15_flags(f: Flags, notes: list[str]) -> None:
    """With 1.5 weights: no v1-only flag, no feature we lack; options that change nothing are noted."""
    _check_v1_only(f)
    defaults = flag_defaults()
    if f["teacache_thresh"] != 0:
        raise UsageError(
            "--teacache-thresh",
            "TeaCache has no published calibration for HunyuanVideo 1.5 (the official repository's caches come from "
            "an external package): not supported with 1.5 weights; drop it",
        )
    for dest, message in _HV15_REFUSED.items():
        if f[dest]:
            raise UsageError(_hv15_flag(dest), message)
    for dest in ("cache_type", "no_cache_block_id", "cache_start_step", "cache_end_step", "total_steps",
                 "cache_step_interval"):  # fmt: skip
        if f[dest] != defaults[dest]:
            raise UsageError(_hv15_flag(dest), "only with --enable_cache, which is not supported; drop it")
    if f["sage_blocks_range"].replace(" ", "") != defaults["sage_blocks_range"]:
        raise UsageError("--sage_blocks_range", "SageAttention runs in every block here (0-53); drop it")
    if f["include_patterns"].replace(" ", "") != defaults["include_patterns"]:
        raise UsageError("--include_patterns", "fp8 applies to the double blocks (double_blocks) only; drop it")
    if f["quant_type"] != defaults["quant_type"] and not f["use_fp8_gemm"]:
        raise UsageError("--quant_type", "only with --use_fp8_gemm; add it or drop --quant_type")
    if f["checkpoint_path"] is not None:
        raise UsageError(
            "--checkpoint_path", "training checkpoints (torch.distributed.checkpoint) are not supported; save the DiT "
            "as safetensors and give --dit-weight",
        )  # fmt: skip
    if f["save_generation_config"] is False:
        raise UsageError("--save_generation_config", "the run record <video>.json is always written; drop it")
    if f["sr"] is None and f["decode_latents"] is None and not f["dry_run"]:
        notes.append(HV15_NOTICE_SR)


def _check_v1_only(f: Flags) -> None:
    """No v1-only flag given (even at its default value) or changed (a prompt-file line) with 1.5 weights."""
    defaults = flag_defaults()
    for dest, instead in V1_ONLY.items():
        if given(f[dest]) and (f[dest] != defaults[dest] or not given(defaults[dest])):
            raise UsageError(_flag(dest), f"a HunyuanVideo (v1) option: not for 1.5 weights ({instead}); drop it")


def _aspect_ratio(text: str | None) -> tuple[int, int]:
    """--aspect_ratio W:H, two positive integers (generate.py's rule)."""
    width, sep, height = (text or HV15_ASPECT_RATIO).partition(":")
    if not sep or not width.strip().isdigit() or not height.strip().isdigit() or min(int(width), int(height)) < 1:
        raise UsageError("--aspect_ratio", f"give W:H with two positive integers (e.g. 16:9 or 9:16), got {text!r}")
    return int(width), int(height)


def _image_path(f: Flags) -> str | None:
    """The 1.5 first frame: --image_path (generate.py; 'none' = no image) or --i2v-image-path (ours)."""
    path = f["image_path"]
    if path is not None and path.strip().lower() == "none":
        path = None
    if path is not None and f["i2v_image_path"] is not None:
        raise UsageError("--image_path", "give the image once: --image_path or --i2v-image-path")
    return path if path is not None else f["i2v_image_path"]


def _official_version(f: Flags, base: Path, task: str) -> str:
    """The version under an official tree's transformer/ that the flags ask for. Flags left unset narrow nothing;
    when several versions still fit, unset --cfg_distilled / --enable_step_distill take generate.py's default
    (false), and a choice that remains (two resolutions) must be made with --resolution."""
    found = official_versions15(base)
    res, cfg_distilled, step = f["resolution"], f["cfg_distilled"], f["enable_step_distill"]

    def fits(name: str, cfg: bool | None, steps: bool | None) -> bool:
        v = HV15_VERSIONS[name]
        return (
            v.task == task
            and (res is None or v.resolution == res)
            and (steps is None or v.step_distilled == steps)
            and (cfg is None or bool(steps) or v.cfg_distilled == cfg)
        )

    listed = ", ".join(found) or "none"
    fitting = [n for n in found if fits(n, cfg_distilled, step)]
    dense = [n for n in fitting if not HV15_VERSIONS[n].sparse]
    if fitting and not dense:
        raise UsageError(
            "--model-base",
            f"{base}: only {', '.join(fitting)} fits, which needs SSTA sparse attention (H-series kernels): not "
            "supported; download a dense version",
        )
    if len(dense) > 1:
        dense = [n for n in dense if fits(n, bool(cfg_distilled), bool(step))] or dense
    if len(dense) == 1:
        return dense[0]
    what = "image-to-video" if task == "i2v" else "text-to-video"
    if not dense:
        hint = ""
        if not any(HV15_VERSIONS[n].task == task for n in found):
            hint = (
                "; drop the image for text-to-video" if task == "i2v" else "; add --image_path IMG for image-to-video"
            )
        if res:
            asked = hv15_version_name(res, task, bool(cfg_distilled), bool(step), False)
            raise UsageError("--resolution", f"{base} has no transformer/{asked} (versions found: {listed}){hint}")
        raise UsageError(
            "--model-base", f"{base} has no {what} version that fits the flags (versions found: {listed}){hint}"
        )
    resolutions = sorted({HV15_VERSIONS[n].resolution for n in dense})
    flag = "--resolution" if len(resolutions) > 1 else "--cfg_distilled"
    how = " or ".join(f"--resolution {r}" for r in resolutions) if len(resolutions) > 1 else (
        "--cfg_distilled or --enable_step_distill"
    )  # fmt: skip
    raise UsageError(flag, f"{base} holds several {what} versions ({', '.join(dense)}); choose with {how}")


def _diffusers_version(f: Flags, base: Path, has_image: bool) -> str:
    """The version a diffusers folder holds; the flags must not ask for another."""
    try:
        version = folder_version15(base)
    except CheckpointError as e:
        raise UsageError(None, str(e)) from None
    v = HV15_VERSIONS[version]
    if has_image and v.task == "t2v":
        raise UsageError(
            "--image_path" if f["image_path"] is not None or not f["i2v_mode"] else "--i2v-mode",
            f"--model-base {base} holds text-to-video weights ({version}); drop the image or give image-to-video "
            "weights",
        )
    asked = {
        "--resolution": (f["resolution"], v.resolution),
        "--enable_step_distill": (f["enable_step_distill"], v.step_distilled),
        "--cfg_distilled": (None if f["enable_step_distill"] else f["cfg_distilled"], v.cfg_distilled),
    }
    for flag, (wanted, held) in asked.items():
        if wanted is not None and wanted != held:
            said = str(wanted).lower() if isinstance(wanted, bool) else wanted
            raise UsageError(flag, f"{said}, but --model-base {base} holds {version}")
    return version


@dataclass(frozen=True, kw_only=True)
class Family15Options:
    """HunyuanVideo 1.5: which DiT version runs (from the folder and generate.py's flags), where its components are,
    and the settings that follow from the version. Checked before every other stage: their defaults follow it."""

    version: str  # key of hyvideo.choices.HV15_VERSIONS, e.g. "480p_i2v_step_distilled"
    task: str  # "t2v" or "i2v"
    resolution: str  # "480p" or "720p"
    target_size: int  # bucket base edge in pixels (640 / 960): the default size of the video
    aspect_ratio: tuple[int, int]  # (W, H) of --aspect_ratio: text-to-video's bucket when --video-size is not given
    cfg_distilled: bool  # trained without the unconditional pass (default guidance 1)
    step_distilled: bool  # few steps (default 12)
    meanflow: bool  # the DiT also takes the next step's timestep t_r (the step-distilled weights)
    negative_byt5: bool  # --neg-byt5: encode the negative prompt's quoted text with byT5 (official: zeros)
    paths: Model15Paths | None  # the components; None only for --dry-run (the weights need not exist yet)
    defaults_from: str  # "version table" (official tree) or "folder" (diffusers guider and scheduler configs)
    default_cfg_scale: float  # what --cfg-scale defaults to for this version / folder
    default_flow_shift: float  # what --flow-shift defaults to
    default_infer_steps: int  # what --infer-steps defaults to
    output_file: Path | None  # --output_path: the video's exact file name (one video only); None = named as v1's

    @classmethod
    def from_flags(cls, f: Flags, notes: list[str]) -> Family15Options:
        """The flags that 1.5 refuses, then the version (folder and flags), the components (every file checked),
        the folder's or the table's defaults. Reads small JSON files only."""
        _check_hv15_flags(f, notes)
        base, dry = Path(f["model_base"]), bool(f["dry_run"])
        image = _image_path(f)
        exists = _exists(base) and base.is_dir()
        if not exists and not dry:
            raise UsageError(
                "--model-base",
                f"{base!s:.200} is not a directory; give the HunyuanVideo 1.5 folder (official ckpts/ tree or a "
                "diffusers-format folder)",
            )
        diffusers = exists and (base / "model_index.json").is_file()
        task = "i2v" if image is not None or f["i2v_mode"] else "t2v"
        if diffusers:
            version = _diffusers_version(f, base, image is not None or bool(f["i2v_mode"]))
        elif exists and official_versions15(base) and f["decode_latents"] is not None:
            version = official_versions15(base)[0]  # decoding needs only the VAE, which every version shares
        elif exists and official_versions15(base):
            version = _official_version(f, base, task)
        elif dry:  # planning before the download: the flags name the version
            if f["resolution"] is None:
                raise UsageError("--resolution", "480p or 720p: needed to plan without the weights (--dry-run)")
            version = hv15_version_name(
                f["resolution"], task, bool(f["cfg_distilled"]), bool(f["enable_step_distill"]), False
            )
            if version not in HV15_VERSIONS:
                raise UsageError("--enable_step_distill", f"{version} is not a released version")
        else:
            raise UsageError("--model-base", f"{base}: no HunyuanVideo 1.5 version under transformer/")
        spec = HV15_VERSIONS[version]
        paths = None
        if exists and not dry:
            need = f["decode_latents"] is None
            try:
                paths = locate15(base, version, need_text=need, need_dit=need)
            except CheckpointError as e:
                raise UsageError(None, str(e)) from None
        cfg, shift = folder_settings15(base) if diffusers else (None, None)
        if f["aspect_ratio"] is not None and given(f["video_size"]):
            raise UsageError("--aspect_ratio", "give either --aspect_ratio or --video-size, not both")
        aspect = _aspect_ratio(f["aspect_ratio"])
        if f["aspect_ratio"] is not None and spec.task == "i2v":
            notes.append("--aspect_ratio has no effect with an image: the image's aspect picks the size")
        options = cls(
            version=version,
            task=spec.task,
            resolution=spec.resolution,
            target_size=HV15_TARGET_SIZES[spec.resolution],
            aspect_ratio=aspect,
            cfg_distilled=spec.cfg_distilled,
            step_distilled=spec.step_distilled,
            meanflow=spec.step_distilled,
            negative_byt5=bool(f["neg_byt5"]),
            paths=paths,
            defaults_from="folder" if diffusers else "version table",
            default_cfg_scale=spec.cfg_scale if cfg is None else cfg,
            default_flow_shift=spec.flow_shift if shift is None else shift,
            default_infer_steps=spec.infer_steps,
            output_file=_output_file(f),
        )
        notes.append(
            f"HunyuanVideo 1.5 {version} ({'a diffusers folder' if diffusers else 'transformer/' + version}); "
            f"defaults from the {options.defaults_from}: cfg {options.default_cfg_scale:g}, shift "
            f"{options.default_flow_shift:g}, {options.default_infer_steps} steps"
        )
        return options

    def model_defaults(self, f: Flags, image: SourceImage | None, notes: list[str] | None = None) -> dict[str, Any]:
        """`f` with the defaults that follow the version where a flag was not given (guidance, shift, steps, 121
        frames, the size bucket of the aspect ratio or of `image`, generate.py's seed 123), and generate.py's options
        that are spellings of ours put into our flags."""
        out = dict(f)
        if not given(f["cfg_scale"]):
            out["cfg_scale"] = self.default_cfg_scale
        if not given(f["flow_shift"]):
            out["flow_shift"] = self.default_flow_shift
        if not given(f["infer_steps"]):
            out["infer_steps"] = self.default_infer_steps
        if not given(f["video_length"]):
            out["video_length"] = HV15_VIDEO_LENGTH
        if not given(f["video_size"]):
            if self.task == "t2v":
                out["video_size"] = list(hv15_bucket(self.target_size, self.aspect_ratio[1], self.aspect_ratio[0]))
            elif image is not None:  # None: a prompt file's lines bring the images
                out["video_size"] = list(hv15_bucket(self.target_size, image.image.height, image.image.width))
        if f["seed"] is None and f["seed_type"] == "auto":
            out["seed"] = HV15_SEED
            if notes is not None and f["prompt_file"] is None and f["decode_latents"] is None:
                notes.append(f"seed {HV15_SEED} (generate.py's default; --seed N for another)")
        out.update(_runtime_spellings(f, notes))
        if self.output_file is not None:
            out["save_path"], out["save_path_suffix"] = str(self.output_file.parent), ""
        return out


def _output_file(f: Flags) -> Path | None:
    """--output_path FILE.mp4: one video with exactly that name; --save-path and the naming flags then conflict."""
    if f["output_path"] is None:
        return None
    path = Path(f["output_path"])
    if path.suffix.lower() != ".mp4" or not path.stem:
        raise UsageError("--output_path", f"{f['output_path']!r}: give a file name ending in .mp4")
    if f["num_videos"] != 1 or f["prompt_file"] is not None:
        raise UsageError("--output_path", "names one video: drop --num-videos / --prompt-file or use --save-path")
    defaults = flag_defaults()
    for dest in ("save_path", "save_path_suffix", "name_suffix"):
        if f[dest] != defaults[dest]:
            raise UsageError("--output_path", f"names the file itself: drop {_flag(dest)}")
    return path


def _runtime_spellings(f: Flags, notes: list[str] | None) -> dict[str, Any]:
    """generate.py's runtime options as our flags: --offloading (model), --group_offloading (block),
    --use_sageattn (sage), --enable_torch_compile (--compile), --use_fp8_gemm (--use-fp8 [--fp8-compute]),
    --lora_path without --use-lora (one LoRA at scale 1)."""
    out: dict[str, Any] = {}
    defaults = flag_defaults()
    if f["offloading"] or f["group_offloading"]:
        if f["offload"] != defaults["offload"] or f["use_cpu_offload"]:
            raise UsageError("--offloading", "give either generate.py's --offloading or our --offload, not both")
        out["offload"] = "block" if f["group_offloading"] else "model"
    if f["use_sageattn"]:
        if f["attn_backend"] not in ("auto", "sage"):
            raise UsageError("--use_sageattn", f"contradicts --attn-backend {f['attn_backend']}; give one")
        out["attn_backend"] = "sage"
    if f["enable_torch_compile"]:
        out["compile"] = True
    if f["lora_path"] and not f["use_lora"]:  # generate.py's --lora_path alone: a file, or diffusers' folder
        path = Path(f["lora_path"])
        out["use_lora"], out["lora_path"] = True, str(path / LORA_FOLDER_FILE if path.is_dir() else path)
    if f["use_fp8_gemm"]:
        out["use_fp8"] = True
        out["fp8_compute"] = f["fp8_compute"] or f["quant_type"] != "fp8-per-tensor-weight-only"
        if f["quant_type"] == "fp8-per-token-sgl" and notes is not None:
            notes.append("--use_fp8_gemm: activations are scaled per tensor (fp8-per-tensor); sgl-kernel's "
                         "per-token scales are not used here")  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------------------------
# The request
# ---------------------------------------------------------------------------------------------------------------
STAGES = ("sampling", "text", "dit", "decode", "runtime", "parallel", "output", "image", "hv15")


@dataclass(frozen=True, kw_only=True)
class SampleRequest:
    """A resolved, validated sampling request: one options object per stage. Built by `validate`; read by
    `hyvideo.pipeline`. A field can also be read by its own name (`req.seed` is `req.sampling.seed`): names are
    unique across the stages."""

    sampling: SamplingOptions
    text: TextOptions
    dit: DiTOptions
    decode: DecodeOptions
    runtime: RuntimeOptions
    parallel: ParallelOptions
    output: OutputOptions
    image: ImageOptions
    hv15: Family15Options | None = None  # HunyuanVideo 1.5 weights; None for v1 (HunyuanVideo, -I2V, SkyReels-V1)

    @property
    def family(self) -> str:
        """ "1.5" (HunyuanVideo 1.5 weights) or "v1" (HunyuanVideo and the image-to-video models built on it)."""
        return "v1" if self.hv15 is None else "1.5"

    def __getattr__(self, name: str) -> Any:
        stage = _STAGE_OF.get(name)
        if stage is None or stage not in self.__dict__:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}")
        if self.__dict__[stage] is None:
            raise AttributeError(f"{type(self).__name__}: {name!r} is a HunyuanVideo 1.5 field; this request is v1")
        return getattr(self.__dict__[stage], name)

    def replace(self, **changes: Any) -> SampleRequest:
        """A copy with fields changed by their own names (each routed to its stage)."""
        by_stage: dict[str, dict[str, Any]] = {}
        for name, value in changes.items():
            if name not in _STAGE_OF:
                raise TypeError(f"{type(self).__name__} has no field {name!r}")
            by_stage.setdefault(_STAGE_OF[name], {})[name] = value
        stages = {s: dataclasses.replace(getattr(self, s), **c) for s, c in by_stage.items()}
        return dataclasses.replace(self, **stages)


_STAGE_CLASSES = (
    SamplingOptions,
    TextOptions,
    DiTOptions,
    DecodeOptions,
    RuntimeOptions,
    ParallelOptions,
    OutputOptions,
    ImageOptions,
    Family15Options,
)
_STAGE_OF: dict[str, str] = {
    field.name: stage for stage, cls in zip(STAGES, _STAGE_CLASSES, strict=True) for field in dataclasses.fields(cls)
}


def validate(flags: Namespace | Flags, notes: list[str] | None = None, *, image_later: bool = False) -> SampleRequest:
    """Check flag values and resolve them into a `SampleRequest`; raise `UsageError` on the first problem.

    `flags`: the parser's Namespace, or values by dest (missing ones take their defaults). Notes about resolved
    values (rounding, the seed drawn) are appended to `notes` for the caller to show once everything is valid.
    A prompt file is only checked for conflicts here; `hyvideo.prompt_file.expand` turns it into requests.
    `image_later`: with --i2v-mode, each prompt brings its image (`for_prompt`); the Python API's construction.
    """
    f = {**flag_defaults(), **(vars(flags) if isinstance(flags, Namespace) else flags)}
    _check_choices(f)
    family_notes: list[str] = []
    hv15 = Family15Options.from_flags(f, family_notes) if _family(f) == "1.5" else None
    if hv15 is None:
        _check_no_hv15_flags(f)
        image = ImageOptions.from_flags(f, image_later)
        f = image.model_defaults(f)
    else:
        image = ImageOptions.from_flags15(f, hv15, image_later)
        f = hv15.model_defaults(f, image.i2v_image, family_notes)
    sampling_notes: list[str] = []
    sampling = SamplingOptions.from_flags(f, sampling_notes)
    text_notes: list[str] = []
    negative = DEFAULT_NEGATIVE_PROMPT if hv15 is None else ""  # generate.py's default negative prompt is empty
    text = TextOptions.from_flags(f, sampling.cfg_scale, text_notes, negative)
    _check_sources(f)
    _check_unsupported(f)
    parallel = ParallelOptions.from_flags(f, sampling.cfg_scale)
    output = OutputOptions.from_flags(f)
    runtime = RuntimeOptions.from_flags(f)
    dit = DiTOptions.from_flags(f, runtime, hv15=hv15 is not None)
    decode = DecodeOptions.from_flags(f, hv15=hv15 is not None)
    if (
        sampling.seed_was_random
        and output.decode_latents is None
        and output.prompt_file is None
        and not runtime.dry_run
    ):
        sampling_notes.append(f"seed {sampling.seed} picked at random (pass --seed {sampling.seed} to repeat this run)")
    if notes is not None:
        notes += family_notes + text_notes + sampling_notes
    return SampleRequest(
        sampling=sampling,
        text=text,
        dit=dit,
        decode=decode,
        runtime=runtime,
        parallel=parallel,
        output=output,
        image=image,
        hv15=hv15,
    )


def _check_sources(f: Flags) -> None:
    """Where prompts and seeds come from: one of --prompt / --prompt-file / --decode-latents, and a --seed-type
    that fits them. A dry run plans one sampling request (the command line's size and frames)."""
    if f["dry_run"] and (f["decode_latents"] is not None or f["prompt_file"] is not None):
        other = "--decode-latents" if f["decode_latents"] is not None else "--prompt-file"
        raise UsageError("--dry-run", f"plans one sampling request (its --video-size and --video-length); drop {other}")
    if f["prompt_file"] is not None and (f["prompt"] is not None or f["decode_latents"] is not None):
        other = "--prompt" if f["prompt"] is not None else "--decode-latents"
        raise UsageError("--prompt-file", f"give either {other} or --prompt-file, not both")
    seed_type, seed = f["seed_type"], f["seed"]
    if seed_type == "fixed" and seed is None:
        raise UsageError("--seed-type", "fixed needs --seed N")
    if seed_type == "file":
        if f["prompt_file"] is None:
            raise UsageError(
                "--seed-type", 'file takes each seed from --prompt-file (a .jsonl with "seed" on every line)'
            )
        if seed is not None:
            raise UsageError("--seed-type", "file takes the seeds from --prompt-file; drop --seed N")
    if seed_type == "random" and seed is not None:
        raise UsageError("--seed-type", "random draws the seed itself; drop --seed N or use --seed-type fixed")


def _check_unsupported(f: Flags) -> None:
    for flag, accepted in SUPPORTED_VALUES_ONLY.items():
        value = f[flag[2:].replace("-", "_")]
        if value not in accepted:
            if isinstance(value, bool):
                raise UsageError(flag, "not supported yet; drop the flag")
            ok = ", ".join(str(a) for a in accepted)
            raise UsageError(flag, f"{value} is not supported yet (supported: {ok})")


def for_prompt(base: SampleRequest, flags: Flags, image: SourceImage | None = None) -> SampleRequest:
    """`base` (a validated request) for another prompt: its sampling and text stages built again from `flags` (the
    command line's values with the prompt's own put in), checked exactly as `validate` checks them; the other stages
    were checked once. With --i2v-mode also the image stage: `image` (decoded and checked by the caller; None: the
    run's --i2v-image-path), and the defaults that follow it (size bucket, flow shift). Used by prompt-file entries
    and the Python API's `generate`."""
    f = {**flag_defaults(), **flags}
    stage = base.image
    if base.i2v_mode:
        for dest, allowed in (("i2v_resize", I2V_RESIZE_MODES), ("i2v_resolution", I2V_RESOLUTIONS)):
            if f[dest] not in allowed:
                raise UsageError(_flag(dest), f"{f[dest]!r}: choose from {', '.join(allowed)}")
        stage = base.image.for_prompt(f, image)
        if base.hv15 is None:
            f = stage.model_defaults(f)
    negative = DEFAULT_NEGATIVE_PROMPT
    if base.hv15 is not None:
        _check_v1_only(f)  # a prompt-file line may set i2v_stability or embedded_cfg_scale
        f = base.hv15.model_defaults(f, stage.i2v_image)
        negative = ""
    sampling = SamplingOptions.from_flags(f, [])
    text = TextOptions.from_flags(f, sampling.cfg_scale, [], negative)
    return dataclasses.replace(base, sampling=sampling, text=text, image=stage)
