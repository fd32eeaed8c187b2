"""Input embeddings: timestep sinusoid, MLP embedders, patch embedding and the 3D RoPE table (docs/DESIGN.md §2)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

FREQ_DIM = 256  # width of the timestep / guidance sinusoid


def timestep_sinusoid(t: torch.Tensor, dim: int = FREQ_DIM, max_period: float = 10000.0) -> torch.Tensor:
    """[cos(t*f_k), sin(t*f_k)], f_k = exp(-ln(max_period) * k / (dim/2)), k < dim/2; in fp32. t (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Sinusoid(t) -> Linear -> SiLU -> Linear. Checkpoint names `mlp.0`, `mlp.2`."""

    def __init__(self, hidden: int, freq_dim: int = FREQ_DIM) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_sinusoid(t, self.freq_dim).to(self.mlp[0].weight.dtype))  # (B, hidden)


class MLPEmbedder(nn.Module):
    """out_layer(SiLU(in_layer(x))): the CLIP pooled vector embedder (`vector_in`)."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden)
        self.out_layer = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class TextProjection(nn.Module):
    """linear_2(SiLU(linear_1(x))): the token refiner's context embedder (`txt_in.c_embedder`)."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, hidden)
        self.linear_2 = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class PatchEmbed(nn.Module):
    """Conv3d with kernel = stride = patch; tokens flattened t, then h, then w. (B,C,T,H,W) -> (B, T'H'W', hidden)."""

    def __init__(self, patch: tuple[int, int, int], in_channels: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_channels, hidden, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def rope_table(grid: tuple[int, int, int], axes: tuple[int, ...], theta: float, device=None) -> torch.Tensor:
    """Complex rotations for every token of a (T, H, W) token grid, t-major: (T*H*W, sum(axes)/2) complex64.

    Axis i with d_i dims rotates pair j by angle pos_i * theta^(-2j/d_i), j < d_i/2, pos_i = 0..n_i-1. Pairs are
    adjacent elements (x0, x1), so a complex multiply of view_as_complex(x) applies the rotation.
    """
    angles = []
    for n, d in zip(grid, axes, strict=True):
        freqs = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32, device=device)[: d // 2] / d)  # (d/2,)
        angles.append(torch.outer(torch.arange(n, dtype=torch.float32, device=device), freqs))  # (n, d/2), fp32
    T, H, W = grid
    full = torch.cat(
        [
            angles[0][:, None, None].expand(T, H, W, -1),
            angles[1][None, :, None].expand(T, H, W, -1),
            angles[2][None, None, :].expand(T, H, W, -1),
        ],
        dim=-1,
    ).reshape(T * H * W, -1)  # (L, D/2)
    return torch.polar(torch.ones_like(full), full)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of x (B, L, H, D) by table (L, D/2) complex; computed in fp32, cast back."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # (B, L, H, D/2)
    return torch.view_as_real(xc * table[None, :, None]).flatten(-2).to(x.dtype)
