"""Image-to-video glue between the conditioning image, the VAE and the sampler (docs/DESIGN.md §17).

The pipeline runs, for a DiT whose `cfg.image_condition` is not "none":
    pixels = image.prepare_image(...).pixels                    (1, 3, 1, H, W) in [-1, 1]
    image  = image_latent(vae, pixels)                          (1, 16, 1, H/8, W/8)  DiT latents
    x0     = start_latents(condition, noise, image, stability)  (B, 16, T, H/8, W/8)
    fn     = condition_model(model_fn, condition, image, T)     the sampler's model function
    x      = sampling.euler(fn, x0, sigmas)
    video  = vae.decode_latents(x)[:, :, decoded_frames_dropped(condition):]
Nothing here knows the architecture: the DiT sees the concatenated channels or the held frame 0 through `fn`.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from hyvideo.checkpoints.common import as_state_dict, load_torch_file
from hyvideo.checkpoints.dit import DIFFUSERS_STEM, find_dit_weights
from hyvideo.checkpoints.layout import ModelPaths, locate
from hyvideo.checkpoints.vae import load_vae
from hyvideo.choices import DEFAULT_NEGATIVE_PROMPT
from hyvideo.config import DiTConfig, with_image_condition
from hyvideo.dtypes import PRECISIONS
from hyvideo.errors import CheckpointError, UsageError
from hyvideo.image import prepare_image
from hyvideo.modules.llava_encoder import NEGATIVE_PROMPT_I2V, I2VTextEncoders, LlavaEncoderConfig, check_prompt
from hyvideo.modules.text_encoders import TextEmbeddings
from hyvideo.modules.vae import HYVideoVAE
from hyvideo.request import SampleRequest
from hyvideo.sampling import (
    ModelFn,
    concat_condition,
    hold_first_frame,
    image_condition,
    latent_shape,
    replace_first_frame,
    stability_start,
)

I2V_CONDITIONS = ("token_replace", "latent_concat", "concat")  # DiTConfig.image_condition values that take an image


def image_latent(vae: HYVideoVAE, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The conditioning frame as DiT latents: VAE posterior mean x scaling_factor (HunyuanVideo-I2V official and
    diffusers), or a posterior sample from `generator` (diffusers' SkyReels pipeline, which draws it from the
    run's generator before the noise). pixels (B, 3, 1, H, W) in [-1, 1] -> (B, 16, 1, H/8, W/8) float32."""
    return vae.encode_latents(pixels, generator).float()


def sampled_image_and_noise(
    vae: HYVideoVAE, pixels: torch.Tensor, shape: tuple[int, ...], seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' SkyReels order of draws for one video: a CPU generator seeded `seed` first draws the image's
    posterior sample, then the noise of `shape` (1, C, T, h, w). Returns (image latent (1, C, 1, h, w), noise)."""
    generator = torch.Generator("cpu").manual_seed(seed)
    image = image_latent(vae, pixels, generator)
    return image, torch.randn(tuple(shape), generator=generator, dtype=torch.float32)


def start_latents(condition: str, noise: torch.Tensor, image: torch.Tensor, stability: bool) -> torch.Tensor:
    """The sampler's start: noise, or with `stability` 0.999 noise + 0.001 image on every frame; token_replace then
    holds the clean image latent in frame 0. noise (B, C, T, h, w), image (B or 1, C, 1, h, w)."""
    _check(condition)
    x = stability_start(noise, image) if stability else noise.float()
    return replace_first_frame(x, image) if condition == "token_replace" else x


def condition_model(model_fn: ModelFn, condition: str, image: torch.Tensor, frames: int) -> ModelFn:
    """Wrap the (guided) model function for the condition: token_replace holds frame 0 at the image latent and
    steps frames 1.. only; latent_concat appends [image at frame 0, zeros after; mask] (33 channels for 16), the
    SkyReels concat [image at frame 0, zeros after] (32). `frames` = latent frames T."""
    _check(condition)
    if condition == "token_replace":
        return hold_first_frame(model_fn, image)
    return concat_condition(model_fn, image_condition(image, frames, mask=condition == "latent_concat"))


def decoded_frames_dropped(condition: str) -> int:
    """Decoded video frames both references drop: the first 4 with latent_concat (129 requested frames give
    125), none otherwise. The saved latents keep every frame, so decoding them later gives the same video."""
    return 4 if condition == "latent_concat" else 0


# ---------------------------------------------------------------------------------------------------------------
# The command line's run (hyvideo.pipeline calls these where image-to-video differs from text-to-video)
# ---------------------------------------------------------------------------------------------------------------
def uses_llava(req: SampleRequest) -> bool:
    """HunyuanVideo-I2V encodes the prompt with the image (LLaVA); SkyReels-V1 with the text-to-video encoders."""
    return req.i2v_condition != "concat"


def resolve(req: SampleRequest) -> SampleRequest:
    """Before anything loads: prompts the LLaVA template can take (no `<image>` of their own), and
    HunyuanVideo-I2V's own default negative prompt (shorter than text-to-video's) when real CFG is on and none was
    given."""
    if not uses_llava(req):
        return req
    for flag, text in (("--prompt", req.prompt), ("--neg-prompt", req.neg_prompt)):
        try:
            check_prompt(text or "")
        except ValueError as e:
            raise UsageError(flag, str(e)) from None
    return req.replace(neg_prompt=NEGATIVE_PROMPT_I2V) if req.neg_prompt == DEFAULT_NEGATIVE_PROMPT else req


def model_paths(req: SampleRequest) -> ModelPaths:
    """The image-to-video components: the official I2V tree or the diffusers folder (LLaVA unless SkyReels)."""
    return locate(req.model_base, req.dit_weight, i2v=True, llava=uses_llava(req))


def dit_config(cfg: DiTConfig, req: SampleRequest) -> DiTConfig:
    """`cfg` (the preset, or the config beside the weights) as the request's image-to-video DiT. The released
    official tree has no config, so the preset becomes the DiT of the condition (`with_image_condition`), after
    `check_input_width` compared the condition with the width the weights' header gives (before anything loads)."""
    if cfg.image_condition != "none":
        return cfg
    out = with_image_condition(cfg, req.i2v_condition)
    check_input_width(out, model_paths(req).dit, req.load_key)
    return out


