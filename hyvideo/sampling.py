"""Flow-matching sampling as plain functions (k-diffusion style), docs/DESIGN.md §5.

The sampler sees only a model function `model_fn(x, t) -> v`: x (B, C, T, H, W) float32 latents, t (B,) float32
timesteps in [0, 1000], v the predicted velocity (any float dtype). Conditioning and guidance are closures built
around the network by `with_cond` / `with_cfg`; the sampler never knows the architecture.

Conventions: sigma runs 1 (pure noise) -> 0 (data); x_sigma = (1 - sigma) * x_0 + sigma * noise, so
v = dx/dsigma = noise - x_0 and an Euler step is x <- x + v * (sigma_next - sigma).

Image-to-video (docs/DESIGN.md §17.3) is more closures and starts, never a change to the sampler:
    token_replace:  `hold_first_frame(model_fn, image)`, start `replace_first_frame(x, image)`
    latent_concat:  `concat_condition(model_fn, image_condition(image, frames, mask=True))`   (33 channels)
    SkyReels:       `concat_condition(model_fn, image_condition(image, frames, mask=False))`  (32 channels)
    --i2v-stability: start from `stability_start(noise, image)`

Not implemented: the official `--use-linear-quadratic-schedule` / `--linear-schedule-end` flags. The official
release only declares them (hyvideo/config.py); no code reads them, so there is no reference behaviour to match.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x (B,C,T,H,W) fp32, t (B,) fp32) -> v
CondModelFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]  # (x, t, cond) -> v
Callback = Callable[[dict[str, Any]], None]

NUM_TRAIN_TIMESTEPS = 1000  # model timestep = sigma * 1000


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3-style time shift: s' = shift * s / (1 + (shift - 1) * s); keeps 0 -> 0 and 1 -> 1."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_sigmas(steps: int, shift: float = 7.0) -> torch.Tensor:
    """The N+1 noise levels of an N-step run, 1 -> 0 (docs/DESIGN.md §5.2): linspace(1, 0, N+1) then `shift_sigmas`.

    Computed in float32 on the CPU, as the official scheduler does; diffusers' FlowMatchEulerDiscreteScheduler
    (numpy linspace in float64, then float32) agrees to within 1 ulp. Returns (N+1,) float32, last entry 0.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift_sigmas(torch.linspace(1, 0, steps + 1, dtype=torch.float32), shift)


def timesteps(sigmas: torch.Tensor) -> torch.Tensor:
    """Model timesteps of each step: t_i = sigma_i * 1000 for i < N. (N,) float32."""
    return sigmas[:-1].float() * NUM_TRAIN_TIMESTEPS


@torch.no_grad()
def euler(model_fn: ModelFn, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback | None = None) -> torch.Tensor:
    """Explicit Euler on dx/dsigma = v: x_{i+1} = x_i + v(x_i, 1000 * sigma_i) * (sigma_{i+1} - sigma_i).

    The state is kept in float32 whatever dtype the model computes in. `callback` (if any) gets a dict with
    i, x (after the step), v, sigma, sigma_next and t after every step. Returns the final x (float32).
    """
    x = x.float()
    sigmas = sigmas.float().to(x.device)
    ts = timesteps(sigmas)  # (N,)
    for i, t in enumerate(ts):
        v = model_fn(x, t.expand(x.shape[0]))  # t: (B,)
        x = x + v.float() * (sigmas[i + 1] - sigmas[i])
        if callback is not None:
            callback({"i": i, "x": x, "v": v, "sigma": sigmas[i], "sigma_next": sigmas[i + 1], "t": t})
    return x


def with_cond(model_fn: CondModelFn, cond: Any) -> ModelFn:
    """Bind one conditioning: (x, t) -> model_fn(x, t, cond). Used when there is no real CFG (embedded guidance
    is a model input, part of `cond` or of `model_fn`)."""

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model_fn(x, t, cond)

    return fn


