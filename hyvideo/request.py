"""What one run of the sampler is asked to do: `SampleRequest`, and `validate`, which builds it from parsed flags.

`validate` does every cheap check (numbers, choices we can honour, paths, device) before anything expensive loads and
raises `UsageError(flag, message)` on the first problem. It never creates files or directories. Nothing downstream of
it sees argparse: the pipeline reads only the `SampleRequest`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import random
import re
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from loguru import logger

from hyvideo.config import tile_problem

if TYPE_CHECKING:
    from hyvideo.lora import LoraSpec
    from hyvideo.prompt_file import BatchItem

Precision = Literal["fp32", "fp16", "bf16"]
AttnBackend = Literal["auto", "sdpa", "flash", "sage"]

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")
MODELS: tuple[str, ...] = ("HYVideo-T/2-cfgdistill", "HYVideo-T/2")
VAES: tuple[str, ...] = ("884-16c-hy",)
TEXT_ENCODERS: tuple[str, ...] = ("llm", "clipL")
PROMPT_TEMPLATES: tuple[str, ...] = ("dit-llm-encode", "dit-llm-encode-video")
SEED_TYPES: tuple[str, ...] = ("auto", "random", "fixed", "file")
RESOLUTIONS: tuple[str, ...] = ("540p", "720p")
ATTN_BACKENDS: tuple[str, ...] = ("auto", "sdpa", "flash", "sage")
OFFLOAD_LEVELS: tuple[str, ...] = ("none", "model", "block")  # hyvideo/offload.py
# torch.compile modes for --compile-mode; "reduce-overhead" replays each block as a CUDA graph (hyvideo/compile.py)
COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# docs/DESIGN.md §4.6: used only when cfg_scale > 1 and no --neg-prompt is given.
DEFAULT_NEGATIVE_PROMPT = (
    "Aerial view, aerial view, overexposed, low quality, deformation, a poor composition, bad hands, bad teeth, "
    "bad eyes, bad limbs, distortion"
)

SIZE_MULTIPLE = 16  # H and W must be multiples of this (VAE 8x8 times patch 2x2); others are rounded up
RANDOM_SEED_MAX = 1_000_000  # a missing --seed is drawn from [0, RANDOM_SEED_MAX], as the official tool does
SEED_MAX = 2**63 - 1  # seed + i (video i) must fit a torch generator seed

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


class UsageError(Exception):
    """Bad command-line input. `flag` names the offending flag (or None); `message` says what is valid."""

    def __init__(self, flag: str | None, message: str) -> None:
        self.flag = flag
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.flag}: {self.message}" if self.flag else self.message
        return " ".join(text.split())  # always one line, whatever the user typed


@dataclass(frozen=True, kw_only=True)
class SampleRequest:
    """A resolved, validated sampling request. Built only by `validate`; read by `hyvideo.pipeline.run`."""

    # --- what to generate ---
    prompt: str | None  # stripped, non-empty text prompt; None only when decoding latents (decode_latents set)
    neg_prompt: str | None  # negative prompt for real CFG; None exactly when cfg_scale <= 1 (no unconditional pass)
    height: int  # output height in pixels, a multiple of 16 (rounded up from --video-size)
    width: int  # output width in pixels, a multiple of 16
    video_length: int  # frames, 4n+1; latent frames = (video_length - 1) // 4 + 1
    seed: int  # seed of video 0; video i uses seed + i on a CPU generator (docs/DESIGN.md §5.5)
    seed_was_random: bool  # True when --seed was missing and `seed` was drawn at random (already logged)
    num_videos: int  # videos to generate for the prompt, one after another
    batch_size: int  # videos per forward pass; 1 until batching is supported
    # --- sampling ---
    infer_steps: int  # Euler steps (>= 1)
    cfg_scale: float  # real classifier-free guidance scale; > 1 enables the unconditional pass
    embedded_cfg_scale: float  # guidance fed to the cfg-distilled DiT (x1000 inside the model); >= 0
    flow_shift: float  # sigma shift s' = shift*s / (1 + (shift-1)*s); > 0
    flow_reverse: bool  # accepted for compatibility; sampling always runs sigma 1 -> 0 (docs/DESIGN.md §5.6)
    flow_solver: str  # "euler" (the only one supported)
    denoise_type: str  # "flow" (the only one supported)
    use_linear_quadratic_schedule: bool  # MovieGen-style schedule; False until supported
    linear_schedule_end: int  # linear part's step count for that schedule (>= 1)
    # --- models ---
    model: str  # DiT preset: "HYVideo-T/2-cfgdistill" (guidance embedding) or "HYVideo-T/2"
    model_base: Path  # existing directory: official `ckpts/` tree or a diffusers folder (model_index.json)
    dit_weight: Path | None  # explicit DiT weights (existing file or directory); None = locate under model_base
    model_resolution: str  # "540p" or "720p"; informational (the official tool records it, weights are shared)
    load_key: str  # key of the state dict inside the official .pt ("module" or "ema")
    latent_channels: int  # DiT/VAE latent channels; equals the VAE's (16)
    precision: Precision  # DiT compute dtype
    rope_theta: int  # RoPE base (256)
    vae: str  # VAE name, "884-16c-hy"
    vae_precision: Precision  # VAE dtype
    vae_tiling: bool  # decode in overlapping spatial/temporal tiles (docs/DESIGN.md §3.4, §3.5) to bound memory
    text_encoder: str  # "llm" (Llama-3-8B from llava-llama-3)
    text_encoder_precision: Precision  # LLM dtype
    text_states_dim: int  # LLM hidden size (4096)
    text_len: int  # LLM tokens kept after cropping the template (256)
    tokenizer: str  # "llm"
    prompt_template: str  # template name for 1-frame outputs ("dit-llm-encode")
    prompt_template_video: str  # template name for video outputs ("dit-llm-encode-video")
    hidden_state_skip_layer: int  # use hidden_states[-(skip + 1)] of the LLM (2 -> hidden_states[-3])
    apply_final_norm: bool  # apply the LLM's final norm to those states (no-op when skip is 0)
    text_encoder_2: str  # "clipL" (CLIP ViT-L/14 text model, pooled output)
    text_encoder_precision_2: Precision  # CLIP dtype
    text_states_dim_2: int  # CLIP pooled size (768)
    tokenizer_2: str  # "clipL"
    text_len_2: int  # CLIP tokens (77)
    # --- runtime ---
    device: str  # torch device string, checked available: "cpu", "cuda", "cuda:N" or "mps"
    attn_backend: AttnBackend  # "auto" (flash on CUDA when installed, else SDPA), "sdpa", "flash" or "sage" (CUDA)
    teacache_thresh: float  # TeaCache: skip the DiT blocks while the accumulated rescaled change < this; 0 = off
    compile: bool  # torch.compile each transformer block (regional); the first step pays the compilation
    disable_autocast: bool  # run the denoising loop and decode without autocast
    use_cpu_offload: bool  # the official flag: model-level offload (sets offload "model" unless --offload is given)
    use_fp8: bool  # DiT block Linear weights stored as fp8 e4m3 (official _fp8.pt pair, or quantized while loading)
    offload: str = "none"  # "none", "model" (components on the device only while they run), "block" (DiT blocks stream)
    fp8_compute: bool = False  # fp8 matmuls via torch._scaled_mm (needs use_fp8 and CUDA compute capability >= 8.9)
    compile_mode: str = "default"  # torch.compile mode of the blocks (COMPILE_MODES); others imply compile
    vae_tile_size: int = 256  # VAE spatial tile edge in pixels (smaller: less decode memory, more blended seams)
    vae_tile_stride: int = 192  # VAE spatial tile stride in pixels (tile_size - stride pixels are blended)
    memory_check: bool = True  # estimate peak memory before loading and refuse requests that cannot fit
    reproduce: bool  # deterministic algorithms (torch.use_deterministic_algorithms) for bit-reproducible runs
    ulysses_degree: int  # U: attention heads split U ways by all-to-all (needs torchrun); 1 = off
    ring_degree: int  # R: image tokens' keys/values passed around a ring of R processes; 1 = off
    cfg_parallel: bool = False  # cond and uncond passes on two halves of the processes (needs cfg_scale > 1)
    shard_weights: bool = True  # with several processes, each holds 1/N of the DiT blocks' weights (FSDP2)
    dist_timeout: float = 900.0  # seconds any inter-process wait may take before the run fails
    world_size: int = 1  # processes in the torchrun job = U x R (x 2 with cfg_parallel); 1 = no torchrun
    # --- output ---
    save_dir: Path  # output directory (--save-path, plus "_<suffix>" with --save-path-suffix); may not exist yet
    name_suffix: str  # appended to each output file name (no path separators)
    fps: int  # frames per second of the MP4 (24)
    save_latents: bool  # also write <video name>.latents.safetensors (key "latents", float32, (1, C, T, h, w))
    decode_latents: Path | None  # existing latents file to decode instead of sampling; None = sample
    debug: bool  # show full tracebacks and debug logs
    # --- prompt files and LoRA (defaults: a plain single-prompt run) ---
    prompt_file: Path | None = None  # --prompt-file: `prompt` is None and `items` holds one request per entry
    items: tuple[BatchItem, ...] = ()  # the prompt file's resolved entries (hyvideo.prompt_file.resolve)
    loras: tuple[LoraSpec, ...] = ()  # --lora PATH[:SCALE] in the order given (file keys already checked)
    lora_merge: bool = True  # merge LoRAs into the DiT weights at load; False: unmerged wrappers (--lora-mode)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _exists(path: Path) -> bool:
    """Path.exists that treats unusable paths (embedded NUL, name too long, no permission) as missing."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _check_int(args: Namespace, dest: str, low: int, what: str = "") -> int:
    value = getattr(args, dest)
    if value < low:
        flag = "--" + dest.replace("_", "-")
        raise UsageError(flag, f"must be an integer >= {low}{what}, got {value}")
    return int(value)


