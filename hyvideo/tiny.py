"""Tiny random-weight models for the demo and the tests (no network, no downloads).

`random_dit(cfg, seed)` gives a DiT whose weights are drawn so activations stay O(1): Linear/Conv weights
~ N(0, 1/fan_in), biases ~ N(0, 0.1^2), norm weights ~ 1 + N(0, 0.1^2). Deterministic for a seed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hyvideo.config import DiTConfig
from hyvideo.modules.dit import HYVideoDiT

TINY_DIT = DiTConfig(
    in_channels=16,
    out_channels=16,
    hidden_size=48,
    heads=2,
    depth_double=2,
    depth_single=2,
    depth_refiner=2,
    rope_axes=(4, 10, 10),
    text_states_dim=32,
    text_pool_dim=32,
)


def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Fill every parameter in place with seeded values of a sensible scale (see module docstring)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if p.ndim > 1:
                r = r / math.sqrt(p[0].numel())
            elif name.endswith("weight"):
                r = 1 + 0.1 * r
            else:
                r = 0.1 * r
            p.copy_(r.to(p.dtype))
    return model


def random_dit(cfg: DiTConfig = TINY_DIT, seed: int = 0) -> HYVideoDiT:
    return randomize_(HYVideoDiT(cfg), seed).eval().requires_grad_(False)