INPUT_WEIGHTS = ("img_in.proj.weight", "x_embedder.proj.weight")  # the patch embedding: official, diffusers name


def check_input_width(cfg: DiTConfig, weights: Path, load_key: str = "module") -> None:
    """The request's DiT (`cfg`, built from its condition) must take the input width of `weights`: else exit 2
    naming the condition and what the weights are (e.g. --i2v-condition-type latent_concat with 16-channel
    weights, or the default token_replace with the 33-channel ones). Nothing to check when the header cannot be
    read cheaply (`header_input_width`); loading then compares them."""
    width = header_input_width(weights, load_key)
    if width is None or width == cfg.in_channels:
        return
    c = cfg.out_channels
    what = {  # for 16 latent channels: 16, 33, 32 input channels
        c: "token_replace or text-to-video; give --i2v-condition-type token_replace",
        2 * c + 1: "latent_concat; give --i2v-condition-type latent_concat",
        2 * c: "SkyReels-V1 concat; run them from their diffusers folder, whose config says so",
    }.get(width, "no known image condition")
    raise UsageError(
        "--i2v-condition-type",
        f"{cfg.image_condition}, but the DiT weights {weights} take {width} input channels ({what})",
    )


def header_input_width(weights: Path, load_key: str = "module") -> int | None:
    """The input channels of a DiT checkpoint from its header alone, or None when only a full read could tell.

    safetensors: the header names every shape. An official `.pt` in torch's zip format: `torch.load(mmap=True,
    weights_only=True)` unpickles the small record index and maps the tensor data without reading it (measured on
    a 2 GiB file of 1500 tensors, more than the released DiT's 856: about 4 KiB read per tensor, 0.5 s, peak RSS
    +5 MiB, the same as for a file of 1500 empty tensors). A legacy (non-zip) `.pt` cannot be mapped: None
    (loading reads it and checks). docs/DESIGN.md §17.9."""
    kind, where = find_dit_weights(weights)
    if kind == "official":
        if not zipfile.is_zipfile(where):
            return None
        sd = as_state_dict(load_torch_file(where), where, load_key)
        w = sd.get(INPUT_WEIGHTS[0])
        return None if w is None or w.ndim != 5 else int(w.shape[1])
    files = [where] if where.is_file() else sorted(where.glob(f"{DIFFUSERS_STEM}*.safetensors"))
    for file in files:
        try:
            with safe_open(str(file), "pt") as f:
                names = set(f.keys())  # the header's tensor names
                for name in INPUT_WEIGHTS:
                    if name in names:
                        shape = f.get_slice(name).get_shape()  # (C, in, pt, ph, pw)
                        return int(shape[1]) if len(shape) == 5 else None
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{file}: cannot read the safetensors header ({str(e)[:160]})") from None
    return None


