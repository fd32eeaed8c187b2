"""The flag vocabulary: the values a request may name, and the defaults and limits shared by several modules.

At the bottom of the package with `hyvideo.errors`: it imports nothing of ours, so every layer can use it. It does
not import torch either (nor does `hyvideo.flags`), so a mistyped flag fails before torch loads; the names' dtypes
are in `hyvideo.dtypes`.
"""

from __future__ import annotations

from typing import NamedTuple

PRECISION_NAMES: tuple[str, ...] = ("fp32", "fp16", "bf16")  # the dtypes: hyvideo.dtypes.PRECISIONS
MODELS: tuple[str, ...] = ("HYVideo-T/2-cfgdistill", "HYVideo-T/2")
VAES: tuple[str, ...] = ("884-16c-hy",)
TEXT_ENCODERS: tuple[str, ...] = ("llm", "clipL")
PROMPT_TEMPLATES: tuple[str, ...] = ("dit-llm-encode", "dit-llm-encode-video")
SEED_TYPES: tuple[str, ...] = ("auto", "random", "fixed", "file")
RESOLUTIONS: tuple[str, ...] = ("540p", "720p")
ATTN_BACKENDS: tuple[str, ...] = ("auto", "sdpa", "flash", "sage")
# "flash" and "sage" need a package: backend -> (module to import, pip package name)
ATTN_PACKAGES: dict[str, tuple[str, str]] = {
    "flash": ("flash_attn", "flash-attn"),
    "sage": ("sageattention", "sageattention"),
}
OFFLOAD_LEVELS: tuple[str, ...] = ("none", "model", "block")  # hyvideo/offload.py
# torch.compile modes for --compile-mode; "reduce-overhead" replays each block as a CUDA graph (hyvideo/compile.py)
COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_COMPILE_MODES: tuple[str, ...] = ("reduce-overhead", "max-autotune")
LORA_MODES: tuple[str, ...] = ("merge", "unmerged")
# --noise: "ours" draws the start noise on a CPU generator in float32 (the same video on every device); "official"
# draws it as the official sampler does (a generator on the run's device, in the text encoder's dtype)
NOISE_KINDS: tuple[str, ...] = ("ours", "official")

# Used only when cfg_scale > 1 and no --neg-prompt is given (the official tool's negative prompt; docs/DESIGN.md §4.6).
DEFAULT_NEGATIVE_PROMPT = (
    "Aerial view, aerial view, overexposed, low quality, deformation, a poor composition, bad hands, bad teeth, "
    "bad eyes, bad limbs, distortion"
)

SIZE_MULTIPLE = 16  # H and W must be multiples of this (VAE 8x8 times patch 2x2); others are rounded up
RANDOM_SEED_MAX = 1_000_000  # a missing --seed is drawn from [0, RANDOM_SEED_MAX], as the official tool does
SEED_MAX = 2**63 - 1  # seed + i (video i) must fit a torch generator seed
DIST_TIMEOUT_S = 900.0  # --dist-timeout default: seconds any inter-process wait may take before the run fails

I2V_RESOLUTIONS = ("720p", "540p", "360p")  # --i2v-resolution: the bucket sizes of hyvideo.image
I2V_CONDITION_TYPES = ("token_replace", "latent_concat")  # --i2v-condition-type (HunyuanVideo-I2V's two releases)
I2V_RESIZE_MODES = ("crop", "stretch")  # --i2v-resize: keep the aspect and center-crop, or stretch (diffusers)
RIFLEX_MODES = ("auto", "on", "off")  # --riflex (docs/DESIGN.md §15.3)

# ---------------------------------------------------------------------------------------------------------------
# HunyuanVideo 1.5 (docs/DESIGN.md §21)
# ---------------------------------------------------------------------------------------------------------------
FAMILIES = ("v1", "1.5")  # `SampleRequest.family`: what --model-base holds


