"""Image-to-video sampling math (hyvideo/sampling.py) against restatements of the two references' loops: the
official pipeline's and diffusers' HunyuanVideoImageToVideoPipeline / HunyuanSkyreelsImageToVideoPipeline
(diffusers' own FlowMatchEulerDiscreteScheduler steps the restated loops)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from hyvideo.sampling import (
    concat_condition,
    euler,
    flow_sigmas,
    hold_first_frame,
    image_condition,
    replace_first_frame,
    stability_start,
)

B, C, T, H, W = 2, 4, 5, 3, 4


def toy_model(out_channels: int = C):
    """A velocity that mixes frames and channels (so a wrong frame 0 or condition channel changes every output)
    and depends on t; records every input it is given."""
    seen: list[torch.Tensor] = []

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        mix = torch.linspace(0.5, -0.5, x.shape[1])[None, :, None, None, None]
        v = torch.tanh(x[:, :out_channels]) * 0.7 + (x * mix).sum(1, keepdim=True).mean(2, keepdim=True)
        return v + t[:, None, None, None, None] / 1000

    return fn, seen


def data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, T, H, W, generator=g), torch.randn(B, C, 1, H, W, generator=g)


def scheduler(steps: int, shift: float) -> FlowMatchEulerDiscreteScheduler:
    s = FlowMatchEulerDiscreteScheduler(shift=shift)
    s.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1])
    return s


def test_stability_start_restated():
    noise, image = data()
    # both references: repeat the image latent on every frame, then x * t + image * (1 - t), t a float32 tensor
    t = torch.tensor([0.999])
    want = noise * t + image.repeat(1, 1, T, 1, 1) * (1 - t)
    assert torch.equal(stability_start(noise, image), want)
    assert float(1 - t) == pytest.approx(0.00099998713, abs=1e-11)


@pytest.mark.parametrize("steps, shift", [(4, 7.0), (6, 17.0)])
def test_token_replace_against_the_reference_loop(steps, shift):
    noise, image = data(1)
    start = stability_start(noise, image)
    fn, seen = toy_model()
    ours = euler(hold_first_frame(fn, image), replace_first_frame(start, image), flow_sigmas(steps, shift))
    # the reference loop: the model sees cat_T[image, latents[1:]], only frames 1.. are stepped, frame 0 := image
    ref_fn, ref_seen = toy_model()
    sched, latents = scheduler(steps, shift), start.clone()
    for t in sched.timesteps:
        inp = torch.cat([image, latents[:, :, 1:]], 2)
        v = ref_fn(inp, t.expand(B))
        latents = torch.cat([image, sched.step(v[:, :, 1:], t, latents[:, :, 1:], return_dict=False)[0]], 2)
    assert torch.equal(ours[:, :, :1], image)  # frame 0 is the clean image latent, exactly
    # measured bit-equal here; the tolerance allows the 1-ulp schedule difference of docs/DESIGN.md §5.2
    torch.testing.assert_close(ours, latents, rtol=0, atol=1e-6)
    assert len(seen) == steps and all(torch.equal(s[:, :, :1], image) for s in seen)
    for a, b in zip(seen, ref_seen, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mask", [True, False], ids=["latent_concat", "skyreels"])
def test_concat_against_the_reference_loop(mask):
    noise, image = data(2)
    start = stability_start(noise, image) if mask else noise  # SkyReels has no stability start
    cond = image_condition(image, T, mask)
    assert cond.shape == (B, C + 1 if mask else C, T, H, W)  # appended to the C latent channels
    fn, seen = toy_model()
    ours = euler(concat_condition(fn, cond), start, flow_sigmas(5, 7.0))
    # reference: image latent at frame 0, zeros after (+ mask 1 at frame 0), all frames stepped
    ref_image = torch.cat([image, torch.zeros(B, C, T - 1, H, W)], 2)
    extra = [ref_image]
    if mask:
        m = torch.zeros(B, 1, T, H, W)
        m[:, :, 0] = 1
        extra.append(m)
    ref_fn, _ = toy_model()
    sched, latents = scheduler(5, 7.0), start.clone()
    for t in sched.timesteps:
        v = ref_fn(torch.cat([latents, *extra], 1), t.expand(B))
        latents = sched.step(v, t, latents, return_dict=False)[0]
    torch.testing.assert_close(ours, latents, rtol=0, atol=1e-6)
    assert torch.equal(seen[0], torch.cat([start, *extra], 1))


def test_image_condition_layout():
    _, image = data(3)
    cond = image_condition(image, 3, mask=True)
    assert torch.equal(cond[:, :C, 0:1], image) and not cond[:, :C, 1:].any()
    assert cond[:, C, 0].eq(1).all() and not cond[:, C, 1:].any()
    assert torch.equal(image_condition(image, 3, mask=False), cond[:, :C])


def test_one_image_for_a_batch():
    """One image latent (batch 1) conditions every video of a batch: the same as the image repeated."""
    noise, image = data(4)
    one = image[:1]
    fn, _ = toy_model()
    for wrap in (
        lambda f, im: hold_first_frame(f, im),
        lambda f, im: concat_condition(f, image_condition(im, T, True)),
    ):
        a = euler(wrap(fn, one), replace_first_frame(noise, one), flow_sigmas(3, 7.0))
        b = euler(wrap(fn, one.expand(B, -1, -1, -1, -1)), replace_first_frame(noise, one), flow_sigmas(3, 7.0))
        assert torch.equal(a, b)
