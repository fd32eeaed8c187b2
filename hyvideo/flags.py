"""The command line's flags: every flag of the official HunyuanVideo `sample_video.py` with its official default, every
option of HunyuanVideo 1.5's `generate.py` (underscore or dash spelling; its defaults per version are applied by
`hyvideo.request`), plus ours. Parsing only; `hyvideo.request.validate` checks the values. A bad flag raises
`UsageError` (one line, exit 2) instead of printing usage text.

Adding a flag: one line here (in the group of its stage), one field in the options class of that stage in
`hyvideo.request`, and its check there.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from typing import Any, NoReturn

from hyvideo.choices import (
    ATTN_BACKENDS,
    COMPILE_MODES,
    DIST_TIMEOUT_S,
    HV15_ASPECT_RATIO,
    HV15_QUANT_TYPES,
    HV15_RESOLUTIONS,
    I2V_CONDITION_TYPES,
    I2V_RESIZE_MODES,
    I2V_RESOLUTIONS,
    LORA_MODES,
    MODELS,
    NOISE_KINDS,
    OFFLOAD_LEVELS,
    PRECISION_NAMES,
    PROMPT_TEMPLATES,
    RESOLUTIONS,
    RIFLEX_MODES,
    SEED_TYPES,
    TEXT_ENCODERS,
    VAES,
)
from hyvideo.errors import UsageError

PROG = "sample_video.py"


class DefaultFloat(float):
    """The default of a float flag that the model may replace (image-to-video's flow shift, SkyReels' guidance).
    argparse stores the default object itself when the flag is absent, and a plain float when it is given, so
    `given` tells an explicit `--flow-shift 7` from the default 7 while help, sidecars and arithmetic see 7.0."""


class DefaultInt(int):
    """The default of an int flag that the model family may replace (HunyuanVideo 1.5: 121 frames; the step-distilled
    weights' 12 steps), told apart from an explicit value as `DefaultFloat` is."""


class DefaultSize(list):
    """The default `--video-size`, told apart from an explicit one as `DefaultFloat` is (image-to-video takes its
    size from the image unless --video-size is given)."""


def given(value: object) -> bool:
    """Whether a flag value was set by the user (or a prompt-file line / API call), not left at its default."""
    return not isinstance(value, DefaultFloat | DefaultInt | DefaultSize)


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors become `UsageError` (one line, exit 2) instead of usage text plus exit."""

    def error(self, message: str) -> NoReturn:
        m = re.match(r"argument ([^:]+): (.*)", message, re.DOTALL)
        if m:
            flag = m.group(1).split("/")[0]
            raise UsageError(flag, f"{m.group(2)} (see --help)")
        m = re.match(r"unrecognized arguments: (.*)", message, re.DOTALL)
        if m:
            unknown = m.group(1) if m.group(1).strip() else repr(m.group(1))
            raise UsageError(None, f"unknown argument(s): {unknown} (see --help)")
        raise UsageError(None, f"{message} (see --help)")


def check_size(size: list[int] | tuple[int, ...]) -> tuple[int, int]:
    """--video-size: exactly two positive integers, HEIGHT WIDTH. Checked while parsing (before torch loads) and
    again by `hyvideo.request.validate` for values that did not come through the parser."""
    size = list(size)
    if len(size) != 2:
        raise UsageError("--video-size", f"give two integers, HEIGHT WIDTH (e.g. 720 1280), got {len(size)} value(s)")
    if min(size) < 1:
        raise UsageError("--video-size", f"HEIGHT and WIDTH must be positive integers, got {size[0]} {size[1]}")
    return int(size[0]), int(size[1])


class _Size(argparse.Action):
    """--video-size H W, checked as it is parsed."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        assert isinstance(values, list)  # nargs="+" gives a list
        check_size(values)
        setattr(namespace, self.dest, values)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the uninformative None/False ones."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, "", argparse.SUPPRESS):
            return action.help or ""
        return super()._get_help_string(action) or ""


def build_parser() -> argparse.ArgumentParser:
    """All flags with their official defaults, plus ours (--device, --fps, --save-latents, ...)."""
    p = _Parser(
        prog=PROG,
        description="Generate videos from a text prompt with HunyuanVideo weights.",
        allow_abbrev=False,
        formatter_class=_HelpFormatter,
    )
    _output_flags(p)
    _sampling_flags(p)
    _model_flags(p)
    _text_flags(p)
    _runtime_flags(p)
    _i2v_flags(p)
    _hv15_flags(p)
    return p


def _output_flags(p: argparse.ArgumentParser) -> None:
    """Text and output: prompts, size, seeds, where the files go."""
    g = p.add_argument_group("input and output")
    g.add_argument("--prompt", default=None, help="text describing the video (required unless --decode-latents)")
    g.add_argument(
        "--prompt-file",
        default=None,
        metavar="FILE",
        help="many prompts: .txt (one per line) or .jsonl (per-line overrides); re-runs resume (docs/CLI.md)",
    )
    g.add_argument(
        "--neg-prompt",
        "--negative_prompt",
        "--negative-prompt",
        default=None,
        help="negative prompt; the built-in one when --cfg-scale > 1 (HunyuanVideo 1.5: empty, as generate.py)",
    )
    g.add_argument(
        "--video-size",
        type=int,
        nargs="+",
        default=DefaultSize([720, 1280]),
        action=_Size,
        metavar="N",
        help="HEIGHT WIDTH in pixels",
    )
    g.add_argument(
        "--video-length",
        "--video_length",
        type=int,
        default=DefaultInt(129),
        help="number of frames, 4n+1 (1 gives an image); HunyuanVideo 1.5: 121",
    )
    g.add_argument("--num-videos", type=int, default=1, help="videos to generate; video i uses seed + i")
    g.add_argument("--seed", type=int, default=None, help="random seed; picked at random and logged when omitted")
    g.add_argument("--seed-type", default="auto", choices=SEED_TYPES, help="auto: --seed or random; fixed needs --seed")
    g.add_argument("--save-path", default="./results", help="output directory (created if missing)")
    g.add_argument("--save-path-suffix", default="", help="if set, output goes to <save-path>_<suffix>")
    g.add_argument("--name-suffix", default="", help="appended to every output file name")
    g.add_argument("--fps", type=int, default=24, help="frames per second of the MP4")
    g.add_argument("--save-latents", action="store_true", help="also write <video>.latents.safetensors")
    g.add_argument("--decode-latents", default=None, metavar="FILE", help="decode this latents file, skip sampling")


def _sampling_flags(p: argparse.ArgumentParser) -> None:
    """The flow-matching sampler."""
    g = p.add_argument_group("sampling")
    g.add_argument(
        "--infer-steps",
        "--num_inference_steps",
        "--num-inference-steps",
        type=int,
        default=DefaultInt(50),
        help="denoising steps (HunyuanVideo 1.5 step-distilled weights: 12)",
    )
    g.add_argument(
        "--cfg-scale",
        type=float,
        default=DefaultFloat(1.0),
        help="real classifier-free guidance; > 1 doubles the cost (SkyReels-V1 weights: 6)",
    )
    g.add_argument(
        "--embedded-cfg-scale",
        type=float,
        default=DefaultFloat(6.0),
        help="guidance given to the cfg-distilled model (SkyReels-V1 weights: 1)",
    )
    g.add_argument(
        "--flow-shift",
        type=float,
        default=DefaultFloat(7.0),
        help="shift of the flow-matching sigma schedule (> 0); --i2v-mode: 17, or 7 with --i2v-stability",
    )
    g.add_argument("--flow-reverse", action="store_true", help="accepted for compatibility; sampling runs 1 -> 0")
    g.add_argument("--flow-solver", default="euler", help="ODE solver (euler only)")
    g.add_argument("--denoise-type", default="flow", help="denoising formulation (flow only)")
    g.add_argument("--use-linear-quadratic-schedule", action="store_true", help="MovieGen schedule (not supported yet)")
    g.add_argument("--linear-schedule-end", type=int, default=25, help="linear steps of that schedule")
    g.add_argument("--batch-size", type=int, default=1, help="videos per forward pass (1 only for now)")
    g.add_argument(
        "--noise",
        default="ours",
        choices=NOISE_KINDS,
        help="start noise: ours (CPU generator, same video on every device) or official (as the official tool draws "
        "it: on the run's device, in the text encoder's dtype)",
    )


def _model_flags(p: argparse.ArgumentParser) -> None:
    """Weights: DiT, VAE, LoRA."""
    g = p.add_argument_group("model")
    g.add_argument(
        "--model-base",
        "--model_path",
        "--model-path",
        default="ckpts",
        help="folder with all weights: official ckpts/ tree or diffusers",
    )
    g.add_argument("--dit-weight", default=None, help="DiT weight file or folder (default: found under --model-base)")
    g.add_argument("--model", default="HYVideo-T/2-cfgdistill", choices=MODELS, help="DiT preset")
    g.add_argument("--model-resolution", default="540p", choices=RESOLUTIONS, help="resolution tag of the weights")
    g.add_argument("--load-key", default="module", help="state-dict key inside the official .pt (module or ema)")
    g.add_argument("--latent-channels", type=int, default=16, help="latent channels; must match the VAE")
    g.add_argument("--precision", "--dtype", default="bf16", choices=PRECISION_NAMES, help="DiT dtype")
    g.add_argument("--rope-theta", type=int, default=256, help="RoPE base")
    g.add_argument(
        "--riflex",
        default="auto",
        choices=RIFLEX_MODES,
        help="RIFLEx for long videos: auto = on above the 129 trained frames when it lowers the 4th temporal RoPE "
        "frequency (181+ frames; for 133-177 it would raise it, so auto stays off); on: always",
    )
    g.add_argument("--vae", default="884-16c-hy", choices=VAES, help="VAE name")
    g.add_argument("--vae-precision", default="fp16", choices=PRECISION_NAMES, help="VAE dtype")
    g.add_argument("--vae-tiling", action=argparse.BooleanOptionalAction, default=True, help="decode in tiles")
    g.add_argument(
        "--vae-tile-size", type=int, default=256, metavar="PX", help="VAE spatial tile edge (smaller: less memory)"
    )
    g.add_argument(
        "--vae-tile-stride", type=int, default=None, metavar="PX", help="VAE spatial tile stride (default 3/4 tile)"
    )
    g.add_argument(
        "--lora",
        action="append",
        default=None,
        metavar="PATH[:SCALE]",
        help="DiT LoRA (.safetensors, diffusers or kohya names); repeatable; SCALE defaults to 1",
    )
    g.add_argument("--lora-mode", default="merge", choices=LORA_MODES, help="merge LoRAs into the weights or wrap")
    # the official image-to-video tool's LoRA flags: one more entry in the same LoRA list as --lora PATH:SCALE
    g.add_argument("--use-lora", action="store_true", help="apply --lora-path (official I2V flag; same as --lora)")
    g.add_argument(
        "--lora-path",
        "--lora_path",
        default=None,
        metavar="PATH",
        help="LoRA .safetensors for --use-lora (HunyuanVideo 1.5: alone, as generate.py's --lora_path)",
    )
    g.add_argument("--lora-scale", type=float, default=1.0, help="scale of --lora-path (kohya alpha of "
                   "Hunyuan_video_I2V_lora files ignored, as the official tool does)")  # fmt: skip


def _text_flags(p: argparse.ArgumentParser) -> None:
    """The two text encoders."""
    g = p.add_argument_group("text encoders")
    g.add_argument("--text-encoder", default="llm", choices=TEXT_ENCODERS, help="first text encoder (LLM)")
    g.add_argument("--text-encoder-precision", default="fp16", choices=PRECISION_NAMES, help="LLM dtype")
    g.add_argument("--text-states-dim", type=int, default=4096, help="LLM hidden size")
    g.add_argument("--text-len", type=int, default=256, help="LLM prompt tokens after the template")
    g.add_argument("--tokenizer", default="llm", choices=TEXT_ENCODERS, help="first tokenizer")
    g.add_argument("--prompt-template", default="dit-llm-encode", choices=PROMPT_TEMPLATES, help="template, 1 frame")
    g.add_argument(
        "--prompt-template-video", default="dit-llm-encode-video", choices=PROMPT_TEMPLATES, help="template, video"
    )
    g.add_argument("--hidden-state-skip-layer", type=int, default=2, help="use LLM hidden_states[-(N + 1)]")
    g.add_argument("--apply-final-norm", action="store_true", help="apply the LLM final norm to those states")
    g.add_argument("--text-encoder-2", default="clipL", choices=TEXT_ENCODERS, help="second text encoder (CLIP)")
    g.add_argument("--text-encoder-precision-2", default="fp16", choices=PRECISION_NAMES, help="CLIP dtype")
    g.add_argument("--text-states-dim-2", type=int, default=768, help="CLIP pooled size")
    g.add_argument("--tokenizer-2", default="clipL", choices=TEXT_ENCODERS, help="second tokenizer")
    g.add_argument("--text-len-2", type=int, default=77, help="CLIP prompt tokens")


def _runtime_flags(p: argparse.ArgumentParser) -> None:
    """Device, kernels, memory, speed and processes."""
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda if available, else cpu)")
    g.add_argument(
        "--attn-backend", default="auto", choices=ATTN_BACKENDS, help="attention kernels (flash, sage: CUDA only)"
    )
    g.add_argument(
        "--teacache-thresh",
        type=float,
        default=0.0,
        help="TeaCache step caching threshold (0 off; 0.1 / 0.15 skip more)",
    )
    g.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks (slow first step)")
    g.add_argument(
        "--compile-mode",
        default="default",
        metavar="MODE",
        help=f"torch.compile mode, implies --compile ({', '.join(COMPILE_MODES)}; reduce-overhead = CUDA graphs)",
    )
    g.add_argument(
        "--disable-autocast", action="store_true", help="accepted for compatibility: dtypes are explicit (no effect)"
    )
    g.add_argument("--use-cpu-offload", action="store_true", help="official flag: same as --offload model")
    g.add_argument("--use-fp8", action="store_true", help="fp8 DiT block weights (official _fp8.pt, or quantized)")
    g.add_argument(
        "--offload",
        default="none",
        choices=OFFLOAD_LEVELS,
        help="model: components on the device only while they run; block: stream the DiT blocks through it",
    )
    g.add_argument("--fp8-compute", action="store_true", help="fp8 matmuls with --use-fp8 (CUDA sm89+)")
    g.add_argument(
        "--memory-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="estimate peak memory first; refuse a request that cannot fit (exit 2)",
    )
    g.add_argument(
        "--dry-run",
        action="store_true",
        help="print the memory plan per stage and the cheapest flags that fit; load nothing, write nothing, exit 0 "
        "(no weights needed: the released model's sizes are used when --model-base has none)",
    )
    g.add_argument(
        "--gpu-memory",
        type=float,
        default=None,
        metavar="GB",
        help="with --dry-run: plan for a CUDA card of GB GB (e.g. 24) instead of the device present",
    )
    g.add_argument("--reproduce", action="store_true", help="deterministic algorithms")
    g.add_argument("--ulysses-degree", type=int, default=1, help="Ulysses sequence parallelism (torchrun)")
    g.add_argument("--ring-degree", type=int, default=1, help="ring attention parallelism (torchrun)")
    g.add_argument("--cfg-parallel", action="store_true", help="cond/uncond on two halves of the processes")
    g.add_argument(
        "--shard-weights",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with torchrun, each process holds 1/N of the DiT block weights (FSDP2)",
    )
    g.add_argument("--dist-timeout", type=float, default=DIST_TIMEOUT_S, help="seconds an inter-process wait may take")
    g.add_argument("--debug", action="store_true", help="debug logs and full tracebacks on errors")