def with_cfg(model_fn: CondModelFn, cond: Any, uncond: Any, scale: float, *, batched: bool = False) -> ModelFn:
    """Classifier-free guidance: v = v_uncond + scale * (v_cond - v_uncond).

    batched=False runs two forwards (as diffusers' pipeline does); batched=True runs one forward on the batch
    [uncond; cond] (as the official pipeline does), concatenating `uncond` and `cond` along dim 0 field by field
    (tensors, dataclasses, dicts, tuples/lists of them; None stays None).
    """
    if not batched:

        def two_calls(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            v_cond = model_fn(x, t, cond)
            v_uncond = model_fn(x, t, uncond)
            return v_uncond + scale * (v_cond - v_uncond)

        return two_calls

    both = cat_cond(uncond, cond)

    def one_call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v_uncond, v_cond = model_fn(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
        return v_uncond + scale * (v_cond - v_uncond)

    return one_call


def cat_cond(a: Any, b: Any) -> Any:
    """Concatenate two conditionings of the same structure along the batch dimension (dim 0)."""
    if a is None and b is None:
        return None
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b.to(a.device)])
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return dataclasses.replace(
            a, **{f.name: cat_cond(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)}
        )
    if isinstance(a, dict):
        return {k: cat_cond(a[k], b[k]) for k in a}
    if isinstance(a, (tuple, list)):
        return type(a)(cat_cond(x, y) for x, y in zip(a, b, strict=True))
    if a == b:  # scalars shared by both halves (e.g. a guidance value)
        return a
    raise TypeError(f"cannot batch conditioning values {a!r} and {b!r}")