def llava_config(req: SampleRequest, paths: ModelPaths) -> LlavaEncoderConfig:
    """The LLaVA + CLIP-L encoders of HunyuanVideo-I2V for the request's condition and text settings."""
    text = req.text
    return LlavaEncoderConfig(
        llava_path=paths.text_encoder,
        clip_path=paths.text_encoder_2,
        tokenizer_path=paths.tokenizer,
        image_processor_path=paths.image_processor,
        clip_tokenizer_path=paths.tokenizer_2,
        condition_type=req.i2v_condition,
        text_len=text.text_len,
        text_len_2=text.text_len_2,
        hidden_state_skip_layer=text.hidden_state_skip_layer,
        apply_final_norm=text.apply_final_norm,
        precision=text.text_encoder_precision,
        precision_2=text.text_encoder_precision_2,
        stream=req.offload == "block",  # the language model's layers stream (docs/DESIGN.md §23)
    )


def encode_with(encoders: I2VTextEncoders, req: SampleRequest) -> tuple[TextEmbeddings, TextEmbeddings | None]:
    """(prompt with the request's whole image, negative prompt with a black image of the video size or None)."""
    cond = encoders.encode(req.prompt, req.i2v_image.image)
    uncond = encoders.encode_negative(req.neg_prompt, (req.width, req.height)) if req.cfg_scale > 1 else None
    return cond, uncond


def encode_prompts(
    req: SampleRequest, paths: ModelPaths, device: torch.device
) -> tuple[TextEmbeddings, TextEmbeddings | None]:
    """`encode_with` on encoders loaded here and freed before returning."""
    encoders = I2VTextEncoders(llava_config(req, paths), device)
    try:
        return encode_with(encoders, req)
    finally:
        encoders.free()


@dataclass(frozen=True)
class ImageStart:
    """One video's image condition: the start latents and the wrapper of the sampler's model function."""

    condition: str  # token_replace, latent_concat or concat
    image: torch.Tensor  # (1, C, 1, h, w) float32: the image latent
    noise: torch.Tensor | None  # SkyReels: the noise drawn after the image's posterior sample; None: the usual noise
    stability: bool  # --i2v-stability

    def start(self, noise: torch.Tensor) -> torch.Tensor:
        noise = noise if self.noise is None else self.noise.to(noise.device)
        return start_latents(self.condition, noise, self.image.to(noise.device), self.stability)

    def wrap(self, model_fn: ModelFn, frames: int, device: torch.device) -> ModelFn:
        return condition_model(model_fn, self.condition, self.image.to(device), frames)


def encode_image(
    req: SampleRequest, paths: ModelPaths, device: torch.device, seeds: list[int], vae: HYVideoVAE | None = None
) -> dict[int, ImageStart]:
    """Each seed's `ImageStart`, with `vae` (`load_encoder`), or one loaded and freed here (before the DiT loads).
    The frame is the image
    resized to the video size (bucket, or --video-size) as --i2v-resize says. HunyuanVideo-I2V: the posterior mean,
    one latent for every seed. SkyReels-V1: diffusers' order of draws, a posterior sample then the noise from one
    generator seeded with the video's seed."""
    pixels = prepare_image(req.i2v_image.image, size=(req.height, req.width), resize=req.i2v_resize).pixels
    own = vae is None
    vae = load_encoder(req, paths, device) if vae is None else vae
    try:
        with torch.no_grad():
            if req.i2v_condition != "concat":
                image = image_latent(vae, pixels.to(device)).cpu()
                return {s: ImageStart(req.i2v_condition, image, None, req.i2v_stability) for s in seeds}
            shape = latent_shape(1, req.video_length, req.height, req.width, req.latent_channels)
            out = {}
            for s in seeds:
                image, noise = sampled_image_and_noise(vae, pixels.to(device), shape, s)
                out[s] = ImageStart("concat", image.cpu(), noise, False)
            return out
    finally:
        if own:
            del vae


def load_encoder(req: SampleRequest, paths: ModelPaths, device: torch.device) -> HYVideoVAE:
    """The VAE that encodes the image (untiled, as both references encode the one frame)."""
    return load_vae(paths.vae, dtype=PRECISIONS[req.vae_precision], device=device)


def _check(condition: str) -> None:
    if condition not in I2V_CONDITIONS:
        raise ValueError(f"image condition must be one of {', '.join(I2V_CONDITIONS)}, got {condition!r}")