def _i2v_flags(p: argparse.ArgumentParser) -> None:
    """Image-to-video (HunyuanVideo-I2V, SkyReels-V1): the official flags and defaults, plus --i2v-resize."""
    g = p.add_argument_group("image-to-video")
    g.add_argument("--i2v-mode", action="store_true", help="animate --i2v-image-path (needs image-to-video weights)")
    g.add_argument("--i2v-image-path", default=None, metavar="IMG", help="the first frame (PNG, JPEG, WebP, ...)")
    g.add_argument(
        "--i2v-resolution",
        default="720p",
        choices=I2V_RESOLUTIONS,
        help="video size bucket from the image's aspect unless --video-size is given (16:9: 704x1248, 544x928, "
        "352x608)",
    )
    g.add_argument(
        "--i2v-condition-type",
        default=None,
        choices=I2V_CONDITION_TYPES,
        help="how the image enters the DiT (default: what the weights say; needed only when they do not)",
    )
    g.add_argument(
        "--i2v-stability", action="store_true", help="start from 0.999 noise + 0.001 image (default flow shift 7)"
    )
    g.add_argument(
        "--i2v-resize",
        default="crop",
        choices=I2V_RESIZE_MODES,
        help="crop: keep the aspect and center-crop to the video size (official); stretch: resize to it (diffusers)",
    )
    g.add_argument("--i2v-dit-weight", default=None, help="image-to-video DiT weights (replaces --dit-weight)")


