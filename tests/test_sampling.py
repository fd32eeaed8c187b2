"""Flow-matching schedule, Euler sampler, guidance wrappers and initial noise (docs/DESIGN.md §5)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

from hyvideo.sampling import (
    StepClock,
    cat_cond,
    euler,
    flow_sigmas,
    initial_noise,
    latent_shape,
    no_image_condition,
    official_noise,
    timesteps,
    with_cfg,
    with_cond,
)


def diffusers_scheduler(steps: int, shift: float) -> FlowMatchEulerDiscreteScheduler:
    """The scheduler as HunyuanVideoPipeline sets it up: sigmas = linspace(1, 0, N+1)[:-1], shifted inside."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1], device="cpu")
    return scheduler


@pytest.mark.parametrize(("steps", "shift"), [(50, 7.0), (30, 17.0), (1, 7.0), (7, 1.0), (13, 5.0)])
def test_sigmas_match_diffusers(steps, shift):
    sigmas = flow_sigmas(steps, shift)
    scheduler = diffusers_scheduler(steps, shift)
    assert sigmas.shape == (steps + 1,) and sigmas.dtype == torch.float32
    assert sigmas[0] == 1 and sigmas[-1] == 0 and (sigmas.diff() < 0).all()
    assert torch.allclose(sigmas, scheduler.sigmas, rtol=0, atol=2.5e-7)  # diffusers goes via float64: <= 1 ulp
    assert torch.allclose(timesteps(sigmas), scheduler.timesteps, rtol=0, atol=2.5e-4)


def test_sigma_formula():
    s = torch.linspace(1, 0, 11)
    assert torch.equal(flow_sigmas(10, 1.0), s)
    assert torch.allclose(flow_sigmas(10, 7.0), 7 * s / (1 + 6 * s))
    with pytest.raises(ValueError):
        flow_sigmas(0, 7.0)


def toy_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.7 * torch.tanh(x) + (t / 1000).view(-1, 1, 1, 1, 1) ** 2


def test_euler_matches_scheduler_step():
    steps, shift = 10, 7.0
    x0 = initial_noise((2, 4, 3, 4, 4), 42)
    scheduler = diffusers_scheduler(steps, shift)
    scheduler.set_begin_index(0)
    ref = x0.clone()
    for t in scheduler.timesteps:
        ref = scheduler.step(toy_model(ref, t.expand(2)), t, ref, return_dict=False)[0]
    ours = euler(toy_model, x0, flow_sigmas(steps, shift))
    assert ours.dtype == torch.float32
    assert (ours - ref).abs().max().item() <= 1e-6


def test_euler_passes_timesteps_and_calls_back():
    seen_t, seen_i = [], []
    sigmas = flow_sigmas(4, 7.0)

    def model(x, t):
        seen_t.append(t.clone())
        return torch.ones_like(x, dtype=torch.bfloat16)  # any dtype in, fp32 state kept

    x = euler(model, torch.zeros(3, 1, 1, 1, 1), sigmas, callback=lambda d: seen_i.append(d["i"]))
    assert seen_i == [0, 1, 2, 3]
    assert all(t.shape == (3,) and torch.equal(t, (s * 1000).expand(3)) for t, s in zip(seen_t, sigmas, strict=False))
    assert torch.allclose(x, torch.full_like(x, -1.0))  # sum of dsigma = 0 - 1


@dataclass
class Cond:
    states: torch.Tensor
    pooled: torch.Tensor
    guidance: float = 6.0


def cond_model(x, t, cond: Cond):
    return x * cond.pooled.view(-1, 1, 1, 1, 1) + cond.states.sum(1).view(-1, 1, 1, 1, 1) + t.view(-1, 1, 1, 1, 1)


def test_cfg_math_and_batching():
    x = torch.randn(2, 2, 1, 2, 2)
    t = torch.full((2,), 500.0)
    cond = Cond(torch.randn(2, 3), torch.randn(2))
    uncond = Cond(torch.randn(2, 3), torch.randn(2))
    v_c, v_u = cond_model(x, t, cond), cond_model(x, t, uncond)
    for batched in (False, True):
        v = with_cfg(cond_model, cond, uncond, 4.5, batched=batched)(x, t)
        assert torch.allclose(v, v_u + 4.5 * (v_c - v_u), atol=1e-6)
    assert torch.allclose(with_cfg(cond_model, cond, uncond, 1.0)(x, t), v_c)
    assert torch.equal(with_cond(cond_model, cond)(x, t), v_c)


