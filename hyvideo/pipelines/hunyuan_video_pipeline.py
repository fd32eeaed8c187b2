"""The official HunyuanVideo 1.5 Python interface, so scripts written for Tencent's HunyuanVideo-1.5 (its
generate.py call sequence) run on ours:

    from hyvideo.pipelines.hunyuan_video_pipeline import HunyuanVideo_1_5_Pipeline

    version = HunyuanVideo_1_5_Pipeline.get_transformer_version("480p", "i2v", step_distilled=True)
    pipe = HunyuanVideo_1_5_Pipeline.create_pipeline(
        pretrained_model_name_or_path="ckpts", transformer_version=version, transformer_dtype=torch.bfloat16)
    pipe.apply_infer_optimization(infer_state=None, enable_offloading=False)        # optional
    out = pipe(prompt="a cat walks on the grass", aspect_ratio="16:9", video_length=121, seed=123,
               reference_image="cat.png", enable_sr=False, prompt_rewrite=False, output_type="pt")
    out.videos  # (1, 3, T, H, W) float32 in [0, 1] on the CPU: the official (decoded / 2 + 0.5).clamp(0, 1)

Built on `hyvideo.api.Generator`: every argument goes through the command line's checks (`ValueError` with the
flag's message, the API argument named first), and the video equals what `sample_video.py` writes with the same
settings. Where it differs from the official pipeline (docs/DESIGN.md §24.2):
- The models load at the first call, once `apply_infer_optimization` has said where they live; `create_pipeline`
  and `apply_infer_optimization` check every argument before anything loads.
- `device` is where the models run, except with `enable_offloading` (the official convention: the models wait on
  the CPU and run on CUDA). `transformer_init_device` follows the offload mode (accepted, not used).
- `enable_sr` and `prompt_rewrite` left out: off (what the official code does without the super-resolution models
  or a rewriting service); True: `ValueError`, as are sparse-attention versions, `generator=` (give `seed`), several
  prompts in one call and `guidance_rescale`.
- `output_type="np"` gives a numpy array of the same (1, 3, T, H, W) (the official code returns the tensor whatever
  it is asked); "latent" the final latents (1, 32, T', h, w) float32 on the CPU.
- `create_pipeline`'s extra keyword arguments are our command-line options by name (e.g. `vae_precision="fp32"`,
  `vae_tiling=False`, `noise="official"`); the official code passes them to a Hub download, not done here.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.utils import BaseOutput
from PIL import Image

from hyvideo.api import Generator, source_image
from hyvideo.choices import HV15_SR_VERSIONS, HV15_VERSIONS, hv15_version_name
from hyvideo.errors import UsageError
from hyvideo.image import load_image
from hyvideo.request import SampleRequest, flag_defaults, validate

OFFICIAL_RANDOM_SEEDS = (100_000, 999_999)  # the official pipeline's seed when `seed` is None or -1 (inclusive)
OUTPUT_TYPES = ("pt", "np", "latent")
TRANSFORMER_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}  # -> --precision
_PLACEHOLDER_PROMPT = "-"  # the construction's checks need a prompt; each call brings its own
# `__call__` keyword arguments the official pipeline reads from **kwargs, and the value that changes nothing here
_CALL_KWARGS: dict[str, object] = {"guidance_rescale": 0.0, "clip_skip": None, "eta": None}
# the API argument behind a command-line flag, named first in the error
_ARGUMENT_OF_FLAG = {
    "--model-base": "pretrained_model_name_or_path",
    "--precision": "transformer_dtype",
    "--device": "device",
    "--sr": "create_sr_pipeline",
    "--sage_blocks_range": "infer_state.sage_blocks_range",
    "--enable_cache": "infer_state.enable_cache",
    "--quant_type": "infer_state.quant_type",
    "--include_patterns": "infer_state.include_patterns",
    "--prompt": "prompt",
    "--neg-prompt": "negative_prompt",
    "--aspect_ratio": "aspect_ratio",
    "--video-length": "video_length",
    "--seed": "seed",
    "--infer-steps": "num_inference_steps",
    "--cfg-scale": "guidance_scale",
    "--flow-shift": "flow_shift",
    "--embedded-cfg-scale": "embedded_guidance_scale",
    "--rewrite": "prompt_rewrite",
    **dict.fromkeys(
        ("--resolution", "--cfg_distilled", "--enable_step_distill", "--sparse_attn", "--i2v-mode"),
        "transformer_version",
    ),
    **dict.fromkeys(("--offloading", "--group_offloading", "--offload"), "enable_offloading"),
    **dict.fromkeys(("--use_sageattn", "--attn-backend"), "infer_state.enable_sageattn"),
    **dict.fromkeys(("--enable_torch_compile", "--compile", "--compile-mode"), "infer_state.enable_torch_compile"),
    **dict.fromkeys(("--use_fp8_gemm", "--use-fp8", "--fp8-compute"), "infer_state.use_fp8_gemm"),
}


@dataclass
class HunyuanVideoPipelineOutput(BaseOutput):
    """The official output: `out.videos`, `out["videos"]` or `out[0]`."""

    videos: torch.Tensor | np.ndarray  # (1, 3, T, H, W) float32 in [0, 1] ("pt", "np"), or the latents ("latent")
    sr_videos: torch.Tensor | np.ndarray | None = None  # the super-resolved video: always None here


def check(values: Mapping[str, Any], arguments: Mapping[str, str] | None = None) -> SampleRequest:
    """The command line's checks of `values` (flag values by dest, as `Generator.from_args` takes them): the
    request, or `ValueError` naming the API argument behind the offending flag (`arguments` overrides the table)."""
    try:
        return validate({"prompt": _PLACEHOLDER_PROMPT, **values}, image_later=True)
    except UsageError as e:
        argument = {**_ARGUMENT_OF_FLAG, **(arguments or {})}.get(e.flag or "")
        raise ValueError(str(UsageError(f"{argument} ({e.flag})", e.message)) if argument else str(e)) from None


class HunyuanVideo_1_5_Pipeline:  # the official class name, so official scripts import it unchanged
    """One 1.5 DiT version with its encoders and VAE (made by `create_pipeline`); each call makes one video."""

    def __init__(self, model: Mapping[str, Any], device: str | None, transformer_version: str) -> None:
        """Use `create_pipeline`. `model`: the flag values (by dest) that choose the weights and their dtypes."""
        self.transformer_version = transformer_version
        self._model = dict(model)
        self._device = device  # as given to create_pipeline (None: our default, CUDA when present)
        self._values: dict[str, Any] = {}
        self._sampler: Generator | None = None
        self._configure({})

    # ------------------------------------------------------------------------------------------ official surface
    @staticmethod
    def get_transformer_version(
        resolution: str, task: str, cfg_distilled: bool = False, step_distilled: bool = False, sparse_attn: bool = False
    ) -> str:
        """The `transformer/<version>` folder name the official flags choose (e.g. "480p_i2v_step_distilled")."""
        return hv15_version_name(resolution, task, cfg_distilled, step_distilled, sparse_attn)

    @classmethod
    def create_pipeline(
        cls,
        pretrained_model_name_or_path: str | Path,
        transformer_version: str,
        create_sr_pipeline: bool = False,
        transformer_dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device | None = None,
        transformer_init_device: str | torch.device | None = None,
        **options: Any,
    ) -> HunyuanVideo_1_5_Pipeline:
        """The pipeline of `transformer_version` under `pretrained_model_name_or_path` (the official `ckpts` tree, or a
        diffusers folder holding that version); checked now, loaded at the first call. `options`: our command-line
        options by name (e.g. vae_precision="fp32"). `transformer_init_device` is not used: where the DiT waits
        follows the offload mode of `apply_infer_optimization`."""
        spec = HV15_VERSIONS.get(transformer_version)
        if spec is None:
            sr = " (the super-resolution DiTs need the upsampler models: not supported)" * (
                transformer_version in HV15_SR_VERSIONS
            )
            raise ValueError(
                f"transformer_version: {transformer_version!r} is not a released version{sr}; choose from "
                f"{', '.join(HV15_VERSIONS)} (get_transformer_version builds the name)"
            )
        if transformer_dtype not in TRANSFORMER_DTYPES:
            raise ValueError(
                f"transformer_dtype: {transformer_dtype}; give torch.bfloat16, torch.float16 or torch.float32"
            )
        model = {
            "model_base": str(pretrained_model_name_or_path),
            "resolution": spec.resolution,
            "cfg_distilled": spec.cfg_distilled,
            "enable_step_distill": spec.step_distilled,
            "sparse_attn": spec.sparse or None,
            "i2v_mode": spec.task == "i2v",
            "precision": TRANSFORMER_DTYPES[transformer_dtype],
            "sr": bool(create_sr_pipeline) or None,
        }
        known = flag_defaults()
        for name in options:
            if name not in known:
                raise ValueError(
                    f"{name}: not an option of ours (create_pipeline's extra keyword arguments are our command-line "
                    "options by name, e.g. vae_precision='fp32'; downloading from the Hub is not done here)"
                )
            if name in model or name == "device":
                raise ValueError(f"{name}: set by create_pipeline's own arguments; drop it")
        return cls({**options, **model}, None if device is None else str(device), transformer_version)

    def apply_infer_optimization(
        self,
        infer_state: object | None = None,
        enable_offloading: bool = False,
        enable_group_offloading: bool = False,
        overlap_group_offloading: bool = True,
    ) -> None:
        """The runtime settings: offloading (model: components on the GPU only while they run; group: the DiT's
        blocks streamed through it), and `infer_state`'s (the official InferState, read by its field names):
        SageAttention, torch.compile, fp8 matmuls; its feature cache is refused. Replaces the previous settings;
        models already loaded are loaded again at the next call."""
        runtime = _infer_state_values(infer_state)
        offloading = bool(enable_offloading or enable_group_offloading)
        if offloading:
            runtime.update(offloading=True, group_offloading=bool(enable_group_offloading) or None,
                           overlap_group_offloading=bool(overlap_group_offloading))  # fmt: skip
        self._configure(runtime, offloading)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        aspect_ratio: str,
        video_length: int,
        prompt_rewrite: bool | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        enable_sr: bool | None = None,
        sr_num_inference_steps: int | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        flow_shift: float | None = None,
        embedded_guidance_scale: float | None = None,
        reference_image: Image.Image | str | Path | None = None,
        output_type: str = "pt",
        return_dict: bool = True,
        return_pre_sr_video: bool = False,
        enable_vae_tile_parallelism: bool = True,
        **kwargs: Any,
    ) -> HunyuanVideoPipelineOutput | torch.Tensor | np.ndarray:
        """One video: text-to-video sized by `aspect_ratio` ("W:H", the version's resolution bucket), or image-to-video
        from `reference_image` (a PIL image or a file path; its bucket sizes the video). None keeps the version's
        default (steps, guidance, shift); `seed` None or -1 draws one as the official code does. `sr_num_inference_steps`,
        `return_pre_sr_video` and `enable_vae_tile_parallelism` concern stages not run here and change nothing."""
        _check_call_options(generator, output_type, kwargs)
        text = _one_prompt("prompt", prompt)
        negative = None if negative_prompt is None else _one_prompt("negative_prompt", negative_prompt)
        task = "t2v" if reference_image is None else "i2v"
        if task != self.ideal_task:
            given = "reference_image: given" if task == "i2v" else "reference_image: missing"
            wanted = "image-to-video (give the first frame)" if self.ideal_task == "i2v" else "text-to-video (no image)"
            raise ValueError(f"{given}, but the pipeline was created for {wanted}: {self.transformer_version}")
        image = _reference_image(reference_image)
        seed = official_seed(seed)
        call = {
            "prompt": text,
            "neg_prompt": negative,
            "video_length": video_length,
            "seed": seed,
            "infer_steps": num_inference_steps,
            "cfg_scale": guidance_scale,
            "flow_shift": flow_shift,
            "embedded_cfg_scale": embedded_guidance_scale,
            "sr": True if enable_sr else None,
            "rewrite": True if prompt_rewrite else None,
            "aspect_ratio": str(aspect_ratio) if task == "t2v" else None,  # an image's bucket ignores it (official)
        }
        req = check({**self._values, **{k: v for k, v in call.items() if v is not None}}, {"--sr": "enable_sr"})
        size = {"height": req.height, "width": req.width} if task == "t2v" else {}  # i2v: the image's bucket
        (video,) = self.sampler.generate(
            text,
            video_length=video_length,
            seed=seed,
            infer_steps=num_inference_steps,
            cfg_scale=guidance_scale,
            flow_shift=flow_shift,
            negative_prompt=negative,
            **size,
            **image,
        )
        videos: torch.Tensor | np.ndarray = video.latents  # (1, 32, T', h, w)
        if output_type != "latent":
            videos = video.frames.unsqueeze(0)  # (1, 3, T, H, W): ((x + 1) / 2).clamp(0, 1), the official's x/2+0.5
            videos = videos.numpy() if output_type == "np" else videos
        return HunyuanVideoPipelineOutput(videos=videos) if return_dict else videos

    @property
    def ideal_resolution(self) -> str:
        """The version's resolution ("480p" or "720p")."""
        return self.request.hv15.resolution  # type: ignore[union-attr]  # always 1.5 (create_pipeline checked)

    @property
    def ideal_task(self) -> str:
        """ "t2v" or "i2v": what the version was trained for."""
        return self.request.hv15.task  # type: ignore[union-attr]

    @property
    def use_meanflow(self) -> bool:
        """The step-distilled version's DiT also takes the next timestep."""
        return self.request.hv15.meanflow  # type: ignore[union-attr]

    @staticmethod
    def get_offloading_config(memory_limitation: float | None = None) -> dict[str, bool]:
        """generate.py's automatic choice: offload always, and stream the DiT's blocks below 60 GB of GPU memory
        (`memory_limitation` in bytes; None: the current CUDA device's)."""
        if memory_limitation is None:
            if not torch.cuda.is_available():
                raise ValueError("memory_limitation: no CUDA device to read it from; give the GPU memory in bytes")
            memory_limitation = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        return {"enable_offloading": True, "enable_group_offloading": memory_limitation < 60 * 1024**3}

    # ------------------------------------------------------------------------------------------ ours
    @property
    def sampler(self) -> Generator:
        """Our Generator with the models loaded (at the first use)."""
        if self._sampler is None:
            self._sampler = Generator.from_args(argparse.Namespace(**self._values))
        return self._sampler

    def close(self) -> None:
        """Free the models (a later call loads them again)."""
        if self._sampler is not None:
            self._sampler.close()
            self._sampler = None

    def _configure(self, runtime: Mapping[str, Any], offloading: bool = False) -> None:
        """Check the model's and `runtime`'s values together; a change frees the models loaded with the old ones."""
        device = _execution_device(self._device, offloading)
        values = {**self._model, **runtime, **({"device": device} if device is not None else {})}
        self.request = check(values)
        if values != self._values:
            self.close()
        self._values = values


def official_seed(seed: int | None) -> int:
    """The seed a call uses: `seed`, or for None and -1 one drawn as the official pipeline draws it."""
    return random.randint(*OFFICIAL_RANDOM_SEEDS) if seed is None or seed == -1 else seed


def _execution_device(device: str | None, offloading: bool) -> str | None:
    """Where the models run: `device`, except that offloading keeps them on the CPU and runs them on CUDA (the
    official convention, generate.py passes device=cpu with its default --offloading)."""
    if not offloading or (device is not None and not device.startswith("cpu")):
        return device
    if not torch.cuda.is_available():
        raise ValueError(
            "enable_offloading: the models wait on the CPU and run on a CUDA device, and there is none here; leave "
            "it False to run on the CPU"
        )
    return "cuda"


def _infer_state_values(state: object | None) -> dict[str, Any]:
    """The official InferState's fields as our flag values (by dest); fields that only matter with an option that is
    off are left out, as the official code ignores them."""
    if state is None:
        return {}
    out: dict[str, Any] = {}
    for field, dest in (("enable_sageattn", "use_sageattn"), ("enable_torch_compile", "enable_torch_compile"),
                        ("enable_cache", "enable_cache"), ("use_fp8_gemm", "use_fp8_gemm")):  # fmt: skip
        if getattr(state, field, False):
            out[dest] = True
    blocks = getattr(state, "sage_blocks_range", None)
    if out.get("use_sageattn") and blocks is not None:
        out["sage_blocks_range"] = _block_range(list(blocks))
    if out.get("use_fp8_gemm"):
        out["quant_type"] = getattr(state, "quant_type", flag_defaults()["quant_type"])
        patterns = getattr(state, "include_patterns", ["double_blocks"])
        out["include_patterns"] = patterns if isinstance(patterns, str) else ",".join(patterns)
    return out


def _block_range(blocks: list[int]) -> str:
    """Block ids as the command line writes them: "0-53" for a contiguous run, else "1,3,5"."""
    if blocks and blocks == list(range(blocks[0], blocks[-1] + 1)):
        return f"{blocks[0]}-{blocks[-1]}"
    return ",".join(str(b) for b in blocks)


def _check_call_options(generator: object, output_type: str, kwargs: Mapping[str, Any]) -> None:
    """The call's arguments that have no command-line flag."""
    if generator is not None:
        raise ValueError("generator: not supported; give seed=N (the start noise follows from the seed)")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type: {output_type!r}; choose from {', '.join(OUTPUT_TYPES)}")
    for name, value in kwargs.items():
        if name not in _CALL_KWARGS:
            raise TypeError(f"HunyuanVideo_1_5_Pipeline.__call__() got an unexpected keyword argument {name!r}")
        if name != "eta" and value != _CALL_KWARGS[name]:  # eta: the Euler sampler draws no noise (official too)
            raise ValueError(f"{name}: not supported; leave it at {_CALL_KWARGS[name]}")


def _one_prompt(name: str, value: str | Sequence[str]) -> str:
    """A string, or a list of one: one video per call (the official batch of several prompts draws their noise as
    one tensor, which per-prompt seeds cannot give)."""
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    raise ValueError(f"{name}: one prompt per call (a string); call the pipeline once per prompt")


def _reference_image(image: Image.Image | str | Path | None) -> dict[str, Any]:
    """The Generator's image argument for `reference_image`, checked now (before the models load)."""
    if image is None:
        return {}
    if isinstance(image, Image.Image):
        source_image(image)
        return {"i2v_image": image}
    if isinstance(image, (str, Path)):
        try:
            load_image(image, flag="reference_image")
        except UsageError as e:
            raise ValueError(str(e)) from None
        return {"i2v_image_path": image}
    raise ValueError(f"reference_image: a PIL image or the path of an image file, got {type(image).__name__}")