def str_to_bool(value: str | bool | None) -> bool:
    """generate.py's boolean options: `--flag` alone is true, else true/false, 1/0, yes/no, on/off."""
    if value is None or isinstance(value, bool):
        return value is None or value
    word = value.strip().lower()
    if word in ("true", "1", "yes", "on"):
        return True
    if word in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false (or 1/0, yes/no, on/off), got {value!r}")


def _spellings(name: str) -> list[str]:
    return [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])


def _switch(g: argparse._ArgumentGroup, name: str, help: str, default: bool | None = None) -> None:
    """One generate.py boolean option, in its underscore and dash spellings; None = not given."""
    g.add_argument(
        *_spellings(name), type=str_to_bool, nargs="?", const=True, default=default, metavar="BOOL", help=help
    )


def _option(g: argparse._ArgumentGroup, name: str, **kwargs: Any) -> None:
    """One generate.py option with a value, in its underscore and dash spellings."""
    g.add_argument(*_spellings(name), **kwargs)


def _hv15_flags(p: argparse.ArgumentParser) -> None:
    """HunyuanVideo 1.5: the official generate.py options (underscore or dash). Its --prompt, --seed, --model_path,
    --negative_prompt, --video_length, --num_inference_steps and --lora_path are spellings of our flags above."""
    g = p.add_argument_group("HunyuanVideo 1.5 (the official generate.py options)")
    _option(g, "resolution", default=None, choices=HV15_RESOLUTIONS, help="the DiT version's resolution")
    _option(g, "aspect_ratio", default=None, metavar="W:H", help=f"text-to-video size bucket ({HV15_ASPECT_RATIO})")
    _option(g, "image_path", default=None, metavar="IMG", help="the first frame: image-to-video ('none': text)")
    _option(g, "output_path", default=None, metavar="FILE.mp4", help="the video file (instead of --save-path)")
    _switch(g, "cfg_distilled", "the cfg-distilled version (guidance 1)")
    _switch(g, "enable_step_distill", "the step-distilled version (480p image-to-video, 12 steps)")
    _switch(g, "sparse_attn", "SSTA sparse attention (not supported)")
    _switch(g, "sr", "the super-resolution stage (not supported; generate.py's default true runs without it here)")
    _switch(g, "save_pre_sr_video", "with --sr only (not supported)")
    _switch(g, "rewrite", "prompt rewriting by an LLM service (not supported)")
    _switch(g, "offloading", "true: --offload model (block with --group_offloading)")
    _switch(g, "group_offloading", "true: --offload block")
    _switch(g, "overlap_group_offloading", "accepted; block offload here always prefetches the next block")
    _switch(g, "use_sageattn", "same as --attn-backend sage")
    _option(g, "sage_blocks_range", default="0-53", metavar="RANGE", help="all blocks only (0-53)")
    _switch(g, "enable_torch_compile", "same as --compile")
    _switch(g, "enable_cache", "feature caching (deepcache, teacache, taylorcache; not supported)")
    _option(g, "cache_type", default="deepcache", help="with --enable_cache (not supported)")
    _option(g, "no_cache_block_id", default="53", help="with --enable_cache (not supported)")
    _option(g, "cache_start_step", type=int, default=11, help="with --enable_cache (not supported)")
    _option(g, "cache_end_step", type=int, default=45, help="with --enable_cache (not supported)")
    _option(g, "total_steps", type=int, default=50, help="with --enable_cache (not supported)")
    _option(g, "cache_step_interval", type=int, default=4, help="with --enable_cache (not supported)")
    _switch(g, "save_generation_config", "the run record: always written here, as <video>.json")
    _option(g, "checkpoint_path", default=None, help="a training checkpoint (not supported: use --dit-weight)")
    _switch(g, "use_fp8_gemm", "same as --use-fp8 --fp8-compute")
    _option(g, "quant_type", default=HV15_QUANT_TYPES[-1], choices=HV15_QUANT_TYPES, help="with --use_fp8_gemm")
    _option(g, "include_patterns", default="double_blocks", help="with --use_fp8_gemm: double_blocks only")
    g.add_argument(
        "--neg-byt5",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also encode the negative prompt's quoted text with byT5, as diffusers does (official: zeros)",
    )