def test_cat_cond():
    a, b = Cond(torch.zeros(1, 3), torch.zeros(1)), Cond(torch.ones(2, 3), torch.ones(2))
    both = cat_cond(a, b)
    assert both.states.shape == (3, 3) and both.pooled.tolist() == [0, 1, 1] and both.guidance == 6.0
    assert cat_cond({"m": None, "x": (torch.zeros(1),)}, {"m": None, "x": (torch.ones(1),)})["x"][0].tolist() == [0, 1]
    with pytest.raises(TypeError):
        cat_cond(1.0, 2.0)


def test_initial_noise_is_per_video_seeded():
    shape = latent_shape(3, 129, 64, 96)
    assert shape == (3, 16, 33, 8, 12)
    noise = initial_noise(shape, 1234)
    assert noise.dtype == torch.float32 and noise.shape == shape
    assert torch.equal(noise, initial_noise(shape, [1234, 1235, 1236]))
    assert torch.equal(noise[1], initial_noise((1, *shape[1:]), 1235)[0])  # independent of batch size
    assert not torch.equal(noise[0], noise[1])
    generators = [torch.Generator("cpu").manual_seed(1234 + i) for i in range(3)]
    assert torch.equal(noise, randn_tensor(shape, generator=generators, dtype=torch.float32))
    with pytest.raises(ValueError):
        initial_noise(shape, [1, 2])
    with pytest.raises(ValueError):
        latent_shape(1, 128, 64, 64)


def official_draw(seed: int, videos: int, shape: tuple[int, ...], device: str, dtype: torch.dtype) -> torch.Tensor:
    """The official sampler's start noise, restated from its code: one torch.Generator(device) per video seeded
    seed + i (predict()), then the pipeline's prepare_latents -> diffusers' randn_tensor(shape, generator=list,
    device=device, dtype=prompt_embeds.dtype)."""
    generators = [torch.Generator(device).manual_seed(seed + i) for i in range(videos)]
    return randn_tensor((videos, *shape), generator=generators, device=torch.device(device), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_official_noise_reproduces_the_official_draw(dtype):
    shape = latent_shape(3, 33, 48, 80)  # (3, 16, 9, 6, 10)
    want = official_draw(77, 3, shape[1:], "cpu", dtype)
    got = official_noise(shape, 77, "cpu", dtype)
    assert got.dtype == torch.float32 and got.shape == shape
    assert torch.equal(got, want.float())
    assert torch.equal(got[2:], official_noise((1, *shape[1:]), [79], "cpu", dtype))  # video i: seed + i, any batch
    ours = initial_noise(shape, 77)
    if dtype == torch.float32:  # on the CPU the float32 draws coincide; only the dtype (and on CUDA the generator's
        assert torch.equal(got, ours)  # device) makes the official noise differ from ours
    else:
        assert not torch.equal(got, ours)
        assert torch.equal(got, ours.to(dtype).float())  # CPU: the half-precision draw is the float32 one, rounded
    with pytest.raises(ValueError):
        official_noise(shape, [1, 2], "cpu", dtype)


def test_step_clock_gives_each_step_its_end_point_as_the_references_do():
    """meanflow t_r: at step i every network call (two with real CFG) sees the scheduler's timesteps[i + 1], and 0 at
    the last step (what both 1.5 references pass); a call outside a step, or past the schedule, is an error."""
    sigmas = flow_sigmas(5, 7.0)
    sched = FlowMatchEulerDiscreteScheduler(shift=7.0)
    sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, 6)[:-1])
    expected = [*sched.timesteps[1:].tolist(), 0.0]
    clock, seen = StepClock(sigmas), []
    with pytest.raises(RuntimeError, match="outside a step"):
        clock.next_timestep(1, torch.device("cpu"))

    def network(x, t):
        seen.append(clock.next_timestep(x.shape[0], x.device).tolist())
        return torch.zeros_like(x)

    def guided(x, t):  # two network calls per step, as real CFG makes
        return network(x, t) + network(x, t)

    euler(clock.outer(guided), torch.zeros(2, 1, 1, 1, 1), sigmas)
    assert [s[0] for s in seen[::2]] == pytest.approx(expected, abs=1e-3)
    assert seen[::2] == seen[1::2] and all(len(s) == 2 for s in seen)
    with pytest.raises(RuntimeError, match="step 6 of a 5-step"):
        clock.outer(guided)(torch.zeros(1, 1, 1, 1, 1), torch.zeros(1))


def test_latent_shape_with_16x_spatial_compression_and_the_empty_condition():
    assert latent_shape(1, 121, 480, 848, 32, spatial=16) == (1, 32, 31, 30, 53)
    with pytest.raises(ValueError, match="multiples of 16"):
        latent_shape(1, 121, 480, 840, 32, spatial=16)
    cond = no_image_condition(torch.ones(2, 32, 3, 4, 5))
    assert cond.shape == (2, 33, 3, 4, 5) and not cond.any()
