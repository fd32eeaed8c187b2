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

import torch

from hyvideo.modules.vae import HYVideoVAE
from hyvideo.sampling import (
    ModelFn,
    concat_condition,
    hold_first_frame,
    image_condition,
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


def _check(condition: str) -> None:
    if condition not in I2V_CONDITIONS:
        raise ValueError(f"image condition must be one of {', '.join(I2V_CONDITIONS)}, got {condition!r}")
