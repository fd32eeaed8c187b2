"""The flag vocabulary: the values a request may name, and the defaults and limits shared by several modules.

At the bottom of the package with `hyvideo.errors`: it imports nothing of ours, so every layer can use it. It does
not import torch either (nor does `hyvideo.flags`), so a mistyped flag fails before torch loads; the names' dtypes
are in `hyvideo.dtypes`.
"""

from __future__ import annotations

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
