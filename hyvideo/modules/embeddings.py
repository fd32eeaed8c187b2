"""Input embeddings: timestep sinusoid, MLP embedders, patch embedding and the 3D RoPE table (docs/DESIGN.md §2),
with RIFLEx for videos longer than the training length (docs/DESIGN.md §15)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hyvideo.choices import RIFLEX_MODES
from hyvideo.modules.layers import affine_layer_norm

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


class ByT5Mapper(nn.Module):
    """HunyuanVideo 1.5 `byt5_in`: glyph byT5 states -> DiT tokens, fc3(GELU(fc2(GELU(fc1(LayerNorm(x)))))).
    (B, L, in_dim) -> (B, L, out_dim); GELU is the exact (erf) one, the LayerNorm affine with eps 1e-5."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.layernorm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.gelu(self.fc2(F.gelu(self.fc1(affine_layer_norm(self.layernorm, x))))))


class VisionProjection(nn.Module):
    """HunyuanVideo 1.5 `vision_in`: SigLIP states -> DiT tokens, LayerNorm, Linear, GELU, Linear, LayerNorm
    (checkpoint names proj.0, proj.1, proj.3, proj.4). (B, L, in_dim) -> (B, L, out_dim)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.LayerNorm(in_dim),
            nn.Linear(in_dim, in_dim),
            nn.GELU(),
            nn.Linear(in_dim, out_dim),
            nn.LayerNorm(out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm_in, fc1, _, fc2, norm_out = self.proj
        return affine_layer_norm(norm_out, fc2(F.gelu(fc1(affine_layer_norm(norm_in, x)))))


class PatchEmbed(nn.Module):
    """Conv3d with kernel = stride = patch; tokens flattened t, then h, then w. (B,C,T,H,W) -> (B, T'H'W', hidden)."""

    def __init__(self, patch: tuple[int, int, int], in_channels: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_channels, hidden, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


# RIFLEx (long videos, docs/DESIGN.md §15): the temporal RoPE component whose period (~50 latent frames) is closest
# to where HunyuanVideo starts repeating itself, numbered from 1 as in the RIFLEx paper and code.
RIFLEX_K = 4
RIFLEX_MARGIN = 0.9  # one period = length / 0.9: the video stays within 90 % of a turn
TRAINED_FRAMES = 129  # video frames the released model was trained on (33 latent frames)


def rope_freqs(d: int, theta: float, device=None) -> torch.Tensor:
    """Angular frequencies theta^(-2j/d), j < d/2, of one axis with d dims: (d/2,) fp32."""
    return 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32, device=device)[: d // 2] / d)


def riflex_rope_freqs(freqs: torch.Tensor, k: int, length: int) -> torch.Tensor:
    """RIFLEx: a copy of freqs (d/2,) whose component k (1-based) is 0.9 * 2*pi / length, so that `length` positions
    (latent frames) cover 90 % of one of its periods; every other component unchanged."""
    if not 1 <= k <= freqs.shape[0]:
        raise ValueError(f"RIFLEx component k={k} outside 1..{freqs.shape[0]} (the temporal axis has that many pairs)")
    if length < 1:
        raise ValueError(f"RIFLEx length must be >= 1 latent frame, got {length}")
    out = freqs.clone()
    out[k - 1] = RIFLEX_MARGIN * 2 * math.pi / length  # a Python float, rounded once to fp32
    return out


def riflex_applies(mode: str, video_length: int, trained_frames: int = TRAINED_FRAMES) -> bool:
    """`--riflex`: on, off, or auto = on exactly when the video is longer than the frames the model was trained on."""
    if mode not in RIFLEX_MODES:
        raise ValueError(f"riflex mode {mode!r} is not one of {RIFLEX_MODES}")
    return mode == "on" or (mode == "auto" and video_length > trained_frames)


def rope_table(
    grid: tuple[int, int, int], axes: tuple[int, ...], theta: float, device=None, *, riflex_k: int | None = None
) -> torch.Tensor:
    """Complex rotations for every token of a (T, H, W) token grid, t-major: (T*H*W, sum(axes)/2) complex64.

    Axis i with d_i dims rotates pair j by angle pos_i * theta^(-2j/d_i), j < d_i/2, pos_i = 0..n_i-1. Pairs are
    adjacent elements (x0, x1), so a complex multiply of view_as_complex(x) applies the rotation. riflex_k: lower the
    temporal component k (1-based) so that one period covers 1/0.9 of the T positions (`riflex_rope_freqs`); None
    leaves the table exactly as without it.
    """
    angles = []
    for i, (n, d) in enumerate(zip(grid, axes, strict=True)):
        freqs = rope_freqs(d, theta, device)  # (d/2,)
        if i == 0 and riflex_k is not None:
            freqs = riflex_rope_freqs(freqs, riflex_k, n)
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