def _check_float(args: Namespace, dest: str, low: float, *, strict: bool = False, what: str = "") -> float:
    value = float(getattr(args, dest))
    bad = not math.isfinite(value) or (value <= low if strict else value < low)
    if bad:
        flag = "--" + dest.replace("_", "-")
        op = ">" if strict else ">="
        raise UsageError(flag, f"must be a finite number {op} {low:g}{what}, got {value}")
    return value


def _check_size(size: list[int] | tuple[int, ...]) -> tuple[int, int]:
    size = list(size)
    if len(size) != 2:
        raise UsageError("--video-size", f"give two integers, HEIGHT WIDTH (e.g. 720 1280), got {len(size)} value(s)")
    if min(size) < 1:
        raise UsageError("--video-size", f"HEIGHT and WIDTH must be positive integers, got {size[0]} {size[1]}")
    return int(size[0]), int(size[1])


def _check_save_dir(save_dir: Path) -> None:
    """The output directory must be a writable directory, or creatable under one; nothing is created here."""
    flag = "--save-path"
    if "\0" in str(save_dir) or any(len(part.encode()) > 255 for part in save_dir.parts):
        raise UsageError(flag, f"{save_dir!s:.200} is not a valid path")
    if _exists(save_dir):
        if not save_dir.is_dir():
            raise UsageError(flag, f"{save_dir} exists and is not a directory; give a directory")
        if not os.access(save_dir, os.W_OK | os.X_OK):
            raise UsageError(flag, f"{save_dir} is not writable; give a directory you can write to")
        return
    try:
        parent = save_dir.absolute().parent
        while not _exists(parent) and parent != parent.parent:
            parent = parent.parent
    except (OSError, ValueError) as e:
        raise UsageError(flag, f"{save_dir!s:.200} is not a usable path ({e})") from None
    if not parent.is_dir():
        raise UsageError(flag, f"cannot create {save_dir}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(flag, f"cannot create {save_dir}: {parent} is not writable")


def _resolve_device(name: str | None) -> str:
    """'cuda' if available else 'cpu' when unset; otherwise the named device, which must be present."""
    if name is not None and not re.fullmatch(r"cpu|cuda(:\d+)?|mps", name):
        raise UsageError("--device", f"expected cpu, cuda, cuda:N or mps, got {name!r}")
    if name == "cpu":
        return name
    import torch  # only here: the check needs the runtime, and "cpu" needs nothing

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError("--device", "mps is not available on this machine; use --device cpu")
        return name
    if not torch.cuda.is_available():
        raise UsageError("--device", f"{name} requested but CUDA is not available; use --device cpu")
    index = int(name.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise UsageError("--device", f"{name}: only {torch.cuda.device_count()} CUDA device(s) present")
    return name


def _check_vae_tiles(args: Namespace) -> tuple[int, int]:
    """--vae-tile-size / --vae-tile-stride: multiples of 8 pixels (one latent), tile >= 64, the blended overlap
    (size - stride) at most half a tile. The stride defaults to 3/4 of the tile (the official overlap)."""
    size = int(getattr(args, "vae_tile_size", 256))
    if size < 64 or size % 8:
        raise UsageError("--vae-tile-size", f"must be a multiple of 8 pixels, at least 64, got {size}")
    stride = getattr(args, "vae_tile_stride", None)
    stride = size * 3 // 4 // 8 * 8 if stride is None else int(stride)
    why = tile_problem(size, stride, 8)
    if why is not None:
        raise UsageError("--vae-tile-stride", f"{why} (pixels; --vae-tile-size {size})")
    return size, stride


def _check_compile_mode(mode: str, device: str, offload: str) -> str:
    """--compile-mode: a torch.compile mode; the CUDA-graph modes need a CUDA device and resident DiT weights."""
    if mode not in COMPILE_MODES:
        raise UsageError("--compile-mode", f"unknown {mode!r}; choose from {', '.join(COMPILE_MODES)}")
    if mode in ("reduce-overhead", "max-autotune"):  # the modes that capture CUDA graphs
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
    import torch

    from hyvideo.quantization import scaled_mm_available

    if not scaled_mm_available(torch.device(device)):
        raise UsageError("--fp8-compute", f"{device} has no fp8 matmul (needs compute capability 8.9+); drop the flag")


def _check_unsupported(args: Namespace) -> None:
    for flag, accepted in SUPPORTED_VALUES_ONLY.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value not in accepted:
            if isinstance(value, bool):
                raise UsageError(flag, "not supported yet; drop the flag")
            ok = ", ".join(str(a) for a in accepted)
            raise UsageError(flag, f"{value} is not supported yet (supported: {ok})")


def _check_parallel(args: Namespace, ulysses: int, ring: int, cfg_scale: float) -> int:
    """The degrees must tile the torchrun job exactly: U x R (x 2 with --cfg-parallel) == WORLD_SIZE (1 without
    torchrun). Returns the number of processes."""
    cfg_parallel = bool(getattr(args, "cfg_parallel", False))
    if cfg_parallel and cfg_scale <= 1:
        raise UsageError("--cfg-parallel", "needs --cfg-scale > 1 (without real CFG there is no second pass to split)")
    timeout = float(getattr(args, "dist_timeout", 900.0))
    if not math.isfinite(timeout) or timeout <= 0:
        raise UsageError("--dist-timeout", f"must be a number of seconds > 0, got {timeout}")
    needed = ulysses * ring * (2 if cfg_parallel else 1)
    torchrun = all(v in os.environ for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))
    world = int(os.environ["WORLD_SIZE"]) if torchrun else 1
    batch = getattr(args, "prompt_file", None) is not None or getattr(args, "batch_entry", False)
    if batch and world > 1:
        if needed > 1:
            raise UsageError(
                "--prompt-file",
                "with sequence parallelism is not supported yet; drop --ulysses-degree/--ring-degree/--cfg-parallel "
                "and each process takes its own share of the entries",
            )
        return 1  # data parallel: each process runs alone on its share of the entries (hyvideo.batch)
    product = f"--ulysses-degree {ulysses} x --ring-degree {ring}" + (" x 2 (--cfg-parallel)" if cfg_parallel else "")
    if needed > 1 and not torchrun:
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


def validate(args: Namespace) -> SampleRequest:
    """Check parsed flags and resolve them into a `SampleRequest`; raise `UsageError` on the first problem.

    Cheap checks only (no model loads, no files created). Log lines about rounding and the chosen seed are emitted
    only once everything is valid, so a failing run prints exactly one line.
    """
    notes: list[str] = []

    # --- numbers ---
    height, width = _check_size(args.video_size)
    video_length = _check_int(args, "video_length", 1)
    if (video_length - 1) % 4:
        lo = (video_length - 1) // 4 * 4 + 1
        raise UsageError("--video-length", f"must be 4n+1 (e.g. {lo} or {lo + 4}), got {video_length}")
    infer_steps = _check_int(args, "infer_steps", 1)
    num_videos = _check_int(args, "num_videos", 1)
    batch_size = _check_int(args, "batch_size", 1)
    ulysses_degree = _check_int(args, "ulysses_degree", 1)
    ring_degree = _check_int(args, "ring_degree", 1)
    fps = _check_int(args, "fps", 1)
    text_len = _check_int(args, "text_len", 1)
    text_len_2 = _check_int(args, "text_len_2", 1)
    text_states_dim = _check_int(args, "text_states_dim", 1)
    text_states_dim_2 = _check_int(args, "text_states_dim_2", 1)
    skip = _check_int(args, "hidden_state_skip_layer", 0)
    linear_schedule_end = _check_int(args, "linear_schedule_end", 1)
    rope_theta = _check_int(args, "rope_theta", 1)
    cfg_scale = _check_float(args, "cfg_scale", 1.0, what=" (1 turns real classifier-free guidance off)")
    embedded_cfg_scale = _check_float(args, "embedded_cfg_scale", 0.0)
    flow_shift = _check_float(args, "flow_shift", 0.0, strict=True)
    vae_channels = int(args.vae.split("-")[1].rstrip("c"))
    if args.latent_channels != vae_channels:
        raise UsageError("--latent-channels", f"must equal the channels of --vae {args.vae} ({vae_channels})")
    if args.use_linear_quadratic_schedule and linear_schedule_end > infer_steps:
        raise UsageError("--linear-schedule-end", f"must be <= --infer-steps ({infer_steps})")

    # --- text ---
    decode_only = args.decode_latents is not None
    prompt_file = getattr(args, "prompt_file", None)
    if prompt_file is not None and (args.prompt is not None or decode_only):
        other = "--prompt" if args.prompt is not None else "--decode-latents"
        raise UsageError("--prompt-file", f"give either {other} or --prompt-file, not both")
    prompt = args.prompt.strip() if args.prompt is not None else None
    if not prompt:
        if not decode_only and prompt_file is None:
            raise UsageError("--prompt", "give a non-empty text prompt, e.g. --prompt 'a cat walks on the grass'")
        prompt = None
    neg = args.neg_prompt.strip() if args.neg_prompt is not None else ""
    if cfg_scale > 1:
        neg_prompt: str | None = neg or DEFAULT_NEGATIVE_PROMPT
    else:
        neg_prompt = None
        if neg:
            notes.append("--neg-prompt has no effect without --cfg-scale > 1 (real classifier-free guidance is off)")
    if "/" in args.name_suffix or "\0" in args.name_suffix:
        raise UsageError("--name-suffix", "must not contain '/' or NUL; it becomes part of a file name")
    if not args.load_key.strip():
        raise UsageError("--load-key", "must not be empty (e.g. module or ema)")

    # --- seed ---
    if args.seed is not None and not 0 <= args.seed <= SEED_MAX - (num_videos - 1):
        raise UsageError("--seed", f"must be an integer in [0, {SEED_MAX - (num_videos - 1)}], got {args.seed}")
    if args.seed_type == "fixed" and args.seed is None:
        raise UsageError("--seed-type", "fixed needs --seed N")
    if args.seed_type == "file" and not getattr(args, "batch_entry", False):
        if prompt_file is None:
            raise UsageError(
                "--seed-type", 'file takes each seed from --prompt-file (a .jsonl with "seed" on every line)'
            )
        if args.seed is not None:
            raise UsageError("--seed-type", "file takes the seeds from --prompt-file; drop --seed N")
    if args.seed_type == "random" and args.seed is not None:
        raise UsageError("--seed-type", "random draws the seed itself; drop --seed N or use --seed-type fixed")

    # --- flags accepted but not implemented ---
    _check_unsupported(args)
    world_size = _check_parallel(args, ulysses_degree, ring_degree, cfg_scale)

    # --- filesystem ---
    model_base = Path(args.model_base)
    if not _exists(model_base) or not model_base.is_dir():
        raise UsageError(
            "--model-base",
            f"{model_base!s:.200} is not a directory; give the folder holding the weights (official ckpts/ tree or "
            "a diffusers-format folder)",
        )
    dit_weight = Path(args.dit_weight) if args.dit_weight else None
    if dit_weight is not None and not _exists(dit_weight):
        raise UsageError("--dit-weight", f"{dit_weight!s:.200} does not exist; give a weight file or directory")
    decode_latents = Path(args.decode_latents) if decode_only else None
    if decode_latents is not None and not (_exists(decode_latents) and decode_latents.is_file()):
        raise UsageError("--decode-latents", f"{decode_latents!s:.200} is not a file; give a .latents.safetensors file")
    save_dir = Path(f"{args.save_path}_{args.save_path_suffix}" if args.save_path_suffix else args.save_path)
    _check_save_dir(save_dir)
    loras = ()
    if getattr(args, "lora", None):  # reads only the files' headers: names checked now, shapes at load
        from hyvideo.lora import check_lora_flags

        loras = check_lora_flags(args.lora)

    # --- runtime ---
    device = _resolve_device(args.device)
    if args.attn_backend in ("flash", "sage"):
        package, pip = {"flash": ("flash_attn", "flash-attn"), "sage": ("sageattention", "sageattention")}[
            args.attn_backend
        ]
        if importlib.util.find_spec(package) is None:
            raise UsageError(
                "--attn-backend", f"{args.attn_backend} needs the {pip} package (pip install {pip}); use sdpa"
            )
        if not device.startswith("cuda"):
            raise UsageError(
                "--attn-backend", f"{args.attn_backend} needs a CUDA device, got --device {device}; use sdpa"
            )
    teacache_thresh = _check_float(args, "teacache_thresh", 0.0, what=" (0 turns step caching off)")
    offload = getattr(args, "offload", "none")
    if args.use_cpu_offload and offload == "none":
        offload = "model"  # the official --use-cpu-offload
    tile_size, tile_stride = _check_vae_tiles(args)
    compile_mode = _check_compile_mode(getattr(args, "compile_mode", "default"), device, offload)
    fp8_compute = bool(getattr(args, "fp8_compute", False))
    if fp8_compute:
        if not args.use_fp8:
            raise UsageError("--fp8-compute", "needs --use-fp8 (fp8 weights); add it or drop --fp8-compute")
        _check_fp8_matmul(device)

    # --- resolved values (logged only now that everything is valid) ---
    rounded = _round_up(height, SIZE_MULTIPLE), _round_up(width, SIZE_MULTIPLE)
    if rounded != (height, width):
        notes.append(
            f"--video-size {height} {width} rounded up to {rounded[0]} {rounded[1]} (multiples of {SIZE_MULTIPLE})"
        )
    seed_was_random = args.seed is None
    seed = random.randint(0, RANDOM_SEED_MAX) if args.seed is None else int(args.seed)
    if seed_was_random and not decode_only and prompt_file is None:
        notes.append(f"seed {seed} picked at random (pass --seed {seed} to repeat this run)")
    for note in notes:
        logger.info(note)

    request = SampleRequest(
        prompt=prompt,
        neg_prompt=neg_prompt,
        height=rounded[0],
        width=rounded[1],
        video_length=video_length,
        seed=seed,
        seed_was_random=seed_was_random,
        num_videos=num_videos,
        batch_size=batch_size,
        infer_steps=infer_steps,
        cfg_scale=cfg_scale,
        embedded_cfg_scale=embedded_cfg_scale,
        flow_shift=flow_shift,
        flow_reverse=bool(args.flow_reverse),
        flow_solver=args.flow_solver,
        denoise_type=args.denoise_type,
        use_linear_quadratic_schedule=bool(args.use_linear_quadratic_schedule),
        linear_schedule_end=linear_schedule_end,
        model=args.model,
        model_base=model_base,
        dit_weight=dit_weight,
        model_resolution=args.model_resolution,
        load_key=args.load_key.strip(),
        latent_channels=int(args.latent_channels),
        precision=args.precision,
        rope_theta=rope_theta,
        vae=args.vae,
        vae_precision=args.vae_precision,
        vae_tiling=bool(args.vae_tiling),
        text_encoder=args.text_encoder,
        text_encoder_precision=args.text_encoder_precision,
        text_states_dim=text_states_dim,
        text_len=text_len,
        tokenizer=args.tokenizer,
        prompt_template=args.prompt_template,
        prompt_template_video=args.prompt_template_video,
        hidden_state_skip_layer=skip,
        apply_final_norm=bool(args.apply_final_norm),
        text_encoder_2=args.text_encoder_2,
        text_encoder_precision_2=args.text_encoder_precision_2,
        text_states_dim_2=text_states_dim_2,
        tokenizer_2=args.tokenizer_2,
        text_len_2=text_len_2,
        device=device,
        attn_backend=args.attn_backend,
        teacache_thresh=teacache_thresh,
        compile=bool(args.compile) or compile_mode != "default",
        disable_autocast=bool(args.disable_autocast),
        use_cpu_offload=bool(args.use_cpu_offload),
        use_fp8=bool(args.use_fp8),
        offload=offload,
        fp8_compute=fp8_compute,
        compile_mode=compile_mode,
        vae_tile_size=tile_size,
        vae_tile_stride=tile_stride,
        memory_check=bool(getattr(args, "memory_check", True)),
        reproduce=bool(args.reproduce),
        ulysses_degree=ulysses_degree,
        ring_degree=ring_degree,
        cfg_parallel=bool(getattr(args, "cfg_parallel", False)),
        shard_weights=bool(getattr(args, "shard_weights", True)),
        dist_timeout=float(getattr(args, "dist_timeout", 900.0)),
        world_size=world_size,
        save_dir=save_dir,
        name_suffix=args.name_suffix,
        fps=fps,
        save_latents=bool(args.save_latents),
        decode_latents=decode_latents,
        debug=bool(args.debug),
        loras=loras,
        lora_merge=getattr(args, "lora_mode", "merge") == "merge",
    )
    if prompt_file is not None:  # one request per entry, each validated like flags (errors name the line)
        from hyvideo.prompt_file import resolve

        items = resolve(args, prompt_file, loras)
        request = dataclasses.replace(request, prompt_file=Path(prompt_file), items=items)
    return request