class HV15Version(NamedTuple):
    """One released 1.5 DiT (`transformer/<name>/` of the official tree) and the official defaults for it."""

    resolution: str  # "480p" or "720p": the size bucket base (HV15_TARGET_SIZES)
    task: str  # "t2v" or "i2v"
    cfg_scale: float  # real classifier-free guidance; 1 = off (cfg-distilled and step-distilled weights)
    flow_shift: float
    infer_steps: int
    cfg_distilled: bool  # trained to run without the unconditional pass
    step_distilled: bool  # few steps; the DiT takes the next timestep too (meanflow t_r)
    sparse: bool  # trained for SSTA sparse attention (H-series kernels): refused


def _v(resolution: str, task: str, cfg: float, shift: float, steps: int = 50, kind: str = "") -> HV15Version:
    """`kind`: "" (the base model), "distilled" (cfg), "distilled_sparse" or "step"."""
    return HV15Version(
        resolution, task, cfg, shift, steps, kind.startswith("distilled"), kind == "step", "sparse" in kind
    )


# The official defaults per version (the 1.5 repository's pipeline table; generate.py leaves the steps at the
# pipeline's 50 except where the table names them). "_distilled" = cfg-distilled: guidance 1, same shift, 50 steps.
HV15_VERSIONS: dict[str, HV15Version] = {
    "480p_t2v": _v("480p", "t2v", 6.0, 5.0),
    "480p_i2v": _v("480p", "i2v", 6.0, 5.0),
    "720p_t2v": _v("720p", "t2v", 6.0, 9.0),
    "720p_i2v": _v("720p", "i2v", 6.0, 7.0),
    "480p_t2v_distilled": _v("480p", "t2v", 1.0, 5.0, kind="distilled"),
    "480p_i2v_distilled": _v("480p", "i2v", 1.0, 5.0, kind="distilled"),
    "720p_t2v_distilled": _v("720p", "t2v", 1.0, 9.0, kind="distilled"),
    "720p_i2v_distilled": _v("720p", "i2v", 1.0, 7.0, kind="distilled"),
    "720p_t2v_distilled_sparse": _v("720p", "t2v", 1.0, 9.0, kind="distilled_sparse"),
    "720p_i2v_distilled_sparse": _v("720p", "i2v", 1.0, 7.0, kind="distilled_sparse"),
    "480p_i2v_step_distilled": _v("480p", "i2v", 1.0, 7.0, 12, kind="step"),  # 8 steps also recommended
}
# The super-resolution DiTs share transformer/ with the others; they need upsampler/ models (not supported).
HV15_SR_VERSIONS: tuple[str, ...] = ("720p_sr_distilled", "1080p_sr_distilled")
HV15_RESOLUTIONS: tuple[str, ...] = ("480p", "720p")  # --resolution
HV15_TASKS: tuple[str, ...] = ("t2v", "i2v")
HV15_TARGET_SIZES: dict[str, int] = {"480p": 640, "720p": 960}  # bucket base edge in pixels (diffusers: target_size)
HV15_BUCKET_STRIDE = 16  # bucket sides are multiples of this (VAE 16x, patch 1)
HV15_VIDEO_LENGTH = 121  # generate.py --video_length
HV15_FPS = 24
HV15_ASPECT_RATIO = "16:9"  # generate.py --aspect_ratio, W:H
HV15_SEED = 123  # generate.py --seed
# generate.py --quant_type: fp8 weights only, or fp8 matmuls too (per tensor; sgl-kernel per token)
HV15_QUANT_TYPES: tuple[str, ...] = ("fp8-per-tensor-weight-only", "fp8-per-tensor", "fp8-per-token-sgl")
# diffusers pipeline classes (model_index.json _class_name) of 1.5 folders -> task
HV15_PIPELINES: dict[str, str] = {"HunyuanVideo15Pipeline": "t2v", "HunyuanVideo15ImageToVideoPipeline": "i2v"}


def hv15_version_name(resolution: str, task: str, cfg_distilled: bool, step_distilled: bool, sparse: bool) -> str:
    """The folder name generate.py builds from its flags: step distillation wins over cfg distillation, and sparse
    attention implies cfg distillation."""
    if step_distilled:
        return f"{resolution}_{task}_step_distilled"
    return f"{resolution}_{task}" + ("_distilled" if cfg_distilled or sparse else "") + ("_sparse" if sparse else "")