def latent_shape(
    batch: int, video_length: int, height: int, width: int, channels: int = 16, spatial: int = 8
) -> tuple[int, int, int, int, int]:
    """(B, C, (L-1)//4 + 1, H/s, W/s) for L = 4n+1 frames of H x W pixels: a causal VAE compressing time 4x and space
    s x (v1: 8, HunyuanVideo 1.5: 16)."""
    if (video_length - 1) % 4 or height % spatial or width % spatial:
        raise ValueError(f"need frames = 4n+1 and H, W multiples of {spatial}; got {video_length}, {height}x{width}")
    return (batch, channels, (video_length - 1) // 4 + 1, height // spatial, width // spatial)


def initial_noise(
    shape: Sequence[int],
    seeds: int | Sequence[int],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Starting latents: video i is torch.randn(shape[1:]) from a CPU generator seeded `seeds[i]` (an int seed
    means seed + i), float32, then moved to `device` (docs/DESIGN.md §5.5). The same seed gives the same video on every
    device, and video i does not depend on the batch size. Equals diffusers' `randn_tensor` with a list of CPU
    generators. Returns `shape` float32."""
    batch = shape[0]
    seeds = [seeds + i for i in range(batch)] if isinstance(seeds, int) else list(seeds)
    if len(seeds) != batch:
        raise ValueError(f"{len(seeds)} seeds for a batch of {batch}")
    noise = [
        torch.randn(tuple(shape[1:]), generator=torch.Generator("cpu").manual_seed(s), dtype=torch.float32)
        for s in seeds
    ]
    return torch.stack(noise).to(device)


def official_noise(
    shape: Sequence[int],
    seeds: int | Sequence[int],
    device: torch.device | str,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Starting latents drawn as the official sampler draws them, so a seed reproduces an official video on the same
    GPU type: video i is torch.randn((1, *shape[1:])) from its own generator on `device` (the run's device, e.g.
    cuda:<local rank>) seeded `seeds[i]` (an int seed means seed + i, as the official `seed + i` per video), drawn
    directly on that device in `dtype`: the official passes the prompt embeddings' dtype, i.e. the LLM text encoder's
    (--text-encoder-precision, fp16 by default). Unlike `initial_noise` the values depend on the device type (CPU and
    CUDA generators differ) and are rounded to `dtype`. Returns `shape` float32 (an exact upcast of the draw; the
    official sampler upcasts its latents to float32 at the first step)."""
    batch = shape[0]
    seeds = [seeds + i for i in range(batch)] if isinstance(seeds, int) else list(seeds)
    if len(seeds) != batch:
        raise ValueError(f"{len(seeds)} seeds for a batch of {batch}")
    device = torch.device(device)
    noise = [
        torch.randn((1, *shape[1:]), generator=torch.Generator(device).manual_seed(s), device=device, dtype=dtype)
        for s in seeds
    ]  # each (1, C, T, H, W)
    return torch.cat(noise).float()


# ---------------------------------------------------------------------------------------------------------------
# Image-to-video: image latents (B, C, 1, H, W), i.e. VAE mean (or sample) x scaling_factor of the prepared image
# ---------------------------------------------------------------------------------------------------------------
STABILITY_NOISE = 0.999  # --i2v-stability: the start keeps this much noise and adds the image on every frame


def stability_start(noise: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """--i2v-stability: noise * 0.999 + image * (1 - 0.999), the image latent repeated on every latent frame.
    The weight is a float32 tensor and its complement is computed in float32, as both references do, so the
    image's weight is 1 - float32(0.999) = 0.00099998713. noise (B, C, T, H, W), image (B, C, 1, H, W) ->
    (B, C, T, H, W) float32."""
    w = torch.tensor([STABILITY_NOISE], dtype=torch.float32, device=noise.device)
    return noise.float() * w + image.float().expand_as(noise) * (1 - w)


def replace_first_frame(x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """x (B, C, T, H, W) with latent frame 0 replaced by the clean image latent (B or 1, C, 1, H, W)."""
    return torch.cat([image.to(x.dtype).expand(x.shape[0], -1, -1, -1, -1), x[:, :, 1:]], 2)


def hold_first_frame(model_fn: ModelFn, image: torch.Tensor) -> ModelFn:
    """token_replace: the model sees the clean image latent as frame 0 at every step, and the velocity of frame 0
    is returned as zero, so a solver leaves that frame where it is: only frames 1.. are stepped, as in both
    references. Start the solver from `replace_first_frame(x, image)` so the final frame 0 is the image latent
    exactly (x + 0 * dsigma = x)."""

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = model_fn(replace_first_frame(x, image), t)
        return torch.cat([torch.zeros_like(v[:, :, :1]), v[:, :, 1:]], 2)

    return fn


def image_condition(image: torch.Tensor, frames: int, mask: bool) -> torch.Tensor:
    """The channels appended to the latents for latent_concat (mask=True) and SkyReels (mask=False): the image
    latent at frame 0 and zeros on the `frames` - 1 others, then (mask) one channel that is 1 at frame 0, 0 after.
    image (B, C, 1, H, W) -> (B, C + mask, frames, H, W) float32."""
    B, C, _, H, W = image.shape
    cond = image.new_zeros(B, C + int(mask), frames, H, W, dtype=torch.float32)
    cond[:, :C, :1] = image
    if mask:
        cond[:, C, 0] = 1.0
    return cond


def concat_condition(model_fn: ModelFn, cond: torch.Tensor) -> ModelFn:
    """latent_concat / SkyReels: the model sees cat_C[x, cond] (`image_condition`, batch B or 1); every frame is
    stepped."""

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model_fn(torch.cat([x, cond.to(x.dtype).expand(x.shape[0], -1, -1, -1, -1)], 1), t)

    return fn


# ---------------------------------------------------------------------------------------------------------------
# HunyuanVideo 1.5 (docs/DESIGN.md §22): the condition channels and the meanflow second timestep
# ---------------------------------------------------------------------------------------------------------------
def no_image_condition(x: torch.Tensor) -> torch.Tensor:
    """Text-to-video with a DiT trained for both tasks: the condition channels (image latent and mask) all zero.
    x (B, C, T, H, W) -> (B, C + 1, T, H, W) float32."""
    B, C, T, H, W = x.shape
    return x.new_zeros(B, C + 1, T, H, W, dtype=torch.float32)


class StepClock:
    """Which Euler step a model call belongs to, for a model that also takes the step's end point.

    `outer(model_fn)` wraps the function the sampler calls (exactly once per step); inside that call, any number of
    network calls (real CFG: two) read `next_timestep(B)`: the timestep the step goes to, 1000 * sigma_{i+1}, which
    is 0 at the last step. This is HunyuanVideo 1.5's meanflow `t_r`, as both references pass it. No host sync:
    the table lives on the latents' device."""

    def __init__(self, sigmas: torch.Tensor) -> None:
        self.next = sigmas[1:].float() * NUM_TRAIN_TIMESTEPS  # (N,), last entry 0
        self.i = -1

    def outer(self, model_fn: ModelFn) -> ModelFn:
        def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            self.i += 1
            if self.i >= len(self.next):
                raise RuntimeError(f"StepClock: step {self.i + 1} of a {len(self.next)}-step schedule")
            return model_fn(x, t)

        return fn

    def next_timestep(self, batch: int, device: torch.device) -> torch.Tensor:
        """(batch,) float32: the current step's end point timestep."""
        if self.i < 0:
            raise RuntimeError("StepClock.next_timestep called outside a step")
        return self.next[self.i].to(device).expand(batch)
